"""The FID Inception network (pool3 features) in Flax linen, NHWC.

A port of pytorch-fid's FID Inception (``pytorch_fid.inception.InceptionV3``
with ``output_blocks=[3]``, ``resize_input=True``, ``normalize_input=True``,
``use_fid_inception=True``): the Inception-v3 graph of TensorFlow's 2015-12-05
release that the original FID code (Heusel et al. 2017, TTUR) evaluates,
returning the 2048-d activations of the final average pool ("pool_3").

The computation is the same as pytorch-fid's, step by step:
  * bilinear resize to 299x299 as ``F.interpolate(x, size=(299, 299),
    mode="bilinear", align_corners=False)`` (half-pixel centres, source
    coordinates clamped at 0, no antialiasing, also when downscaling);
  * ``x -> 2x - 1`` (inputs in [0, 1] to the network's [-1, 1]);
  * every conv is ``BasicConv2d``: conv without bias, BatchNorm in inference
    mode (running statistics, eps = 0.001), ReLU;
  * torchvision's Inception-v3 stem and blocks, with pytorch-fid's patches:
    FIDInceptionA / C / E_1 average-pool their pool branch with
    ``count_include_pad=False`` (TensorFlow's SAME average pool), and
    FIDInceptionE_2 (Mixed_7c) max-pools it instead;
  * global average pool -> [B, 2048].

Weights. pytorch-fid publishes the TensorFlow weights as a PyTorch state dict,
``pt_inception-2015-12-05-6726825d.pth`` (`FID_WEIGHTS_URL`); convert it once,

  python -m diffusion_jax.metrics.convert_inception \
      pt_inception-2015-12-05-6726825d.pth fid_inception_v3.npz

and load the `.npz` with `load_inception_params`. The file holds one float32
array per variable, keyed by its flattened Flax path joined with "/", e.g.
``params/Mixed_5b/branch1x1/conv/kernel`` or
``batch_stats/Mixed_5b/branch1x1/bn/mean``. Module names are torchvision's
attribute names, so a torch key ``Mixed_5b.branch1x1.bn.running_mean`` maps
to a single Flax variable (see `convert_inception`).

Image conventions. `inception_features` takes float [B, H, W, 3] in [0, 1],
like pytorch-fid's model. `to_unit_range` converts uint8 images (x / 255),
float images in another range such as [-1, 1] ((x - lo) / (hi - lo)) and
grayscale [B, H, W, 1] images (the channel repeated three times, as PIL's
``convert("RGB")`` in pytorch-fid's image loader does). To reproduce the FID
of samples saved as 8-bit PNGs, quantize them first with `to_uint8`.

Precision. Convolutions default to ``jax.lax.Precision.HIGHEST`` (true float32
on every backend, as pytorch-fid on CPU; XLA's default on GPUs may use TF32).

References:
  * Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
    Vision" (Inception-v3).
  * Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
    to a Local Nash Equilibrium" (FID, TTUR code).
  * Seitzer, pytorch-fid (github.com/mseitzer/pytorch-fid), ``inception.py``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax.errors import ConfigError

__all__ = [
    "FID_WEIGHTS_URL", "FEATURE_DIM", "INPUT_SIZE", "FIDInceptionV3",
    "inception_features", "load_inception_params", "save_inception_params",
    "flatten_variables", "unflatten_variables", "variable_shapes",
    "to_unit_range", "to_uint8", "resize_bilinear", "make_feature_fn",
]

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
                   "fid_weights/pt_inception-2015-12-05-6726825d.pth")
FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3

Array = jax.Array
Precision = Any


# ----------------------------------------------------------------------------
# Network.
# ----------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """torchvision's ``BasicConv2d``: conv (no bias) -> BatchNorm -> ReLU.

  Attributes:
    features: output channels.
    kernel_size: int or (kh, kw).
    strides: int or (sh, sw).
    padding: int or (ph, pw), zeros on both sides (torch's ``padding``).
    precision: of the convolution.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, H, W, C_in] -> [B, H', W', features]."""
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: Array) -> Array:
  """3x3 stride-1 average pool, padding 1, padded zeros not counted."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x: Array, stride: int, pad: int) -> Array:
  """3x3 max pool (padding with -inf, as torch's ``max_pool2d``)."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


class _Block(nn.Module):
  """Base of the mixed blocks: a `conv` factory with the shared precision."""

  precision: Precision = jax.lax.Precision.HIGHEST

  def conv(self, features, kernel_size, name, strides=1, padding=0):
    return BasicConv2d(features, kernel_size, strides, padding,
                       precision=self.precision, name=name)


class InceptionA(_Block):
  """Mixed_5b/c/d: pytorch-fid's ``FIDInceptionA`` (35x35)."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]."""
    b1 = self.conv(64, 1, "branch1x1")(x)
    b5 = self.conv(48, 1, "branch5x5_1")(x)
    b5 = self.conv(64, 5, "branch5x5_2", padding=2)(b5)
    b3 = self.conv(64, 1, "branch3x3dbl_1")(x)
    b3 = self.conv(96, 3, "branch3x3dbl_2", padding=1)(b3)
    b3 = self.conv(96, 3, "branch3x3dbl_3", padding=1)(b3)
    bp = self.conv(self.pool_features, 1, "branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """Mixed_6a: torchvision's ``InceptionB`` (35x35 -> 17x17)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, 35, 35, C] -> [B, 17, 17, 480 + C]."""
    b3 = self.conv(384, 3, "branch3x3", strides=2)(x)
    bd = self.conv(64, 1, "branch3x3dbl_1")(x)
    bd = self.conv(96, 3, "branch3x3dbl_2", padding=1)(bd)
    bd = self.conv(96, 3, "branch3x3dbl_3", strides=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(_Block):
  """Mixed_6b/c/d/e: pytorch-fid's ``FIDInceptionC`` (17x17)."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, 17, 17, C] -> [B, 17, 17, 768]."""
    c7 = self.channels_7x7
    b1 = self.conv(192, 1, "branch1x1")(x)
    b7 = self.conv(c7, 1, "branch7x7_1")(x)
    b7 = self.conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(b7)
    b7 = self.conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7)
    bd = self.conv(c7, 1, "branch7x7dbl_1")(x)
    bd = self.conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(bd)
    bd = self.conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(bd)
    bd = self.conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(bd)
    bd = self.conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(bd)
    bp = self.conv(192, 1, "branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """Mixed_7a: torchvision's ``InceptionD`` (17x17 -> 8x8)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, 17, 17, C] -> [B, 8, 8, 512 + C]."""
    b3 = self.conv(192, 1, "branch3x3_1")(x)
    b3 = self.conv(320, 3, "branch3x3_2", strides=2)(b3)
    b7 = self.conv(192, 1, "branch7x7x3_1")(x)
    b7 = self.conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7)
    b7 = self.conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7)
    b7 = self.conv(192, 3, "branch7x7x3_4", strides=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(_Block):
  """Mixed_7b / Mixed_7c: pytorch-fid's ``FIDInceptionE_1`` / ``FIDInceptionE_2``.

  Attributes:
    pool: "avg" (E_1: average pool without the padded zeros) or "max" (E_2:
      the FID graph max-pools here, unlike the paper).
  """

  pool: str = "avg"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, 8, 8, C] -> [B, 8, 8, 2048]."""
    b1 = self.conv(320, 1, "branch1x1")(x)
    b3 = self.conv(384, 1, "branch3x3_1")(x)
    b3 = jnp.concatenate([
        self.conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(b3),
        self.conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(b3)], axis=-1)
    bd = self.conv(448, 1, "branch3x3dbl_1")(x)
    bd = self.conv(384, 3, "branch3x3dbl_2", padding=1)(bd)
    bd = jnp.concatenate([
        self.conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(bd),
        self.conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(bd)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1, 1)
    bp = self.conv(192, 1, "branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """FID Inception-v3 up to pool3 (pytorch-fid's blocks 0-3), NHWC.

  Takes the network's input: [B, H, W, 3] in [-1, 1] (H, W >= 75; 299 for
  FID). Use `inception_features` for [0, 1] images of any size.

  Attributes:
    precision: of every convolution.
  """

  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, H, W, 3] -> pool3 features [B, 2048]."""
    kw = dict(precision=self.precision)
    conv = lambda f, k, name, **a: BasicConv2d(f, k, name=name, **kw, **a)
    # Block 0: 299 -> 149 -> 147 -> 147 -> 73.
    x = conv(32, 3, "Conv2d_1a_3x3", strides=2)(x)
    x = conv(32, 3, "Conv2d_2a_3x3")(x)
    x = conv(64, 3, "Conv2d_2b_3x3", padding=1)(x)
    x = _max_pool_3x3(x, 2, 0)
    # Block 1: 73 -> 71 -> 35.
    x = conv(80, 1, "Conv2d_3b_1x1")(x)
    x = conv(192, 3, "Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2, 0)
    # Block 2: 35 -> 17.
    x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)
    x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)
    x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)
    x = InceptionB(name="Mixed_6a", **kw)(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x = InceptionC(channels_7x7=c7, name=name, **kw)(x)
    # Block 3: 17 -> 8 -> global average pool.
    x = InceptionD(name="Mixed_7a", **kw)(x)
    x = InceptionE(pool="avg", name="Mixed_7b", **kw)(x)
    x = InceptionE(pool="max", name="Mixed_7c", **kw)(x)
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------
# Preprocessing.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _bilinear_taps(in_size: int, out_size: int):
  """Source indices and weights of torch's bilinear, align_corners=False.

  ``src = max(scale * (dst + 0.5) - 0.5, 0)`` with ``scale = in / out``,
  ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, weights ``1 - (src - i0)``
  and ``src - i0``, in float32 as ATen's ``upsample_bilinear2d`` CPU kernel
  computes them (its AVX2 / AVX512 builds contract ``scale * (dst + 0.5) - 0.5``
  into one fused multiply-add, emulated here by rounding the exact float64
  value once; the weights then equal torch's bit for bit).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
  src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0.astype(np.float32)).astype(np.float32)
  w0 = (np.float32(1) - w1).astype(np.float32)
  return i0, i1, w0, w1


def resize_bilinear(images: Array, size: int = INPUT_SIZE) -> Array:
  """``F.interpolate(x, (size, size), mode="bilinear", align_corners=False)``.

  No antialiasing, also when downscaling (unlike `jax.image.resize`).

  Args:
    images: float [B, H, W, C].
    size: output height and width.

  Returns:
    [B, size, size, C], images' dtype; images itself when already that size.
  """
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  x = images
  for axis, n in ((2, w), (1, h)):
    i0, i1, w0, w1 = _bilinear_taps(n, size)
    shape = [1, 1, 1, 1]
    shape[axis] = size
    w0, w1 = (jnp.asarray(v, x.dtype).reshape(shape) for v in (w0, w1))
    x = w0 * jnp.take(x, i0, axis=axis) + w1 * jnp.take(x, i1, axis=axis)
  return x


def _check_images(images, name: str = "images") -> None:
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be [B, H, W, C] with C in (1, 3), got shape "
                     f"{tuple(images.shape)}.")


def to_unit_range(images, value_range: Sequence[float] = (0.0, 1.0)) -> Array:
  """Images -> float32 [B, H, W, 3] in [0, 1], the input of `inception_features`.

  Args:
    images: [B, H, W, C], C in (1, 3). uint8: divided by 255 (value_range is
      ignored). Float: mapped from value_range = (lo, hi) by
      ``(x - lo) / (hi - lo)``; e.g. (-1, 1) for samples of a diffusion model.
      Not clipped. One channel is repeated to three (grayscale -> RGB).
    value_range: (lo, hi) of float images, lo < hi.

  Returns:
    float32 [B, H, W, 3].
  """
  _check_images(images)
  lo, hi = (float(v) for v in value_range)
  if not lo < hi:
    raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}.")
  x = jnp.asarray(images)
  if x.dtype == jnp.uint8:
    x = x.astype(jnp.float32) / 255.0
  elif jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
    if (lo, hi) != (0.0, 1.0):
      x = (x - lo) / (hi - lo)
  else:
    raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}.")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return x


def to_uint8(images, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
  """Float images in value_range -> uint8, as when saving them to 8-bit PNGs.

  ``round(clip((x - lo) / (hi - lo), 0, 1) * 255)`` (half to even), on the host.

  Args:
    images: float array [...].
    value_range: (lo, hi), lo < hi.

  Returns:
    uint8 NumPy array of images' shape.
  """
  lo, hi = (float(v) for v in value_range)
  if not lo < hi:
    raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}.")
  x = np.clip((np.asarray(images, np.float32) - lo) / (hi - lo), 0.0, 1.0)
  return np.rint(x * 255.0).astype(np.uint8)


def inception_features(params, images: Array, *, resize: bool = True,
                       precision: Precision = jax.lax.Precision.HIGHEST) -> Array:
  """pool3 features of pytorch-fid's FID Inception. Pure; jit it as needed.

  Args:
    params: the variables {"params": ..., "batch_stats": ...} from
      `load_inception_params`.
    images: float [B, H, W, 3] in [0, 1] (see `to_unit_range` for uint8,
      [-1, 1] and grayscale images).
    resize: bilinear resize to 299x299 first (pytorch-fid's default, needed
      for FID). Without it H, W must be >= 75 and the features are not FID's.
    precision: of the convolutions.

  Returns:
    float32 [B, 2048].
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3] in [0, 1], got shape "
                     f"{tuple(images.shape)}; see to_unit_range.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}; convert "
                     "uint8 images with to_unit_range.")
  x = jnp.asarray(images, jnp.float32)
  if resize:
    x = resize_bilinear(x, INPUT_SIZE)
  elif min(x.shape[1:3]) < 75:
    raise ValueError(f"Without resize, images must be at least 75x75, got "
                     f"{x.shape[1]}x{x.shape[2]}.")
  x = 2.0 * x - 1.0
  return FIDInceptionV3(precision=precision).apply(params, x)


