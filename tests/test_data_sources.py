"""Tests of the data sources chosen by name (diffusion_jax/data/sources.py).

All data are tiny and made here (PNG folders, .npz files, a CIFAR-10-format
tarball); nothing is downloaded.
"""

import hashlib
import io
import os
import pickle
import tarfile
import time

import numpy as np
import PIL.Image
import pytest

from diffusion_jax.data import pipeline
from diffusion_jax.data import sources
from diffusion_jax.default_config import get_default_config
from diffusion_jax.errors import ConfigError, DataError


def _cfg(**overrides):
  data = get_default_config().data
  for key, value in overrides.items():
    data[key] = value
  return data


def _gray(value: int, size=(8, 8), mode="RGB") -> PIL.Image.Image:
  """A constant image: the value identifies it after decoding."""
  return PIL.Image.new(mode, size, (value,) * len(mode) if mode != "L" else value)


def _make_folder(root, layout: dict[str, int]) -> dict[str, int]:
  """Writes constant 8x8 RGB PNGs; ``layout`` maps relative dir -> count.

  Returns:
    relative path -> the image's pixel value.
  """
  values = {}
  for directory, count in layout.items():
    os.makedirs(os.path.join(root, directory), exist_ok=True)
    for i in range(count):
      rel = os.path.join(directory, f"{i:02d}.png") if directory else f"{i:02d}.png"
      value = 10 + len(values) * 3
      _gray(value).save(os.path.join(root, rel))
      values[rel.replace(os.sep, "/")] = value
  return values


def _take(loader_or_iterator, n):
  it = iter(loader_or_iterator)
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def _truncated_png(path):
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)).save(
      buffer, "PNG")
  data = buffer.getvalue()
  path.write_bytes(data[: len(data) // 2])  # Valid header, cut pixel data.


# ----------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------


def test_folder_labels_are_sorted_first_level_subfolders(tmp_path):
  values = _make_folder(tmp_path, {"dog": 3, "cat": 2, "bird/small": 2})
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.3)
  info = sources.dataset_info(cfg)
  assert (info.height, info.width, info.channels) == (8, 8, 3)
  assert info.class_names == ("bird", "cat", "dog") and info.num_classes == 3
  assert info.split_sizes == {"train": 5, "test": 2}
  class_of = {v: ("bird", "cat", "dog").index(rel.split("/")[0])
              for rel, v in values.items()}
  seen = []
  for split in ("train", "test"):
    images, labels = sources.load_split(cfg, split)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    for image, label in zip(images, labels):
      value = int(round((image[0, 0, 0] + 1) * 127.5))
      np.testing.assert_array_equal(image, np.float32(value) / np.float32(127.5) - 1)
      assert label == class_of[value]
      seen.append(value)
  assert sorted(seen) == sorted(values.values())


def test_folder_split_is_the_smallest_path_hashes(tmp_path):
  values = _make_folder(tmp_path, {"": 20})
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.25)
  test = sources.get_source(cfg, "test", in_memory=False)
  train = sources.get_source(cfg, "train", in_memory=False)
  by_hash = sorted(values, key=lambda rel: hashlib.sha256(rel.encode()).digest())
  assert set(test.files) == set(by_hash[:5]) and len(train) == 15
  assert not set(test.files) & set(train.files)
  # Adding a file leaves the old test files in the test split or moves one.
  _gray(7).save(tmp_path / "zz.png")
  again = sources.get_source(cfg, "test", in_memory=False)
  assert len(set(test.files) - set(again.files)) <= 1


@pytest.mark.parametrize("layout, rule", [
    ({"": 4}, "all images directly in data.path"),
    ({"": 2, "a": 2}, "both directly in data.path and in subfolders"),
])
def test_folder_without_class_subfolders_is_unlabelled(tmp_path, layout, rule):
  _make_folder(tmp_path, layout)
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3)
  info = sources.dataset_info(cfg)
  assert info.num_classes is None and info.class_names is None
  assert sum(info.split_sizes.values()) == 4
  _, labels = sources.load_split(cfg, "train")
  assert (labels == 0).all()
  assert rule in sources.describe(cfg)


