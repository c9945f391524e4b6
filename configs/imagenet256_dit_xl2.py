"""DiT-XL/2 (Peebles & Xie 2023, Table 1): 28 blocks of width 1152 and 16 heads,
2x2 patches, class-conditional over ImageNet's 1000 classes with a null class
for classifier-free guidance, learned Σ (IDDPM's interpolated variance, hybrid
loss): 675M parameters.

The paper trains it on the 32x32x4 latents of Stable Diffusion's VAE for
256x256 ImageNet. This project's data sources read uint8 images, not float
latents, so this config trains the same network on ImageNet images at 32x32
RGB (a folder with one subfolder per class: data.path); the network differs
from the paper's only in its input/output projection (3 channels instead of
4). A launch recipe for a TPU pod slice is in README.md ("Large models").

Departures from the paper, each deliberate: pixel space (above); min-SNR is
off and L_simple + λ L_vlb is IDDPM's hybrid as in the paper; bf16 compute.

  diffusion-jax --config imagenet256_dit_xl2 --mode=describe   # parameters, memory per device
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.data.dataset = "folder"
  config.data.path = "imagenet/train"   # ILSVRC-2012 train, one subfolder per class
  config.data.image_size = 32
  config.data.channels = 3
  config.data.num_classes = 1000        # (also read from the folder; lets --mode=describe run without it)
  config.data.random_flip = True
  config.data.worker_count = 8

  config.diffusion.schedule = "linear"  # the paper's: linear β 1e-4 .. 0.02, T = 1000
  config.diffusion.num_timesteps = 1000
  config.diffusion.variance = "learned_range"
  config.diffusion.loss_type = "hybrid"
  config.diffusion.weighting = "none"

  config.model.name = "dit"
  config.model.variant = "DiT-XL/2"
  config.model.dropout = 0.0
  config.model.conditioning = "class"
  config.model.dtype = "bfloat16"
  config.model.remat = "nothing_saveable"   # activations recomputed in the backward pass

  config.train.num_steps = 400_000
  config.train.batch_size = 256         # the paper's
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-4     # constant, no warm-up, no weight decay (the paper's)
  config.train.warmup_steps = 0
  config.train.weight_decay = 0.0
  config.train.grad_clip = 0.0
  config.train.ema_decay = 0.9999
  config.train.label_dropout = 0.1
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.sample_every = 50_000

  config.mesh.fsdp = -1                 # parameters and Adam state split over every device
  config.mesh.data = 1

  config.sample.sampler = "ddpm"
  config.sample.num_steps = 250         # the paper's evaluation sampler
  config.sample.guidance_scale = 1.5
  config.sample.batch_size = 256
  return config
