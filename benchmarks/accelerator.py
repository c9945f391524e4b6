"""Accelerator benchmark: the CIFAR-10 DDPM UNet against the same work in PyTorch.

On whatever device JAX sees, for the UNet of `configs/cifar10_ddpm.py` (Ho et
al. 2020, 35.7M parameters), it measures and prints:

* training steps/s at batch 128, float32 and bfloat16 compute
  (`model.dtype=bfloat16`, params float32), with the project's
  `train.Trainer` step (donated state) and, in bfloat16, the same step with
  the UNet's `attention_impl="cudnn"` (`jax.nn.dot_product_attention`'s cuDNN
  kernel) where it compiles;
* the time to sample 256 images with 1,000 DDPM steps and with 20
  DPM-Solver++(2M) steps (`make_sample_fn`, the config's clipping);
* memory per device: XLA's `compile().memory_analysis()` of each train step
  and sampler, and the device's peak bytes in use where it reports one;
* model FLOPs utilisation: XLA's cost analysis (of the train step; of one
  forward times the number of model calls for a sampler, since XLA counts a
  loop body once) over the device's peak FLOP/s (`PEAK_FLOPS`; "unknown
  peak" for other devices);
* the same work in PyTorch on the same device: diffusers' `UNet2DModel` in
  the google/ddpm-cifar10-32 configuration (random weights, dropout 0.1), with
  and without `torch.compile`, Adam with global-norm clipping 1, the same
  warm-up, min-SNR weighting and EMA update, autocast to bfloat16 for the
  bfloat16 rows; the same DDPM and DPM-Solver++(2M) loops on the project's
  own grids and coefficients. Each row prints project / PyTorch throughput.

Every group of rows is timed side by side: compilation and one warm-up call
first (reported separately), then the members of the group round-robin,
`--repeats` times, each call blocked on (`jax.block_until_ready`,
`torch.cuda.synchronize`); medians (and minima) are reported. On a GPU the
PyTorch members run in a worker process driven call by call from this one,
so that JAX never shares a process with PyTorch's CUDA libraries
(`--torch-process`).

XLA flags: `--xla-flags "..."` applies flags to this run; the group
`xla-flags` measures each flag set of `--xla-flag-sets` (defaults for GPUs
in `GPU_FLAG_SETS`) in a child process on the bfloat16 training step and the
bfloat16 DDPM sampler, next to a child without extra flags.

Modes. `--smoke` (automatic when JAX's backend is the CPU, unless `--full`):
a reduced UNet of the same family (16x16 images, ch 32, ch_mult (1, 2), one
block per level, attention at 8x8), batch 4, 8 DDPM / 4 DPM-Solver++ steps,
`torch.compile(backend="eager")`, so that CI runs every code path in about a
minute. `--full`: the real sizes. Groups run in priority order (goal rows
first) within `--budget-s`; the JSON file (`--out`) is rewritten after every
group, so an interrupted run keeps what it measured, and it lists what was
skipped.

  python benchmarks/accelerator.py                      # smoke on CPU, full elsewhere
  python benchmarks/accelerator.py --full --out benchmarks/results_gpu.json
  python benchmarks/accelerator.py --full --groups train-bf16,ddpm-bf16 --repeats 3
  python benchmarks/accelerator.py --full --groups xla-flags --no-torch

Needs the `bench` extra for the PyTorch rows (`pip install -e ".[bench]"`);
without torch/diffusers those rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

ROOT = Path(__file__).resolve().parents[1]

# Dense peak FLOP/s (no sparsity) by device kind, matched in order by
# substring of `device.device_kind`. NVIDIA: bf16 and tf32 tensor-core and
# fp32 CUDA-core peaks from the data sheets; float32 matmuls and convolutions
# at XLA's and cuDNN's default precision run as TF32 on these GPUs, so the
# float32 rows use the tf32 figure. TPU: XLA's default precision runs float32
# matmuls as bfloat16 passes, so the float32 rows use the bfloat16 peak.
PEAK_FLOPS = (
    # (substring, name, bf16, tf32, fp32)
    ("H100 PCIe", "NVIDIA H100 PCIe", 756e12, 378e12, 51.2e12),
    ("H100 NVL", "NVIDIA H100 NVL", 835e12, 418e12, 60e12),
    ("H200 NVL", "NVIDIA H200 NVL", 835e12, 418e12, 60e12),
    ("H100", "NVIDIA H100 SXM", 989e12, 495e12, 67e12),
    ("H200", "NVIDIA H200 SXM", 989e12, 495e12, 67e12),
    ("A100", "NVIDIA A100", 312e12, 156e12, 19.5e12),
    ("TPU v4", "TPU v4", 275e12, None, 275e12),
    ("TPU v5 lite", "TPU v5e", 197e12, None, 197e12),
    ("TPU v5e", "TPU v5e", 197e12, None, 197e12),
    ("TPU v5p", "TPU v5p", 459e12, None, 459e12),
    ("TPU v5", "TPU v5p", 459e12, None, 459e12),
    ("TPU v6 lite", "TPU v6e", 918e12, None, 918e12),
    ("TPU v6e", "TPU v6e", 918e12, None, 918e12),
)

# XLA flag sets measured by the group "xla-flags" on GPUs (each in its own
# process; an unknown flag fails that child only).
GPU_FLAG_SETS = (
    # Capture the whole step, the sampler's while loop included, in CUDA graphs.
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
    # cuBLAS / cuDNN instead of Triton for the matmuls.
    "--xla_gpu_enable_triton_gemm=false",
    # Convolutions fused with their neighbours.
    "--xla_gpu_experimental_enable_conv_fusion=true",
)

# Groups in priority order (the goal rows first) and a rough duration of each
# on an H100-class GPU with PyTorch rows, compilation included: a group starts
# only if that much of --budget-s is left.
GROUPS = ("train-bf16", "ddpm-bf16", "dpm-bf16", "train-f32", "dpm-f32", "ddpm-f32",
          "xla-flags")
GROUP_SECONDS = {"train-bf16": 200, "ddpm-bf16": 190, "dpm-bf16": 40, "train-f32": 180,
                 "dpm-f32": 70, "ddpm-f32": 200, "xla-flags": 300}

# Goals on one H100/H200 (full mode only).
GOAL_TRAIN_STEPS_PER_S = 63.0
GOAL_DDPM_SECONDS = 6.0
GOAL_RATIO = 1.3

SMOKE_MODEL = {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,),
               "num_groups": 8}


# ----------------------------------------------------------------------------
# Pure helpers (no JAX or torch import: the fast tests use them).
# ----------------------------------------------------------------------------


def device_peaks(device_kind: str) -> dict | None:
  """{"name", "bf16", "tf32", "fp32", "f32_rows"} for a device kind, or None."""
  for sub, name, bf16, tf32, fp32 in PEAK_FLOPS:
    if sub.lower() in device_kind.lower():
      return {"name": name, "bf16": bf16, "tf32": tf32, "fp32": fp32,
              "f32_rows": tf32 if tf32 is not None else fp32,
              "f32_rows_kind": "tf32" if tf32 is not None else "bf16 passes"}
  return None


def diffusers_config(model, image_size: int, channels: int) -> dict:
  """The diffusers `UNet2DModel` config of the project's UNet fields `model`
  (a config.model): google/ddpm-cifar10-32's fields for Ho et al.'s model,
  plus `dropout`."""
  n = len(model.ch_mult)
  attn = [image_size // 2 ** level in tuple(model.attn_resolutions) for level in range(n)]
  return {
      "_class_name": "UNet2DModel",
      "act_fn": "silu",
      "attention_head_dim": None if model.num_heads == 1 else model.ch * model.ch_mult[-1]
                            // model.num_heads,
      "block_out_channels": [model.ch * m for m in model.ch_mult],
      "center_input_sample": False,
      "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
      "downsample_padding": 0,
      "flip_sin_to_cos": False,
      "freq_shift": 1,
      "in_channels": channels,
      "layers_per_block": model.num_res_blocks,
      "mid_block_scale_factor": 1,
      "norm_eps": 1e-06,
      "norm_num_groups": model.num_groups,
      "out_channels": channels,
      "sample_size": image_size,
      "time_embedding_type": "positional",
      "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
      "dropout": float(model.dropout),
  }


def median_min(values):
  return {"median": statistics.median(values), "min": min(values), "n": len(values),
          "all": list(values)}


def fmt_s(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: int | None) -> str:
  if n is None:
    return "-"
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------
# Arguments and environment.
# ----------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--smoke", action="store_true", help="reduced model, tiny batch and steps")
  mode.add_argument("--full", action="store_true", help="the real sizes (default off CPU)")
  p.add_argument("--out", help="write the results as JSON here")
  p.add_argument("--groups", default=",".join(GROUPS),
                 help=f"comma-separated groups, run in this order: {','.join(GROUPS)}")
  p.add_argument("--budget-s", type=float, default=None,
                 help="start a group only if its rough duration (GROUP_SECONDS) fits in what "
                      "is left of this many seconds (full: 480; smoke: none)")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed calls per member (full: 5; 3 for the 1,000-step samplers)")
  p.add_argument("--train-steps", type=int, default=None,
                 help="training steps per timed call (full: 20; smoke: 2)")
  p.add_argument("--attention", choices=("auto", "xla", "cudnn"), default="auto",
                 help="the UNet's attention in the samplers (auto: cudnn where it compiled "
                      "and was faster in the bfloat16 training group)")
  p.add_argument("--xla-flags", default="",
                 help="XLA flags for this run, appended to XLA_FLAGS (write "
                      "--xla-flags='--xla_...': the value starts with --)")
  p.add_argument("--xla-flag-sets", default=None,
                 help="';'-separated flag sets for the group xla-flags, as "
                      "--xla-flag-sets='--a=1;--b=0 --c=1' (default on GPUs: GPU_FLAG_SETS; "
                      "elsewhere none)")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
  p.add_argument("--torch-compile-backend", default=None,
                 help="torch.compile backend (full: inductor; smoke: eager)")
  p.add_argument("--torch-compile-mode", default=None, help="torch.compile mode (default)")
  p.add_argument("--torch-process", choices=("auto", "worker", "same"), default="auto",
                 help="run the PyTorch members in a worker process (auto on GPUs: JAX never "
                      "shares a process with PyTorch's CUDA libraries) or in this one (auto on "
                      "the CPU, where two processes' idle threads would slow each other)")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.groups = [g for g in args.groups.split(",") if g]
  unknown = sorted(set(args.groups) - set(GROUPS))
  if unknown:
    p.error(f"unknown groups {unknown}; choose from {list(GROUPS)}")
  return args


def set_environment(args):
  """Before JAX is imported: XLA flags, no full preallocation (PyTorch shares
  the device), no downloads."""
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Settings(NamedTuple):
  smoke: bool
  image_size: int
  train_batch: int
  sample_batch: int
  ddpm_steps: int
  dpm_steps: int
  train_steps: int      # training steps per timed call
  repeats: int
  long_repeats: int     # for the 1,000-step samplers
  budget_s: float | None
  compile_backend: str
  compile_mode: str | None


def settings_for(args, smoke: bool) -> Settings:
  repeats = args.repeats or (3 if smoke else 5)
  return Settings(
      smoke=smoke, image_size=16 if smoke else 32, train_batch=4 if smoke else 128,
      sample_batch=4 if smoke else 256, ddpm_steps=8 if smoke else 1000,
      dpm_steps=4 if smoke else 20, train_steps=args.train_steps or (2 if smoke else 20),
      repeats=repeats, long_repeats=args.repeats or (3 if smoke else 3),
      budget_s=args.budget_s if args.budget_s is not None else (None if smoke else 480.0),
      compile_backend=args.torch_compile_backend or ("eager" if smoke else "inductor"),
      compile_mode=args.torch_compile_mode)


# ----------------------------------------------------------------------------
# The benchmark context: config, schedule, device facts.
# ----------------------------------------------------------------------------


def load_cifar_config():
  try:
    from diffusion_jax.configs import cifar10_ddpm
  except ImportError:  # A checkout whose configs are not a package.
    import importlib.util
    spec = importlib.util.spec_from_file_location("cifar10_ddpm", ROOT / "configs" / "cifar10_ddpm.py")
    cifar10_ddpm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cifar10_ddpm)
  return cifar10_ddpm.get_config()


class Context:
  """What every member shares."""

  def __init__(self, args, settings: Settings):
    import jax
    from diffusion_jax import configuration
    from diffusion_jax.conditioning import DataSpec
    self.args, self.s = args, settings
    config = load_cifar_config()
    if settings.smoke:
      config.data.image_size = settings.image_size
      for k, v in SMOKE_MODEL.items():
        config.model[k] = v
    config.train.batch_size = settings.train_batch
    self.config = config
    self.spec = DataSpec(config.data.image_size, config.data.channels, None)
    configuration.validate_config(config, self.spec)
    self.schedule = configuration.build_schedule(config)
    self.device = jax.devices()[0]
    self.peaks = device_peaks(self.device.device_kind)
    self.results = {"groups": {}, "skipped": [], "goals": []}
    self.forward_flops = {}
    self.params = {}
    self.trainers = {}
    self.torch = None

  def config_with(self, dtype: str):
    config = copy.deepcopy(self.config)
    config.model.dtype = dtype
    return config

  def peak(self, dtype: str):
    if self.peaks is None:
      return None
    return self.peaks["bf16"] if dtype == "bfloat16" else self.peaks["f32_rows"]

  def mfu(self, flops, seconds, dtype):
    peak = self.peak(dtype)
    if flops is None or not seconds or peak is None:
      return None
    return flops / seconds / peak


def device_memory_peak():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def memory_analysis(compiled) -> dict | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if m is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  # Live at once: arguments, outputs not aliased to (donated) arguments, temporaries.
  out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                        - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return out


def cost_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return None if not ca or ca.get("flops") is None else float(ca["flops"])


# ----------------------------------------------------------------------------
# Members: one measured implementation each.
# ----------------------------------------------------------------------------


class Member(NamedTuple):
  run: Callable[[], float | None]  # one timed call (synchronous); may return its own time
  info: dict                # compile time, memory, flops, ...
  work: float               # units (steps or images) per call
  after_warmup: Callable[[], dict] | None = None


def jax_train_member(ctx: Context, dtype: str, attention: str | None) -> Member:
  """The project's training step: `train.Trainer`'s jitted, donated step; with
  `attention`, the same step with the UNet's attention_impl (Trainer takes its
  network from the config, so this one is assembled from the same public
  pieces as Trainer and checked equal to it in smoke mode)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from diffusion_jax import train
  if attention == "cudnn" and ctx.device.platform not in ("gpu", "cuda"):
    raise RuntimeError(f"not applicable: cuDNN attention needs an NVIDIA GPU, not "
                       f"{ctx.device.platform}")
  config = ctx.config_with(dtype)
  t0 = time.perf_counter()
  if dtype not in ctx.trainers:  # One Trainer and initial state per dtype.
    trainer = train.Trainer(config, ctx.spec)
    ctx.trainers[dtype] = (trainer, trainer.init_state())
  trainer, initial = ctx.trainers[dtype]
  state = jax.tree.map(jnp.copy, initial)  # Each member donates its own copy.
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  B, S, C = ctx.s.train_batch, ctx.spec.image_size, ctx.spec.channels
  batch = trainer.global_batch({
      "image": rng.uniform(-1, 1, (B, S, S, C)).astype(np.float32),
      "label": np.zeros((B,), np.int32)})
  step = trainer.train_step
  if attention is not None:
    step = _train_step_like_trainer(trainer, config, trainer.model.clone(attention_impl=attention))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  if ctx.s.smoke and attention is None:  # The assembled step is Trainer's step (same
    mirror = _train_step_like_trainer(trainer, config, trainer.model)  # program: cached).
    copy_ = lambda s: jax.tree.map(jnp.copy, s)
    a, _ = compiled(copy_(state), batch)
    b, _ = mirror(copy_(state), batch)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  flops = cost_flops(compiled)
  info = {"compile_s": compile_s, "init_state_s": init_s, "flops_per_step": flops,
          "memory": memory_analysis(compiled), "attention": attention or "default (xla)",
          "dtype": dtype, "params": int(sum(x.size for x in jax.tree.leaves(state.params)))}
  ctx.params[dtype] = jax.tree.map(jnp.copy, state.ema_params)
  holder = [state]
  n = ctx.s.train_steps

  def run():
    s = holder[0]
    for _ in range(n):
      s, _ = compiled(s, batch)
    jax.block_until_ready(s)  # Every step feeds the next through the state.
    holder[0] = s

  return Member(run, info, n, lambda: {"device_peak_bytes": device_memory_peak()})


