"""The noise-aware digits classifier for classifier guidance (Dhariwal & Nichol 2021).

The UNet's encoder half plus a pooled head, trained with cross-entropy on
x_t ~ q(x_t|x_0) at uniform t, through the same CLI:

  python -m diffusion_jax.main --config configs/digits_classifier.py --workdir runs/digits_clf
  python -m diffusion_jax.main --config configs/digits_classifier.py --workdir runs/digits_clf --mode=eval

Then guide the unconditional model with it:

  python -m diffusion_jax.main --config configs/digits.py --workdir runs/digits --mode=sample \
      --config.sample.classifier_workdir=runs/digits_clf --config.sample.classifier_scale=6
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.task = "classifier"
  config.model.num_res_blocks = 1
  config.model.dropout = 0.0
  config.train.num_steps = 1500
  config.train.ema_decay = 0.99
  config.eval.max_examples = None    # accuracy on the whole test split
  config.eval.batch_size = 360
  return config