def test_folder_in_memory_and_lazy_sources_give_the_same_batches(tmp_path):
  _make_folder(tmp_path, {"a": 5, "b": 5})
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3)
  lazy = sources.get_source(cfg, "train")  # data.in_memory=None: lazy for folder.
  assert isinstance(lazy, sources.FolderSource) and lazy.transform is not None
  memory = sources.get_source(cfg, "train", in_memory=True)
  assert isinstance(memory, sources.ArraySource)
  kw = dict(batch_size=4, seed=0, image_size=8, random_flip=True)
  _assert_same_batches(_take(pipeline.make_loader(lazy, **kw), 3),
                       _take(pipeline.make_loader(memory, **kw), 3))


def test_corrupt_files_are_skipped_with_one_warning(tmp_path, capsys):
  _make_folder(tmp_path, {"": 3})
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "page.jpg").write_bytes(b"<html>404 Not Found</html>")
  (tmp_path / "notes.txt").write_text("not an image name")  # Not listed at all.
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3)
  info = sources.dataset_info(cfg)
  sources.get_source(cfg, "train")
  assert sum(info.split_sizes.values()) == 3
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "skipped 2 unreadable image file(s)" in err[0]
  assert "empty.png" in err[0] and "page.jpg" in err[0] and str(tmp_path) in err[0]
  assert "skipped: 2 unreadable" in sources.describe(cfg)


def test_truncated_image_is_a_data_error_naming_the_file(tmp_path):
  _make_folder(tmp_path, {"": 3})
  _truncated_png(tmp_path / "cut.png")
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.0)
  assert sources.dataset_info(cfg).split_sizes == {"train": 4, "test": 0}
  with pytest.raises(DataError, match=r"cut\.png.*corrupt or truncated"):
    sources.load_split(cfg, "train")
  loader = pipeline.make_loader(sources.get_source(cfg, "train"), batch_size=4,
                                seed=0, image_size=None, num_epochs=1)
  with pytest.raises(DataError, match=r"cut\.png"):
    list(loader)


def test_decode_errors_in_grain_workers_are_data_errors(tmp_path):
  _truncated_png(tmp_path / "cut.png")
  _make_folder(tmp_path, {"": 3})
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.0)
  source = sources.get_source(cfg, "train")
  loader = pipeline.make_loader(source, batch_size=4, seed=0, image_size=None,
                                num_epochs=1, worker_count=1)
  with pytest.raises(DataError, match=r"cut\.png"):
    list(loader)


@pytest.mark.parametrize("case, message", [
    ("missing", r"no such directory"),
    ("file", r"is a file.*data\.dataset='npz'"),
    ("empty", r"no images to read.*no png/jpg/jpeg/webp files"),
    ("unreadable", r"none of its 1 image files can be read"),
])
def test_folder_errors_name_the_path(tmp_path, case, message):
  path = tmp_path / "images"
  if case == "file":
    path = tmp_path / "x.npz"
    path.write_bytes(b"")
  elif case == "empty":
    (path / "sub").mkdir(parents=True)
  elif case == "unreadable":
    path.mkdir()
    (path / "a.png").write_bytes(b"junk")
  cfg = _cfg(dataset="folder", path=str(path), image_size=8, channels=3)
  with pytest.raises(DataError, match=message) as e:
    sources.dataset_info(cfg)
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_folder_finds_jpeg_and_webp_recursively_and_skips_hidden(tmp_path):
  (tmp_path / "a" / "deep").mkdir(parents=True)
  (tmp_path / "a" / ".hidden").mkdir()
  PIL.Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "a" / "deep" / "x.JPEG")
  PIL.Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a" / "y.webp", lossless=True)
  PIL.Image.new("RGB", (8, 8)).save(tmp_path / "a" / ".hidden" / "z.png")
  PIL.Image.new("RGB", (8, 8)).save(tmp_path / "a" / ".dot.png")
  PIL.Image.new("RGB", (96, 64), (200, 100, 50)).save(tmp_path / "a" / "big.jpg")
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.0)
  source = sources.get_source(cfg, "train")
  assert source.files == ("a/big.jpg", "a/deep/x.JPEG", "a/y.webp")
  images = dict(zip(source.files, sources.to_arrays(source)[0]))
  orange = np.broadcast_to(np.array([200, 100, 50]), (8, 8, 3))
  np.testing.assert_allclose(images["a/deep/x.JPEG"], orange, atol=3)
  np.testing.assert_allclose(images["a/big.jpg"], orange, atol=3)  # Via Image.draft.
  np.testing.assert_array_equal(images["a/y.webp"], np.broadcast_to((10, 20, 30), (8, 8, 3)))