def _train_step_like_trainer(trainer, config, model):
  """`trainer.train_step` with another network object (same shardings, donation)."""
  import jax
  from diffusion_jax import train
  loss_fn = functools.partial(trainer.task.loss, model=model, schedule=trainer.schedule,
                              config=config, spec=trainer.spec)
  step = functools.partial(train.train_step, loss_fn=loss_fn, optimizer=trainer.optimizer,
                           ema_decay=config.train.ema_decay)
  return jax.jit(step, in_shardings=(trainer.repl, trainer.data_sharding),
                 out_shardings=(trainer.repl, trainer.repl), donate_argnums=0)


def _network(ctx: Context, dtype: str, attention: str | None):
  from diffusion_jax import tasks
  config = ctx.config_with(dtype)
  net = tasks.get_task(config.task).model(config, ctx.spec)
  return net if attention is None else net.clone(attention_impl=attention)


def _params(ctx: Context, dtype: str):
  import jax
  from diffusion_jax import models
  if dtype not in ctx.params:  # Params are float32 whatever the compute dtype.
    other = next(iter(ctx.params.values()), None)
    ctx.params[dtype] = other if other is not None else models.init_params(
        _network(ctx, "float32", None), ctx.spec, jax.random.key(0))
  return ctx.params[dtype]