# ----------------------------------------------------------------------------
# Weights file.
# ----------------------------------------------------------------------------


def flatten_variables(variables) -> dict[str, np.ndarray]:
  """Nested variables -> {"params/Mixed_5b/branch1x1/conv/kernel": array, ...}."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    flat["/".join(str(k.key) for k in path)] = np.asarray(leaf)
  return flat


def unflatten_variables(flat: dict[str, Any]) -> dict:
  """Inverse of `flatten_variables`: "/"-joined keys -> nested dicts."""
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


@functools.lru_cache(maxsize=None)
def variable_shapes() -> dict[str, tuple[int, ...]]:
  """{flattened variable path: shape} of `FIDInceptionV3` (no weights built)."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {"/".join(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _missing_weights_message(path) -> str:
  return (f"FID Inception weights file {str(path)!r} not found. Download pytorch-fid's "
          f"weights from {FID_WEIGHTS_URL} and convert them with `python -m "
          f"diffusion_jax.metrics.convert_inception "
          f"pt_inception-2015-12-05-6726825d.pth {path}`.")


def load_inception_params(path: str | os.PathLike) -> dict:
  """Loads the converted FID Inception weights (`.npz`, see the module docstring).

  Args:
    path: the `.npz` written by `python -m diffusion_jax.metrics.convert_inception`.

  Returns:
    Variables {"params": ..., "batch_stats": ...} of `FIDInceptionV3`, float32
    jax arrays, for `inception_features`.

  Raises:
    ConfigError: the file does not exist (the message says where to get the
      weights and how to convert them), cannot be read, or does not hold
      exactly the network's variables with their shapes.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(_missing_weights_message(path))
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: np.asarray(data[k], np.float32) for k in data.files}
  except Exception as e:  # zipfile / pickle / format errors of a non-npz file.
    raise ConfigError(f"FID Inception weights file {path!r} cannot be read as .npz "
                      f"({type(e).__name__}: {e}); convert the .pth with `python -m "
                      f"diffusion_jax.metrics.convert_inception`.") from e
  expected = variable_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  wrong = sorted(k for k in set(expected) & set(flat) if flat[k].shape != expected[k])
  if missing or unexpected or wrong:
    raise ConfigError(
        f"FID Inception weights file {path!r} does not match the network: "
        f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes "
        f"{[(k, flat[k].shape, expected[k]) for k in wrong[:3]]} (first 3 each); "
        f"convert pytorch-fid's .pth with `python -m "
        f"diffusion_jax.metrics.convert_inception`.")
  return jax.tree_util.tree_map(jnp.asarray, unflatten_variables(flat))


def save_inception_params(path: str | os.PathLike, variables) -> None:
  """Writes variables as the `.npz` that `load_inception_params` reads.

  Raises:
    ValueError: variables are not exactly `FIDInceptionV3`'s, with its shapes.
  """
  flat = {k: np.asarray(v, np.float32) for k, v in flatten_variables(variables).items()}
  expected = variable_shapes()
  if {k: v.shape for k, v in flat.items()} != expected:
    missing = sorted(set(expected) - set(flat))[:3]
    unexpected = sorted(set(flat) - set(expected))[:3]
    raise ValueError(f"variables must be FIDInceptionV3's; missing {missing}, "
                     f"unexpected {unexpected} (first 3), or wrong shapes.")
  with open(path, "wb") as f:  # A file object: np.savez appends no ".npz".
    np.savez(f, **flat)


# ----------------------------------------------------------------------------
# Batched, sharded feature extraction.
# ----------------------------------------------------------------------------


def make_feature_fn(params, *, devices: Optional[Sequence[Any] | Mesh] = None,
                    batch_size: int = 200, value_range: Sequence[float] = (0.0, 1.0),
                    resize: bool = True,
                    precision: Precision = jax.lax.Precision.HIGHEST
                    ) -> Callable[[np.ndarray], np.ndarray]:
  """Builds `features(images) -> [N, 2048]` over fixed-size, device-sharded batches.

  One jitted forward (`to_unit_range` + `inception_features`) per input
  (H, W, C, dtype), its batch axis sharded over all devices of a mesh with
  `NamedSharding`; params are replicated. The images are cut into batches of
  `batch_size` (rounded up to a multiple of the device count); the last one
  is padded with zeros and the padding dropped, so the tail compiles nothing
  new. uint8 batches are uploaded as uint8 (4x less transfer), float ones as
  float32; the next batch is dispatched before the previous one is read back.

  Args:
    params: `load_inception_params`'s variables.
    devices: None (all of `jax.devices()`), a sequence of devices, or a
      `jax.sharding.Mesh` (the batch is sharded over all its axes).
    batch_size: images per forward, > 0.
    value_range: (lo, hi) of float images (uint8 images are always x / 255).
    resize: as `inception_features` (True for FID).
    precision: of the convolutions.

  Returns:
    `features(images)`: images a NumPy array (or array-like supporting
    `len` and slicing, e.g. a memmap) [N, H, W, C], C in (1, 3), uint8 or
    float; returns float32 NumPy [N, 2048] (N = 0 gives [0, 2048]). It has
    attributes `batch_size` (the rounded one), `mesh` and `jitted` (the
    jitted forward `jitted(params, images_batch)`).

  Raises:
    ValueError: bad batch_size, devices or value_range; (when called) images
      not [N, H, W, C] with C in (1, 3).
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  if isinstance(devices, Mesh):
    mesh = devices
  else:
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
      raise ValueError("devices must be None, a Mesh or a non-empty sequence of devices.")
    mesh = Mesh(np.asarray(devs), ("batch",))
  n_dev = mesh.size
  batch = -(-batch_size // n_dev) * n_dev
  lo, hi = (float(v) for v in value_range)
  if not lo < hi:
    raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}.")
  data = NamedSharding(mesh, P(tuple(mesh.axis_names)))
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)

  def forward(variables, images):
    x = to_unit_range(images, (lo, hi))
    return inception_features(variables, x, resize=resize, precision=precision)

  jitted = jax.jit(forward, in_shardings=(replicated, data), out_shardings=data)

  def features(images) -> np.ndarray:
    if not hasattr(images, "__len__") or np.ndim(images[:0]) != 4:
      raise ValueError(f"images must be an array [N, H, W, C], got {type(images)}.")
    _check_images(images[:0])
    n = len(images)
    out = np.empty((n, FEATURE_DIM), np.float32)
    pending = None
    for start in range(0, n, batch):
      chunk = np.asarray(images[start:start + batch])
      if chunk.dtype != np.uint8:
        if not np.issubdtype(chunk.dtype, np.floating):
          raise ValueError(f"images must be uint8 or float, got dtype {chunk.dtype}.")
        chunk = chunk.astype(np.float32, copy=False)  # One program for every float dtype.
      m = len(chunk)
      if m < batch:
        chunk = np.concatenate([chunk, np.zeros((batch - m,) + chunk.shape[1:], chunk.dtype)])
      result = jitted(params, jax.device_put(chunk, data))
      if pending is not None:
        out[pending[0]:pending[0] + pending[1]] = np.asarray(pending[2])[:pending[1]]
      pending = (start, m, result)
    if pending is not None:
      out[pending[0]:pending[0] + pending[1]] = np.asarray(pending[2])[:pending[1]]
    return out

  features.batch_size = batch
  features.mesh = mesh
  features.jitted = jitted
  return features
