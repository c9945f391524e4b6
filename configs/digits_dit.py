"""Class-conditional DiT (Peebles & Xie 2023) on the embedded 8x8 digits.

A small transformer in place of the UNet: 2x2 patches (16 tokens), width 128,
6 blocks of 4 heads, adaLN-Zero conditioning on the timestep and the label,
10% label dropout for classifier-free guidance.

  diffusion-jax --config digits_dit --workdir runs/digits_dit
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.model.name = "dit"
  config.model.patch_size = 2
  config.model.hidden_size = 128
  config.model.depth = 6
  config.model.num_heads = 4
  config.model.mlp_ratio = 4.0
  config.model.dropout = 0.0        # DiT has no dropout
  config.model.conditioning = "class"
  config.train.label_dropout = 0.1  # p(label -> null label), for guidance
  config.train.learning_rate = 3e-4  # transformers want a smaller rate than the UNet's 1e-3
  config.train.warmup_steps = 200
  config.sample.guidance_scale = 1.5
  return config
