"""Consistency distillation of the v-prediction digits model (Song et al. 2023).

The teacher is `configs/digits_v.py` trained in runs/digits_v; the student has
its network and diffusion settings, starts from its EMA weights and learns the
consistency function f(x_t, t) ≈ x_0 on a grid of 18 linspace timesteps, with
one Heun step of the teacher's probability-flow ODE between neighbours. It
samples in one step (f(x_T, 999)) or, with
--config.consistency.sample_timesteps=499,999, in two.

  python -m diffusion_jax.main --config configs/digits_cd.py --workdir runs/digits_cd
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.task = "consistency"
  config.diffusion.prediction = "v"          # as the teacher (configs/digits_v.py)
  config.model.dropout = 0.0                 # distillation of a deterministic map
  config.consistency.teacher_workdir = "runs/digits_v"
  config.consistency.num_points = 18
  config.consistency.solver = "heun"
  config.consistency.target_ema = 0.95
  config.train.num_steps = 2000
  config.train.learning_rate = 2e-4          # fine-tuning from the teacher
  config.train.ema_decay = 0.999
  config.sample.sampler = "consistency"
  return config