def test_exif_orientation_is_applied(tmp_path):
  pixels = np.zeros((8, 16, 3), np.uint8)
  pixels[:, 8:] = 255  # Left half black, right half white.
  exif = PIL.Image.Exif()
  exif[0x0112] = 6  # Shown rotated 90 degrees clockwise: the left half on top.
  PIL.Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=1,
             test_fraction=0.0)
  (image,), _ = sources.to_arrays(sources.get_source(cfg, "train"))
  assert image[:3].max() < 40 and image[-3:].min() > 215  # Dark top, light bottom.


# ----------------------------------------------------------------------------
# Fitting images: resize, centre crop, channels.
# ----------------------------------------------------------------------------


def test_matching_images_are_bit_exact(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (3, 8, 8, 3), np.uint8)
  for i, image in enumerate(rgb):
    PIL.Image.fromarray(image).save(tmp_path / f"{i}.png")
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.0)
  images, _ = sources.to_arrays(sources.get_source(cfg, "train"))
  np.testing.assert_array_equal(images, rgb)
  # npz: the very same array when it fits.
  gray = rng.integers(0, 256, (6, 8, 8, 1), np.uint8)
  np.savez(tmp_path / "d.npz", images=gray)
  npz_cfg = _cfg(dataset="npz", path=str(tmp_path / "d.npz"), image_size=8,
                 channels=1, test_fraction=0.0)
  np.testing.assert_array_equal(sources.get_source(npz_cfg, "train").images, gray)


def test_shorter_side_resize_and_centre_crop(tmp_path):
  wide = np.zeros((8, 24, 3), np.uint8)
  wide[:, :8] = (255, 0, 0)
  wide[:, 8:16] = (0, 255, 0)   # The centre third.
  wide[:, 16:] = (0, 0, 255)
  PIL.Image.fromarray(wide).save(tmp_path / "wide.png")
  PIL.Image.fromarray(wide.transpose(1, 0, 2)).save(tmp_path / "tall.png")
  _gray(200, size=(32, 48)).save(tmp_path / "big.png")
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.0)
  source = sources.get_source(cfg, "train")
  images = dict(zip(source.files, sources.to_arrays(source)[0]))
  assert images["wide.png"].shape == (8, 8, 3)
  assert (images["wide.png"] == (0, 255, 0)).all()
  assert (images["tall.png"] == (0, 255, 0)).all()
  assert (images["big.png"] == 200).all()
  # Upsampling works the same way.
  up = sources.to_arrays(sources.get_source(_cfg(**{**cfg, "image_size": 16}), "train"))[0]
  assert up.shape == (3, 16, 16, 3)


def test_channel_conversion_and_alpha_over_white(tmp_path):
  PIL.Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
  PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
  PIL.Image.new("LA", (4, 4), (0, 255)).save(tmp_path / "black_la.png")
  PIL.Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "white16.png")
  palette = PIL.Image.new("P", (4, 4), 1)
  palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
  palette.save(tmp_path / "blue_p.png")
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=4, channels=1,
             test_fraction=0.0)
  source = sources.get_source(cfg, "train")
  gray = {f: image for f, image in zip(source.files, sources.to_arrays(source)[0])}
  assert gray["red.png"].shape == (4, 4, 1)
  assert (gray["red.png"] == 76).all()       # ITU-R 601-2 luma: 255 * 299 / 1000.
  assert (gray["clear.png"] == 255).all()    # Transparent -> white.
  assert (gray["black_la.png"] == 0).all()   # Opaque black stays black.
  assert (gray["white16.png"] == 255).all()  # 16-bit scaled to 8 bits.
  assert (gray["blue_p.png"] == 29).all()    # 255 * 114 / 1000.
  rgb = sources.to_arrays(sources.get_source(_cfg(**{**cfg, "channels": 3}), "train"))[0]
  assert rgb.shape == (5, 4, 4, 3)


# ----------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------


def test_npz_source_labels_class_names_and_split(tmp_path):
  n = 30
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  labels = np.arange(n) % 3
  path = tmp_path / "samples.npz"
  np.savez_compressed(path, images=images, labels=labels,
                      class_names=np.array(["a", "b", "c"]))
  cfg = _cfg(dataset="npz", path=str(path), image_size=4, channels=3, test_fraction=0.2)
  info = sources.dataset_info(cfg)
  assert info.split_sizes == {"train": 24, "test": 6}
  assert info.num_classes == 3 and info.class_names == ("a", "b", "c")
  test = sources.get_source(cfg, "test")
  expected = sorted(range(n), key=lambda i: hashlib.sha256(str(i).encode()).digest())[:6]
  np.testing.assert_array_equal(test.images[:, 0, 0, 0], sorted(expected))
  np.testing.assert_array_equal(test.labels, np.asarray(sorted(expected)) % 3)
  # Fitted like every source: 4x4 RGB -> 8x8 gray.
  small = sources.get_source(_cfg(**{**cfg, "image_size": 8, "channels": 1}), "train")
  assert small.images.shape == (24, 8, 8, 1) and small.images.dtype == np.uint8


