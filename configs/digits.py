"""Unconditional DDPM on the embedded UCI digits (8x8x1), sized for a 2-core CPU.

This is the default config of `diffusion_jax.default_config` (see the comment
on every setting there).

Run:  python -m diffusion_jax.main --config configs/digits.py --workdir runs/digits
Override any field: --config.train.num_steps=200 --config.sample.sampler=ddpm
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  # At the end of training: the digits metrics of 1,000 EMA samples (a small
  # classifier's feature-space Fréchet ratio, confident share, class shares,
  # nearest-neighbour ratio), printed and logged; --mode=eval adds bits/dim.
  config.eval.metrics = "classifier,bpd"
  config.train.eval_every = config.train.num_steps
  return config
