"""UNet of the DDPM / ADM family (Flax linen, NHWC).

With ``ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
dropout=0.1`` on 32x32x3 inputs this is exactly Ho et al.'s (2020) CIFAR-10
model (``hojonathanho/diffusion``, ``diffusion_tf/models/unet.py``):
35,746,307 parameters.

For 8x8 digits, e.g. ``UNet(ch=64, ch_mult=(1, 2), attn_resolutions=(4,),
num_groups=32)``.

Parameters are boxed: every leaf returned by ``model.init`` is a
``flax.linen.LogicallyPartitioned`` carrying logical axis names (vocabulary
in ``partitioning``). The tree's paths and shapes are those of the plain
arrays; take plain arrays with ``partitioning.unbox`` and the logical
``PartitionSpec``s with ``partitioning.logical_specs``::

    variables = model.init({"params": key}, x, t, train=False)
    params = partitioning.unbox(variables)["params"]     # plain float32 arrays
    out = model.apply({"params": params}, x, t, train=False)

``model.apply`` accepts boxed or plain parameters.

``remat_policy`` rematerialises every ResBlock and AttnBlock (gradient
checkpointing, Chen et al., 2016: ``flax.linen.remat`` with the named
``jax.checkpoint_policies`` policy) without changing the parameter tree.

Pretrained diffusers ``UNet2DModel`` weights of this family (google/ddpm-*)
load with ``convert_diffusers.load_diffusers_unet``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers

Array = jax.Array


def _check_input(x: Array, num_levels: int) -> None:
  """x: [B, H, W, C] with H = W divisible by 2 ** (num_levels - 1)."""
  if x.ndim != 4:
    raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
  factor = 2 ** (num_levels - 1)
  if x.shape[1] % factor or x.shape[2] % factor:
    raise ValueError(
        f"Image size {x.shape[1]}x{x.shape[2]} must be divisible by "
        f"2 ** (len(ch_mult) - 1) = {factor}; use fewer ch_mult levels."
    )


def res_block(m: "EncoderConfig", out_ch: int, name: str) -> layers.ResBlock:
  """ResBlock configured from module ``m`` (call inside m's compact method).

  Rematerialised when ``m.remat_policy`` is set: call it as
  ``block(x, emb, train)`` (train positional: it is static).
  """
  cls = layers.remat(layers.ResBlock, m.remat_policy, static_argnums=(3,))
  return cls(out_ch=out_ch, dropout=m.dropout, name=name, **m.base_kwargs())


def attn_block(m: "EncoderConfig", name: str) -> layers.AttnBlock:
  """AttnBlock configured from module ``m`` (call inside m's compact method);
  rematerialised when ``m.remat_policy`` is set."""
  cls = layers.remat(layers.AttnBlock, m.remat_policy)
  return cls(num_heads=m.num_heads, implementation=m.attention_impl, name=name,
             **m.base_kwargs())


_ENCODER_FIELDS = (
    "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
    "num_heads", "resamp_with_conv", "num_groups", "dtype", "param_dtype",
    "remat_policy", "attention_impl",
)


class EncoderConfig(layers._Base):
  """Architecture fields shared by ``UNetEncoder``, ``UNet`` and the classifier.

  Attributes: see ``UNet``.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_heads: int = 1
  resamp_with_conv: bool = True
  remat_policy: str | None = None
  attention_impl: str | None = None

  def validate(self) -> None:
    """Raises ValueError naming the first invalid architecture field."""
    ch, ch_mult, num_groups = self.ch, tuple(self.ch_mult), self.num_groups
    if not isinstance(ch, int) or ch <= 0:
      raise ValueError(f"ch must be a positive int, got {ch!r}.")
    if not ch_mult or any(not isinstance(m, int) or m <= 0 for m in ch_mult):
      raise ValueError(
          f"ch_mult must be a non-empty tuple of positive ints, got {ch_mult!r}."
      )
    if not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 0:
      raise ValueError(
          f"num_res_blocks must be an int >= 0, got {self.num_res_blocks!r}."
      )
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
    if not isinstance(self.num_heads, int) or self.num_heads <= 0:
      raise ValueError(f"num_heads must be a positive int, got {self.num_heads!r}.")
    if not isinstance(num_groups, int) or num_groups <= 0:
      raise ValueError(f"num_groups must be a positive int, got {num_groups!r}.")
    layers.check_remat_policy(self.remat_policy)
    layers.check_attention_impl(self.attention_impl)
    for m in ch_mult:
      if (ch * m) % num_groups:
        raise ValueError(
            f"num_groups={num_groups} must divide every level's channel count "
            f"ch * m = {ch} * {m}; allowed: divisors of "
            f"gcd({[ch * m for m in ch_mult]})."
        )

  def encoder(self, name: str = "encoder") -> "UNetEncoder":
    """A ``UNetEncoder`` child with this module's architecture fields."""
    return UNetEncoder(name=name, **{f: getattr(self, f) for f in _ENCODER_FIELDS})


class UNetEncoder(EncoderConfig):
  """conv_in, down path and middle block of the UNet (shared by the classifier).

  Attributes: see ``UNet``.
  """

  @nn.compact
  def __call__(
      self, x: Array, emb: Array, context: Array | None = None, *, train: bool
  ) -> tuple[Array, list[Array]]:
    """Encodes x.

    Args:
      x: [B, H, W, C] input.
      emb: [B, 4 ch] timestep (+ class) embedding.
      context: [B, L, D] cross-attention context or None.
      train: enables dropout.

    Returns:
      h: [B, H / 2**(n-1), W / 2**(n-1), ch * ch_mult[-1]] middle-block output
        (n = len(ch_mult)).
      skips: the down path's activations, in order, for the decoder.
    """
    _check_input(x, len(self.ch_mult))
    hs = [self.conv(self.ch, name="conv_in")(x)]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self, self.ch * mult, f"down_{level}_block_{i}")(
            hs[-1], emb, train
        )
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(self, f"down_{level}_attn_{i}")(h, context)
        hs.append(h)
      if level != len(self.ch_mult) - 1:
        hs.append(
            layers.Downsample(
                with_conv=self.resamp_with_conv,
                name=f"down_{level}_downsample",
                **self.base_kwargs(),
            )(hs[-1])
        )
    h = hs[-1]
    h = res_block(self, h.shape[-1], "mid_block_1")(h, emb, train)
    h = attn_block(self, "mid_attn_1")(h, context)
    h = res_block(self, h.shape[-1], "mid_block_2")(h, emb, train)
    return h, hs


def check_conditioning(
    y: Array | None,
    context: Array | None,
    num_classes: int | None,
    context_dim: int | None,
) -> None:
  """Raises ValueError if y / context do not match num_classes / context_dim."""
  if y is not None and num_classes is None:
    raise ValueError("y was given but num_classes is None (unconditional model).")
  if context_dim is None:
    if context is not None:
      raise ValueError("context was given but context_dim is None.")
    return
  if context is None:
    raise ValueError(
        f"context [B, L, {context_dim}] is required because context_dim="
        f"{context_dim}; pass a null/empty embedding for unconditional use."
    )
  if context.ndim != 3 or context.shape[-1] != context_dim:
    raise ValueError(
        f"context must be [B, L, context_dim={context_dim}], got {context.shape}."
    )


class UNet(EncoderConfig):
  """DDPM/ADM UNet predicting eps / x0 / v (and optionally a variance output).

  Attributes:
    ch: base channel count.
    ch_mult: channel multiplier per resolution level.
    num_res_blocks: residual blocks per level (the decoder uses one more).
    attn_resolutions: spatial sizes (H) at which self-attention is used.
    dropout: dropout rate in residual blocks (active only with train=True).
    out_channels: output channels; None -> input channels.
    learn_sigma: output 2 * out_channels: ``[mean output, variance output]``
      concatenated on the last axis.
    num_classes: class-conditional if set; embedding row ``num_classes`` is
      the null label for classifier-free guidance (used when y is None).
    context_dim: if set, attention blocks cross-attend to context [B, L, D].
    num_heads: attention heads.
    num_groups: GroupNorm groups (must divide all channel counts).
    resamp_with_conv: convs in down/upsampling (else avg-pool / nearest only).
    dtype: compute dtype (float32 or bfloat16).
    param_dtype: parameter dtype.
    remat_policy: None, or rematerialise every ResBlock and AttnBlock with
      this ``jax.checkpoint_policies`` policy, one of ``layers.REMAT_POLICIES``
      ("nothing_saveable", "dots_saveable",
      "dots_with_no_batch_dims_saveable", "everything_saveable"). Saves
      activation memory in training at the cost of recomputation; outputs,
      gradients and the parameter tree are unchanged.
    attention_impl: ``jax.nn.dot_product_attention``'s implementation for
      every attention block, one of ``layers.ATTENTION_IMPLS``: None (JAX's
      default, XLA), "xla", or "cudnn" (cuDNN's fused kernel: bfloat16 /
      float16 compute on NVIDIA GPUs, head size <= 128, <= 256 from Hopper).
      Outputs and parameters are those of the default.
  """

  out_channels: int | None = None
  learn_sigma: bool = False
  num_classes: int | None = None
  context_dim: int | None = None

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
    """Predicts the network output for noisy images.

    Args:
      x: float [B, H, W, C] noisy images (NHWC).
      t: int32 or float [B] (or scalar) timesteps.
      y: int32 [B] class labels in 0..num_classes (num_classes = null label),
        or None (-> null label when class-conditional).
      context: [B, L, context_dim] embeddings for cross-attention, or None.
      train: enables dropout (needs the 'dropout' rng).

    Returns:
      float32 [B, H, W, out] with out = out_channels (or C), doubled when
      learn_sigma.
    """
    self.validate()
    if self.out_channels is not None and (
        not isinstance(self.out_channels, int) or self.out_channels <= 0
    ):
      raise ValueError(
          f"out_channels must be None or a positive int, got {self.out_channels!r}."
      )
    check_conditioning(y, context, self.num_classes, self.context_dim)
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    emb = layers.TimeEmbedding(
        ch=self.ch, num_classes=self.num_classes, name="temb", **self.base_kwargs()
    )(t, y)
    h, hs = self.encoder()(x, emb, context, train=train)

    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res_block(self, self.ch * self.ch_mult[level], f"up_{level}_block_{i}")(
            h, emb, train
        )
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(self, f"up_{level}_attn_{i}")(h, context)
      if level != 0:
        h = layers.Upsample(
            with_conv=self.resamp_with_conv, name=f"up_{level}_upsample", **self.base_kwargs()
        )(h)
    assert not hs

    out_ch = self.out_channels or x.shape[-1]
    out_ch *= 2 if self.learn_sigma else 1
    h = nn.swish(self.norm(h.shape[-1], name="norm_out")(h))
    h = self.conv(out_ch, scale=0.0, name="conv_out")(h)
    return h.astype(jnp.float32)
