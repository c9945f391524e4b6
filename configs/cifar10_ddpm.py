"""Ho et al. 2020's CIFAR-10 DDPM, as the paper and its released code train and
sample it: 35.7M parameters, linear β from 1e-4 to 0.02, T = 1000, ε
prediction, L_simple unweighted, batch 128, Adam 2e-4 with 5,000 warm-up
steps, dropout 0.1, random flips, EMA 0.9999, 800k steps; sampled with the
1,000 ancestral steps and the `fixedlarge` variance (σ² = β_t) of the released
code (`diffusion_tf/diffusion_utils.py`). Reported FID 3.17.

Data: the official CIFAR-10 python tarball (`--config.data.path=...
cifar-10-python.tar.gz`), read offline, or the tfds `cifar10` prepared in
data.data_dir (then unset data.path).

Departures from the paper, each deliberate:
  * the gradient-norm clip is 1.0, as in the released code (the paper does not
    state it);
  * x̂_0 is clipped to [-1, 1] while sampling, as the released code does;
  * the FID Inception is pytorch-fid's port of the TF graph (set
    eval.inception_weights; see README "Evaluation").
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.data.dataset = "cifar10"
  config.data.path = "cifar-10-python.tar.gz"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = True

  config.diffusion.schedule = "linear"
  config.diffusion.num_timesteps = 1000
  config.diffusion.prediction = "eps"
  config.diffusion.variance = "fixed_large"   # the released code's "fixedlarge" sampler
  config.diffusion.loss_type = "simple"
  config.diffusion.weighting = "none"         # L_simple, unweighted (DDPM Eq. (14))

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
  config.sample.num_steps = None              # all 1,000 steps
  config.sample.clip_x0 = 1.0
  config.sample.num_samples = 50_000
  config.sample.batch_size = 256
  config.sample.grid_size = 64
  config.eval.max_examples = 1000
  config.eval.metrics = "fid,kid,precision_recall,bpd"
  config.eval.num_samples = 50_000
  config.eval.inception_batch_size = 250
  return config
