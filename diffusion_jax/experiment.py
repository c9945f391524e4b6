"""Config → components: validation, schedule, model, model_fn, conditioning, mesh.

Shared by training, sampling, evaluation and `describe`. Everything a user can
get wrong in a config is checked here, before a workdir is touched, and
reported as one `ValueError` naming the setting and its allowed values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax import consistency, distillation, guidance, losses, process, schedules
from diffusion_jax.data import pipeline
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TASKS = ("diffusion", "classifier", "distill", "consistency")
# The tasks whose model generates images (a UNet sampled by `make_sample_fn`).
GENERATIVE_TASKS = ("diffusion", "distill", "consistency")
# none: unconditional; class: a label embedding added to the timestep embedding;
# embedding: a fixed per-class sequence [L, D] read by cross-attention.
CONDITIONINGS = ("none", "class", "embedding")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the model needs to know about the data."""
  image_size: int
  channels: int
  num_classes: int | None          # set when the model uses labels
  conditioning: str = "none"       # one of CONDITIONINGS
  context_shape: tuple[int, int] | None = None  # (L, D) for "embedding"


def _known_samplers() -> list[str]:
  from diffusion_jax import samplers
  return sorted(samplers.SAMPLERS)


def _check_choice(setting: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{setting}={value!r} is not valid; allowed values: {list(allowed)}.")


def _check_positive_int(setting: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{setting} must be a positive integer, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> DataSpec:
  """Checks every user-facing setting; returns the data spec (no data is read
  except the dataset's metadata)."""
  d, m, tr, s = config.diffusion, config.model, config.train, config.sample
  _check_choice("task", config.task, TASKS)
  _check_choice("model.conditioning", m.conditioning, CONDITIONINGS)
  _check_choice("diffusion.schedule", d.schedule, sorted(schedules.SCHEDULES))
  _check_positive_int("diffusion.num_timesteps", d.num_timesteps)
  _check_choice("diffusion.prediction", d.prediction, process.PREDICTIONS)
  _check_choice("diffusion.variance", d.variance, process.VARIANCES)
  _check_choice("diffusion.loss_type", d.loss_type, losses.LOSS_TYPES)
  _check_choice("diffusion.weighting", d.weighting, losses.WEIGHTINGS)
  if d.loss_type == "hybrid" and d.variance not in ("learned", "learned_range"):
    raise ValueError("diffusion.loss_type='hybrid' needs diffusion.variance in "
                     "['learned', 'learned_range'].")
  if d.rescale_to_zero_terminal_snr and d.prediction == "eps":
    raise ValueError("diffusion.rescale_to_zero_terminal_snr=True needs "
                     "diffusion.prediction in ['v', 'x0'].")
  _check_choice("model.dtype", m.dtype, sorted(DTYPES))
  for name in ("num_steps", "batch_size", "log_every", "checkpoint_every",
               "keep_checkpoints", "max_nonfinite_steps"):
    _check_positive_int(f"train.{name}", tr[name])
  if tr.batch_size % jax.device_count():
    raise ValueError(f"train.batch_size={tr.batch_size} must be divisible by the "
                     f"number of devices ({jax.device_count()}).")
  if isinstance(tr.warmup_steps, bool) or not isinstance(tr.warmup_steps, (int, np.integer)) \
      or tr.warmup_steps < 0:
    raise ValueError(f"train.warmup_steps must be an integer >= 0, got {tr.warmup_steps!r}.")
  if not tr.learning_rate > 0:
    raise ValueError(f"train.learning_rate must be > 0, got {tr.learning_rate!r}.")
  if not 0.0 <= tr.ema_decay < 1.0:
    raise ValueError(f"train.ema_decay must be in [0, 1), got {tr.ema_decay}.")
  if not 0.0 <= tr.label_dropout < 1.0:
    raise ValueError(f"train.label_dropout must be in [0, 1), got {tr.label_dropout}.")
  _check_choice("train.optimizer", tr.optimizer, ["adam", "adamw"])
  _check_choice("sample.sampler", s.sampler, _known_samplers())
  _check_choice("sample.spacing", s.spacing, list(schedules.SPACINGS) + ["logsnr"])
  if s.num_steps is not None and not 1 <= s.num_steps <= d.num_timesteps:
    raise ValueError(f"sample.num_steps must be in [1, {d.num_timesteps}] "
                     f"(diffusion.num_timesteps) or None, got {s.num_steps}.")
  for name in ("num_samples", "batch_size"):
    _check_positive_int(f"sample.{name}", s[name])
  if config.task == "distill":
    _validate_distill(config)
  if config.task == "consistency":
    _validate_consistency(config)
  spec = _data_spec(config)
  try:  # Here, not when the UNet is first traced (after the workdir is written).
    build_model(config, spec).validate()
  except ValueError as e:
    raise ValueError(f"model.{e}") from None
  return spec


def _validate_distill(config) -> None:
  pc, tr, s = config.distill, config.train, config.sample
  if not pc.teacher_workdir:
    raise ValueError("task='distill' needs distill.teacher_workdir: the workdir of a "
                     "trained task='diffusion' run with this config's model.")
  _check_positive_int("distill.steps_per_round", pc.steps_per_round)
  K0 = pc.base_num_steps
  if isinstance(K0, bool) or not isinstance(K0, (int, np.integer)) or K0 < 2 or K0 & (K0 - 1) \
      or K0 > config.diffusion.num_timesteps:
    raise ValueError(f"distill.base_num_steps must be a power of two in [2, "
                     f"{config.diffusion.num_timesteps}] (diffusion.num_timesteps), got {K0!r}.")
  _check_choice("distill.base_spacing", pc.base_spacing, list(schedules.SPACINGS))
  rounds, rest = divmod(tr.num_steps, pc.steps_per_round)
  if rest or not 1 <= rounds <= distillation.num_rounds(K0):
    raise ValueError(
        f"train.num_steps={tr.num_steps} must be a multiple of distill.steps_per_round="
        f"{pc.steps_per_round} (one round each), with 1 to {distillation.num_rounds(K0)} "
        f"rounds for distill.base_num_steps={K0}.")
  if pc.teacher_clip_x0 is not None and not pc.teacher_clip_x0 > 0:
    raise ValueError(f"distill.teacher_clip_x0 must be > 0 or None, got {pc.teacher_clip_x0!r}.")
  if s.sampler != "ddim" or s.eta != 0.0:
    raise ValueError(f"task='distill' samples the student with deterministic DDIM on its "
                     f"grid: set sample.sampler='ddim' and sample.eta=0 (got "
                     f"sample.sampler={s.sampler!r}, sample.eta={s.eta!r}).")
  distill_base_timesteps(config)  # The spacing must give K0 distinct timesteps.


def distill_base_timesteps(config) -> np.ndarray:
  """The base grid b (int64 [K0]) of progressive distillation."""
  pc = config.distill
  return schedules.make_timesteps(config.diffusion.num_timesteps, pc.base_num_steps,
                                  pc.base_spacing)


def distill_rounds(config) -> int:
  """How many rounds of progressive distillation train.num_steps makes."""
  return config.train.num_steps // config.distill.steps_per_round


def _validate_consistency(config) -> None:
  cm, s, d = config.consistency, config.sample, config.diffusion
  _check_choice("consistency.solver", cm.solver, consistency.SOLVERS)
  _check_choice("consistency.metric", cm.metric, consistency.METRICS)
  _check_choice("consistency.weighting", cm.weighting, consistency.WEIGHTINGS)
  _check_choice("diffusion.variance", d.variance, ["fixed_small", "fixed_large"])
  if cm.teacher_workdir:
    T = d.num_timesteps
    if isinstance(cm.num_points, bool) or not isinstance(cm.num_points, (int, np.integer)) \
        or not 2 <= cm.num_points <= T:
      raise ValueError(f"consistency.num_points must be an integer in [2, {T}] "
                       f"(diffusion.num_timesteps), got {cm.num_points!r}.")
    if not 0.0 <= cm.target_ema < 1.0:
      raise ValueError(f"consistency.target_ema must be in [0, 1), got {cm.target_ema!r}.")
    if cm.teacher_clip_x0 is not None and not cm.teacher_clip_x0 > 0:
      raise ValueError(f"consistency.teacher_clip_x0 must be > 0 or None, got "
                       f"{cm.teacher_clip_x0!r}.")
  else:
    for name in ("ct_s0", "ct_s1"):
      _check_positive_int(f"consistency.{name}", cm[name])
    if not 2 <= cm.ct_s0 <= cm.ct_s1 < d.num_timesteps:
      raise ValueError(f"consistency.ct_s0={cm.ct_s0} and ct_s1={cm.ct_s1} must satisfy "
                       f"2 <= ct_s0 <= ct_s1 < {d.num_timesteps} (diffusion.num_timesteps).")
    if not 0.0 <= cm.ct_mu0 < 1.0:
      raise ValueError(f"consistency.ct_mu0 must be in [0, 1), got {cm.ct_mu0!r}.")
  if s.sampler != "consistency":
    raise ValueError(f"task='consistency' samples with multistep consistency sampling: set "
                     f"sample.sampler='consistency' (got {s.sampler!r}).")
  if s.classifier_workdir:
    raise ValueError("sample.classifier_workdir (classifier guidance) is not supported for "
                     "task='consistency'.")
  consistency_sample_timesteps(config)


def consistency_sample_timesteps(config) -> np.ndarray:
  """The consistency sampler's grid (int64 [K]) from consistency.sample_timesteps."""
  T, text = config.diffusion.num_timesteps, config.consistency.sample_timesteps
  if text is None or not str(text).strip():
    return np.array([T - 1])
  try:
    ts = np.array(sorted(int(v) for v in str(text).split(",") if v.strip()))
  except ValueError:
    ts = np.zeros((0,), np.int64)
  if ts.size == 0 or ts[0] < 1 or ts[-1] > T - 1 or np.any(np.diff(ts) <= 0):
    raise ValueError(f"consistency.sample_timesteps={text!r} must be distinct comma-separated "
                     f"training indices in [1, {T - 1}], e.g. '{T // 2 - 1},{T - 1}'.")
  return ts


def consistency_grid(config) -> np.ndarray:
  """The consistency-distillation grid (int64 [N]): N linspace training indices,
  0 (the boundary t_min of f) and T-1 included."""
  return schedules.make_timesteps(config.diffusion.num_timesteps,
                                  config.consistency.num_points, "linspace")


def teacher_workdir_setting(config) -> str | None:
  """The setting naming this task's teacher workdir, when it has a teacher."""
  if config.task == "distill":
    return "distill.teacher_workdir"
  if config.task == "consistency" and config.consistency.teacher_workdir:
    return "consistency.teacher_workdir"
  return None


def _data_spec(config) -> DataSpec:
  height, width, channels, num_classes = pipeline.dataset_info(
      config.data.dataset, config.data.data_dir)
  size = config.data.image_size
  if (height, width) != (size, size) or channels != config.data.channels:
    raise ValueError(
        f"data.image_size={size} and data.channels={config.data.channels} do not "
        f"fit data.dataset={config.data.dataset!r}, whose images are "
        f"{height}x{width}x{channels}; set them to the data's size.")
  levels = len(config.model.ch_mult)
  if size % 2 ** (levels - 1):
    raise ValueError(
        f"data.image_size={size} must be divisible by 2**(len(model.ch_mult)-1) = "
        f"{2 ** (levels - 1)} for model.ch_mult={tuple(config.model.ch_mult)}.")
  kind = config.model.conditioning
  uses_labels = kind != "none" or config.task == "classifier"
  if uses_labels and num_classes is None:
    raise ValueError(f"model.conditioning={kind!r} / task={config.task!r} needs labels, "
                     f"but data.dataset={config.data.dataset!r} has none.")
  context = None
  if kind == "embedding":
    _check_positive_int("model.context_len", config.model.context_len)
    _check_positive_int("model.context_dim", config.model.context_dim)
    context = (config.model.context_len, config.model.context_dim)
  return DataSpec(size, channels, num_classes if uses_labels else None, kind, context)


# ----------------------------------------------------------------------------
# Components.
# ----------------------------------------------------------------------------


def build_schedule(config) -> schedules.Schedule:
  d = config.diffusion
  return schedules.get_schedule(
      d.schedule, d.num_timesteps,
      rescale_to_zero_terminal_snr=d.rescale_to_zero_terminal_snr)


def build_model(config, spec: DataSpec):
  """The UNet (task "diffusion") or the noise-aware classifier (task "classifier")."""
  m = config.model
  arch = dict(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
              num_heads=m.num_heads, num_groups=m.num_groups, dtype=DTYPES[m.dtype])
  if config.task == "classifier":
    return NoisyClassifier(num_classes=spec.num_classes, **arch)
  return UNet(
      **arch, out_channels=spec.channels,
      learn_sigma=config.diffusion.variance in ("learned", "learned_range"),
      num_classes=spec.num_classes if spec.conditioning == "class" else None,
      context_dim=spec.context_shape[1] if spec.context_shape else None)


def class_contexts(spec: DataSpec) -> jnp.ndarray:
  """The fixed embedding sequence of each class, float32 [C, L, D].

  A stand-in for a frozen text encoder's output: N(0, 1/D) entries drawn once
  from a fixed seed, so every run and checkpoint agree on them.
  """
  return jnp.asarray(_class_contexts(spec.num_classes, *spec.context_shape))


@functools.lru_cache(maxsize=8)
def _class_contexts(num_classes: int, L: int, D: int) -> np.ndarray:
  """Drawn once per shape (make_cond runs for every sampled batch)."""
  rs = np.random.RandomState(20221205)
  return (rs.normal(size=(num_classes, L, D)) / np.sqrt(D)).astype(np.float32)


def make_cond(spec: DataSpec, labels):
  """The model's `cond` for int32 labels [B]: None, {"label"} or {"context"}."""
  if spec.conditioning == "none":
    return None
  if spec.conditioning == "class":
    return {"label": jnp.asarray(labels, jnp.int32)}
  return {"context": class_contexts(spec)[labels]}


def null_cond_fn(spec: DataSpec) -> Callable[[dict], dict]:
  """cond -> its unconditional version (null label, or all-zero context)."""
  if spec.conditioning == "class":
    return guidance.null_label(spec.num_classes)
  return guidance.null_context


def model_inputs(cond) -> dict[str, Any]:
  """Splits a `cond` pytree (None, or a dict with "label" / "context") into
  the UNet's keyword arguments."""
  cond = cond or {}
  return {"y": cond.get("label"), "context": cond.get("context")}


def make_model_fn(model: UNet) -> Callable:
  """`model_fn(params, x_t, t, cond) -> output` in inference mode (no dropout).

  Only the parts of `cond` the UNet was built for are used, so an
  unconditional model ignores e.g. the labels meant for classifier guidance.
  """
  keep = {"y": model.num_classes is not None, "context": model.context_dim is not None}
  def model_fn(params, x_t, t, cond=None):
    inputs = {k: v for k, v in model_inputs(cond).items() if keep[k]}
    return model.apply({"params": params}, x_t, t, **inputs, train=False)
  return model_fn


def make_classifier_fn(model: NoisyClassifier) -> Callable:
  """`classifier_fn(params, x_t, t) -> logits [B, C]` in inference mode."""
  return lambda params, x_t, t: model.apply({"params": params}, x_t, t, train=False)


def init_params(model, spec: DataSpec, rng):
  """Initializes the model's parameters (a plain pytree) for one dummy example."""
  x = jnp.zeros((1, spec.image_size, spec.image_size, spec.channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  if isinstance(model, NoisyClassifier):
    return model.init({"params": rng}, x, t, train=False)["params"]
  cond = make_cond(spec, jnp.zeros((1,), jnp.int32))
  return model.init({"params": rng}, x, t, **model_inputs(cond), train=False)["params"]


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def config_to_json(config) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _model_signature(config) -> dict[str, Any]:
  """The model settings that shape the parameters, named as on the CLI."""
  model = json.loads(config_to_json(config.model))
  for name in ("dropout", "dtype"):  # No effect on the parameters' shapes.
    model.pop(name, None)
  return {f"model.{k}": v for k, v in model.items()}


def shape_signature(config, spec: DataSpec) -> dict[str, Any]:
  """The config fields that determine parameter shapes (for resume checks)."""
  sig = _model_signature(config)
  sig.update({"task": config.task,
              "data.image_size": spec.image_size, "data.channels": spec.channels,
              "diffusion.variance": config.diffusion.variance,
              "num_classes": spec.num_classes})
  return sig


# Diffusion settings a student must share with its teacher (besides the network).
TEACHER_SETTINGS = ("schedule", "num_timesteps", "rescale_to_zero_terminal_snr",
                    "prediction", "variance")


def load_run_config(workdir: str, setting: str) -> ml_collections.ConfigDict:
  """The config saved in a training workdir (`config.json`); `setting` names
  the option that pointed there, for the error message."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f)["config"])
  except (OSError, json.JSONDecodeError, KeyError) as e:
    raise ValueError(f"{setting}={workdir!r} holds no readable training run "
                     f"({type(e).__name__}: {e}); train it first.") from e


def check_teacher_compatible(teacher_config, config, setting: str) -> None:
  """Refuses a teacher that is not a diffusion model with this config's network,
  image size and diffusion settings (the student starts from its weights)."""
  if teacher_config.get("task") != "diffusion":
    raise ValueError(f"{setting} must hold a task='diffusion' run, got "
                     f"task={teacher_config.get('task')!r}.")
  def settings(c):
    d = json.loads(config_to_json(c.diffusion))
    return (_model_signature(c) | {f"diffusion.{k}": d.get(k) for k in TEACHER_SETTINGS}
            | {"data.image_size": c.data.image_size, "data.channels": c.data.channels})
  theirs, ours = settings(teacher_config), settings(config)
  diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
  if diff:
    raise ValueError(f"{setting}: the teacher's settings differ from this config's "
                     f"(teacher vs student: {diff}); the student starts from the "
                     "teacher's weights, so they must agree.")


def check_workdir_compatible(workdir: str, config, spec: DataSpec) -> None:
  """Refuses a workdir whose saved config has different parameter shapes."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"--workdir={workdir!r}: cannot read {path}: {e}") from e
  old = saved.get("shape_signature")
  new = shape_signature(config, spec)
  # Settings absent from an older signature are not compared.
  diff = {k: (old[k], new[k]) for k in sorted(set(old or {}) & set(new))
          if old[k] != new[k]}
  if diff:
    raise ValueError(
        f"--workdir={workdir!r} holds a checkpoint of a different model shape "
        f"(saved vs requested: {diff}). Use a new --workdir, or the saved settings.")


def write_config(workdir: str, config, spec: DataSpec) -> None:
  os.makedirs(workdir, exist_ok=True)
  payload = {"config": json.loads(config_to_json(config)),
             "shape_signature": shape_signature(config, spec)}
  tmp = os.path.join(workdir, "config.json.tmp")
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, "config.json"))
