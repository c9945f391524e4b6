"""--mode=edit (`diffusion_jax/edit.py`) on tiny trained runs: outputs and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import _tiny
from diffusion_jax import edit, train
from diffusion_jax.data import sources
from diffusion_jax.errors import ConfigError

V_CONFIG = _tiny.ROOT / "configs" / "digits_v.py"


def _config(data_dir, path=V_CONFIG, **edit_settings):
  config = _tiny.make_config(data_dir, {"train.num_steps": 1, "train.log_every": 1}, path=path)
  config.edit.jump_length, config.edit.jump_n_sample = 2, 2   # the tiny grid has 5 points
  for k, v in edit_settings.items():
    config.edit[k] = v
  return config


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory, data_dir):
  """Five test digits in --mode=sample's npz format, and as PNG files."""
  config = _config(data_dir)
  x, y = sources.load_split(config.data, "test")
  images = np.round((x[:5] + 1.0) * 127.5).astype(np.uint8)
  root = tmp_path_factory.mktemp("edit_inputs")
  np.savez(root / "digits.npz", images=images, labels=y[:5])
  for i, im in enumerate(images):
    Image.fromarray(np.kron(im[..., 0], np.ones((4, 4), np.uint8))).save(root / f"d{i}.png")
  return root, images, y[:5]


def test_inpaint_npz_keeps_the_known_pixels(data_dir, v_teacher_dir, digits_npz):
  root, images, labels = digits_npz
  config = _config(data_dir, input=str(root / "digits.npz"), output="out/inpaint.npz")
  path = edit.edit(config, str(v_teacher_dir))
  assert path == str(v_teacher_dir / "out" / "inpaint.npz")
  with np.load(path) as f:
    out, mask = f["images"], f["mask"]
    np.testing.assert_array_equal(f["inputs"], images)
    np.testing.assert_array_equal(f["labels"], labels)
  assert out.shape == images.shape and out.dtype == np.uint8
  known = np.broadcast_to(mask == 255, out.shape)
  assert known[:, :4].all() and not known[:, 4:].any()          # bottom_half is generated
  np.testing.assert_array_equal(out[known], images[known])
  grid = np.asarray(Image.open(v_teacher_dir / "out" / "inpaint.png"))
  assert grid.shape == (4 * (3 * 9 + 1), 4 * (5 * 9 + 1))        # 3 rows (before, masked, after)


def test_sdedit_and_interpolate_from_pngs(data_dir, v_teacher_dir, digits_npz, tmp_path):
  root, images, _ = digits_npz
  pngs = ",".join(str(root / f"d{i}.png") for i in range(4))
  config = _config(data_dir, kind="sdedit", input=pngs, strength=0.3,
                   output=str(tmp_path / "sd.npz"))
  with np.load(edit.edit(config, str(v_teacher_dir))) as f:
    # 32x32 PNGs are fitted to 8x8 by the data sources' rule (antialiased
    # bicubic): close to the digits they were upscaled from.
    assert np.corrcoef(f["inputs"].ravel(), images[:4].ravel())[0, 1] > 0.95
    assert f["images"].shape == (4, 8, 8, 1)
  config = _config(data_dir, kind="interpolate", input=str(root), num_points=4,
                   output=str(tmp_path / "interp.npz"))
  with np.load(edit.edit(config, str(v_teacher_dir))) as f:   # a folder: 5 images, 2 pairs
    assert f["images"].shape == (8, 8, 8, 1)
    np.testing.assert_array_equal(f["source_index"], [[0, 1], [2, 3]])


