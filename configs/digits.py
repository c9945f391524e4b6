"""Unconditional DDPM on the embedded UCI digits (8x8x1), sized for a 2-core CPU.

Run:  python -m diffusion_jax.main --config configs/digits.py --workdir runs/digits
Override any field: --config.train.num_steps=200 --config.sample.sampler=ddpm
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.sample.num_steps = 50      # DDIM steps for the sample grid and --mode=sample
  config.sample.clip_x0 = 1.0       # data lie in [-1, 1]
  config.eval.max_examples = 128    # the full T-term bound costs T forwards per image
  return config