def jax_forward_flops(ctx: Context, dtype: str, attention: str | None) -> float | None:
  """XLA's flop count of one forward at the sampling batch."""
  key = (dtype, attention)
  if key not in ctx.forward_flops:
    import jax
    import jax.numpy as jnp
    from diffusion_jax import models
    model_fn = models.make_model_fn(_network(ctx, dtype, attention))
    B, S, C = ctx.s.sample_batch, ctx.spec.image_size, ctx.spec.channels
    lowered = jax.jit(model_fn).lower(_params(ctx, dtype), jnp.zeros((B, S, S, C)),
                                      jnp.zeros((B,), jnp.int32), None)
    ctx.forward_flops[key] = cost_flops(lowered.compile())
  return ctx.forward_flops[key]


def jax_sample_member(ctx: Context, dtype: str, sampler: str, steps: int,
                      attention: str | None) -> Member:
  """`make_sample_fn` on one device with the config's clipping, prediction
  and variance; the sampler's default grid."""
  import jax
  from diffusion_jax import models
  from diffusion_jax.samplers import SAMPLERS
  from diffusion_jax.sampling import make_sample_fn
  d, s = ctx.config.diffusion, ctx.config.sample
  model_fn = models.make_model_fn(_network(ctx, dtype, attention))
  B, S, C = ctx.s.sample_batch, ctx.spec.image_size, ctx.spec.channels
  sample_fn = make_sample_fn(model_fn, ctx.schedule, shape=(B, S, S, C), sampler=sampler,
                             num_steps=steps, clip_x0=s.clip_x0, prediction=d.prediction,
                             variance=d.variance, devices=jax.devices()[:1])
  params, key = _params(ctx, dtype), jax.random.key(0)
  t0 = time.perf_counter()
  compiled = sample_fn.jitted.lower(params, key, None, None, 0).compile()
  compile_s = time.perf_counter() - t0
  nfe = steps * SAMPLERS[sampler].nfe_per_step
  fwd = jax_forward_flops(ctx, dtype, None)  # Model FLOPs: XLA does not count cuDNN's.
  info = {"compile_s": compile_s, "memory": memory_analysis(compiled),
          "flops_per_call": None if fwd is None else fwd * nfe,
          "xla_flops_as_reported": cost_flops(compiled), "nfe": nfe,
          "attention": attention or "default (xla)", "dtype": dtype}

  def run():
    jax.block_until_ready(compiled(params, key, None, None, 0))

  return Member(run, info, B, lambda: {"device_peak_bytes": device_memory_peak()})