def test_bad_inputs_are_one_config_error(data_dir, v_teacher_dir, digits_npz, tmp_path):
  root, images, _ = digits_npz
  np.savez(tmp_path / "float.npz", images=images.astype(np.float32))
  np.savez(tmp_path / "nolabels.npz", pixels=images)
  cases = [
      (dict(input=None), "edit.input is required"),
      (dict(input=str(tmp_path / "missing.npz")), "edit.input="),
      (dict(input=str(tmp_path / "float.npz")), r"edit.input=.*uint8"),
      (dict(input=str(tmp_path / "nolabels.npz")), r"edit.input=.*no `images`"),
      (dict(input=str(root / "missing.png")), r"edit.input=.*no such file"),
      (dict(input=str(root / "digits.npz"), mask="bottom"), r"edit.mask='bottom'.*bottom_half"),
      (dict(input=str(root / "digits.npz"), kind="paint"), r"edit.kind='paint'.*inpaint"),
      (dict(input=str(root / "digits.npz"), kind="relabel"),
       r"edit.kind='relabel' needs a class-conditional model"),
      (dict(input=str(root / "digits.npz"), method="best"), r"edit.method='best'.*repaint"),
      (dict(input=str(root / "digits.npz"), jump_length=9), r"edit.jump_length=9"),
      (dict(input=str(root / "digits.npz"), kind="sdedit", strength=1.5), r"edit.strength=1.5"),
      (dict(input=str(root / "digits.npz"), output="x.png"), r"edit.output='x.png'"),
  ]
  for settings, message in cases:
    with pytest.raises(ConfigError, match=message):
      edit.edit(_config(data_dir, **settings), str(v_teacher_dir))


def test_png_mask(data_dir, v_teacher_dir, digits_npz, tmp_path):
  root, images, _ = digits_npz
  m = np.zeros((16, 16), np.uint8)
  m[:, :8] = 255                                          # left half known
  Image.fromarray(m).save(tmp_path / "mask.png")
  config = _config(data_dir, input=str(root / "digits.npz"), mask=str(tmp_path / "mask.png"),
                   method="replace", output=str(tmp_path / "m.npz"))
  with np.load(edit.edit(config, str(v_teacher_dir))) as f:
    np.testing.assert_array_equal(f["images"][:, :, :4], images[:, :, :4])
    assert (f["mask"][:, :4] == 255).all() and (f["mask"][:, 4:] == 0).all()


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory, data_dir):
  """A tiny class-conditional run (configs/digits_cond.py), one training step."""
  workdir = tmp_path_factory.mktemp("cond")
  train.train_and_evaluate(_config(data_dir, path=_tiny.ROOT / "configs" / "digits_cond.py"),
                           str(workdir))
  return workdir


@pytest.mark.slow
def test_relabel_every_class(data_dir, cond_dir, digits_npz, tmp_path):
  root, images, labels = digits_npz
  config = _config(data_dir, path=_tiny.ROOT / "configs" / "digits_cond.py", kind="relabel",
                   input=str(root / "digits.npz"), num_images=3,
                   output=str(tmp_path / "relabel.npz"))
  with np.load(edit.edit(config, str(cond_dir))) as f:
    assert f["images"].shape == (30, 8, 8, 1) and f["reconstructions"].shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(f["labels"], np.tile(np.arange(10), 3))
    np.testing.assert_array_equal(f["source_labels"], labels[:3])
  config.edit.labels, config.edit.output = "7", str(tmp_path / "seven.npz")
  with np.load(edit.edit(config, str(cond_dir))) as f:
    assert f["images"].shape == (3, 8, 8, 1) and list(f["labels"]) == [7, 7, 7]
  np.savez(tmp_path / "unlabelled.npz", images=images)
  config.edit.input = str(tmp_path / "unlabelled.npz")
  with pytest.raises(ConfigError, match="edit.source_labels is required"):
    edit.edit(config, str(cond_dir))


def test_cli_edit_mode(data_dir, v_teacher_dir, digits_npz, tmp_path_factory):
  """`--mode=edit` through the CLI: the output path on the last stdout line,
  and a bad setting as one error line with exit status 2."""
  root, _, _ = digits_npz
  cache = _tiny.session_dirs(tmp_path_factory)[1]
  args = _tiny.cli_args(str(v_teacher_dir), data_dir, mode="edit",
                        config="configs/digits_v.py") + [
      f"--config.edit.input={root / 'digits.npz'}", "--config.edit.method=replace",
      "--config.edit.output=cli.npz"]
  proc = _tiny.run(args, _tiny.env(cache))
  _tiny.check_ok(proc)
  assert proc.stdout.strip().splitlines()[-1] == str(v_teacher_dir / "cli.npz")
  proc = _tiny.run(args + ["--config.edit.mask=nope"], _tiny.env(cache))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("diffusion_jax: error: edit.mask='nope'")
