"""The default config: every setting, with a comment on the non-obvious ones.

`configs/*.py` start from `get_default_config()` and change what differs, so a
setting exists (and can be overridden on the command line) in every config.
The defaults describe an unconditional DDPM on the embedded 8x8 digits.
"""

import ml_collections
from ml_collections import config_dict


def get_default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = "diffusion"     # diffusion | classifier (noise-aware, for classifier guidance)
                                # | distill (progressive distillation of a trained model)
                                # | consistency (consistency distillation or training)

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "digits"       # embedded default, built offline; or any tfds image dataset
  data.data_dir = config_dict.placeholder(str)         # tfds data dir; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  data.image_size = 8           # must equal the dataset's height and width
  data.channels = 1
  data.random_flip = False      # horizontal flips would turn digits into mirror glyphs
  data.dequantize = False       # uniform dequantization (only for likelihood training)
  data.in_memory = True         # decode the split into RAM once (small datasets)
  data.worker_count = 0         # grain worker processes (0 = in the main process)

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "cosine"     # linear | cosine | sigmoid | scaled_linear
  diffusion.num_timesteps = 1000
  diffusion.rescale_to_zero_terminal_snr = False
  diffusion.prediction = "eps"      # eps | x0 | v
  diffusion.variance = "fixed_small"  # fixed_small | fixed_large | learned | learned_range
  diffusion.loss_type = "simple"    # simple | hybrid (learned variances) | vlb
  diffusion.weighting = "min_snr"   # none | min_snr (Hang et al. 2023: faster convergence)
  diffusion.min_snr_gamma = 5.0
  diffusion.vlb_weight = 1e-3       # λ of L_hybrid = L_simple + λ L_vlb (IDDPM)

  config.model = model = ml_collections.ConfigDict()
  model.ch = 32                 # base channel count
  model.ch_mult = (1, 2)        # channel multiplier per resolution level (8x8, 4x4)
  model.num_res_blocks = 2
  model.attn_resolutions = (4,)  # feature-map sizes that get self-attention
  model.dropout = 0.1
  model.num_heads = 1
  model.num_groups = 8          # GroupNorm groups; must divide every channel count
  model.conditioning = "none"   # none | class (label embedding) | embedding (cross-attention)
  model.context_len = 4         # conditioning="embedding": length L of each class's sequence
  model.context_dim = 32        # conditioning="embedding": width D of the sequence
  model.dtype = "float32"       # compute dtype: float32 | bfloat16 (params stay float32)

  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 2000
  train.batch_size = 128        # global batch, split over all devices
  train.optimizer = "adam"      # adam | adamw
  train.learning_rate = 1e-3
  train.warmup_steps = 100      # linear learning-rate warm-up (0: constant rate)
  train.weight_decay = 0.0      # adamw only
  train.grad_clip = 1.0         # global-norm clipping; 0 disables
  train.ema_decay = 0.999       # EMA decay; the warm-up min(decay, (1+n)/(10+n)) applies
  train.max_nonfinite_steps = 20  # stop after this many consecutive non-finite updates
  train.log_every = 50
  train.checkpoint_every = 500
  train.keep_checkpoints = 2
  train.sample_every = 0        # PNG grid of EMA samples every N steps (0: only at the end)
  train.label_dropout = 0.0     # classifier-free guidance training: p(cond -> null cond)

  config.sample = sample = ml_collections.ConfigDict()
  sample.sampler = "ddim"       # ddpm | ddim | dpmpp_2m | ...
  sample.num_steps = 100        # sampler steps K; None -> all T steps
  sample.eta = 1.0              # DDIM stochasticity (0 deterministic, 1 = DDPM posterior variance)
  sample.spacing = "trailing"   # linspace | leading | trailing | quadratic | logsnr
  sample.clip_x0 = 1.0          # clip predicted x0 to [-c, c] (data lie in [-1, 1]); None disables
  sample.num_samples = 1000
  sample.batch_size = 500
  sample.grid_size = 100        # images in the PNG grid
  sample.labels = config_dict.placeholder(str)  # e.g. "3" or "0,1,2"; None balances classes
  sample.guidance_scale = 1.0   # classifier-free guidance w (1 = plain conditional)
  sample.classifier_workdir = config_dict.placeholder(str)  # classifier guidance: a task=classifier run
  sample.classifier_scale = 1.0  # classifier guidance scale s

  # Progressive distillation (task="distill", Salimans & Ho 2022). The student
  # has this config's model and diffusion settings, which must equal the
  # teacher's; it starts from the teacher's EMA params. Round r trains on the
  # DDIM grid of base_num_steps / 2^(r+1) steps against two teacher steps each;
  # there are train.num_steps / steps_per_round rounds, and the final student
  # samples with DDIM (η = 0) on its grid (sample.num_steps/spacing unused).
  config.distill = distill = ml_collections.ConfigDict()
  distill.teacher_workdir = config_dict.placeholder(str)  # a trained task="diffusion" run
  distill.base_num_steps = 64   # K0: the teacher's DDIM steps in round 0 (a power of two)
  distill.base_spacing = "trailing"  # grid of the K0 steps (trailing keeps t = T-1 in every round)
  distill.steps_per_round = 1000
  distill.teacher_clip_x0 = 1.0  # clip the teacher's x̂_0 to the data range (None: off)

  # Consistency models (task="consistency", Song et al. 2023). With a teacher:
  # consistency distillation (CD) on a grid of num_points training indices
  # (make_timesteps(T, num_points, "linspace"): 0 and T-1 included), starting
  # from the teacher's EMA params (same model and diffusion settings). Without:
  # consistency training (CT) from scratch with the curriculum N(k) from ct_s0
  # to ct_s1 + 1 points. The network keeps diffusion.prediction; the
  # consistency function is the DDIM jump of its (x̂_0, ε̂) to t = 0.
  config.consistency = cm = ml_collections.ConfigDict()
  cm.teacher_workdir = config_dict.placeholder(str)  # a trained task="diffusion" run; None: CT
  cm.num_points = 18            # CD: grid points N (the paper's CIFAR-10 setting)
  cm.solver = "heun"            # CD: the teacher's ODE step, euler (= DDIM) | heun
  cm.metric = "l2"              # l2 | pseudo_huber (iCT)
  cm.weighting = "uniform"      # uniform | inverse_gap (iCT: 1/(σ_{n+1} - σ_n))
  cm.target_ema = 0.95          # CD: decay μ of the target network θ⁻
  cm.teacher_clip_x0 = 1.0      # CD: clip the teacher's x̂_0 (None: off)
  cm.ct_s0 = 2                  # CT curriculum: N(0) = s0 ...
  cm.ct_s1 = 150                # ... N(end) = s1 + 1
  cm.ct_mu0 = 0.9               # CT: μ(k) = exp(s0 log μ0 / N(k)); 0 = iCT's θ⁻ = θ
  # The consistency sampler's grid as training indices, e.g. "499,999" (two
  # steps); None: one step from T-1.
  cm.sample_timesteps = config_dict.placeholder(str)

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 64
  ev.max_examples = 128         # test images for the bound (T forwards each); None = all
  ev.chunk_size = 50            # timesteps evaluated at once (memory bound)

  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = False  # call jax.distributed.initialize() (multi-host)
  return config