class TorchSide:
  """PyTorch on the device JAX uses (CUDA for a GPU, the CPU for the CPU)."""

  def __init__(self, ctx: Context, platform_: str):
    import warnings
    import torch
    import diffusers  # noqa: F401  (fails here, not in a member, when missing)
    # diffusers' version checks inside the traced forward; harmless.
    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*")
    self.torch = torch
    if platform_ == "gpu" or platform_ == "cuda":
      if not torch.cuda.is_available():
        raise RuntimeError("JAX runs on a GPU but torch.cuda is not available")
      self.device = torch.device("cuda")
      self.name = torch.cuda.get_device_name()
    elif platform_ == "cpu":
      self.device = torch.device("cpu")
      self.name = "cpu"
    else:
      raise RuntimeError(f"PyTorch has no {platform_} backend here")
    self.cuda = self.device.type == "cuda"
    if self.cuda:  # Each framework's fastest standard settings (TF32 as XLA's default).
      torch.backends.cudnn.benchmark = True
      torch.backends.cuda.matmul.allow_tf32 = True
      torch.backends.cudnn.allow_tf32 = True
    self.ctx = ctx
    self.dconfig = diffusers_config(ctx.config.model, ctx.spec.image_size, ctx.spec.channels)

  def sync(self):
    if self.cuda:
      self.torch.cuda.synchronize()

  def model(self, seed: int = 0):
    import diffusers
    torch = self.torch
    torch.manual_seed(seed)
    fields = {k: v for k, v in self.dconfig.items() if not k.startswith("_")}
    model = diffusers.UNet2DModel(**fields).to(self.device)
    if self.cuda:
      model = model.to(memory_format=torch.channels_last)
    return model

  def compile(self, model):
    s = self.ctx.s
    kw = {"backend": s.compile_backend}
    if s.compile_mode:
      kw["mode"] = s.compile_mode
    return self.torch.compile(model, **kw)

  def autocast(self, dtype: str):
    torch = self.torch
    return torch.autocast(self.device.type, dtype=torch.bfloat16,
                          enabled=dtype == "bfloat16")

  def reset_peak(self):
    if self.cuda:
      self.torch.cuda.reset_peak_memory_stats()

  def peak(self) -> dict:
    if not self.cuda:
      return {}
    return {"torch_max_memory_allocated": int(self.torch.cuda.max_memory_allocated())}

  def tensor(self, a):
    import numpy as np
    return self.torch.tensor(np.array(a, np.float32), device=self.device)


def torch_train_member(ctx: Context, dtype: str, compiled: bool) -> Member:
  """Adam (optax's defaults), global-norm clipping, the config's linear
  warm-up, the ε loss (L_simple, or min-SNR weighted, as the config says) and
  the EMA update with the project's warm-up, dropout from the config;
  autocast to bfloat16 for bfloat16."""
  import numpy as np
  side = ctx.torch
  torch = side.torch
  side.reset_peak()
  config, sched = ctx.config, ctx.schedule
  model = side.model()
  model.train()
  fwd = side.compile(model) if compiled else model
  params = [p for p in model.parameters()]
  opt = torch.optim.Adam(params, lr=config.train.learning_rate, eps=1e-8,
                         **({"fused": True} if side.cuda else {}))
  ema = [p.detach().clone() for p in params]
  T = sched.num_timesteps
  sqrt_ab = side.tensor(np.asarray(sched.sqrt_alphas_cumprod))
  sqrt_1m = side.tensor(np.asarray(sched.sqrt_one_minus_alphas_cumprod))
  d = config.diffusion
  if (d.prediction, d.loss_type) != ("eps", "simple") or d.weighting not in ("none", "min_snr"):
    raise NotImplementedError("the PyTorch loss mirrors ε prediction, L_simple, unweighted or "
                              f"min-SNR; the config has {d.prediction}, {d.loss_type}, "
                              f"{d.weighting}")
  snr = side.tensor(np.asarray(sched.snr))
  weight = (torch.minimum(snr, torch.full_like(snr, d.min_snr_gamma)) / snr
            if d.weighting == "min_snr" else torch.ones_like(snr))
  B, S, C = ctx.s.train_batch, ctx.spec.image_size, ctx.spec.channels
  gen = torch.Generator(device=side.device).manual_seed(0)
  x0 = torch.rand((B, C, S, S), generator=gen, device=side.device) * 2 - 1
  if side.cuda:
    x0 = x0.contiguous(memory_format=torch.channels_last)
  tc = config.train
  warmup, peak_lr, decay = tc.warmup_steps, tc.learning_rate, tc.ema_decay
  count = [0]

  def step():
    n = count[0]
    t = torch.randint(0, T, (B,), device=side.device, generator=gen)
    noise = torch.randn(x0.shape, device=side.device, generator=gen)
    x_t = sqrt_ab[t].view(B, 1, 1, 1) * x0 + sqrt_1m[t].view(B, 1, 1, 1) * noise
    with side.autocast(dtype):
      out = fwd(x_t, t).sample
    loss = (weight[t] * ((out.float() - noise) ** 2).mean(dim=(1, 2, 3))).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(params, tc.grad_clip, foreach=True)
    lr = peak_lr * min(1.0, n / warmup) if warmup else peak_lr  # optax.linear_schedule
    for group in opt.param_groups:
      group["lr"] = lr
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in params],
                           1.0 - min(decay, (1.0 + n) / (10.0 + n)))
    count[0] = n + 1

  t0 = time.perf_counter()
  step()  # Builds (and with torch.compile, compiles) forward and backward.
  side.sync()
  info = {"compile_s": time.perf_counter() - t0, "dtype": dtype,
          "torch_compile": f"{ctx.s.compile_backend}/{ctx.s.compile_mode or 'default'}"
                           if compiled else None,
          "params": int(sum(p.numel() for p in params))}
  n_steps = ctx.s.train_steps

  def run():
    for _ in range(n_steps):
      step()
    side.sync()

  return Member(run, info, n_steps, side.peak)


