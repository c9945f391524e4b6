"""Consistency training of a digits model from scratch (Song et al. 2023, Alg. 3).

No teacher: the target of f(x_{t_{n+1}}) is the target network's f at the
neighbouring grid point t_n of the same noisy path (same ε). The number of grid
points grows from 2 to 151 over training (the curriculum of the paper's App. C),
and the target network's decay follows μ(k) = exp(s0 log μ0 / N(k)). It samples
in one step or, with --config.consistency.sample_timesteps=499,999, in two.

  python -m diffusion_jax.main --config configs/digits_ct.py --workdir runs/digits_ct
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.task = "consistency"
  config.diffusion.prediction = "v"
  config.model.dropout = 0.0
  config.consistency.metric = "pseudo_huber"  # iCT §3.3: more robust than l2
  config.consistency.ct_s0 = 2
  config.consistency.ct_s1 = 150
  config.consistency.ct_mu0 = 0.9
  config.train.num_steps = 4000
  config.sample.sampler = "consistency"
  return config
