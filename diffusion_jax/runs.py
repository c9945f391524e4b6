"""Trained runs: a workdir's EMA params, ready for sampling, evaluation or as a teacher.

`load_run(workdir)` reads the run's saved config (or takes the given one),
validates it, builds the task's network and restores only the EMA params of
the chosen checkpoint (orbax partial restore, directly onto replicated
shardings of the device mesh; the optimizer state is not read):

    run = load_run("runs/digits")
    sample_fn = make_sample_fn(run.model_fn, run.schedule, shape=(16, 8, 8, 1))
    x0 = sample_fn(run.params, jax.random.key(0))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
from etils import epath

from diffusion_jax import configuration, models, tasks, workdir as workdir_lib
from diffusion_jax.checkpoint import Checkpointer, abstract_like
from diffusion_jax.conditioning import DataSpec
from diffusion_jax.default_config import get_default_config
from diffusion_jax.errors import ConfigError
from diffusion_jax.mesh import make_mesh, replicated
from diffusion_jax.schedules import Schedule

__all__ = ["Run", "load_run", "load_teacher", "run_config"]


class Run(NamedTuple):
  """A trained run's inference pieces."""
  config: Any                 # the run's ConfigDict
  spec: DataSpec
  task: tasks.Task
  net: Any                    # the flax module (its task's model)
  model_fn: Optional[Callable]  # model_fn(params, x_t, t, cond) of a generative task, else None
  params: Any                 # the restored EMA params (a plain pytree)
  schedule: Schedule
  step: int                   # the checkpoint's step


def run_config(workdir: str, setting: str = "--workdir"):
  """The config saved in `workdir`, on top of today's defaults (so runs saved
  before a setting existed load with its default)."""
  return merged_config(workdir_lib.load_run_config(workdir, setting))


def merged_config(saved):
  """A saved config (dict or ConfigDict) on top of today's defaults."""
  config = get_default_config()
  _merge(config, saved)
  return config


def _merge(into, saved) -> None:
  for key, value in saved.items():
    if key in into and hasattr(into[key], "keys") and hasattr(value, "keys"):
      _merge(into[key], value)
    else:
      with into.ignore_type():
        into[key] = value


def load_run(workdir: str, config=None, *, step: Optional[int] = None,
             setting: str = "--workdir", step_setting: str = "step") -> Run:
  """Validates the config (default: the one saved in `workdir`) against the
  workdir and restores the EMA params of checkpoint `step` (default: the
  latest). Raises ConfigError naming `setting` when the workdir holds no run,
  or `step_setting` when it holds no checkpoint of that step. Creates nothing."""
  config = run_config(workdir, setting) if config is None else config
  # The data spec the run was trained with (no need for its data to sample).
  spec = configuration.validate_config(config, spec=workdir_lib.saved_spec(workdir, config))
  workdir_lib.check_workdir_compatible(workdir, config, spec)
  directory = str(epath.Path(workdir) / "checkpoints")
  steps = Checkpointer.steps(directory)
  if not steps:
    raise ConfigError(f"{setting}={workdir!r} holds no checkpoint; train first "
                      "(--mode=train).")
  if step is not None and step not in steps:
    raise ConfigError(f"{step_setting}={step!r}: {setting}={workdir!r} holds the "
                      f"checkpoints of steps {steps}.")
  task = tasks.get_task(config.task)
  net = task.model(config, spec)
  shapes = jax.eval_shape(functools.partial(models.init_params, net, spec),
                          jax.random.key(0))
  ckpt = Checkpointer(directory, create=False)
  try:
    params, step = ckpt.restore_params(abstract_like(shapes, replicated(make_mesh())), step)
  finally:
    ckpt.close()
  model_fn = models.make_model_fn(net) if task.sampling is not None else None
  return Run(config, spec, task, net, model_fn, params,
             configuration.build_schedule(config), int(step))


def load_teacher(config, setting: str):
  """The EMA params of the trained diffusion model in the workdir that
  `setting` names, after checking that it has this config's network and
  diffusion settings."""
  workdir = functools.reduce(lambda node, k: node[k], setting.split("."), config)
  teacher_config = run_config(workdir, setting)
  workdir_lib.check_teacher_compatible(teacher_config, config, setting)
  run = load_run(workdir, teacher_config, setting=setting)
  print(f"Teacher: the step-{run.step} EMA params in {workdir}.", flush=True)
  return run.params