def _sampling_coefficients(ctx: Context, sampler: str, steps: int) -> dict:
  """Per-step Python floats of the project's sampling schedule (grid point K-1
  down to 0), so that both frameworks run the same chain."""
  import jax.numpy as jnp
  import numpy as np
  from diffusion_jax import process
  from diffusion_jax.sampling import build_sampler
  d = ctx.config.diffusion
  sched, _ = build_sampler(ctx.schedule, sampler=sampler, num_steps=steps,
                           prediction=d.prediction, variance=d.variance)
  get = lambda name: np.asarray(getattr(sched, name), np.float64)
  a, s, lam = get("sqrt_alphas_cumprod"), get("sqrt_one_minus_alphas_cumprod"), get("logsnr")
  K = len(a)
  std = []
  if sampler == "ddpm":  # Σ_θ of the config's (fixed) variance, as the DDPM sampler uses it.
    _, log_var = process.p_variance(sched, None, jnp.arange(K, dtype=jnp.int32),
                                    jnp.zeros((K, 1)), d.variance)
    std = np.exp(0.5 * np.asarray(log_var, np.float64)).reshape(K).tolist()
  return {"t": np.asarray(sched.timesteps).tolist(), "alpha": a.tolist(), "sigma": s.tolist(),
          "logsnr": lam.tolist(), "c1": get("posterior_mean_coef1").tolist(),
          "c2": get("posterior_mean_coef2").tolist(), "std": std}


def torch_sample_member(ctx: Context, dtype: str, sampler: str, steps: int,
                        compiled: bool) -> Member:
  """The project's DDPM (the config's fixed variance) or DPM-Solver++(2M)
  chain on its own grid, x̂_0 clipped like the config, with diffusers'
  UNet2DModel."""
  side = ctx.torch
  torch = side.torch
  side.reset_peak()
  model = side.model()
  model.eval()
  fwd = side.compile(model) if compiled else model
  co = _sampling_coefficients(ctx, sampler, steps)
  K = len(co["t"])
  B, S, C = ctx.s.sample_batch, ctx.spec.image_size, ctx.spec.channels
  ts = [torch.full((B,), int(t), device=side.device, dtype=torch.long) for t in co["t"]]
  clip = ctx.config.sample.clip_x0
  gen = torch.Generator(device=side.device)
  fmt = {"memory_format": torch.channels_last} if side.cuda else {}

  def randn():
    return torch.randn((B, C, S, S), device=side.device, generator=gen).contiguous(**fmt)

  def denoise(x, i):
    with side.autocast(dtype):
      eps = fwd(x, ts[i]).sample
    eps = eps.float()
    a, s = co["alpha"][i], co["sigma"][i]
    x0 = (x - s * eps) / a
    if clip is not None:
      x0 = x0.clamp(-clip, clip)
      eps = (x - a * x0) / s
    return x0, eps

  def ddpm():
    x = randn()
    for i in range(K - 1, -1, -1):
      x0, _ = denoise(x, i)
      mean = co["c1"][i] * x0 + co["c2"][i] * x
      x = mean + co["std"][i] * randn() if i > 0 else mean
    return x

  def dpmpp_2m():
    x, prev_x0, prev_h = randn(), None, None
    for n, i in enumerate(range(K - 1, -1, -1), 1):
      x0, eps = denoise(x, i)
      a_s = co["alpha"][i - 1] if i > 0 else 1.0
      s_s = co["sigma"][i - 1] if i > 0 else 0.0
      x_s = a_s * x0 + s_s * eps
      if i > 0:
        h = co["logsnr"][i - 1] - co["logsnr"][i]
        if n >= 2:
          r0 = prev_h / h
          x_s = x_s - a_s * math.expm1(-h) * 0.5 * (x0 - prev_x0) / r0
        prev_h = h
      prev_x0, x = x0, x_s
    return x

  chain = {"ddpm": ddpm, "dpmpp_2m": dpmpp_2m}[sampler]

  def run():
    gen.manual_seed(0)
    with torch.inference_mode():
      chain()
    side.sync()

  t0 = time.perf_counter()
  with torch.inference_mode():  # Builds (and compiles) the inference graph.
    denoise(randn(), K - 1)
  side.sync()
  info = {"compile_s": time.perf_counter() - t0, "dtype": dtype, "nfe": K,
          "torch_compile": f"{ctx.s.compile_backend}/{ctx.s.compile_mode or 'default'}"
                           if compiled else None}
  return Member(run, info, B, side.peak)


# ----------------------------------------------------------------------------
# The PyTorch worker: the PyTorch members in a process of their own.
# ----------------------------------------------------------------------------
#
# By default the PyTorch members run in a child process (JAX_PLATFORMS=cpu
# there, so JAX never loads its CUDA libraries next to PyTorch's), driven
# call by call from this process, so that the members of a group are still
# interleaved. One JSON request per line on its stdin; each reply is one
# line on its stdout starting with REPLY.

REPLY = "@@accelerator-worker@@ "


def worker_main(args):
  """The child's loop: build / run / info / drop requests."""
  import contextlib
  s = settings_for(args, args.smoke)
  ctx = Context(args, s)
  members = {}

  def reply(obj):
    sys.stdout.write(REPLY + json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()

  try:
    ctx.torch = TorchSide(ctx, args.torch_worker)
  except Exception as e:
    reply({"error": _first_line(e)})
    return 1
  import diffusers
  import torch
  reply({"ready": True, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
         "diffusers": diffusers.__version__, "torch_device": ctx.torch.name})
  for line in sys.stdin:
    req = json.loads(line)
    try:
      with contextlib.redirect_stdout(sys.stderr):  # Keep stdout for replies.
        cmd = req["cmd"]
        if cmd == "build":
          if req["kind"] == "train":
            m = torch_train_member(ctx, req["dtype"], req["compiled"])
          else:
            m = torch_sample_member(ctx, req["dtype"], req["sampler"], req["steps"],
                                    req["compiled"])
          members[req["id"]] = m
          out = {"info": m.info, "work": m.work}
        elif cmd == "run":
          t0 = time.perf_counter()
          members[req["id"]].run()
          out = {"seconds": time.perf_counter() - t0}
        elif cmd == "info":
          out = {"info": members[req["id"]].after_warmup() or {}}
        elif cmd == "drop":
          members.clear()
          if ctx.torch.cuda:
            ctx.torch.torch.cuda.empty_cache()
          out = {}
        else:
          raise ValueError(f"unknown request {cmd!r}")
      reply(out)
    except Exception as e:
      reply({"error": _first_line(e)})
  return 0


class TorchWorker:
  """This process's handle on the worker."""

  def __init__(self, args, platform_: str):
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--torch-worker={platform_}",
           "--smoke" if args.smoke_resolved else "--full",
           f"--train-steps={args.train_steps_resolved}"]
    if args.torch_compile_backend:
      cmd.append(f"--torch-compile-backend={args.torch_compile_backend}")
    if args.torch_compile_mode:
      cmd.append(f"--torch-compile-mode={args.torch_compile_mode}")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, bufsize=1, env=env, cwd=str(ROOT))
    self.count = 0
    self.env = self._read()
    if "error" in self.env:
      raise RuntimeError(self.env["error"])
    self.name = self.env["torch_device"]

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
      sys.stderr.write(line)  # The worker's other output.
    raise RuntimeError(f"the PyTorch worker exited (code {self.proc.wait()})")

  def call(self, **req):
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    out = self._read()
    if "error" in out:
      raise RuntimeError(out["error"])
    return out

  def member(self, **build) -> Member:
    self.count += 1
    mid = self.count
    out = self.call(cmd="build", id=mid, **build)
    return Member(lambda: self.call(cmd="run", id=mid)["seconds"], out["info"], out["work"],
                  lambda: self.call(cmd="info", id=mid)["info"])

  def drop(self):
    self.call(cmd="drop")

  def close(self):
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout=30)
    except Exception:
      self.proc.kill()


