"""Ho et al. 2020's CIFAR-10 DDPM: 35.7M parameters, linear β, T = 1000, L_simple.

Needs the tfds `cifar10` dataset prepared (or downloadable) in data.data_dir.
Paper settings: batch 128, Adam lr 2e-4 with 5000 warm-up steps, dropout 0.1,
random flips, EMA 0.9999, 800k steps.
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.data.dataset = "cifar10"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = True

  config.diffusion.schedule = "linear"
  config.diffusion.num_timesteps = 1000

  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.model.num_groups = 32

  config.train.num_steps = 800_000
  config.train.batch_size = 128
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 5000
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.9999
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.sample_every = 50_000

  config.sample.sampler = "ddpm"
  config.sample.num_steps = 1000
  config.sample.clip_x0 = 1.0
  config.sample.num_samples = 50_000
  config.sample.batch_size = 256
  config.sample.grid_size = 64
  config.eval.max_examples = 1000
  return config