def test_npz_without_labels_is_unlabelled(tmp_path):
  np.savez(tmp_path / "u.npz", images=np.zeros((5, 4, 4, 1), np.uint8))
  cfg = _cfg(dataset="npz", path=str(tmp_path / "u.npz"), image_size=4, channels=1)
  info = sources.dataset_info(cfg)
  assert info.num_classes is None and info.split_sizes == {"train": 4, "test": 1}


@pytest.mark.parametrize("arrays, message", [
    ({"pixels": np.zeros((2, 4, 4, 1), np.uint8)}, r"no 'images' array.*'pixels'"),
    ({"images": np.zeros((2, 4, 4, 1), np.float32)}, r"float32 \[2, 4, 4, 1\], not uint8"),
    ({"images": np.zeros((2, 4, 4), np.uint8)}, r"not uint8 \[N, H, W, C\]"),
    ({"images": np.zeros((2, 4, 4, 1), np.uint8), "labels": np.zeros(3, int)},
     r"'labels' has 3 entries for 2 images"),
    ({"images": np.zeros((2, 4, 4, 1), np.uint8), "labels": np.zeros(2, np.float32)},
     r"'labels' is float32"),
    (None, r"not a readable \.npz file"),
])
def test_bad_npz_is_a_data_error_naming_the_file(tmp_path, arrays, message):
  path = tmp_path / "bad.npz"
  if arrays is None:
    path.write_bytes(b"this is not a zip archive")
  else:
    np.savez(path, **arrays)
  cfg = _cfg(dataset="npz", path=str(path), image_size=4, channels=1)
  with pytest.raises(DataError, match=message) as e:
    sources.get_source(cfg, "train")
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_npz_is_a_data_error(tmp_path):
  cfg = _cfg(dataset="npz", path=str(tmp_path / "nope.npz"), image_size=4, channels=1)
  with pytest.raises(DataError, match=r"data\.path=.*nope\.npz.*no such file"):
    sources.dataset_info(cfg)


# ----------------------------------------------------------------------------
# cifar10 (a synthetic tarball in the official format)
# ----------------------------------------------------------------------------


def _batch(images: np.ndarray, labels) -> bytes:
  """A CIFAR-10 batch pickle: b"data" uint8 [n, 3072] in CHW order."""
  data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  return pickle.dumps({b"batch_label": b"synthetic", b"data": data,
                       b"labels": [int(x) for x in labels],
                       b"filenames": [b"x.png"] * len(images)}, protocol=2)


def _write_tar(path, members: dict[str, bytes]):
  with tarfile.open(path, "w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _cifar_members(per_batch=4, n_test=3):
  rng = np.random.default_rng(0)
  members, images, labels = {}, {"train": [], "test": []}, {"train": [], "test": []}
  for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
    split = "test" if name == "test_batch" else "train"
    x = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
    y = rng.integers(0, 10, n)
    members[name] = _batch(x, y)
    images[split].append(x)
    labels[split].append(y)
  names = [f"class{i}".encode() for i in range(10)]
  members["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072},
                                         protocol=2)
  return members, {k: np.concatenate(v) for k, v in images.items()}, {
      k: np.concatenate(v) for k, v in labels.items()}


def test_cifar10_tarball_is_read_offline(tmp_path):
  members, images, labels = _cifar_members()
  path = tmp_path / "cifar-10-python.tar.gz"
  _write_tar(path, members)
  cfg = _cfg(dataset="cifar10", path=str(path), image_size=32, channels=3)
  info = sources.dataset_info(cfg)
  assert info.split_sizes == {"train": 20, "test": 3}
  assert info.class_names == tuple(f"class{i}" for i in range(10))
  for split in ("train", "test"):
    source = sources.get_source(cfg, split)
    np.testing.assert_array_equal(source.images, images[split])  # HWC, bit-exact.
    np.testing.assert_array_equal(source.labels, labels[split])
  small = sources.get_source(_cfg(**{**cfg, "image_size": 16}), "train")
  assert small.images.shape == (20, 16, 16, 3)
  batch = _take(pipeline.make_loader(small, batch_size=4, seed=0, image_size=16), 1)[0]
  assert batch["image"].shape == (4, 16, 16, 3)


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch EVIL_MARKER",))


@pytest.mark.parametrize("case, message", [
    ("not_tar", r"not a readable tar archive"),
    ("missing", r"lacks cifar-10-batches-py/data_batch_3"),
    ("no_data", r"data_batch_1 has no b'data'"),
    ("evil", r"data_batch_1 is not a CIFAR-10 batch.*posix\.system"),
])
def test_not_cifar10_is_a_data_error(tmp_path, monkeypatch, case, message):
  monkeypatch.chdir(tmp_path)
  members, _, _ = _cifar_members(per_batch=1, n_test=1)
  path = tmp_path / "cifar.tar.gz"
  if case == "not_tar":
    path.write_bytes(b"\x1f\x8b not really gzip")
  else:
    if case == "missing":
      del members["data_batch_3"]
    elif case == "no_data":
      members["data_batch_1"] = pickle.dumps({b"labels": [0]}, protocol=2)
    elif case == "evil":
      members["data_batch_1"] = pickle.dumps(_Evil(), protocol=2)
    _write_tar(path, members)
  cfg = _cfg(dataset="cifar10", path=str(path), image_size=32, channels=3)
  with pytest.raises(DataError, match=message) as e:
    sources.dataset_info(cfg)
  assert str(path) in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "EVIL_MARKER").exists()