# ----------------------------------------------------------------------------
# Groups: members timed side by side.
# ----------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}".strip().splitlines()
  return text[0][:300] if text else type(e).__name__


def run_group(ctx: Context, name: str, builders: dict, *, repeats: int, unit: str,
              dtype: str) -> dict:
  """Builds every member (compile + one warm-up call), then times them
  round-robin; returns {member: stats or error}."""
  print(f"\n[{name}] building {', '.join(builders)}", flush=True)
  members, out = {}, {}
  for mname, build in builders.items():
    try:
      t0 = time.perf_counter()
      m = build()
      m.info["build_s"] = time.perf_counter() - t0
      t0 = time.perf_counter()
      own = m.run()
      m.info["first_call_s"] = own if own is not None else time.perf_counter() - t0
      if m.after_warmup is not None:
        m.info.update(m.after_warmup() or {})
      members[mname] = m
      print(f"  {mname}: built in {m.info['build_s']:.1f} s (compile "
            f"{m.info.get('compile_s', 0):.1f} s), warm-up call {fmt_s(m.info['first_call_s'])}",
            flush=True)
    except Exception as e:  # One member failing does not stop the others.
      out[mname] = {"error": _first_line(e)}
      print(f"  {mname}: not measured: {_first_line(e)}", flush=True)
      if os.environ.get("BENCH_TRACEBACK"):
        traceback.print_exc()
  times = {k: [] for k in members}
  for _ in range(repeats):
    for mname, m in members.items():
      t0 = time.perf_counter()
      own = m.run()  # A PyTorch member in the worker process times itself.
      times[mname].append(own if own is not None else time.perf_counter() - t0)
  # Model FLOPs of one call: XLA's count for the group's default JAX member
  # (also for PyTorch, the same network and work; a cuDNN custom call's
  # FLOPs are not in XLA's count).
  ref = members.get("jax") or next((m for k, m in members.items() if k.startswith("jax")), None)
  call_flops = None
  if ref is not None:
    if ref.info.get("flops_per_step") is not None:
      call_flops = ref.info["flops_per_step"] * ref.work
    else:
      call_flops = ref.info.get("flops_per_call")
  for mname, m in members.items():
    stats = median_min(times[mname])
    flops = None if call_flops is None else call_flops * m.work / ref.work
    out[mname] = {**m.info, "seconds_per_call": stats, "work_per_call": m.work, "unit": unit,
                  "throughput": m.work / stats["median"],
                  "seconds_per_unit": stats["median"] / m.work,
                  "model_flops_per_call": flops,
                  "mfu": ctx.mfu(flops, stats["median"], dtype)}
  return out


def _split(results: dict):
  ok = {k: v for k, v in results.items() if "error" not in v}
  jax_ = {k: v for k, v in ok.items() if k.startswith("jax")}
  torch_ = {k: v for k, v in ok.items() if k.startswith("torch")}
  return jax_, torch_


def ratios(results: dict) -> dict:
  """project / PyTorch throughput of the fastest JAX member against each
  PyTorch member (and the fastest)."""
  jax_, torch_ = _split(results)
  if not jax_ or not torch_:
    return {}
  best = max(jax_, key=lambda k: jax_[k]["throughput"])
  out = {"project": best}
  for k, v in torch_.items():
    out[k] = jax_[best]["throughput"] / v["throughput"]
  fastest = max(torch_, key=lambda k: torch_[k]["throughput"])
  out["vs_fastest_torch"] = out[fastest]
  out["fastest_torch"] = fastest
  return out


def print_group(ctx: Context, name: str, results: dict, unit: str):
  n = max((v["seconds_per_call"]["n"] for v in results.values() if "error" not in v), default=0)
  print(f"\n[{name}] medians of {n} timed calls, members interleaved; XLA memory: "
        "memory_analysis (arguments + unaliased outputs + temporaries); peak: the device's "
        "peak bytes in use (JAX: of the process so far; PyTorch: of the member)")
  head = (f"{'member':<28} {'per call':>10} {'min':>10} {unit + '/s':>12} {'compile*':>9} "
          f"{'MFU':>6} {'XLA memory':>11} {'peak':>11}")
  print(head)
  print("-" * len(head))
  for mname, v in results.items():
    if "error" in v:
      print(f"{mname:<28} not measured: {v['error']}")
      continue
    mem = (v.get("memory") or {}).get("total_bytes")
    peak = v.get("device_peak_bytes") or v.get("torch_max_memory_allocated")
    mfu = "-" if v.get("mfu") is None else f"{100 * v['mfu']:.1f}%"
    print(f"{mname:<28} {fmt_s(v['seconds_per_call']['median']):>10} "
          f"{fmt_s(v['seconds_per_call']['min']):>10} {v['throughput']:>12.2f} "
          f"{v.get('compile_s', 0):>8.1f}s {mfu:>6} {fmt_bytes(mem):>11} {fmt_bytes(peak):>11}")
  print("  * JAX: XLA compilation; PyTorch: the first call (torch.compile's compilation, or "
        "eager's first step)")
  r = ratios(results)
  for k, v in r.items():
    if k.startswith("torch"):
      print(f"  project ({r['project']}) / {k}: {v:.2f}x the throughput")


