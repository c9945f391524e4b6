"""Noise-aware classifier p(y | x_t, t) for classifier guidance.

The UNet's encoder half (conv_in, down path, middle block; ``UNetEncoder``)
followed by GroupNorm, swish, global average pooling and a Dense head, as in
ADM's classifier (with mean pooling instead of attention pooling).

As for the UNet, ``init`` returns boxed parameters with logical axis names
(``partitioning.unbox`` gives plain arrays; the head's kernel is
("embed", "mlp")).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers
from diffusion_jax.models import unet


class NoisyClassifier(unet.EncoderConfig):
  """Classifier of noisy images x_t at timestep t.

  Attributes:
    num_classes: number of classes (logits).
    ch, ch_mult, num_res_blocks, attn_resolutions, dropout, num_heads,
    num_groups, resamp_with_conv, dtype, param_dtype, remat_policy: as in
    ``unet.UNet``.
  """

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, *, train: bool) -> jax.Array:
    """Class logits.

    Args:
      x: float [B, H, W, C] noisy images x_t.
      t: int32 or float [B] (or scalar) timesteps.
      train: enables dropout (needs the 'dropout' rng).

    Returns:
      float32 [B, num_classes] logits.
    """
    if not isinstance(self.num_classes, int) or self.num_classes < 2:
      raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}.")
    self.validate()
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    emb = layers.TimeEmbedding(ch=self.ch, name="temb", **self.base_kwargs())(t)
    h, _ = self.encoder()(x, emb, train=train)
    h = nn.swish(self.norm(h.shape[-1], name="norm_out")(h))
    h = jnp.mean(h, axis=(1, 2))
    return self.dense(self.num_classes, name="head")(h).astype(jnp.float32)
