"""Task "distill": progressive distillation (Salimans & Ho 2022) of a trained model.

The student has the config's network and diffusion settings and starts from
the teacher's EMA params (`distill.teacher_workdir`). Round r (one every
`distill.steps_per_round` steps) distills the DDIM sampler of the base grid
at stride 2^r into stride 2^(r+1) (`distillation.py`). At the first step of
each round the student's EMA params become the round's teacher and the
student's initialization, with a fresh optimizer state (the step hook). The
teacher and its round ride in `TrainState.frozen`, so a run resumes from its
checkpoint alone. The final student samples with deterministic DDIM on its
last round's grid.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import distillation, schedules
from diffusion_jax._checks import check_int, check_optional_positive, config_errors
from diffusion_jax.conditioning import make_cond
from diffusion_jax.errors import ConfigError
from diffusion_jax.tasks.base import (Sampling, StepHook, Task, diffusion_prediction,
                                      example_keys, frozen_model, normal, randint,
                                      require_discrete, training_model)
from diffusion_jax.tasks.diffusion import network

__all__ = ["TASK", "base_timesteps", "num_rounds"]


def base_timesteps(config) -> np.ndarray:
  """The base grid b (int64 [K0]) of progressive distillation."""
  pc = config.distill
  return schedules.make_timesteps(config.diffusion.num_timesteps, pc.base_num_steps,
                                  pc.base_spacing)


def num_rounds(config) -> int:
  """How many rounds of progressive distillation train.num_steps makes."""
  return config.train.num_steps // config.distill.steps_per_round


def validate(config, spec) -> None:
  pc, s = config.distill, config.sample
  require_discrete(config, "halves DDIM grids of training indices (Salimans & Ho 2022 on the "
                   "discrete schedule)")
  if not pc.teacher_workdir:
    raise ConfigError("task='distill' needs distill.teacher_workdir: the workdir of a "
                      "trained task='diffusion' run with this config's model.")
  with config_errors(config, steps_per_round="distill.steps_per_round",
                     num_steps="distill.base_num_steps", spacing="distill.base_spacing",
                     base_timesteps="distill.base_num_steps",
                     teacher_clip_x0="distill.teacher_clip_x0"):
    check_int("steps_per_round", pc.steps_per_round, 1)
    base = distillation.check_base_grid(base_timesteps(config), config.diffusion.num_timesteps)
    check_optional_positive("teacher_clip_x0", pc.teacher_clip_x0)
  rounds, rest = divmod(config.train.num_steps, pc.steps_per_round)
  if rest or not 1 <= rounds <= distillation.num_rounds(base.size):
    raise ConfigError(
        f"train.num_steps={config.train.num_steps} must be a multiple of "
        f"distill.steps_per_round={pc.steps_per_round} (one round each), with 1 to "
        f"{distillation.num_rounds(base.size)} rounds for distill.base_num_steps="
        f"{pc.base_num_steps}.")
  if s.sampler != "ddim" or s.eta != 0.0:
    raise ConfigError(f"task='distill' samples the student with deterministic DDIM on its "
                      f"grid: set sample.sampler='ddim' and sample.eta=0 (got "
                      f"sample.sampler={s.sampler!r}, sample.eta={s.eta!r}).")


def loss(params, state, batch, rng, *, model, schedule, config, spec):
  """The round `state.step // distill.steps_per_round` loss (Alg. 2) against the
  teacher in `state.frozen["teacher"]` (no dropout in the teacher). Labels of a
  conditional model are passed to both. Returns (mean loss, metrics)."""
  d, pc = config.diffusion, config.distill
  rng, k_drop = jax.random.split(rng)
  k_j, k_noise = example_keys(rng, batch, 2)
  x0 = batch["image"]
  base = base_timesteps(config)
  round_ = state.step // pc.steps_per_round
  j = randint(k_j, distillation.num_student_steps(base.size, round_))
  cond = make_cond(spec, batch["label"])
  out = distillation.progressive_distillation_loss(
      training_model(model, params, cond, k_drop),
      frozen_model(model, state.frozen["teacher"], cond), schedule, base, round_, x0, j,
      normal(k_noise, x0), prediction=d.prediction,
      variance=d.variance, teacher_clip_x0=pc.teacher_clip_x0)
  return jnp.mean(out["loss"]), {"mse": jnp.mean(out["mse"]), "round": round_}


def init_frozen(config, params):
  """The teacher of round 0."""
  return {"teacher": params, "round": jnp.zeros((), jnp.int32)}


def begin_round(state, *, optimizer, steps_per_round: int):
  """At the first step of a round: the student's EMA params become the round's
  teacher and the student's initialization, with a fresh optimizer state (so
  the learning-rate warm-up restarts)."""
  p = state.ema_params
  return state.replace(params=p, opt_state=optimizer.init(p), frozen={
      "teacher": p, "round": (state.step // steps_per_round).astype(jnp.int32)})


def step_hook(config, optimizer) -> StepHook:
  every = config.distill.steps_per_round
  return StepHook(every, functools.partial(begin_round, optimizer=optimizer,
                                           steps_per_round=every))


def sample_grid(config) -> dict:
  """The student's grid: the DDIM grid of the last round."""
  return {"timesteps": distillation.round_timesteps(base_timesteps(config),
                                                    num_rounds(config) - 1)}


TASK = Task(
    name="distill", validate=validate, model=network, loss=loss, init_frozen=init_frozen,
    step_hook=step_hook,
    sampling=Sampling(model_fn=lambda config, model_fn, schedule: model_fn, grid=sample_grid,
                      prediction=diffusion_prediction),
    teacher_setting=lambda config: "distill.teacher_workdir")
