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

from diffusion_jax import optim, process, schedules, tasks
from diffusion_jax._checks import ArgumentError, config_errors, is_int
from diffusion_jax.conditioning import CONDITIONINGS, DataSpec
from diffusion_jax.data import sources
from diffusion_jax.errors import ConfigError
from diffusion_jax.tasks.base import validate_sampling

__all__ = ["validate_config", "build_schedule", "build_optimizer", "data_spec"]

# Training-loop settings that must be positive integers.
_POSITIVE_INTS = ("train.num_steps", "train.batch_size", "train.log_every",
                  "train.checkpoint_every", "train.keep_checkpoints",
                  "train.max_nonfinite_steps", "sample.num_samples", "sample.batch_size")


def build_schedule(config) -> schedules.Schedule:
  d = config.diffusion
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


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def data_spec(config, task) -> DataSpec:
  """What the model needs to know about the configured data (reads metadata
  only; every source fits its images to data.image_size and data.channels)."""
  info = sources.dataset_info(config.data)
  size, channels, num_classes = config.data.image_size, info.channels, info.num_classes
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


def validate_config(config, spec: DataSpec | None = None) -> DataSpec:
  """Checks every user-facing setting by building the components; returns the
  data spec (no data is read except the dataset's metadata; none at all when
  `spec`, e.g. a trained run's, is given). Raises ConfigError."""
  task = tasks.get_task(config.task)
  if config.model.conditioning not in CONDITIONINGS:
    raise ConfigError(f"model.conditioning={config.model.conditioning!r} is not valid; "
                      f"allowed values: {list(CONDITIONINGS)}.")
  schedule = build_schedule(config)
  with config_errors(config, prediction="diffusion.prediction",
                     variance="diffusion.variance"):
    process.check_prediction(config.diffusion.prediction, schedule)
    process.check_variance(config.diffusion.variance)
  for path in _POSITIVE_INTS:
    value = _get(config, path)
    if not is_int(value) or value < 1:
      raise ConfigError(f"{path} must be a positive integer, got {value!r}.")
  if config.train.batch_size % jax.device_count():
    raise ConfigError(f"train.batch_size={config.train.batch_size} must be divisible by the "
                      f"number of devices ({jax.device_count()}).")
  build_optimizer(config)
  if spec is None:
    spec = data_spec(config, task)
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
