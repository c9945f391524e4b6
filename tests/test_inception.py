"""The Flax FID Inception against pytorch-fid's, with random weights (no download).

pytorch-fid's `InceptionV3([3], resize_input=True, normalize_input=True,
use_fid_inception=True)` is built with its weight download replaced by a
randomized state dict of the same architecture (`torch_fid`): BatchNorm
weights and biases are random, the running statistics are calibrated on a
random batch (so activations stay O(1) through the 94 layers), and every
conv's output channels are then rescaled by s ∈ [10^-1.5, 1] together with
running_mean (× s) and running_var (× s²). The network's function is unchanged
by the rescaling except through BatchNorm's eps: s² var is often ~eps, so
an eps other than 0.001, a std-for-var mix-up or swapped scale / bias fail.

Tolerance of the feature comparison: max |f_flax - f_torch| ≤ 1e-4 · max |f_torch|
(absolute, relative to the feature scale).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pfi = pytest.importorskip("pytorch_fid.inception")
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

from diffusion_jax.errors import ConfigError  # noqa: E402
from diffusion_jax.metrics import convert_inception, inception  # noqa: E402

RTOL_SCALE = 1e-4


def build_torch_fid(seed: int = 0):
  """pytorch-fid's FID InceptionV3 (pool3) with randomized weights; see module doc.

  Returns (model in eval mode, the state dict of `fid_inception_v3()`).
  """
  made = []
  original = torchvision.models.inception_v3

  def record(*args, **kwargs):
    made.append(original(*args, **kwargs))
    return made[-1]

  mp = pytest.MonkeyPatch()
  try:
    # pytorch-fid builds torchvision's net, swaps in its FID blocks, then loads
    # the downloaded state dict: hand it back the net's own (random) one.
    mp.setattr(torchvision.models, "inception_v3", record)
    mp.setattr(pfi, "load_state_dict_from_url",
               lambda *a, **k: made[-1].state_dict())
    torch.manual_seed(seed)
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                            resize_input=True, normalize_input=True,
                            use_fid_inception=True)
  finally:
    mp.undo()
  net = made[-1]
  g = torch.Generator().manual_seed(seed + 1)
  convs = [m for m in net.modules() if isinstance(m, torchvision.models.inception.BasicConv2d)]
  with torch.no_grad():
    for m in convs:
      c = m.bn.num_features
      m.bn.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g))
      m.bn.bias.copy_(0.2 * torch.randn(c, generator=g))
      m.bn.reset_running_stats()
      m.bn.momentum = None  # Cumulative average: the calibration batch's statistics.
    model.train()
    model(torch.rand(1, 3, 32, 32, generator=g))
    model.eval()
    for m in convs:
      s = 10.0 ** torch.empty(m.bn.num_features).uniform_(-1.5, 0.0, generator=g)
      m.conv.weight.mul_(s[:, None, None, None])
      m.bn.running_mean.mul_(s)
      m.bn.running_var.mul_(s * s)
  return model, net.state_dict()


def torch_features(model, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    out = model(x)[0]
  assert out.shape[2:] == (1, 1)
  return out[:, :, 0, 0].numpy()


@pytest.fixture(scope="module")
def torch_fid(tmp_path_factory):
  """(pytorch-fid model, path of its state dict saved as a .pth)."""
  model, state_dict = build_torch_fid()
  path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
  torch.save(state_dict, path)
  return model, path


@pytest.fixture(scope="module")
def npz_path(torch_fid):
  """The .pth converted in-process."""
  _, pth = torch_fid
  out = pth.with_name("fid_inception.npz")
  convert_inception.convert_inception(pth, out)
  return out


@pytest.fixture(scope="module")
def params(npz_path):
  return inception.load_inception_params(npz_path)


@pytest.fixture(scope="module")
def features_jit():
  return jax.jit(inception.inception_features)


def assert_features_close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == np.float32
  scale = np.abs(want).max()
  err = np.abs(got - want).max()
  assert scale > 0.1 and np.std(want) > 0.01 * scale  # Non-trivial features.
  assert err <= RTOL_SCALE * scale, f"max abs diff {err:.3g}, feature scale {scale:.3g}"


# ----------------------------------------------------------------------------
# Against pytorch-fid.
# ----------------------------------------------------------------------------


def test_features_match_pytorch_fid_resized(torch_fid, params, features_jit):
  """A 32x32 batch: the bilinear resize to 299, then the network."""
  model, _ = torch_fid
  x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
  want = torch_features(model, x)
  assert np.abs(want[0] - want[1]).max() > 0.01 * np.abs(want).max()  # Inputs matter.
  assert_features_close(features_jit(params, x), want)


def test_features_match_pytorch_fid_299(torch_fid, params, features_jit):
  """One 299x299 image (no resize needed), from uint8 via to_unit_range."""
  model, _ = torch_fid
  u8 = np.random.default_rng(1).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
  x = np.asarray(inception.to_unit_range(u8))
  np.testing.assert_allclose(x, u8.astype(np.float32) / 255.0, rtol=1e-7, atol=0)
  assert_features_close(features_jit(params, x), torch_features(model, x))


@pytest.mark.parametrize("in_hw", [(32, 32), (17, 40), (400, 333), (299, 299)])
def test_resize_matches_torch_interpolate(in_hw):
  x = np.random.default_rng(2).random((2,) + in_hw + (3,), dtype=np.float32)
  want = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299),
                       mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jax.jit(inception.resize_bilinear)(x))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------
# Converter and weights file.
# ----------------------------------------------------------------------------


def test_converter_cli_matches_in_process(torch_fid, npz_path, tmp_path):
  _, pth = torch_fid
  out = tmp_path / "cli.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "diffusion_jax.metrics.convert_inception", str(pth), str(out)],
      capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with np.load(out) as a, np.load(npz_path) as b:
    assert sorted(a.files) == sorted(b.files) == sorted(inception.variable_shapes())
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])


def test_converter_main_missing_file(tmp_path, capsys):
  """A missing .pth: exit status 2 and one line naming the file and the URL."""
  assert convert_inception.main([str(tmp_path / "nope.pth"), str(tmp_path / "o.npz")]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "nope.pth" in err and inception.FID_WEIGHTS_URL in err
  assert not (tmp_path / "o.npz").exists()


def test_converter_layout(torch_fid):
  """Kernels are [kh, kw, I, O]; BN entries go to params / batch_stats."""
  _, pth = torch_fid
  sd = torch.load(pth, weights_only=True)
  flat = convert_inception.convert_state_dict({k: v.numpy() for k, v in sd.items()})
  w = sd["Mixed_6b.branch7x7_2.conv.weight"].numpy()  # [O, I, 1, 7]
  np.testing.assert_array_equal(flat["params/Mixed_6b/branch7x7_2/conv/kernel"],
                                w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                sd["Mixed_7c.branch_pool.bn.running_var"].numpy())
  np.testing.assert_array_equal(flat["params/Conv2d_1a_3x3/bn/scale"],
                                sd["Conv2d_1a_3x3.bn.weight"].numpy())
  bad = dict(sd)
  bad["Mixed_5b.extra.conv.weight"] = bad.pop("Mixed_5b.branch1x1.conv.weight")
  with pytest.raises(ValueError, match=r"Mixed_5b\.extra\.conv\.weight.*Mixed_5b/branch1x1"):
    convert_inception.convert_state_dict(bad)


def test_missing_weights_file_is_config_error(tmp_path):
  path = tmp_path / "fid_inception.npz"
  with pytest.raises(ConfigError) as e:
    inception.load_inception_params(path)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg
  assert inception.FID_WEIGHTS_URL in msg and "convert_inception" in msg


def test_wrong_weights_file_is_config_error(tmp_path):
  path = tmp_path / "w.npz"
  np.savez(path, **{"params/Conv2d_1a_3x3/conv/kernel": np.zeros((3, 3, 3, 32))})
  with pytest.raises(ConfigError, match="does not match"):
    inception.load_inception_params(path)
  (tmp_path / "x.npz").write_text("not a zip")
  with pytest.raises(ConfigError, match="cannot be read"):
    inception.load_inception_params(tmp_path / "x.npz")


# ----------------------------------------------------------------------------
# Image conversions and argument checks.
# ----------------------------------------------------------------------------


def test_image_conversions():
  u8 = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
  x = np.asarray(inception.to_unit_range(u8))
  assert x.shape == (1, 1, 3, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x[0, 0, :, 0], [0.0, 0.2, 1.0], atol=1e-7)
  np.testing.assert_array_equal(x[..., 0], x[..., 2])  # Gray -> RGB.
  s = np.array([-1.0, 0.0, 1.0], np.float32).reshape(1, 1, 1, 3)
  np.testing.assert_allclose(inception.to_unit_range(s, (-1, 1)), [[[[0.0, 0.5, 1.0]]]])
  q = inception.to_uint8(np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]))
  np.testing.assert_array_equal(q, [0, 0, 128, 255, 255, 255])
  assert q.dtype == np.uint8
  # uint8 -> [-1, 1] -> uint8 is the identity.
  all8 = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(inception.to_uint8(all8 / 127.5 - 1.0), all8)


def test_argument_errors(params):
  with pytest.raises(ValueError, match="images"):
    inception.inception_features(params, jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match="to_unit_range"):
    inception.inception_features(params, jnp.zeros((1, 32, 32, 3), jnp.uint8))
  with pytest.raises(ValueError, match="C in"):
    inception.to_unit_range(np.zeros((1, 8, 8, 2), np.uint8))
  with pytest.raises(ValueError, match="value_range"):
    inception.to_unit_range(np.zeros((1, 8, 8, 3)), (1.0, 1.0))
  with pytest.raises(ValueError, match="75x75"):
    inception.inception_features(params, jnp.zeros((1, 64, 64, 3)), resize=False)
  with pytest.raises(ValueError, match="batch_size"):
    inception.make_feature_fn(params, batch_size=0)
  fn = inception.make_feature_fn(params, devices=jax.devices()[:1], batch_size=2)
  with pytest.raises(ValueError, match="images"):
    fn(np.zeros((2, 8, 8), np.uint8))
  with pytest.raises(ValueError, match="dtype"):
    fn(np.zeros((2, 8, 8, 3), np.int32))
  assert fn(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 2048)


# ----------------------------------------------------------------------------
# Sharded feature extraction.
# ----------------------------------------------------------------------------

SHARDED_SCRIPT = textwrap.dedent(r"""
    import sys
    assert "jax" not in sys.modules
    import jax, numpy as np
    from jax.sharding import Mesh
    from diffusion_jax.metrics import inception

    assert jax.device_count() == 8, jax.devices()
    params = inception.load_inception_params(sys.argv[1])
    rng = np.random.default_rng(0)
    close = lambda got, want: np.testing.assert_allclose(
        got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # 75x75 inputs without the resize keep this cheap: the resize is the same
    # elementwise code on any sharding (compared with torch in-process).
    # N = 11 float images in batches of 8: one full batch and a padded tail of 3.
    imgs = rng.random((11, 75, 75, 3), dtype=np.float32)
    one = inception.make_feature_fn(params, devices=jax.devices()[:1], batch_size=8,
                                    resize=False)
    many = inception.make_feature_fn(params, batch_size=8, resize=False)
    want, got = one(imgs), many(imgs)
    assert got.shape == (11, 2048) and got.dtype == np.float32
    assert many.batch_size == 8 and many.mesh.size == 8
    assert many.jitted._cache_size() == 1  # The padded tail compiled nothing new.
    close(got, want)
    # A 2-D Mesh (4 x 2), the batch split over both axes; batch_size 5 -> 8.
    # N = 9 uint8 grayscale images (a tail of 1).
    u8 = rng.integers(0, 256, (9, 75, 75, 1), dtype=np.uint8)
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    grid = inception.make_feature_fn(params, devices=mesh, batch_size=5, resize=False)
    assert grid.batch_size == 8
    got = grid(u8)
    assert grid.jitted._cache_size() == 1
    close(got, one(np.repeat(u8, 3, axis=-1).astype(np.float32) / 255))
    print("OK")
""")


def test_sharded_feature_fn_matches_single_device(npz_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(npz_path)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
