"""Config validation: build every component once, report errors by setting.

`validate_config(config)` runs before anything touches a workdir. It does not
restate the library's rules: it builds the components (the schedule, the
optimizer, the network, the task's loss settings, the sampler) inside
`_checks.config_errors`, which re-raises their `ValueError`s as one
`ConfigError` naming the config setting. The task-specific settings are
checked by the task (`tasks.get_task(config.task).validate`).
"""

from __future__ import annotations

import jax

from diffusion_jax import models, optim, process, schedules, tasks
from diffusion_jax._checks import ArgumentError, check_choice, config_errors, is_int
from diffusion_jax.conditioning import CONDITIONINGS, DataSpec
from diffusion_jax.data import sources
from diffusion_jax.errors import ConfigError
from diffusion_jax.mesh import DEFAULT_RULES, MESH_AXES, make_mesh
from diffusion_jax.tasks.base import validate_sampling

__all__ = ["validate_config", "build_schedule", "build_optimizer", "build_mesh", "data_spec"]

# Training-loop settings that must be positive integers.
_POSITIVE_INTS = ("train.num_steps", "train.batch_size", "train.log_every",
                  "train.checkpoint_every", "train.keep_checkpoints",
                  "train.max_nonfinite_steps", "sample.num_samples", "sample.batch_size")


def build_schedule(config) -> schedules.Schedule | schedules.Process:
  """The noise process of config.diffusion: the discrete β schedule
  (process="discrete"), or a continuous `schedules.Process` with the
  config's settings of the same names (e.g. diffusion.sigma_max)."""
  d = config.diffusion
  if d.process != "discrete":
    with config_errors(config, process="diffusion.process"):
      check_choice("process", d.process, ["discrete", *sorted(schedules.PROCESSES)])
    names = [n for n in schedules.process_settings(d.process) if n in d]
    with config_errors(config, process="diffusion.process",
                       **{n: f"diffusion.{n}" for n in names}):
      return schedules.get_process(d.process, **{n: d[n] for n in names})
  with config_errors(config, schedule="diffusion.schedule",
                     num_timesteps="diffusion.num_timesteps",
                     rescale_to_zero_terminal_snr="diffusion.rescale_to_zero_terminal_snr"):
    return schedules.get_schedule(d.schedule, d.num_timesteps,
                                  rescale_to_zero_terminal_snr=d.rescale_to_zero_terminal_snr)


def build_optimizer(config):
  """The optimizer of config.train (`optim.make_optimizer`)."""
  tc = config.train
  settings = dict(optimizer=tc.optimizer, learning_rate=tc.learning_rate,
                  warmup_steps=tc.warmup_steps, lr_schedule=tc.lr_schedule,
                  end_factor=tc.end_lr_factor, weight_decay=tc.weight_decay,
                  grad_clip=tc.grad_clip)
  paths = {k: f"train.{k}" for k in settings} | {
      "total_steps": "train.num_steps", "end_factor": "train.end_lr_factor"}
  with config_errors(config, **paths):
    return optim.make_optimizer(total_steps=tc.num_steps, **settings)


def build_mesh(config):
  """The `mesh.data × mesh.fsdp` device mesh (`mesh.make_mesh`)."""
  with config_errors(config, data="mesh.data", fsdp="mesh.fsdp"):
    return make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)


def _check_rules(config) -> None:
  rules = config.mesh.logical_axis_rules
  ok = isinstance(rules, (tuple, list)) and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str)
      and (r[1] is None or r[1] in MESH_AXES) for r in rules)
  if not ok:
    raise ConfigError(f"mesh.logical_axis_rules={rules!r} must be (logical name, mesh axis "
                      f"in {list(MESH_AXES)} or None) pairs, e.g. {DEFAULT_RULES[:2]!r}.")


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def data_spec(config, task, *, without_data: bool = False) -> DataSpec:
  """What the model needs to know about the configured data (reads metadata
  only; every source fits its images to data.image_size and data.channels).

  With `without_data` (--mode=describe) the data need not be readable: the
  spec then comes from data.image_size, data.channels and data.num_classes.
  """
  size = config.data.image_size
  if without_data:
    channels, num_classes = config.data.channels, config.data.num_classes
  else:
    info = sources.dataset_info(config.data)
    channels, num_classes = info.channels, info.num_classes
    if config.data.num_classes not in (None, num_classes):
      raise ConfigError(f"data.num_classes={config.data.num_classes} but data.dataset="
                        f"{config.data.dataset!r} has {num_classes} classes; unset it.")
  kind = config.model.conditioning
  uses_labels = kind != "none" or task.needs_labels
  if uses_labels and num_classes is None:
    raise ConfigError(f"model.conditioning={kind!r} / task={config.task!r} needs labels, "
                      f"but data.dataset={config.data.dataset!r} has none.")
  context = None
  if kind == "embedding":
    for name in ("context_len", "context_dim"):
      value = config.model[name]
      if not is_int(value) or value < 1:
        raise ConfigError(f"model.{name} must be a positive integer, got {value!r}.")
    context = (config.model.context_len, config.model.context_dim)
  return DataSpec(size, channels, num_classes if uses_labels else None, kind, context)


def validate_config(config, spec: DataSpec | None = None, *,
                    without_data: bool = False) -> DataSpec:
  """Checks every user-facing setting by building the components; returns the
  data spec (no data is read except the dataset's metadata; none at all when
  `spec`, e.g. a trained run's, is given, or with `without_data`: see
  `data_spec`). Raises ConfigError."""
  task = tasks.get_task(config.task)
  if config.model.conditioning not in CONDITIONINGS:
    raise ConfigError(f"model.conditioning={config.model.conditioning!r} is not valid; "
                      f"allowed values: {list(CONDITIONINGS)}.")
  schedule = build_schedule(config)
  with config_errors(config, prediction="diffusion.prediction",
                     variance="diffusion.variance"):
    process.check_prediction(config.diffusion.prediction, schedule)
    process.check_variance(config.diffusion.variance, schedule)
  for path in _POSITIVE_INTS:
    value = _get(config, path)
    if not is_int(value) or value < 1:
      raise ConfigError(f"{path} must be a positive integer, got {value!r}.")
  build_mesh(config)
  _check_rules(config)
  tc = config.train
  if not is_int(tc.grad_accum_steps) or tc.grad_accum_steps < 1:
    raise ConfigError(f"train.grad_accum_steps must be a positive integer, got "
                      f"{tc.grad_accum_steps!r}.")
  if tc.batch_size % (jax.device_count() * tc.grad_accum_steps):
    raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the number of "
                      f"devices ({jax.device_count()}) times train.grad_accum_steps "
                      f"({tc.grad_accum_steps}): every micro-batch is split over all devices.")
  if tc.param_dtype not in models.DTYPES:
    raise ConfigError(f"train.param_dtype={tc.param_dtype!r} is not valid; allowed values: "
                      f"{sorted(models.DTYPES)}.")
  build_optimizer(config)
  if spec is None:
    spec = data_spec(config, task, without_data=without_data)
  try:  # Here, not when the network is first traced (after the workdir is written).
    task.model(config, spec)
  except ArgumentError as e:
    raise ConfigError(f"model.{e.argument}={config.model.get(e.argument)!r}: {e}") from None
  except ValueError as e:  # The networks' validate() names the field first.
    raise ConfigError(f"model.{e}") from None
  task.validate(config, spec)
  if task.sampling is not None:
    validate_sampling(config, spec, schedule, task.sampling)
  return spec