def group_builders(ctx: Context, name: str):
  """(builders, repeats, unit, dtype) of a group."""
  kind, short = name.split("-")
  dtype = {"bf16": "bfloat16", "f32": "float32"}[short]
  s, torch_ok = ctx.s, ctx.torch is not None
  b = {}
  worker = ctx.torch if isinstance(ctx.torch, TorchWorker) else None
  if kind == "train":
    b["jax"] = lambda: jax_train_member(ctx, dtype, None)
    if dtype == "bfloat16":
      b["jax cudnn-attention"] = lambda: jax_train_member(ctx, dtype, "cudnn")
    for name, compiled in (("torch eager", False), ("torch.compile", True)):
      if worker is not None:
        b[name] = functools.partial(worker.member, kind="train", dtype=dtype, compiled=compiled)
      elif torch_ok:
        b[name] = functools.partial(torch_train_member, ctx, dtype, compiled)
    return b, s.repeats, "steps", dtype
  sampler, steps = {"ddpm": ("ddpm", s.ddpm_steps), "dpm": ("dpmpp_2m", s.dpm_steps)}[kind]
  attention = _sampling_attention(ctx, dtype)
  b["jax" + (f" {attention}-attention" if attention else "")] = (
      lambda: jax_sample_member(ctx, dtype, sampler, steps, attention))
  for name, compiled in (("torch eager", False), ("torch.compile", True)):
    if worker is not None:
      b[name] = functools.partial(worker.member, kind="sample", dtype=dtype, sampler=sampler,
                                  steps=steps, compiled=compiled)
    elif torch_ok:
      b[name] = functools.partial(torch_sample_member, ctx, dtype, sampler, steps, compiled)
  repeats = s.long_repeats if steps >= 1000 else s.repeats
  return b, repeats, "images", dtype


def _sampling_attention(ctx: Context, dtype: str) -> str | None:
  choice = ctx.args.attention
  if dtype != "bfloat16" or choice == "xla":
    return None
  if choice == "cudnn":
    return "cudnn"
  train = ctx.results["groups"].get("train-bf16", {}).get("members", {})
  cudnn, xla = train.get("jax cudnn-attention", {}), train.get("jax", {})
  if "throughput" in cudnn and "throughput" in xla and cudnn["throughput"] > xla["throughput"]:
    return "cudnn"
  return None


def check_goals(ctx: Context):
  """The issue's goals, on one H100/H200 in full mode."""
  groups = ctx.results["groups"]
  lines = []
  applies = not ctx.s.smoke and ctx.peaks is not None and ctx.peaks["name"].startswith(
      ("NVIDIA H100", "NVIDIA H200"))
  tag = (lambda ok: "PASS" if ok else "FAIL") if applies else (
      lambda ok: "(goal for one H100/H200 at full size; not judged here)")
  train = groups.get("train-bf16", {})
  jax_, _ = _split(train.get("members", {}))
  if jax_:
    best = max(jax_, key=lambda k: jax_[k]["throughput"])
    sps = jax_[best]["throughput"]
    r = train.get("ratios", {}).get("vs_fastest_torch")
    lines.append(f"goal train bf16: {sps:.1f} steps/s at batch {ctx.s.train_batch} ({best}; "
                 f"target >= {GOAL_TRAIN_STEPS_PER_S:g}) {tag(sps >= GOAL_TRAIN_STEPS_PER_S)}"
                 + ("" if r is None else f"; {r:.2f}x PyTorch's fastest (target >= "
                    f"{GOAL_RATIO}) {tag(r >= GOAL_RATIO)}"))
  ddpm = groups.get("ddpm-bf16", {})
  jax_, _ = _split(ddpm.get("members", {}))
  if jax_:
    best = max(jax_, key=lambda k: jax_[k]["throughput"])
    sec = jax_[best]["seconds_per_call"]["median"]
    r = ddpm.get("ratios", {}).get("vs_fastest_torch")
    lines.append(f"goal sampling bf16: {sec:.2f} s for {ctx.s.sample_batch} images x "
                 f"{ctx.s.ddpm_steps} DDPM steps ({best}; target <= {GOAL_DDPM_SECONDS:g} s) "
                 f"{tag(sec <= GOAL_DDPM_SECONDS)}"
                 + ("" if r is None else f"; {r:.2f}x PyTorch's fastest (target >= "
                    f"{GOAL_RATIO}) {tag(r >= GOAL_RATIO)}"))
  ctx.results["goals"] = lines
  return lines


# ----------------------------------------------------------------------------
# XLA flag sets, each in a child process.
# ----------------------------------------------------------------------------


def run_flag_sets(ctx: Context, flag_sets, deadline):
  out = []
  children = [""] + list(flag_sets)  # A child without extra flags: the same conditions.
  for flags in children:
    left = None if deadline is None else deadline - time.perf_counter()
    if left is not None and left < 60:
      out.append({"flags": flags, "skipped": "budget"})
      continue
    with tempfile.TemporaryDirectory() as tmp:
      path = Path(tmp) / "child.json"
      cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--no-torch",
             "--smoke" if ctx.s.smoke else "--full", "--groups", "train-bf16,ddpm-bf16",
             "--attention", "xla", "--repeats", str(ctx.s.long_repeats), "--out", str(path)]
      if flags:
        cmd.append(f"--xla-flags={flags}")  # "=": the value starts with "--".
      print(f"\n[xla-flags] child: {flags or '(no extra flags)'}", flush=True)
      try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=None if left is None else max(left, 1))
        if proc.returncode != 0 or not path.exists():
          tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
          out.append({"flags": flags, "error": f"exit {proc.returncode}: {tail[0][:300]}"})
          continue
        child = json.loads(path.read_text())
      except subprocess.TimeoutExpired:
        out.append({"flags": flags, "error": "timed out (budget)"})
        continue
    row = {"flags": flags}
    for g in ("train-bf16", "ddpm-bf16"):
      members = child["groups"].get(g, {}).get("members", {})
      jax_ = members.get("jax", {})
      row[g] = ({"throughput": jax_["throughput"],
                 "seconds_per_call": jax_["seconds_per_call"]["median"],
                 "compile_s": jax_["compile_s"]} if "throughput" in jax_
                else {"error": jax_.get("error", "missing")})
    out.append(row)
  base = out[0] if out and "train-bf16" in out[0] else None
  print("\n[xla-flags] bf16 train step and DDPM sampler, one child process per set")
  for row in out:
    if "train-bf16" not in row:
      print(f"  {row['flags'] or '(none)'}: {row.get('error') or 'skipped: ' + row['skipped']}")
      continue
    parts = []
    for g, unit in (("train-bf16", "steps/s"), ("ddpm-bf16", "images/s")):
      v = row[g]
      if "throughput" not in v:
        parts.append(f"{g}: {v['error']}")
        continue
      rel = ""
      if base is not None and "throughput" in base[g]:
        rel = f" ({v['throughput'] / base[g]['throughput']:.3f}x no flags)"
      parts.append(f"{g} {v['throughput']:.2f} {unit}{rel}")
    print(f"  {row['flags'] or '(none)'}: " + "; ".join(parts))
  return out


