"""Diffusion Transformer (DiT) of Peebles & Xie (2023) (Flax linen, NHWC).

"Scalable Diffusion Models with Transformers", ICCV 2023, following its
official code (``facebookresearch/DiT``, ``models.py``):

  * §3.2 "Patchify": a conv with kernel = stride = ``patch_size`` turns
    [B, H, W, C] into T = (H / p) (W / p) tokens of width ``hidden_size``, plus
    the fixed (non-trainable) 2-D sin-cos positional embedding of MAE.
  * §3.2 "DiT block design", adaLN-Zero: from ``c = t_emb + y_emb`` one Linear
    of SiLU(c) regresses 6 vectors (shift, scale, gate for the attention and
    the MLP branch); the Linear is zero-initialised, so every block starts as
    the identity. LayerNorms have no affine parameters (eps 1e-6); the MLP uses
    tanh-approximated GELU.
  * §3.2 "Transformer decoder": adaLN (shift, scale; zero-init) + a
    zero-initialised Linear to ``p * p * out`` channels per token, unpatchified
    back to [B, H, W, out]. At initialisation the model outputs exactly zero.
  * Table 1 (the S / B / L / XL configurations) is ``DIT_CONFIGS``.

With ``DIT_CONFIGS["DiT-XL/2"]``, 32x32x4 latents, ``num_classes=1000`` and
``learn_sigma=True`` the model has 674,834,720 trainable parameters; the
official code's count, 675,129,632 ("675M"), adds its frozen ``pos_embed``
buffer (256 x 1152 = 294,912 values), which here is a NumPy constant of the
forward pass rather than a variable.

Logical axis names. Every parameter is created through
``nn.with_logical_partitioning`` with this vocabulary (shared with the UNet):

  ======================  ===============================================
  "embed"                 model width on the input side of a dense kernel
  "mlp"                   output side of a dense kernel, MLP hidden dims
  "heads"                 attention projection width
  "conv_in", "conv_out"   input / output channels of a conv kernel
  "vocab"                 rows of an embedding table
  "norm"                  norm parameters (none in DiT: affine-free LNs)
  ======================  ===============================================

  * dense kernels [in, out]: ("embed", "mlp"); the second dense of an MLP
    (MLP fc2, timestep-embedder fc2): ("mlp", "embed");
  * attention: qkv kernel ("embed", "heads"), out-projection ("heads", "embed");
  * patch-embedding conv kernel [p, p, C, D]: (None, None, "conv_in", "conv_out");
  * label table [num_classes + 1, D]: ("vocab", "embed");
  * biases take the name of their output dim: ("mlp",), ("embed",),
    ("heads",), ("conv_out",).

``model.init`` therefore returns boxed (``nn.LogicallyPartitioned``) params::

  model = get_dit("DiT-S/2", num_classes=1000, learn_sigma=True)
  variables = model.init({"params": key}, x, t, y, train=False)
  specs = nn.get_partition_spec(variables)   # PartitionSpecs of logical names
  params = nn.meta.unbox(variables)["params"]  # plain jax.Arrays
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)  # for jit

``apply`` accepts boxed and plain params alike.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array


class DiTConfig(NamedTuple):
  """A row of Table 1 (+ the patch size of the model name)."""

  depth: int
  hidden_size: int
  num_heads: int
  patch_size: int


def _table1() -> dict[str, DiTConfig]:
  """DiT-{S,B,L,XL}/{2,4,8} of Table 1 (layers N, hidden size d, heads)."""
  sizes = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
  return {
      f"DiT-{size}/{p}": DiTConfig(depth, hidden, heads, p)
      for size, (depth, hidden, heads) in sizes.items()
      for p in (2, 4, 8)
  }


DIT_CONFIGS: dict[str, DiTConfig] = _table1()

REMAT_POLICIES: dict[str, Callable[..., bool]] = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": (
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    ),
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def get_remat_policy(name: str) -> Callable[..., bool]:
  """The ``jax.checkpoint_policies`` policy called ``name`` (see REMAT_POLICIES)."""
  if name not in REMAT_POLICIES:
    raise ValueError(
        f"remat_policy must be None or one of {sorted(REMAT_POLICIES)}, got {name!r}."
    )
  return REMAT_POLICIES[name]


def get_dit(name: str, **kwargs: Any) -> "DiT":
  """``DiT`` with the Table 1 preset ``name`` (e.g. "DiT-XL/2"); kwargs override."""
  if name not in DIT_CONFIGS:
    raise ValueError(f"Unknown DiT config {name!r}; allowed: {list(DIT_CONFIGS)}.")
  return DiT(**{**DIT_CONFIGS[name]._asdict(), **kwargs})


# ----------------------------------------------------------------------------
# Pure functions.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos positional embedding of MAE / DiT, in float64.

  As the official ``get_2d_sincos_pos_embed`` (generalised to grid_h != grid_w):
  the first ``embed_dim / 2`` features encode the column (w) index and the
  last ``embed_dim / 2`` the row (h) index (the official "w goes first"
  meshgrid), each as ``[sin(pos * w_k), cos(pos * w_k)]`` with
  ``w_k = 10000 ** (-k / (embed_dim / 4))``, k = 0 .. embed_dim / 4 - 1.

  Args:
    embed_dim: embedding width D, divisible by 4.
    grid_h: number of token rows (H / patch_size).
    grid_w: number of token columns (W / patch_size).

  Returns:
    float64 [grid_h * grid_w, D] (read-only), tokens in row-major (h, w) order.
  """
  if embed_dim % 4:
    raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}.")
  omega = 1.0 / 10000.0 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4))
  rows, cols = np.meshgrid(
      np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij"
  )

  def embed_1d(pos: np.ndarray) -> np.ndarray:
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb = np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1)
  emb.flags.writeable = False
  return emb


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal timestep embedding, DiT / GLIDE convention.

  ``emb = [cos(t * f), sin(t * f)]`` with ``f_i = max_period ** (-i / half)``,
  i = 0 .. half - 1, half = dim // 2; zero-padded if dim is odd. (Differs from
  ``layers.timestep_embedding``, DDPM's [sin, cos] with ``i / (half - 1)``.)

  Args:
    t: int or float [B] timesteps (may be fractional).
    dim: embedding size (>= 2).
    max_period: controls the lowest frequency.

  Returns:
    float32 [B, dim].
  """
  if dim < 2:
    raise ValueError(f"timestep embedding dim must be >= 2, got {dim}.")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def patchify(x: Array, patch_size: int) -> Array:
  """Splits images into non-overlapping patches (§3.2 "Patchify").

  Args:
    x: [B, H, W, C], H and W divisible by patch_size p.
    patch_size: p.

  Returns:
    [B, (H / p) (W / p), p * p * C]: tokens in row-major (h, w) order, each
    flattened in (p_row, p_col, C) order (the layout of ``unpatchify`` and of a
    [p, p, C, D] conv kernel reshaped to [p * p * C, D]).
  """
  b, height, width, c = x.shape
  p = patch_size
  x = x.reshape(b, height // p, p, width // p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (height // p) * (width // p), p * p * c)


def unpatchify(x: Array, patch_size: int, height: int, width: int) -> Array:
  """Inverse of ``patchify`` (the official ``unpatchify``, ``nhwpqc``, in NHWC).

  Args:
    x: [B, (H / p) (W / p), p * p * C] tokens.
    patch_size: p.
    height: H (divisible by p).
    width: W (divisible by p).

  Returns:
    [B, H, W, C].
  """
  b, _, d = x.shape
  p = patch_size
  c = d // (p * p)
  x = x.reshape(b, height // p, width // p, p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN modulation ``x * (1 + scale) + shift``; x [B, T, D], shift/scale [B, D]."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


# ----------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------

_XAVIER = nn.initializers.xavier_uniform()
_ZEROS = nn.initializers.zeros_init()


def _dense(
    features: int,
    names: tuple[str, str],
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    kernel_init: nn.initializers.Initializer = _XAVIER,
    name: str,
) -> nn.Dense:
  """Dense with logical names ``names`` on the kernel and ``names[1]`` on the bias.

  Initialisation as the official ``_basic_init``: Xavier-uniform kernel (the
  same fan-avg for Flax's [in, out] as for PyTorch's [out, in]), zero bias.
  """
  return nn.Dense(
      features,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(_ZEROS, names[1:]),
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm without affine parameters, eps 1e-6 (statistics in float32)."""
  return nn.LayerNorm(
      epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name
  )


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning (§3.2, Fig. 3 left).

  ``(shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c))``;
  ``x += gate1 * Attn(modulate(LN(x), shift1, scale1))``;
  ``x += gate2 * MLP(modulate(LN(x), shift2, scale2))``.

  Attributes:
    num_heads: attention heads; must divide the width D of x.
    mlp_ratio: MLP hidden size is ``int(D * mlp_ratio)``.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_heads: int = 6
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _dense(self, features: int, names: tuple[str, str], **kw) -> nn.Dense:
    return _dense(features, names, dtype=self.dtype, param_dtype=self.param_dtype, **kw)

  @nn.compact
  def __call__(self, x: Array, c: Array) -> Array:
    """x: [B, T, D] tokens; c: [B, D] conditioning. Returns [B, T, D]."""
    b, length, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide the block width {d}.")
    mod = self._dense(6 * d, ("embed", "mlp"), kernel_init=_ZEROS, name="adaLN_modulation")(
        nn.silu(c)
    )
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)

    h = modulate(_layer_norm(self.dtype, "norm1")(x), shift_msa, scale_msa)
    qkv = self._dense(3 * d, ("embed", "heads"), name="qkv")(h)
    qkv = qkv.reshape(b, length, 3, self.num_heads, d // self.num_heads)
    h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    h = self._dense(d, ("heads", "embed"), name="proj")(h.reshape(b, length, d))
    x = x + gate_msa[:, None, :] * h

    h = modulate(_layer_norm(self.dtype, "norm2")(x), shift_mlp, scale_mlp)
    h = self._dense(int(d * self.mlp_ratio), ("embed", "mlp"), name="fc1")(h)
    h = self._dense(d, ("mlp", "embed"), name="fc2")(nn.gelu(h, approximate=True))
    return x + gate_mlp[:, None, :] * h


class FinalLayer(nn.Module):
  """adaLN (zero-init shift, scale) + zero-init Linear to p * p * out (§3.2).

  Attributes:
    features: output width per token, ``patch_size ** 2 * out_channels``.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, c: Array) -> Array:
    """x: [B, T, D]; c: [B, D]. Returns [B, T, features]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_ZEROS)
    mod = _dense(2 * x.shape[-1], ("embed", "mlp"), name="adaLN_modulation", **kw)(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = modulate(_layer_norm(self.dtype, "norm_final")(x), shift, scale)
    return _dense(self.features, ("embed", "mlp"), name="linear", **kw)(x)


class TimestepEmbedder(nn.Module):
  """Frequency embedding (``timestep_embedding``) -> Linear -> SiLU -> Linear.

  Kernels are initialised N(0, 0.02^2), biases zero, as the official code.

  Attributes:
    hidden_size: output width D.
    frequency_embedding_size: width of the sinusoidal embedding (256).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  hidden_size: int = 384
  frequency_embedding_size: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: Array) -> Array:
    """t: int or float [B]. Returns [B, hidden_size] in dtype."""
    kw = dict(
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(0.02),
    )
    h = timestep_embedding(t, self.frequency_embedding_size)
    h = _dense(self.hidden_size, ("embed", "mlp"), name="fc1", **kw)(h)
    return _dense(self.hidden_size, ("mlp", "embed"), name="fc2", **kw)(nn.silu(h))


class DiT(nn.Module):
  """Diffusion Transformer predicting eps / x0 / v (and optionally a variance).

  A drop-in alternative to ``unet.UNet`` (same call signature and output).
  Presets: ``get_dit("DiT-XL/2", ...)`` / ``DIT_CONFIGS`` (Table 1).

  Attributes:
    depth: number of DiT blocks N.
    hidden_size: token width D (divisible by num_heads and by 4).
    num_heads: attention heads.
    patch_size: patch size p; must divide H and W.
    mlp_ratio: MLP hidden size is ``int(D * mlp_ratio)``.
    out_channels: output channels; None -> input channels.
    learn_sigma: output 2 * out_channels: ``[mean output, variance output]``
      concatenated on the last axis.
    num_classes: class-conditional if set; embedding row ``num_classes`` is
      the null label for classifier-free guidance (used when y is None).
      Label dropout is the training code's job.
    frequency_embedding_size: width of the sinusoidal timestep features.
    dtype: compute dtype (float32 or bfloat16); the output is float32.
    param_dtype: parameter dtype (float32 or bfloat16).
    remat_policy: None, or a ``REMAT_POLICIES`` name: each block is then
      wrapped in ``nn.remat`` with that ``jax.checkpoint_policies`` policy.
  """

  depth: int = 12
  hidden_size: int = 384
  num_heads: int = 6
  patch_size: int = 2
  mlp_ratio: float = 4.0
  out_channels: int | None = None
  learn_sigma: bool = False
  num_classes: int | None = None
  frequency_embedding_size: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str | None = None

  def validate(self) -> None:
    """Raises ValueError naming the first invalid field."""
    for field in ("depth", "hidden_size", "num_heads", "patch_size", "frequency_embedding_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}."
      )
    if self.hidden_size % 4:
      raise ValueError(
          "hidden_size must be divisible by 4 (2-D sin-cos positional embedding), "
          f"got {self.hidden_size}."
      )
    if not isinstance(self.mlp_ratio, (int, float)) or int(self.hidden_size * self.mlp_ratio) < 1:
      raise ValueError(
          f"mlp_ratio must be a number > 0 with int(hidden_size * mlp_ratio) >= 1, "
          f"got {self.mlp_ratio!r}."
      )
    if self.out_channels is not None and (
        not isinstance(self.out_channels, int) or self.out_channels <= 0
    ):
      raise ValueError(
          f"out_channels must be None or a positive int, got {self.out_channels!r}."
      )
    if self.num_classes is not None and (
        not isinstance(self.num_classes, int) or self.num_classes <= 0
    ):
      raise ValueError(
          f"num_classes must be None or a positive int, got {self.num_classes!r}."
      )
    for field in ("dtype", "param_dtype"):
      try:
        ok = jnp.dtype(getattr(self, field)) in _DTYPES
      except TypeError:
        ok = False
      if not ok:
        raise ValueError(
            f"{field} must be float32 or bfloat16, got {getattr(self, field)!r}."
        )
    if self.remat_policy is not None:
      get_remat_policy(self.remat_policy)

  @nn.compact
  def __call__(
      self,
      x: Array,
      t: Array,
      y: Array | None = None,
      context: Array | None = None,
      *,
      train: bool,
  ) -> Array:
    """Predicts the network output for noisy images (or latents).

    Args:
      x: float [B, H, W, C] noisy inputs (NHWC); H, W divisible by patch_size.
      t: int32 or float [B] (or scalar) timesteps.
      y: int32 [B] class labels in 0..num_classes (num_classes = null label),
        or None (-> null label when class-conditional).
      context: must be None (DiT has no cross-attention).
      train: accepted for interface parity with the UNet; DiT has no dropout.

    Returns:
      float32 [B, H, W, out] with out = out_channels (or C), doubled when
      learn_sigma.
    """
    del train
    self.validate()
    if context is not None:
      raise ValueError(
          "context is not supported by DiT (no cross-attention); pass context=None."
      )
    if y is not None and self.num_classes is None:
      raise ValueError("y was given but num_classes is None (unconditional model).")
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
    b, height, width, channels = x.shape
    p, d = self.patch_size, self.hidden_size
    if height % p or width % p:
      raise ValueError(
          f"patch_size={p} must divide the input height and width, got {height}x{width}."
      )

    # §3.2 Patchify: [B, H, W, C] -> [B, T, D] + fixed sin-cos positions.
    # Conv kernel initialised as the Linear it is (fan_in = p * p * C).
    h = nn.Conv(
        d,
        (p, p),
        strides=(p, p),
        padding="VALID",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3),
            (None, None, "conv_in", "conv_out"),
        ),
        bias_init=nn.with_logical_partitioning(_ZEROS, ("conv_out",)),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="x_embedder",
    )(jnp.asarray(x, self.dtype))
    h = h.reshape(b, (height // p) * (width // p), d)
    pos = get_2d_sincos_pos_embed(d, height // p, width // p)
    h = h + jnp.asarray(pos, self.dtype)[None]

    # Conditioning c = t_emb + y_emb.
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    c = TimestepEmbedder(
        hidden_size=d,
        frequency_embedding_size=self.frequency_embedding_size,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="t_embedder",
    )(t)
    if self.num_classes is not None:
      if y is None:
        y = jnp.full((b,), self.num_classes, jnp.int32)
      c = c + nn.Embed(
          self.num_classes + 1,
          d,
          embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("vocab", "embed")
          ),
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name="y_embedder",
      )(jnp.asarray(y, jnp.int32))

    block = DiTBlock
    if self.remat_policy is not None:
      block = nn.remat(DiTBlock, policy=get_remat_policy(self.remat_policy))
    for i in range(self.depth):
      h = block(
          num_heads=self.num_heads,
          mlp_ratio=self.mlp_ratio,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"blocks_{i}",
      )(h, c)

    out = self.out_channels or channels
    out *= 2 if self.learn_sigma else 1
    h = FinalLayer(
        features=p * p * out,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="final_layer",
    )(h, c)
    return unpatchify(h, p, height, width).astype(jnp.float32)