# ----------------------------------------------------------------------------
# tfds and settings
# ----------------------------------------------------------------------------


def test_digits_through_sources(data_dir):
  cfg = _cfg(dataset="digits", data_dir=data_dir)
  info = sources.dataset_info(cfg)
  assert (info.height, info.width, info.channels, info.num_classes) == (8, 8, 1, 10)
  assert info.split_sizes == {"train": 1437, "test": 360}
  assert info.class_names == tuple(str(i) for i in range(10))
  images, labels = sources.load_split(cfg, "test")
  assert images.shape == (360, 8, 8, 1) and labels.shape == (360,)
  assert images.min() == -1.0 and images.max() == 1.0
  # At 16x16 RGB, through a lazily fitted source and in memory alike.
  big = _cfg(dataset="digits", data_dir=data_dir, image_size=16, channels=3)
  lazy = sources.get_source(big, "train", in_memory=False)
  memory = sources.get_source(big, "train", in_memory=True)
  assert isinstance(lazy, sources.LazySource)
  kw = dict(batch_size=8, seed=0, image_size=16)
  batches = _take(pipeline.make_loader(lazy, **kw), 2)
  assert batches[0]["image"].shape == (8, 16, 16, 3)
  _assert_same_batches(batches, _take(pipeline.make_loader(memory, **kw), 2))
  text = sources.describe(cfg)
  assert "train 1,437, test 360" in text and "classes: 10" in text


def test_digits_build_prints_a_truthful_line(tmp_path, capsys):
  cfg = _cfg(dataset="digits", data_dir=str(tmp_path))
  assert len(sources.get_source(cfg, "test")) == 360
  out = capsys.readouterr().out
  assert "Building the embedded digits dataset from scikit-learn into" in out
  assert "(offline, once)" in out and "Downloading" not in out


def test_preparing_that_needs_tensorflow_is_one_config_error(tmp_path, monkeypatch):
  from diffusion_jax.data import digits  # pylint: disable=g-import-not-at-top

  def needs_tensorflow(self, dl_manager):
    raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

  monkeypatch.setattr(digits.Digits, "_split_generators", needs_tensorflow)
  cfg = _cfg(dataset="digits", data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match=r"data\.dataset='digits'.*needs TensorFlow") as e:
    sources.get_source(cfg, "train")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("dataset, expected", [
    ("mnist", ["data.dataset='mnist'", "never downloads", "'folder'", "'npz'",
               "'cifar10' with data.path=cifar-10-python.tar.gz"]),
    ("cifar10", ["data.dataset='cifar10'", "data.path=cifar-10-python.tar.gz"]),
])
def test_unprepared_tfds_dataset_fails_fast_without_writing(tmp_path, dataset, expected):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  cfg = _cfg(dataset=dataset, data_dir=str(data_dir), image_size=32, channels=3)
  for call in (lambda: sources.get_source(cfg, "train"),
               lambda: sources.dataset_info(cfg)):
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
      call()
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert "\n" not in message and f"data.data_dir={str(data_dir)!r}" in message
    for part in expected:
      assert part in message, (part, message)
  assert not list(data_dir.iterdir())