# ----------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------


def environment(ctx: Context, args) -> dict:
  import flax
  import jax
  import jaxlib
  env = {"device": str(ctx.device), "device_kind": ctx.device.device_kind,
         "platform": ctx.device.platform, "device_count": jax.device_count(),
         "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
         "python": platform.python_version(), "host": platform.node(),
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
         "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
         "mode": "smoke" if ctx.s.smoke else "full", "settings": ctx.s._asdict(),
         "model": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in ctx.config.model.items()},
         "image_size": ctx.spec.image_size, "peaks": ctx.peaks,
         "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
  if isinstance(ctx.torch, TorchWorker):  # PyTorch is not imported in this process.
    env.update({k: v for k, v in ctx.torch.env.items() if k != "ready"})
    env["torch_process"] = "worker"
  elif ctx.torch is not None:
    import diffusers
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
               diffusers=diffusers.__version__, torch_device=ctx.torch.name,
               torch_process="same")
  else:
    env["torch"] = "not used"
  return env


def write(ctx: Context, path):
  if path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(ctx.results, indent=1, default=str))


def main(argv=None):
  args = parse_args(argv)
  set_environment(args)
  if args.torch_worker:
    return worker_main(args)
  t_start = time.perf_counter()
  import jax

  smoke = args.smoke or (not args.full and jax.default_backend() == "cpu")
  s = settings_for(args, smoke)
  args.smoke_resolved, args.train_steps_resolved = smoke, s.train_steps
  ctx = Context(args, s)
  deadline = None if s.budget_s is None else t_start + s.budget_s
  if not args.no_torch:
    try:
      platform_ = ctx.device.platform
      if platform_ not in ("gpu", "cuda", "cpu"):
        raise RuntimeError(f"PyTorch has no {platform_} backend here")
      worker = args.torch_process == "worker" or (args.torch_process == "auto"
                                                  and platform_ != "cpu")
      ctx.torch = TorchWorker(args, platform_) if worker else TorchSide(ctx, platform_)
    except Exception as e:
      ctx.results["torch"] = f"PyTorch rows skipped: {_first_line(e)}"
  ctx.results["env"] = environment(ctx, args)
  env = ctx.results["env"]
  print(f"device: {env['device']} ({env['device_kind']}, {jax.device_count()} device(s)); "
        f"jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}; torch "
        f"{env.get('torch')} on {env.get('torch_device', '-')}, diffusers {env.get('diffusers', '-')}")
  print(f"mode: {env['mode']} (image {ctx.spec.image_size}, model ch={ctx.config.model.ch} "
        f"ch_mult={tuple(ctx.config.model.ch_mult)} blocks={ctx.config.model.num_res_blocks} "
        f"attn={tuple(ctx.config.model.attn_resolutions)}; train batch {s.train_batch}, "
        f"sample batch {s.sample_batch}, DDPM {s.ddpm_steps} / DPM-Solver++ {s.dpm_steps} steps; "
        f"repeats {s.repeats}/{s.long_repeats}; budget "
        f"{'none' if s.budget_s is None else f'{s.budget_s:.0f} s'})")
  print(f"XLA_FLAGS={env['XLA_FLAGS']!r}; peak FLOP/s: "
        + ("unknown peak" if ctx.peaks is None else
           f"{ctx.peaks['name']}: bf16 {ctx.peaks['bf16'] / 1e12:.0f} T, f32 rows "
           f"{ctx.peaks['f32_rows'] / 1e12:.0f} T ({ctx.peaks['f32_rows_kind']})"))
  if "torch" in ctx.results:
    print(ctx.results["torch"])
  if jax.device_count() > 1:
    print(f"note: {jax.device_count()} devices; training shards the batch over all of them, "
          "sampling uses one (set CUDA_VISIBLE_DEVICES=0 for one-device figures).")
  write(ctx, args.out)

  for name in args.groups:
    left = None if deadline is None else deadline - time.perf_counter()
    if left is not None and left < GROUP_SECONDS[name]:
      ctx.results["skipped"].append({"group": name, "reason": f"budget ({left:.0f} s left)"})
      print(f"\n[{name}] skipped: {left:.0f} s of the budget left, needs ~{GROUP_SECONDS[name]} s")
      continue
    t0 = time.perf_counter()
    try:
      if name == "xla-flags":
        sets = (args.xla_flag_sets.split(";") if args.xla_flag_sets is not None
                else list(GPU_FLAG_SETS) if ctx.device.platform in ("gpu", "cuda") else [])
        sets = [f.strip() for f in sets if f.strip()]
        if not sets:
          ctx.results["skipped"].append({"group": name, "reason": "no flag sets for this device"})
          print(f"\n[{name}] skipped: no flag sets for this device (--xla-flag-sets)")
          continue
        ctx.results["xla_flag_sets"] = run_flag_sets(ctx, sets, deadline)
      else:
        builders, repeats, unit, dtype = group_builders(ctx, name)
        members = run_group(ctx, name, builders, repeats=repeats, unit=unit, dtype=dtype)
        ctx.results["groups"][name] = {"members": members, "ratios": ratios(members),
                                       "unit": unit, "dtype": dtype}
        print_group(ctx, name, members, unit)
    except Exception as e:
      ctx.results["groups"][name] = {"error": _first_line(e)}
      print(f"\n[{name}] failed: {_first_line(e)}")
      traceback.print_exc()
    if isinstance(ctx.torch, TorchWorker):
      try:
        ctx.torch.drop()  # Frees the group's PyTorch models.
      except Exception as e:
        print(f"PyTorch worker: {_first_line(e)}")
    ctx.results.setdefault("group_seconds", {})[name] = time.perf_counter() - t0
    write(ctx, args.out)

  print()
  for line in check_goals(ctx):
    print(line)
  if isinstance(ctx.torch, TorchWorker):
    ctx.torch.close()
  ctx.results["total_s"] = time.perf_counter() - t_start
  write(ctx, args.out)
  print(f"total {ctx.results['total_s']:.0f} s" + (f"; wrote {args.out}" if args.out else ""))
  failed = [g for g, v in ctx.results["groups"].items() if "error" in v]
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
