"""Class-conditional digits, trained for classifier-free guidance.

A label embedding is added to the timestep embedding; 10% of the labels are
dropped to the null class during training (Ho & Salimans 2022), so one model
samples both p(x|y) and p(x). Sample with a guidance scale w (w = 1 is plain
conditional sampling, w = 0 unconditional, w > 1 stronger guidance):

  python -m diffusion_jax.main --config configs/digits_cond.py --workdir runs/digits_cond \
      --mode=sample --config.sample.guidance_scale=2 --config.sample.labels=7
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.model.conditioning = "class"
  config.train.label_dropout = 0.1   # p(label -> null label)
  config.sample.guidance_scale = 2.0
  # The settings of the run measured in README.md (before min-SNR weighting
  # and η = 1 sampling became the defaults).
  config.diffusion.weighting = "none"
  config.train.num_steps = 2500
  config.sample.eta = 0.0
  config.sample.num_steps = 50
  return config
