"""Digits conditioned on an embedding sequence through cross-attention.

Each class is represented by a fixed sequence of L = 4 vectors of width
D = 32 (`experiment.class_contexts`, a stand-in for a frozen text encoder's
output [B, L, D]). The UNet's attention blocks attend to it (cross-attention).
The null condition for classifier-free guidance is the all-zero sequence.
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.model.conditioning = "embedding"
  config.model.context_len = 4
  config.model.context_dim = 32
  config.train.label_dropout = 0.1   # p(context -> zero context)
  config.sample.guidance_scale = 2.0
  return config
