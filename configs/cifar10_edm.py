"""EDM's unconditional CIFAR-10 setting (Karras et al. 2022, Table 7 and App. F.2).

Needs CIFAR-10 (data.dataset="cifar10" with data.path, or tfds). EDM's
numbers are given beside each setting; the departures are marked DEPARTURE.

  python -m diffusion_jax.main --config configs/cifar10_edm.py --workdir runs/cifar10_edm \
      --config.data.path=/path/to/cifar-10-python.tar.gz
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  config.data.dataset = "cifar10"
  config.data.image_size = 32
  config.data.channels = 3
  # DEPARTURE: EDM trains CIFAR-10 with its non-leaky geometric augmentation
  # (p = 0.12, the augmentation labels conditioning the network), which this
  # project does not have; horizontal flips (DDPM's) stand in.
  config.data.random_flip = True

  d = config.diffusion
  d.process = "edm"                  # α = 1, σ(t) = t
  d.sigma_min = 0.002                # σ_min, σ_max, ρ of the sampling grid (Table 1)
  d.sigma_max = 80.0
  d.rho = 7.0
  d.preconditioning = "edm"          # c_skip, c_out, c_in, c_noise = ¼ ln σ
  d.prediction = "x0"                # D estimates x_0
  d.sigma_data = 0.5                 # σ_d = 0.5
  d.weighting = "edm"                # λ(σ) = (σ² + σ_d²)/(σ σ_d)²
  d.t_sampling = "log_normal"        # ln σ ~ N(P_mean, P_std²)
  d.t_mean = -1.2                    # P_mean = -1.2
  d.t_std = 1.2                      # P_std = 1.2

  m = config.model
  # DEPARTURE: EDM's DDPM++ (SongUNet: 56M parameters, FIR resampling, skip
  # connections scaled by 1/√2, positional noise embedding) is replaced by this
  # project's DDPM UNet with DDPM++'s widths: 128 channels, multipliers
  # (2, 2, 2), 4 blocks per resolution, attention at 16x16.
  m.ch = 128
  m.ch_mult = (2, 2, 2)
  m.num_res_blocks = 4
  m.attn_resolutions = (16,)
  m.dropout = 0.13                   # EDM's dropout for CIFAR-10
  m.num_groups = 32

  t = config.train
  t.batch_size = 512                 # batch 512
  t.num_steps = 390_625              # 200 Mimg / 512
  t.optimizer = "adam"               # Adam, β = (0.9, 0.999), ε = 1e-8
  t.learning_rate = 1e-3             # lr 10e-4
  t.warmup_steps = 19_531            # lr ramp-up over 10 Mimg (10e6 / 512 steps)
  t.lr_schedule = "constant"
  t.grad_clip = 0.0                  # EDM does not clip gradients
  # EMA half-life 0.5 Mimg: 0.5^(512/500000) per step. DEPARTURE: EDM also
  # ramps the half-life up (ema_rampup_ratio 0.05); here the warm-up is
  # min(decay, (1+n)/(10+n)).
  t.ema_decay = 0.999290
  t.log_every = 100
  t.checkpoint_every = 10_000
  t.sample_every = 50_000

  s = config.sample
  s.sampler = "edm_heun"             # EDM Alg. 1, deterministic (S_churn = 0 for CIFAR-10)
  s.num_steps = 18                   # N = 18: 35 model calls (FID 1.97 in the paper)
  s.spacing = "karras"               # the ρ = 7 grid
  s.clip_x0 = None                   # EDM does not clip
  s.num_samples = 50_000             # FID on 50k samples
  s.batch_size = 500
  s.grid_size = 64
  config.eval.method = "ode"         # bits/dim from the probability-flow ODE
  config.eval.max_examples = 1000    # DEPARTURE: a 1,000-image subset of the test split (EDM reports no NLL)
  return config
