"""Building blocks of the DDPM / ADM UNet family (Flax linen, NHWC).

Initialisation follows Ho et al. (2020): ``variance_scaling(1, fan_avg,
uniform)`` everywhere, zero biases, and zero-initialised output layers for the
last conv of every residual block, every attention output projection and the
network's final conv (so every residual branch starts as the identity).

Every parameter carries logical axis names (``partitioning``; e.g. dense
kernels ("embed", "mlp"), conv kernels (None, None, "conv_in", "conv_out")),
so ``init`` returns ``flax.linen.LogicallyPartitioned`` leaves; use
``partitioning.unbox`` for plain arrays.

Attention goes through ``jax.nn.dot_product_attention`` (Vaswani et al.,
2017), which backends may lower to fused kernels. ``remat`` wraps a block in
``flax.linen.remat`` (gradient checkpointing, Chen et al., 2016) with a named
``jax.checkpoint_policies`` policy.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import partitioning

Dtype = Any
Array = jax.Array

# The accepted ``attention_impl`` values: ``jax.nn.dot_product_attention``'s
# ``implementation`` (None: JAX's choice, XLA today; "cudnn": cuDNN's fused
# kernel, bfloat16/float16 on NVIDIA GPUs only).
ATTENTION_IMPLS = (None, "xla", "cudnn")

# The accepted ``remat_policy`` values: names in ``jax.checkpoint_policies``.
REMAT_POLICIES = (
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
)


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """DDPM initialiser: fan-avg uniform variance scaling; zeros for scale 0."""
  if scale == 0.0:
    return nn.initializers.zeros_init()
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal timestep embedding (DDPM / tensor2tensor convention).

  ``emb[:, i] = sin(t * f_i)`` for ``i < dim // 2`` and ``cos(t * f_i)`` after,
  with ``f_i = max_period ** (-i / (dim // 2 - 1))``; zero-padded if dim is odd.

  Args:
    t: int or float [B] timesteps (continuous times are fine; scale them to
      roughly 0..1000 for the usual frequency range).
    dim: embedding size (>= 4).
    max_period: lowest frequency's period.

  Returns:
    float32 [B, dim].
  """
  if dim < 4:
    raise ValueError(f"timestep_embedding dim must be >= 4, got {dim}.")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) / (half - 1) * jnp.arange(half))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def group_norm(
    channels: int, num_groups: int, dtype: Dtype, param_dtype: Dtype, name=None
) -> nn.GroupNorm:
  """GroupNorm (eps 1e-6, as tf.contrib) after checking the group count.

  Must be called inside a compact method; ``channels`` is the size of the
  last axis of the input it will normalise.
  """
  if channels % num_groups:
    raise ValueError(
        f"num_groups={num_groups} must divide the channel count of every "
        f"GroupNorm, but one normalises {channels} channels; choose num_groups "
        "dividing ch * m for every m in ch_mult (e.g. a divisor of ch)."
    )
  names = (partitioning.NORM,)
  return nn.GroupNorm(
      num_groups=num_groups,
      epsilon=1e-6,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=partitioning.with_names(nn.initializers.ones_init(), names),
      bias_init=partitioning.with_names(nn.initializers.zeros_init(), names),
      name=name,
  )


def conv(
    features: int,
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    strides: int = 1,
    scale: float = 1.0,
    kernel: int = 3,
    name: str | None = None,
) -> nn.Conv:
  """kxk 'SAME' conv with DDPM init (call inside a compact method).

  Kernel [k, k, in, out] named (None, None, "conv_in", "conv_out"), bias
  ("conv_out",).
  """
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=strides,
      padding="SAME",
      kernel_init=partitioning.with_names(default_init(scale), partitioning.CONV),
      bias_init=partitioning.with_names(
          nn.initializers.zeros_init(), partitioning.CONV[-1:]
      ),
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )


def dense(
    features: int,
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    scale: float = 1.0,
    axes: tuple[str, str] = partitioning.DENSE,
    name: str | None = None,
) -> nn.Dense:
  """Dense (also DDPM's 1x1 "nin") with DDPM init (call inside a compact method).

  The kernel [in, out] gets the logical names ``axes`` (default
  ("embed", "mlp")), the bias ``axes[1]``.
  """
  return nn.Dense(
      features,
      kernel_init=partitioning.with_names(default_init(scale), axes),
      bias_init=partitioning.with_names(nn.initializers.zeros_init(), axes[1:]),
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )


