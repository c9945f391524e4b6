"""Task "consistency": consistency distillation or training (Song et al. 2023).

With `consistency.teacher_workdir`: consistency distillation (CD, Alg. 2) on a
grid of `consistency.num_points` training indices, starting from the
teacher's EMA params. Without: consistency training (CT, Alg. 3) from
scratch with the curriculum N(k) from ct_s0 to ct_s1 + 1 points. The network
keeps `diffusion.prediction`; the consistency function is the DDIM jump of
its (x̂_0, ε̂) to t = 0 (`consistency.py`). The target network θ⁻ (and the
teacher) ride in `TrainState.frozen` and θ⁻ is updated inside the jitted
step. It samples with multistep consistency sampling on
`consistency.sample_timesteps`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import consistency, schedules
from diffusion_jax._checks import (check_choice, check_number, check_optional_positive,
                                   config_errors)
from diffusion_jax.conditioning import make_cond
from diffusion_jax.errors import ConfigError
from diffusion_jax.tasks.base import (Sampling, Task, example_keys, frozen_model, normal,
                                      randint, require_discrete, training_model)
from diffusion_jax.tasks.diffusion import network

__all__ = ["TASK", "grid", "sample_timesteps", "ct_num_points"]


def grid(config) -> np.ndarray:
  """The CD grid (int64 [N]): N linspace training indices, 0 (the boundary
  t_min of f) and T-1 included."""
  return schedules.make_timesteps(config.diffusion.num_timesteps,
                                  config.consistency.num_points, "linspace")


def sample_timesteps(config) -> np.ndarray:
  """The consistency sampler's grid (int64 [K]) from consistency.sample_timesteps."""
  T, text = config.diffusion.num_timesteps, config.consistency.sample_timesteps
  if text is None or not str(text).strip():
    return np.array([T - 1])
  try:
    ts = np.array(sorted(int(v) for v in str(text).split(",") if v.strip()))
  except ValueError:
    ts = np.zeros((0,), np.int64)
  if ts.size == 0 or ts[0] < 1 or ts[-1] > T - 1 or np.any(np.diff(ts) <= 0):
    raise ConfigError(f"consistency.sample_timesteps={text!r} must be distinct comma-separated "
                      f"training indices in [1, {T - 1}], e.g. '{T // 2 - 1},{T - 1}'.")
  return ts


def validate(config, spec) -> None:
  cm, s, d = config.consistency, config.sample, config.diffusion
  require_discrete(config, "learns consistency functions on grids of training indices "
                   "(consistency.py)")
  with config_errors(config, solver="consistency.solver", metric="consistency.metric",
                     weighting="consistency.weighting", num_steps="consistency.num_points",
                     grid="consistency.num_points", target_ema="consistency.target_ema",
                     teacher_clip_x0="consistency.teacher_clip_x0",
                     variance="diffusion.variance"):
    check_choice("solver", cm.solver, consistency.SOLVERS)
    check_choice("metric", cm.metric, consistency.METRICS)
    check_choice("weighting", cm.weighting, consistency.WEIGHTINGS)
    # The student's output is x_t's shape: no learned-variance channels.
    check_choice("variance", d.variance, ["fixed_small", "fixed_large"])
    if cm.teacher_workdir:
      consistency.check_grid(grid(config), d.num_timesteps)
      check_number("target_ema", cm.target_ema, 0.0, 1.0, high_open=True)
      check_optional_positive("teacher_clip_x0", cm.teacher_clip_x0)
  if not cm.teacher_workdir:
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (cm.ct_s0, cm.ct_s1))
    if not ok or not 2 <= cm.ct_s0 <= cm.ct_s1 < d.num_timesteps:
      raise ConfigError(f"consistency.ct_s0={cm.ct_s0} and ct_s1={cm.ct_s1} must satisfy "
                        f"2 <= ct_s0 <= ct_s1 < {d.num_timesteps} (diffusion.num_timesteps).")
    with config_errors(config, mu0="consistency.ct_mu0"):
      consistency.ct_ema_decay(cm.ct_s0, cm.ct_s0, cm.ct_mu0)
  if s.sampler != "consistency":
    raise ConfigError(f"task='consistency' samples with multistep consistency sampling: set "
                      f"sample.sampler='consistency' (got {s.sampler!r}).")
  if s.classifier_workdir:
    raise ConfigError("sample.classifier_workdir (classifier guidance) is not supported for "
                      "task='consistency'.")
  sample_timesteps(config)


def ct_num_points(step, config):
  """N(k) of the consistency-training curriculum at training step k."""
  cm = config.consistency
  return consistency.ct_num_points(step, config.train.num_steps, cm.ct_s0, cm.ct_s1)


def loss(params, state, batch, rng, *, model, schedule, config, spec):
  """CD from `state.frozen["teacher"]`, or CT (with the curriculum N(step))
  without one; θ⁻ = `state.frozen["target"]`. Returns (mean loss, metrics)."""
  d, cm = config.diffusion, config.consistency
  rng, k_drop = jax.random.split(rng)
  k_n, k_noise = example_keys(rng, batch, 2)
  x0 = batch["image"]
  cond = make_cond(spec, batch["label"])
  noise = normal(k_noise, x0)
  student = training_model(model, params, cond, k_drop)
  target = frozen_model(model, state.frozen["target"], cond)
  common = dict(prediction=d.prediction, metric=cm.metric, weighting=cm.weighting)
  if "teacher" in state.frozen:
    g = grid(config)
    n = randint(k_n, g.size - 1)           # the interval [g_n, g_{n+1}], n ~ U{0..N-2}
    out = consistency.consistency_distillation_loss(
        student, target, frozen_model(model, state.frozen["teacher"], cond), schedule,
        g, x0, n, noise, solver=cm.solver, teacher_clip_x0=cm.teacher_clip_x0,
        teacher_variance=d.variance, **common)
    num_points = g.size
  else:
    num_points = ct_num_points(state.step, config)
    n = randint(k_n, num_points - 1)
    out = consistency.consistency_training_loss(student, target, schedule, num_points,
                                                x0, n, noise, **common)
  return jnp.mean(out["loss"]), {"distance": jnp.mean(out["distance"]),
                                 "num_points": num_points}


def init_frozen(config, params):
  """θ⁻ starts at the initial params; CD also keeps the teacher."""
  teacher = {"teacher": params} if config.consistency.teacher_workdir else {}
  return teacher | {"target": params}


def update_frozen(config, frozen, params, step):
  """θ⁻ ← μ θ⁻ + (1 - μ) θ after an update: μ = consistency.target_ema for
  distillation, μ(N(step)) of the curriculum for training."""
  cm = config.consistency
  mu = (cm.target_ema if "teacher" in frozen else
        consistency.ct_ema_decay(ct_num_points(step, config), cm.ct_s0, cm.ct_mu0))
  return frozen | {"target": consistency.update_target(frozen["target"], params, mu)}


TASK = Task(
    name="consistency", validate=validate, model=network, loss=loss,
    init_frozen=init_frozen, update_frozen=update_frozen,
    sampling=Sampling(
        model_fn=lambda config, model_fn, schedule: consistency.consistency_model_fn(
            model_fn, schedule, prediction=config.diffusion.prediction),
        grid=lambda config: {"timesteps": sample_timesteps(config)},
        prediction=lambda config: "x0"),
    teacher_setting=lambda config: ("consistency.teacher_workdir"
                                    if config.consistency.teacher_workdir else None))