def test_namespaced_tfds_name_is_refused_without_network(tmp_path):
  cfg = _cfg(dataset="huggingface:mnist", data_dir=str(tmp_path))
  start = time.monotonic()
  with pytest.raises(ConfigError, match=r"data\.dataset='huggingface:mnist'.*online"):
    sources.dataset_info(cfg)
  assert time.monotonic() - start < 5


@pytest.mark.parametrize("overrides, message", [
    ({"channels": 2}, r"data\.channels must be 1 .* or 3"),
    ({"image_size": 0}, r"data\.image_size must be a positive int"),
    ({"test_fraction": 1.0}, r"data\.test_fraction must be a number in \[0, 1\)"),
    ({"dataset": ""}, r"data\.dataset must be a dataset name"),
    ({"dataset": "folder"}, r"data\.dataset='folder' needs data\.path"),
    ({"dataset": "npz"}, r"data\.dataset='npz' needs data\.path"),
    ({"dataset": "mnist", "path": "/x"}, r"data\.path='/x' is read only by"),
    ({"dataset": "no_such_dataset"}, r"Unknown data\.dataset='no_such_dataset'"),
])
def test_bad_settings_are_config_errors(data_dir, overrides, message):
  cfg = _cfg(data_dir=data_dir, **overrides)
  with pytest.raises(ConfigError, match=message):
    sources.dataset_info(cfg)


def test_an_empty_test_split_is_a_config_error(tmp_path):
  _make_folder(tmp_path, {"": 3})
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=8, channels=3,
             test_fraction=0.0)
  with pytest.raises(ConfigError, match=r"test split.*empty.*data\.test_fraction"):
    sources.get_source(cfg, "test")


def test_describe_names_source_path_splits_shape_and_classes(tmp_path):
  _make_folder(tmp_path, {"b": 4, "a": 6})
  cfg = _cfg(dataset="folder", path=str(tmp_path), image_size=16, channels=1)
  text = sources.describe(cfg)
  assert str(tmp_path) in text
  assert "train 9, test 1" in text
  assert "16x16x1" in text
  assert "classes: 2 (a, b)" in text


# ----------------------------------------------------------------------------
# Loader: resumption and sharding for every kind of source.
# ----------------------------------------------------------------------------


def _folder_source(root):
  _make_folder(root, {"a": 20, "b": 20})
  cfg = _cfg(dataset="folder", path=str(root), image_size=8, channels=3,
             test_fraction=0.0)
  return sources.get_source(cfg, "train")


def _npz_source(root):
  rng = np.random.default_rng(0)
  np.savez(root / "d.npz", images=rng.integers(0, 256, (40, 4, 4, 3), np.uint8),
           labels=np.arange(40) % 4)
  cfg = _cfg(dataset="npz", path=str(root / "d.npz"), image_size=4, channels=3,
             test_fraction=0.0)
  return sources.get_source(cfg, "train")


@pytest.mark.parametrize("worker_count", [0, 1])
@pytest.mark.parametrize("make_source", [_folder_source, _npz_source])
def test_restored_iterator_continues_with_the_same_batches(tmp_path, make_source,
                                                           worker_count):
  source = make_source(tmp_path)
  kw = dict(batch_size=8, seed=0, image_size=None, random_flip=True, dequantize=True,
            worker_count=worker_count)
  it = iter(pipeline.make_loader(source, **kw))
  _take(it, 3)  # 5 batches an epoch: the 4 below cross into the second.
  state = pipeline.get_iterator_state(it)
  expected = _take(it, 4)
  fresh = iter(pipeline.make_loader(source, **kw))
  pipeline.set_iterator_state(fresh, np.frombuffer(state, np.uint8).copy())
  _assert_same_batches(_take(fresh, 4), expected)


def test_folder_shards_are_disjoint_and_cover_the_split(tmp_path):
  source = _folder_source(tmp_path)
  seen = []
  for shard_index in range(2):
    loader = pipeline.make_loader(source, batch_size=10, seed=0, image_size=8,
                                  num_epochs=1, shard_index=shard_index, shard_count=2)
    batches = list(loader)
    assert len(batches) == 4 and batches[0]["image"].shape == (5, 8, 8, 3)
    seen.append({int(round((b[0, 0, 0] + 1) * 127.5))
                 for batch in batches for b in batch["image"]})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40