def check_attention_impl(implementation: str | None) -> None:
  """Raises ValueError unless ``implementation`` is in ``ATTENTION_IMPLS``."""
  if implementation not in ATTENTION_IMPLS:
    raise ValueError(
        f"attention_impl must be one of {ATTENTION_IMPLS}, got {implementation!r}."
    )


def check_remat_policy(policy: str | None) -> None:
  """Raises ValueError unless ``policy`` is None or in ``REMAT_POLICIES``."""
  if policy is not None and policy not in REMAT_POLICIES:
    raise ValueError(
        f"remat_policy must be None or one of {REMAT_POLICIES}, got {policy!r}."
    )


def remat(cls: type[nn.Module], policy: str | None, static_argnums: tuple[int, ...] = ()):
  """``cls`` rematerialised with ``jax.checkpoint_policies.<policy>``.

  The wrapped class keeps the parameter tree as long as instances get an
  explicit ``name`` (``nn.remat`` renames the class, not the scope).

  Args:
    cls: a Module class.
    policy: None (returns ``cls``) or one of ``REMAT_POLICIES``.
    static_argnums: positions of ``__call__``'s static arguments, counting
      ``self`` as 0 (they must be passed positionally).

  Returns:
    ``cls`` or ``nn.remat(cls, policy=..., static_argnums=...)``.
  """
  check_remat_policy(policy)
  if policy is None:
    return cls
  return _remat(cls, policy, tuple(static_argnums))


@functools.lru_cache(maxsize=None)
def _remat(cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...]):
  """``remat`` after validation; cached so each block kind is wrapped once."""
  return nn.remat(
      cls,
      policy=getattr(jax.checkpoint_policies, policy),
      static_argnums=static_argnums,
  )


class _Base(nn.Module):
  """Shared GroupNorm / dtype fields and layer factories for the blocks."""

  num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def base_kwargs(self) -> dict[str, Any]:
    """num_groups / dtype / param_dtype, to configure child blocks alike."""
    return dict(
        num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype
    )

  def norm(self, channels: int, name=None) -> nn.GroupNorm:
    return group_norm(channels, self.num_groups, self.dtype, self.param_dtype, name)

  def conv(self, features: int, **kw) -> nn.Conv:
    return conv(features, dtype=self.dtype, param_dtype=self.param_dtype, **kw)

  def dense(self, features: int, **kw) -> nn.Dense:
    return dense(features, dtype=self.dtype, param_dtype=self.param_dtype, **kw)


class TimeEmbedding(_Base):
  """Timestep (+ optional class) embedding: sinusoid(ch) -> Dense -> swish -> Dense.

  Attributes:
    ch: base channel count; the output has ``4 * ch`` features.
    num_classes: if set, adds ``Embed(num_classes + 1, 4 * ch)[y]``; label
      ``num_classes`` is the null (unconditional) label used for classifier-free
      guidance and is used when ``y`` is None.
  """

  ch: int = 128
  num_classes: int | None = None

  @nn.compact
  def __call__(self, t: Array, y: Array | None = None) -> Array:
    """t: [B] int/float; y: int [B] or None. Returns dtype [B, 4 ch]."""
    emb = timestep_embedding(t, self.ch)
    emb = self.dense(4 * self.ch, name="dense0")(emb)
    emb = self.dense(4 * self.ch, name="dense1")(nn.swish(emb))
    if self.num_classes is None:
      if y is not None:
        raise ValueError(
            "A class label y was given but num_classes is None; set "
            "num_classes to make the model class-conditional."
        )
      return emb
    if y is None:
      y = jnp.full(t.shape, self.num_classes, jnp.int32)
    label_emb = nn.Embed(
        self.num_classes + 1,
        4 * self.ch,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=partitioning.with_names(
            nn.linear.default_embed_init, partitioning.EMBEDDING
        ),
        name="label_emb",
    )(jnp.asarray(y, jnp.int32))
    return emb + label_emb


