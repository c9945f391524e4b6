"""The default digits model with v-prediction: the teacher for distillation.

Progressive distillation and consistency distillation start their student from
this model's weights. Salimans & Ho (2022, §4) recommend v (or x0) prediction
for distillation: x̂_0 = √ᾱ x_t − √(1−ᾱ) v stays well-conditioned at the
noisiest timesteps, where x̂_0 from ε divides by √ᾱ ≈ 0 and every error of ε̂ is
amplified. Everything else is the main job's recipe (`configs/digits.py`).

Run:  python -m diffusion_jax.main --config configs/digits_v.py --workdir runs/digits_v
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.diffusion.prediction = "v"
  return config
