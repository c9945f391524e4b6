"""The default config: every setting, with a comment on the non-obvious ones.

`configs/*.py` start from `get_default_config()` and change what differs, so a
setting exists (and can be overridden on the command line) in every config.
The defaults describe an unconditional DDPM on the embedded 8x8 digits.
"""

import functools
import inspect
import re

import ml_collections
from ml_collections import config_dict


def get_default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0               # seeds the init, the training randomness and the samples
  config.task = "diffusion"     # what to train: a name in `tasks.TASKS` (tasks/*.py)

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "digits"       # the data source: a name in `data.sources.names()` (some read data.path),
                                # or any tfds image dataset prepared in data.data_dir
  data.path = config_dict.placeholder(str)  # the file or folder of the sources that read one (folder, npz, cifar10)
  data.data_dir = config_dict.placeholder(str)         # tfds data dir; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  data.image_size = 8           # side S the model sees; other sizes are resized (shorter side) and centre-cropped
  data.channels = 1             # 1 (grayscale) | 3 (RGB); alpha is composited over white
  data.test_fraction = 0.1      # folder, npz: share of the examples in the test split (hash of path/index)
  data.random_flip = False      # horizontal flips would turn digits into mirror glyphs
  data.dequantize = False       # uniform dequantization (only for likelihood training)
  data.in_memory = config_dict.placeholder(bool)  # decode the split into RAM once; None: auto (folder no, others yes)
  data.worker_count = 0         # grain worker processes (0 = in the main process); they decode a folder's images

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "cosine"     # β schedule: a name in `schedules.SCHEDULES`
  diffusion.num_timesteps = 1000    # T
  diffusion.rescale_to_zero_terminal_snr = False  # Lin et al. 2024; needs a prediction defined at ᾱ = 0
  diffusion.prediction = "eps"      # what the network predicts: a name in `process.PREDICTIONS`
  diffusion.variance = "fixed_small"  # Σ_θ: a name in `process.VARIANCES` (learned ones add output channels)
  diffusion.loss_type = "simple"    # a name in `losses.LOSS_TYPES` (hybrid needs a learned variance)
  diffusion.weighting = "min_snr"   # a name in `losses.WEIGHTINGS` (min_snr: Hang et al. 2023)
  diffusion.min_snr_gamma = 5.0     # γ of min-SNR-γ weighting (> 0)
  diffusion.vlb_weight = 1e-3       # λ of L_hybrid = L_simple + λ L_vlb (IDDPM)

  config.model = model = ml_collections.ConfigDict()
  model.name = "unet"           # the network: a name in `models.NETWORKS`
  model.ch = 32                 # base channel count
  model.ch_mult = (1, 2)        # channel multiplier per resolution level (8x8, 4x4)
  model.num_res_blocks = 2
  model.attn_resolutions = (4,)  # feature-map sizes that get self-attention
  model.dropout = 0.1
  model.num_heads = 1
  model.num_groups = 8          # GroupNorm groups; must divide every channel count
  model.conditioning = "none"   # a name in `conditioning.CONDITIONINGS`: labels as an embedding
                                # (class) or a per-class sequence read by cross-attention (embedding)
  model.context_len = 4         # conditioning="embedding": length L of each class's sequence
  model.context_dim = 32        # conditioning="embedding": width D of the sequence
  model.dtype = "float32"       # compute dtype, a name in `models.DTYPES` (params stay float32)

  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 2000
  train.batch_size = 128        # global batch, split over all devices (must divide evenly)
  train.optimizer = "adam"      # a name in `optim.OPTIMIZERS`
  train.learning_rate = 1e-3    # peak learning rate
  train.warmup_steps = 100      # linear learning-rate warm-up from 0 (0: none)
  train.lr_schedule = "constant"  # after the warm-up: a name in `optim.LR_SCHEDULES`
  train.end_lr_factor = 0.0     # cosine / linear decay: final rate = factor × peak
  train.weight_decay = 0.0      # adamw only
  train.grad_clip = 1.0         # global-norm clipping; 0 disables
  train.ema_decay = 0.999       # EMA decay; the warm-up min(decay, (1+n)/(10+n)) applies
  train.max_nonfinite_steps = 20  # stop after this many consecutive non-finite updates
  train.log_every = 50
  train.checkpoint_every = 500
  train.keep_checkpoints = 2
  train.sample_every = 0        # PNG grid of EMA samples every N steps (0: only at the end)
  train.label_dropout = 0.0     # classifier-free guidance training: p(cond -> null cond), in [0, 1)

  config.sample = sample = ml_collections.ConfigDict()
  sample.sampler = "ddim"       # a name in `samplers.SAMPLERS`
  sample.num_steps = 100        # sampler steps K in [1, T]; None -> all T steps
  sample.eta = 1.0              # DDIM's η in [0, 1] (0 deterministic, 1 = DDPM posterior
                                # variance); samplers without an η ignore it
  sample.spacing = "trailing"   # the time grid: a name in `schedules.TIME_GRIDS`
  sample.clip_x0 = 1.0          # clip predicted x0 to [-c, c] (data lie in [-1, 1]); None disables
  sample.num_samples = 1000
  sample.batch_size = 500       # samples per sample_fn call (the samples do not depend on it)
  sample.grid_size = 100        # images in the PNG grid
  sample.labels = config_dict.placeholder(str)  # e.g. "3" or "0,1,2"; None balances classes
  sample.guidance_scale = 1.0   # classifier-free guidance w (1 = plain conditional, 0 unconditional)
  sample.classifier_workdir = config_dict.placeholder(str)  # classifier guidance: a task=classifier run
  sample.classifier_scale = 1.0  # classifier guidance scale s
  sample.checkpoint_step = config_dict.placeholder(int)  # --mode=sample: the checkpoint (None: latest)
  sample.output = config_dict.placeholder(str)  # --mode=sample: the npz (None: WORKDIR/samples.npz;
                                # relative paths are under the workdir); the PNG grid goes beside it

  # Progressive distillation (task="distill", Salimans & Ho 2022). The student
  # has this config's model and diffusion settings, which must equal the
  # teacher's; it starts from the teacher's EMA params. Round r trains on the
  # DDIM grid of base_num_steps / 2^(r+1) steps against two teacher steps each;
  # there are train.num_steps / steps_per_round rounds, and the final student
  # samples with DDIM (η = 0) on its grid (sample.num_steps/spacing unused).
  config.distill = distill = ml_collections.ConfigDict()
  distill.teacher_workdir = config_dict.placeholder(str)  # a trained task="diffusion" run
  distill.base_num_steps = 64   # K0: the teacher's DDIM steps in round 0 (a power of two <= T)
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
  cm.num_points = 18            # CD: grid points N in [2, T] (the paper's CIFAR-10 setting)
  cm.solver = "heun"            # CD: the teacher's ODE step, a name in `consistency.SOLVERS`
  cm.metric = "l2"              # a name in `consistency.METRICS` (pseudo_huber: iCT)
  cm.weighting = "uniform"      # a name in `consistency.WEIGHTINGS` (inverse_gap: iCT)
  cm.target_ema = 0.95          # CD: decay μ in [0, 1) of the target network θ⁻
  cm.teacher_clip_x0 = 1.0      # CD: clip the teacher's x̂_0 (None: off)
  cm.ct_s0 = 2                  # CT curriculum: N(0) = s0 ...
  cm.ct_s1 = 150                # ... N(end) = s1 + 1, with 2 <= s0 <= s1 < T
  cm.ct_mu0 = 0.9               # CT: μ(k) = exp(s0 log μ0 / N(k)), μ0 in [0, 1); 0 = iCT's θ⁻ = θ
  # The consistency sampler's grid as training indices, e.g. "499,999" (two
  # steps); None: one step from T-1.
  cm.sample_timesteps = config_dict.placeholder(str)

  config.eval = ev = ml_collections.ConfigDict()
  ev.checkpoint_step = config_dict.placeholder(int)  # the checkpoint to evaluate (None: latest)
  ev.batch_size = 64
  ev.max_examples = 128         # test images for the bound (T forwards each); None = all
  ev.chunk_size = 50            # timesteps evaluated at once (memory bound)

  # --mode=export: the EMA params as .safetensors or .npz, with <name>.json (the
  # config) beside it; `diffusion_jax.load` reads it back.
  config.export = export = ml_collections.ConfigDict()
  export.checkpoint_step = config_dict.placeholder(int)  # None: the latest
  export.output = config_dict.placeholder(str)  # None: WORKDIR/export/params.safetensors

  # Several processes (jax.distributed): set the three below, or initialize=True
  # to detect them from the cluster (TPU pod slices, SLURM, Open MPI, Kubernetes).
  config.distributed = dist = ml_collections.ConfigDict()
  dist.initialize = False       # start jax.distributed with auto-detected settings
  dist.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0
  dist.num_processes = config_dict.placeholder(int)
  dist.process_id = config_dict.placeholder(int)           # 0 .. num_processes - 1
  dist.heartbeat_timeout = 100  # s without heartbeats before the others stop (a dead process)
  return config