class ResBlock(_Base):
  """GroupNorm-swish-conv, + Dense(swish(emb)), GroupNorm-swish-dropout-conv(0).

  Attributes:
    out_ch: output channels; a 1x1 "nin" shortcut is used when they change.
    dropout: dropout rate (uses the 'dropout' rng when ``train``).
  """

  out_ch: int = 128
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    """x: [B, H, W, C]; emb: [B, E]; train: enables dropout (static; pass it
    positionally when the block is rematerialised). Returns [B, H, W, out_ch]."""
    h = nn.swish(self.norm(x.shape[-1], name="norm1")(x))
    h = self.conv(self.out_ch, name="conv1")(h)
    h = h + self.dense(self.out_ch, name="temb_proj")(nn.swish(emb))[:, None, None, :]
    h = nn.swish(self.norm(self.out_ch, name="norm2")(h))
    if self.dropout > 0.0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = self.conv(self.out_ch, scale=0.0, name="conv2")(h)
    if x.shape[-1] != self.out_ch:
      x = self.dense(self.out_ch, name="nin_shortcut")(x)
    return x + h


def _attention(
    q: Array, k: Array, v: Array, num_heads: int, implementation: str | None = None
) -> Array:
  """Multi-head scaled dot-product attention via ``jax.nn.dot_product_attention``.

  Channel c of the inputs belongs to head ``c // (C // num_heads)``. The
  logits are accumulated in float32 (also for bfloat16 inputs), scaled by
  ``head_dim ** -0.5`` and the softmax is taken in float32; the weights are
  cast to v's dtype for the weighted sum.

  Args:
    q: [B, Lq, C]; k, v: [B, Lk, C]; C divisible by num_heads; one dtype.
    num_heads: number of heads.
    implementation: ``jax.nn.dot_product_attention``'s backend: None (XLA
      today), "xla" or "cudnn".

  Returns:
    [B, Lq, C] in v's dtype.
  """
  b, lq, c = q.shape
  split = lambda a: a.reshape(a.shape[0], a.shape[1], num_heads, c // num_heads)
  out = jax.nn.dot_product_attention(
      split(q), split(k), split(v), implementation=implementation
  )
  return out.reshape(b, lq, c)


class AttnBlock(_Base):
  """Self-attention over the H*W positions (+ cross-attention to a context).

  ``x + proj_out(attn(norm(x)))`` with 1x1 q/k/v projections as in DDPM
  (for ``num_heads = 1`` it is exactly DDPM's block); if ``context`` is given,
  a second residual ``x + proj(cross_attn(norm(x), context))`` follows.

  Attributes:
    num_heads: attention heads; must divide the channel count.
    implementation: ``jax.nn.dot_product_attention``'s backend, one of
      ``ATTENTION_IMPLS`` (same outputs and parameters).
  """

  num_heads: int = 1
  implementation: str | None = None

  def _residual(self, x: Array, kv: Array, prefix: str) -> Array:
    """x: [B, L, C]; kv: [B, Lk, D]. Returns [B, L, C]."""
    c = x.shape[-1]
    h = self.norm(c, name=f"{prefix}norm")(x)
    proj = lambda n: self.dense(c, axes=partitioning.ATTN_IN, name=f"{prefix}{n}")
    kv = h if kv is None else kv
    h = _attention(proj("q")(h), proj("k")(kv), proj("v")(kv), self.num_heads,
                   self.implementation)
    out = self.dense(c, scale=0.0, axes=partitioning.ATTN_OUT, name=f"{prefix}proj_out")
    return x + out(h)

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> Array:
    """x: [B, H, W, C]; context: [B, L, D] or None. Returns [B, H, W, C]."""
    b, height, width, c = x.shape
    if c % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must divide the channel count {c} of "
          "every attention block."
      )
    h = x.reshape(b, height * width, c)
    h = self._residual(h, None, "")
    if context is not None:
      h = self._residual(h, jnp.asarray(context, self.dtype), "cross_")
    return h.reshape(b, height, width, c)


class Downsample(_Base):
  """Halves H and W: 3x3 stride-2 conv ('SAME', as TF) or 2x2 average pool."""

  with_conv: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C]. Returns [B, H/2, W/2, C]."""
    if self.with_conv:
      return self.conv(x.shape[-1], strides=2, name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(_Base):
  """Doubles H and W: nearest neighbour (+ 3x3 conv)."""

  with_conv: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C]. Returns [B, 2H, 2W, C]."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      x = self.conv(x.shape[-1], name="conv")(x)
    return x
