"""Tests of the embedded digits tfds builder and the grain input pipeline."""

import pathlib
import sys

import numpy as np
import pytest

from diffusion_jax.data import digits
from diffusion_jax.data import pipeline
from diffusion_jax.data import sources


def _digits(data_dir):
  return dict(dataset="digits", data_dir=data_dir, image_size=8, channels=1)


@pytest.fixture(scope="module")
def fresh_data_dir(tmp_path_factory):
  """An empty tfds data dir: these tests build digits in it themselves."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def train_source(fresh_data_dir):
  return sources.get_source(_digits(fresh_data_dir), "train", in_memory=False)


@pytest.fixture(scope="module")
def memory_source(fresh_data_dir, train_source):
  del train_source  # Prepared already.
  return sources.get_source(_digits(fresh_data_dir), "train", in_memory=True)


def _take(loader_or_iterator, n):
  it = iter(loader_or_iterator)
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_digits_builds_offline_without_tensorflow(fresh_data_dir, train_source):
  test_source = sources.get_source(_digits(fresh_data_dir), "test", in_memory=False)
  assert len(train_source) == digits.SPLIT_SIZES["train"] == 1437
  assert len(test_source) == digits.SPLIT_SIZES["test"] == 360
  assert "tensorflow" not in sys.modules
  version_dir = pathlib.Path(fresh_data_dir) / "digits" / "1.0.0"
  files = [p.name for p in version_dir.iterdir()]
  assert any(".array_record" in f for f in files), files

  example = train_source[0]
  assert example["image"].shape == (8, 8, 1)
  assert example["image"].dtype == np.uint8
  images, labels = sources.to_arrays(test_source)
  assert images.shape == (360, 8, 8, 1) and images.dtype == np.uint8
  assert images.max() == 255 and images.min() == 0
  assert set(np.unique(labels)) == set(range(10))
  # Stratified: 35..37 test examples per class.
  assert np.bincount(labels).min() >= 35 and np.bincount(labels).max() <= 37
  # Pixels are round(v * 255 / 16) of integers v in 0..16.
  allowed = np.round(np.arange(17) * 255 / 16)
  assert np.isin(images, allowed).all()


def test_dataset_info(fresh_data_dir):
  info = sources.dataset_info(_digits(fresh_data_dir))
  assert (info.height, info.width, info.channels, info.num_classes) == (8, 8, 1, 10)


@pytest.mark.parametrize("fn", [lambda c: sources.get_source(c, "train"), sources.dataset_info])
def test_unknown_dataset_is_a_clear_value_error(fresh_data_dir, fn):
  with pytest.raises(ValueError, match=r"data\.dataset='no_such_dataset'") as e:
    fn(_digits(fresh_data_dir) | {"dataset": "no_such_dataset"})
  assert "folder" in str(e.value) and "npz" in str(e.value)


def test_batches_shapes_dtypes_and_range(memory_source):
  (batch,) = _take(pipeline.make_loader(memory_source, batch_size=32, seed=0, image_size=8), 1)
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert ((batch["label"] >= 0) & (batch["label"] <= 9)).all()
  # Without dequantization pixels lie on the uint8 grid x / 127.5 - 1.
  grid = (batch["image"] + 1.0) * 127.5
  np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)


def test_dequantize_adds_uniform_noise(memory_source):
  kw = dict(batch_size=64, seed=0, image_size=8)
  (plain,) = _take(pipeline.make_loader(memory_source, **kw), 1)
  (deq,) = _take(pipeline.make_loader(memory_source, dequantize=True, **kw), 1)
  np.testing.assert_array_equal(plain["label"], deq["label"])
  x = (plain["image"] + 1.0) * 127.5  # uint8 values
  u = (deq["image"] + 1.0) * 128.0 - x  # (x + u) / 256 * 2 - 1
  assert u.min() >= -1e-3 and u.max() < 1.0 + 1e-3
  assert 0.4 < u.mean() < 0.6
  assert deq["image"].min() >= -1.0 and deq["image"].max() < 1.0


def test_on_disk_and_in_memory_sources_agree(train_source, memory_source):
  kw = dict(batch_size=16, seed=3, image_size=8)
  _assert_same_batches(
      _take(pipeline.make_loader(train_source, **kw), 2),
      _take(pipeline.make_loader(memory_source, **kw), 2),
  )


def test_same_seed_same_batches(memory_source):
  kw = dict(batch_size=16, image_size=None, dequantize=True)
  a = _take(pipeline.make_loader(memory_source, seed=1, **kw), 3)
  b = _take(pipeline.make_loader(memory_source, seed=1, **kw), 3)
  c = _take(pipeline.make_loader(memory_source, seed=2, **kw), 3)
  _assert_same_batches(a, b)
  assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_iterator_state_restore_resumes_exactly(memory_source):
  kw = dict(batch_size=16, seed=0, image_size=8, dequantize=True)
  it = iter(pipeline.make_loader(memory_source, **kw))
  _take(it, 3)
  state = pipeline.get_iterator_state(it)
  assert isinstance(state, bytes)
  expected = _take(it, 2)
  # Round trip through a uint8 array, as stored in an orbax checkpoint.
  stored = np.frombuffer(state, dtype=np.uint8).copy()
  fresh = iter(pipeline.make_loader(memory_source, **kw))
  pipeline.set_iterator_state(fresh, stored)
  _assert_same_batches(_take(fresh, 2), expected)


def test_sharding_gives_disjoint_per_process_batches():
  n = 100
  source = sources.ArraySource(
      images=np.zeros((n, 4, 4, 1), np.uint8), labels=np.arange(n, dtype=np.int32)
  )
  seen = []
  for shard_index in range(2):
    loader = pipeline.make_loader(
        source, batch_size=10, seed=0, image_size=4, num_epochs=1,
        shard_index=shard_index, shard_count=2,
    )
    batches = list(loader)
    assert len(batches) == 10  # 50 records per shard, 5 per batch.
    assert all(b["image"].shape == (5, 4, 4, 1) for b in batches)
    seen.append(np.concatenate([b["label"] for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(n))


def test_random_flip_is_horizontal_and_seeded():
  image = np.zeros((1, 4, 4, 1), np.uint8)
  image[0, :, 0] = 255  # Left column lit.
  source = sources.ArraySource(
      images=np.repeat(image, 64, 0), labels=np.zeros(64, np.int32)
  )
  (batch,) = _take(
      pipeline.make_loader(source, batch_size=64, seed=0, image_size=4, random_flip=True), 1
  )
  left = batch["image"][:, :, 0, 0].mean(axis=1) == 1.0
  right = batch["image"][:, :, -1, 0].mean(axis=1) == 1.0
  assert (left ^ right).all() and 10 < right.sum() < 54


def test_image_size_mismatch_raises(memory_source):
  with pytest.raises(ValueError, match=r"data\.image_size=32.*8x8"):
    pipeline.make_loader(memory_source, batch_size=8, seed=0, image_size=32)


def test_batch_size_must_divide_over_processes(memory_source):
  with pytest.raises(ValueError, match="batch_size=9.*shard_count=2"):
    pipeline.make_loader(
        memory_source, batch_size=9, seed=0, image_size=8, shard_index=0, shard_count=2
    )
