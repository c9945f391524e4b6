"""Building blocks of the DDPM / ADM UNet family (Flax linen, NHWC).

Initialisation follows Ho et al. (2020): ``variance_scaling(1, fan_avg,
uniform)`` everywhere, zero biases, and zero-initialised output layers for the
last conv of every residual block, every attention output projection and the
network's final conv (so every residual branch starts as the identity).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Array = jax.Array


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
  return nn.GroupNorm(
      num_groups=num_groups,
      epsilon=1e-6,
      dtype=dtype,
      param_dtype=param_dtype,
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
  """kxk 'SAME' conv with DDPM init (call inside a compact method)."""
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=strides,
      padding="SAME",
      kernel_init=default_init(scale),
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
    name: str | None = None,
) -> nn.Dense:
  """Dense (also DDPM's 1x1 "nin") with DDPM init (call inside a compact method)."""
  return nn.Dense(
      features,
      kernel_init=default_init(scale),
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
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
  def __call__(self, x: Array, emb: Array, *, train: bool) -> Array:
    """x: [B, H, W, C]; emb: [B, E]. Returns [B, H, W, out_ch]."""
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


def _attention(q: Array, k: Array, v: Array, num_heads: int) -> Array:
  """Multi-head dot-product attention, softmax in float32.

  Args:
    q: [B, Lq, C]; k, v: [B, Lk, C]; C divisible by num_heads.

  Returns:
    [B, Lq, C] in v's dtype.
  """
  b, lq, c = q.shape
  split = lambda a: a.reshape(a.shape[0], a.shape[1], num_heads, c // num_heads)
  q, k, v = split(q), split(k), split(v)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  weights = jax.nn.softmax(logits * (c // num_heads) ** -0.5, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return out.reshape(b, lq, c)


class AttnBlock(_Base):
  """Self-attention over the H*W positions (+ cross-attention to a context).

  ``x + proj_out(attn(norm(x)))`` with 1x1 q/k/v projections as in DDPM
  (for ``num_heads = 1`` it is exactly DDPM's block); if ``context`` is given,
  a second residual ``x + proj(cross_attn(norm(x), context))`` follows.

  Attributes:
    num_heads: attention heads; must divide the channel count.
  """

  num_heads: int = 1

  def _residual(self, x: Array, kv: Array, prefix: str) -> Array:
    """x: [B, L, C]; kv: [B, Lk, D]. Returns [B, L, C]."""
    c = x.shape[-1]
    h = self.norm(c, name=f"{prefix}norm")(x)
    q = self.dense(c, name=f"{prefix}q")(h)
    kv = h if kv is None else kv
    k = self.dense(c, name=f"{prefix}k")(kv)
    v = self.dense(c, name=f"{prefix}v")(kv)
    h = _attention(q, k, v, self.num_heads)
    return x + self.dense(c, scale=0.0, name=f"{prefix}proj_out")(h)

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
