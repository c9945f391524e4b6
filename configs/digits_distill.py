"""Progressive distillation of the v-prediction digits model (Salimans & Ho 2022).

The teacher is `configs/digits_v.py` trained in runs/digits_v; the student has
its network and diffusion settings and starts from its EMA weights. Round 0
distills the teacher's 16-step DDIM sampler into 8 steps, round 1 8 → 4, round
2 4 → 2 and round 3 2 → 1: a one-step student, sampled from t = 999. (On 8x8
digits the teacher's deterministic DDIM is as good at 16 steps as at 64 by
`benchmarks/few_step_digits.py`, so the rounds above 16 steps are skipped.)
Stop after three rounds (--config.train.num_steps=1800) for the two-step
student; raising train.num_steps later continues with the next round.

  python -m diffusion_jax.main --config configs/digits_distill.py --workdir runs/digits_pd
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.task = "distill"
  config.diffusion.prediction = "v"          # as the teacher (configs/digits_v.py)
  config.model.dropout = 0.0                 # the student fits a deterministic target
  config.distill.teacher_workdir = "runs/digits_v"
  config.distill.base_num_steps = 16
  config.distill.steps_per_round = 600
  config.train.num_steps = 4 * 600           # 4 rounds: 16 -> 8 -> 4 -> 2 -> 1 steps
  config.train.learning_rate = 2e-4          # fine-tuning from the teacher
  config.train.warmup_steps = 50             # restarts every round (fresh optimizer state)
  config.train.ema_decay = 0.99              # short EMA: each round's student moves fast
  config.sample.sampler = "ddim"
  config.sample.eta = 0.0
  return config
