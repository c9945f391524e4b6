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

from diffusion_jax.mesh import DEFAULT_RULES


def get_default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0               # seeds the init, the training randomness and the samples
  config.task = "diffusion"     # what to train: a name in `tasks.TASKS` (tasks/*.py)

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "digits"       # the data source: a name in `data.sources.names()` (some read data.path),
                                # or any tfds image dataset prepared in data.data_dir
  data.path = config_dict.placeholder(str)  # the file or folder of the sources that read one (folder, npz, cifar10)
  data.data_dir = config_dict.placeholder(str)         # tfds data dir; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  data.num_classes = config_dict.placeholder(int)  # None: the dataset's (set it to describe a
                                # class-conditional model without its data)
  data.image_size = 8           # side S the model sees; other sizes are resized (shorter side) and centre-cropped
  data.channels = 1             # 1 (grayscale) | 3 (RGB); alpha is composited over white
  data.test_fraction = 0.1      # folder, npz: share of the examples in the test split (hash of path/index)
  data.random_flip = False      # horizontal flips would turn digits into mirror glyphs
  data.dequantize = False       # uniform dequantization (only for likelihood training)
  data.in_memory = config_dict.placeholder(bool)  # decode the split into RAM once; None: auto (folder no, others yes)
  data.worker_count = 0         # grain worker processes (0 = in the main process); they decode a folder's images

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.process = "discrete"    # the noise process: "discrete" (the β schedule below, T steps) or a
                                    # continuous one in `schedules.PROCESSES`: vp_linear, vp_cosine, edm, flow
  diffusion.schedule = "cosine"     # β schedule: a name in `schedules.SCHEDULES`
  diffusion.num_timesteps = 1000    # T
  diffusion.rescale_to_zero_terminal_snr = False  # Lin et al. 2024; needs a prediction defined at ᾱ = 0
  diffusion.prediction = "eps"      # what the network predicts: a name in `process.PREDICTIONS`
  diffusion.variance = "fixed_small"  # Σ_θ: a name in `process.VARIANCES` (learned ones add output channels)
  diffusion.loss_type = "simple"    # a name in `losses.LOSS_TYPES` (hybrid needs a learned variance)
  diffusion.weighting = "min_snr"   # a name in `losses.WEIGHTINGS` (min_snr: Hang et al. 2023; edm: Karras
                                    # et al. 2022's λ(σ) = (σ² + σ_d²)/(σ σ_d)² on the x̂_0 error)
  diffusion.min_snr_gamma = 5.0     # γ of min-SNR-γ weighting (> 0)
  diffusion.vlb_weight = 1e-3       # λ of L_hybrid = L_simple + λ L_vlb (IDDPM)
  diffusion.beta_min = 0.1          # vp_linear: β(0) of β(t) = β_min + t (β_max - β_min) (score SDE)
  diffusion.beta_max = 20.0         # vp_linear: β(1)
  diffusion.logsnr_min = -10.0      # vp_cosine: λ = log(α/σ) at t = 1 (the cosine clipped to [min, max])
  diffusion.logsnr_max = 10.0       # vp_cosine: λ at t = 0
  diffusion.sigma_min = 0.002       # edm: the least noise σ of the sampling grids (Karras et al. 2022)
  diffusion.sigma_max = 80.0        # edm: the noise σ sampling starts from
  diffusion.t_eps = 1e-3            # vp_linear, vp_cosine, flow: the least noisy time of the sampling grids
  diffusion.shift = 1.0             # time shift s > 0 of training times and the "shifted" grid (SD3 §5.3.2;
                                    # flow: t -> s t/(1 + (s-1) t)); 1 = none
  diffusion.rho = 7.0               # ρ of the "karras" time grid (EDM Eq. (5))
  diffusion.preconditioning = "none"  # "edm": the network is F in D = c_skip x + c_out F(c_in x; ¼ log σ)
                                    # (EDM Table 1; needs process="edm" and prediction="x0")
  diffusion.sigma_data = 0.5        # σ_d of EDM's preconditioning and of the "edm" weighting
  diffusion.t_sampling = "uniform"  # training times of a continuous process: a name in
                                    # `losses.TIME_SAMPLINGS` (log_normal: log(σ/α) ~ N(t_mean, t_std²))
  diffusion.t_mean = -1.2           # log_normal: mean of log(σ/α) (EDM's P_mean = -1.2; SD3's logit-normal: 0)
  diffusion.t_std = 1.2             # log_normal: its standard deviation (EDM's P_std = 1.2; SD3: 1)

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
  model.dtype = "float32"       # compute dtype, a name in `models.DTYPES` (see train.param_dtype)
  model.attention_impl = config_dict.placeholder(str)  # UNet: jax.nn.dot_product_attention's
                                # implementation ("xla" | "cudnn"; None: JAX chooses)
  model.remat = config_dict.placeholder(str)  # rematerialize every block (jax.checkpoint) with this
                                # `jax.checkpoint_policies` name, e.g. "nothing_saveable"; None: off
  # model.name="dit" (Peebles & Xie 2023): the transformer's size, a preset of
  # `models.dit.DIT_CONFIGS` (e.g. "DiT-XL/2") or the four fields below.
  model.variant = config_dict.placeholder(str)
  model.patch_size = 2          # DiT: patch side p (tokens = (H/p)(W/p))
  model.hidden_size = 384       # DiT: width
  model.depth = 12              # DiT: blocks (model.num_heads heads each)
  model.mlp_ratio = 4.0         # DiT: MLP width / hidden_size

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
  train.grad_accum_steps = 1    # micro-batches per step (gradient accumulation in one jitted step)
  train.param_dtype = "float32"  # params and optimizer state: float32 | bfloat16 (the EMA stays float32)
  train.ema_decay = 0.999       # EMA decay; the warm-up min(decay, (1+n)/(10+n)) applies
  train.max_nonfinite_steps = 20  # stop after this many consecutive non-finite updates
  train.log_every = 50
  train.checkpoint_every = 500
  train.keep_checkpoints = 2
  train.sample_every = 0        # PNG grid of EMA samples every N steps (0: only at the end)
  train.eval_every = 0          # eval.metrics' sample metrics every N steps and at the end (0: never)
  train.label_dropout = 0.0     # classifier-free guidance training: p(cond -> null cond), in [0, 1)

  config.sample = sample = ml_collections.ConfigDict()
  sample.sampler = "ddim"       # a name in `samplers.SAMPLERS`
  sample.num_steps = 100        # sampler steps K in [1, T]; None -> all T steps
  sample.eta = 1.0              # DDIM's η in [0, 1] (0 deterministic, 1 = DDPM posterior
                                # variance); samplers without an η ignore it
  sample.spacing = "trailing"   # the time grid: a name in `schedules.TIME_GRIDS`
  sample.s_churn = 0.0          # edm_heun: EDM's S_churn >= 0 (0: deterministic, Alg. 1; > 0: Alg. 2)
  sample.s_min = 0.0            # edm_heun: churn only where S_min <= σ <= S_max
  sample.s_max = config_dict.placeholder(float)  # edm_heun: S_max (None: no upper bound)
  sample.s_noise = 1.0          # edm_heun: S_noise, the scale of the churn's noise
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
  # What --mode=eval (and train.eval_every) measures: comma-separated names of
  # `metrics.suite.METRICS`; "bpd" is the likelihood (--mode=eval only).
  ev.metrics = "bpd"
  ev.num_samples = 1000         # samples drawn for the sample metrics (or read from eval.samples)
  ev.samples = config_dict.placeholder(str)  # an npz of samples to score instead (--mode=sample's)
  ev.inception_weights = config_dict.placeholder(str)  # the FID Inception .npz (convert_inception)
  ev.inception_batch_size = 64
  ev.fid_stats = config_dict.placeholder(str)  # FID reference statistics (.npz; --mode=fid_stats)
  ev.reference_split = "train"  # real images for FID (without fid_stats), KID and precision/recall
  ev.reference_examples = 10000  # at most this many of them (None: all)
  ev.kid_subsets = 100
  ev.kid_subset_size = 1000
  ev.pr_k = 3                   # k of the k-NN manifolds of precision/recall
  ev.checkpoint_step = config_dict.placeholder(int)  # the checkpoint to evaluate (None: latest)
  ev.batch_size = 64
  ev.max_examples = 128         # test images for the bound (T forwards each); None = all
  ev.chunk_size = 50            # timesteps evaluated at once (memory bound)
  ev.method = "auto"            # bits/dim by: vlb (the variational bound, discrete process), ode (exact
                                # likelihood of the probability-flow ODE, continuous processes), auto

  # --mode=edit (diffusion_jax/edit.py): edit given images with the run's EMA
  # params of sample.checkpoint_step; inpaint and sdedit sample with the
  # sample.* settings, relabel and interpolate invert with DDIM on their grid.
  config.edit = edit = ml_collections.ConfigDict()
  edit.kind = "inpaint"         # what to do: a name in `edit.EDITS` (diffusion_jax/edit.py)
  edit.input = config_dict.placeholder(str)  # an npz (uint8 images [N,H,W,C], optional labels:
                                # what --mode=sample writes), a .png, a comma list of them or a folder
  edit.num_images = config_dict.placeholder(int)  # edit the first N input images; None: all
  edit.output = config_dict.placeholder(str)  # the npz (None: WORKDIR/edit_<kind>.npz; relative
                                # paths are under the workdir); the before/after PNG goes beside it
  edit.mask = "bottom_half"     # inpaint: a .png (white = known) or a name in `edit.MASKS`
  edit.method = "repaint"       # inpaint: a name in `editing.INPAINT_METHODS`
  edit.jump_length = 10         # inpaint, repaint: jump length j in grid points, in [1, K-1]
  edit.jump_n_sample = 10       # inpaint, repaint: passes over each resampled segment (1: none)
  edit.strength = 0.5           # sdedit: noise level in (0, 1] (1: sample anew; -> 0: the input)
  edit.labels = config_dict.placeholder(str)  # relabel: target labels ("3", "0,1,2", cycled;
                                # None: every class); inpaint/sdedit: labels when the input has none
  edit.source_labels = config_dict.placeholder(str)  # relabel: the inputs' labels when the npz has none
  edit.num_points = 8           # interpolate: images along each slerp, ends included (>= 2)

  # --mode=export: the EMA params as .safetensors or .npz, with <name>.json (the
  # config) beside it; `diffusion_jax.load` reads it back.
  config.export = export = ml_collections.ConfigDict()
  export.checkpoint_step = config_dict.placeholder(int)  # None: the latest
  export.output = config_dict.placeholder(str)  # None: WORKDIR/export/params.safetensors

  # The device mesh: data × fsdp = all devices (of all processes). Parameters,
  # their EMA and the optimizer state are split over "fsdp" (FSDP) by their
  # Flax logical axis names; the batch is split over both axes.
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1                # data-parallel axis (-1: the devices left over)
  mesh.fsdp = 1                 # parameter-sharding axis (-1: the devices left over)
  mesh.logical_axis_rules = DEFAULT_RULES  # (logical axis name, mesh axis or None) pairs

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