@functools.lru_cache(maxsize=1)
def setting_comments() -> dict[str, str]:
  """The comment of every setting in `get_default_config`'s source, by its
  dotted path (e.g. "train.num_steps"): its end-of-line comment with the
  continuation lines aligned under it, or else the comment block just above it."""
  source = inspect.getsource(get_default_config).splitlines()
  alias, comments, last, block = {"config": ""}, {}, None, []
  for line in source:
    section = re.match(r"\s*config\.(\w+) = (?:(\w+) = )?ml_collections\.ConfigDict", line)
    if section:
      alias[section.group(2) or section.group(1)] = section.group(1) + "."
      last, block = None, []
      continue
    setting = re.match(r"\s*(\w+)\.(\w+) = [^#]*?(?:#\s*(.*))?$", line)
    if setting and setting.group(1) in alias:
      last = alias[setting.group(1)] + setting.group(2)
      comments[last] = (setting.group(3) or "").strip() or " ".join(block)
      block = []
      continue
    comment = re.match(r"(\s+)#\s*(.*)$", line)
    if comment and len(comment.group(1)) > 4 and last is not None and comments.get(last):
      comments[last] += " " + comment.group(2).strip()   # aligned continuation
    elif comment:
      block.append(comment.group(2).strip())             # a block above a setting
      last = None
    else:
      last, block = None, []
  return comments
