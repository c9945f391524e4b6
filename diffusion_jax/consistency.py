"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models",
ICML; "CM" below) in the discrete variance-preserving setting of this package.

VE coordinates. With the training schedule's ᾱ_t (t = 0..T-1), y = x/√ᾱ_t turns
x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε into y_t = x_0 + σ(t) ε, with the VE noise level

    σ(t) = √((1-ᾱ_t)/ᾱ_t)                  (`schedule.sqrt_recipm1_alphas_cumprod`),

and the probability-flow ODE into dy/dσ = ε̂(y, σ) = (y - D(y, σ))/σ (DDIM
Eq. (14); Karras et al. 2022 "EDM" §2), D the x0-prediction. This is the
setting of CM §2 (σ = t there), so the paper's formulas carry over with t → σ(t).

Parameterization: the DDIM jump to the boundary. With the boundary index
t_min (default 0) and σ_min = σ(t_min), the consistency function is the
deterministic DDIM step (DDIM Eq. (12), σ = 0) from t straight to t_min, with
the network's (x̂_0, ε̂), in VE coordinates (x_{t_min}/√ᾱ_{t_min}):

    f_θ(x_t, t) = x̂_0 + σ_min ε̂
                = (σ_min/σ_t) x_t/√ᾱ_t + (1 - σ_min/σ_t) D_θ(x_t, t)
                = c_x(t) x_t + c_D(t) D_θ(x_t, t),
    c_x(t) = σ_min/√(1-ᾱ_t),    c_D(t) = 1 - σ_min/σ(t)      (`jump_coefficients`),

where D_θ = x̂_0 and ε̂ = (x_t - √ᾱ_t x̂_0)/√(1-ᾱ_t) come from the raw network
output for its `prediction` ("eps" | "x0" | "v", via
`process.model_output_to_x0_eps`). This is how Heek, Hoogeboom & Salimans 2024
("Multistep Consistency Models") parameterize consistency functions: a DDIM
step with the network's x̂_0. At t = t_min, c_x = 1/√ᾱ_{t_min} and c_D = 0,
and f_θ(x, t_min) is set to exactly `sqrt_recip_alphas_cumprod[t_min] * x`
whatever the network outputs (even inf or NaN): the boundary condition
f(x_ε, ε) = x_ε of CM §3. f estimates the end of the PF-ODE trajectory through
x_t at t_min, in VE coordinates: x_{t_min}/√ᾱ_{t_min} = x_0 + σ_min ε ≈ x_0.

Why this form rather than CM App. C's EDM-style c_skip(t) y + c_out(t) F_θ
(c_skip = σ_d²/((σ - σ_min)² + σ_d²)):
  * Conditioning near the boundary. The exact consistency function moves
    linearly away from it, f* = y - (σ - σ_min) ε̂ + O((σ - σ_min)²) (one Euler
    step), and so does the weight on the network, c_D = (σ - σ_min)/σ. With
    c_skip the weight 1 - c_skip on the network is quadratic in σ - σ_min, so
    an x0-parameterized network would have to output ~σ_d² ε/(σ - σ_min)
    there, unbounded at the boundary.
  * Teacher initialization. The network keeps the parameterization of an
    ordinary diffusion model (ε, x0 or v), so a student is initialized from a
    trained diffusion model (the teacher) of the same prediction type and
    output shape, with no rescaling of its output layer. Its f_θ is then
    exactly the teacher's one-step DDIM jump from t to t_min, the first-order
    (Euler) solution of the PF ODE through x_t: near the boundary it is
    correct to first order in σ - σ_min (the c_skip form starts from f ≈ y
    there, correct to zeroth order only), and the CD loss of the freshly
    initialized student (θ⁻ = θ) only compares a one-step with a two-step DDIM
    jump. Far from the boundary a one-step jump is still far from f*, as any
    one-step denoiser is: that is what training has to fix.
  * High noise, in VP form. No 1/√ᾱ_t multiplies x_t: c_x = σ_min/√(1-ᾱ_t) ≤
    c_x(t_min) = 1/√ᾱ_{t_min} decreases with t, and c_D ∈ [0, 1]. σ_min ≈ 0.01
    for the linear schedule with T = 1000 and t_min = 0, so at high noise
    f_θ ≈ x̂_0 (the one-step denoiser). At a zero-terminal-SNR end (ᾱ = 0,
    σ = ∞) f stays finite: c_x = σ_min, c_D = 1.
The model must output x's shape; learned-variance channels are not supported
for the student.

Distillation (CD, CM §4, Alg. 2, Eq. (7)). A static grid of N increasing
training indices g_0 = t_min < g_1 < ... < g_{N-1}; per example n ~ U{0..N-2},
x_{n+1} = q_sample(x_0, g_{n+1}, ε), x̂_n = one step of the teacher's PF ODE from
g_{n+1} to g_n, and

    L_CD = λ(n) d(f_θ(x_{n+1}, g_{n+1}), f_θ⁻(x̂_n, g_n)),   θ⁻ under stop_gradient.

Solvers (`pf_ode_step`): the shared steps of `samplers/steps.py`, from
g_{n+1} to g_n with the teacher's (x̂_0, ε̂):
  * "euler": the deterministic DDIM (exponential-Euler) step
    x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂. In VE coordinates y = x/√ᾱ it is Euler's
    y_s = y_t + (σ_s - σ_t) ε̂ exactly.
  * "heun": the exponential (trapezoidal in log-SNR) Heun step, two teacher
    evaluations, second order. EDM's Alg. 1 Heun step in σ multiplies the
    teacher's ε̂' - ε̂ by √ᾱ_s (σ_s - σ_t), ~10³ from the last index of a
    cosine schedule (σ = 2·10⁴ there; EDM caps σ at 80 for this reason), which
    turns a small teacher error into a huge target; the exponential form's
    factor stays below 1 (`samplers/steps.py`).

Training (CT, CM §5, Alg. 3): as CD, but x̂_n = q_sample(x_0, g_n, ε) with the
same ε, and no teacher. The number of grid points N may be a traced int32
scalar (the curriculum changes it during training without recompiling): grid
point n is g_n = round(t_min + n (t_max - t_min)/(N-1)), rounding halves up,
computed in exact int32 arithmetic (`ct_grid`). The curriculum of CM App. C is
`ct_num_points` / `ct_ema_decay`.

Metrics d (per example): "l2", the squared error averaged over the non-batch
axes (CM §4 uses ‖·‖², here normalized per dimension as in `losses`);
"pseudo_huber", √(‖x-y‖² + c²) - c with c = 0.00054 √dim (Song & Dhariwal
2023, "Improved techniques for training consistency models" (iCT) §3.3).
Weightings λ: "uniform" (λ ≡ 1, CM §4) and "inverse_gap", λ = 1/(σ_{n+1} - σ_n)
(iCT §3.1).

The target network θ⁻ is the EMA θ⁻ ← stopgrad(μ θ⁻ + (1-μ) θ) of CM §4
(`update_target`). iCT §3.2 recommends μ = 0 for CT (θ⁻ = θ under stop_gradient).

The denoisers are closures `denoiser(x_t, t) -> output` as in
`losses.training_losses`; the schedule must be the full training schedule
(t = training index), so `consistency_model_fn(model_fn, schedule, ...)` can be
sampled by the engine with `sampler="consistency"` and `prediction="x0"`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import process
from diffusion_jax._checks import (ArgumentError, check_choice, check_int, check_number,
                                   check_optional_positive, is_concrete, is_int)
from diffusion_jax.samplers.steps import exp_euler, exp_heun
from diffusion_jax.schedules import Schedule

__all__ = [
    "SOLVERS", "METRICS", "WEIGHTINGS", "jump_coefficients", "consistency_function",
    "consistency_model_fn", "pf_ode_step", "consistency_distance",
    "check_grid", "sample_grid_indices", "consistency_distillation_loss",
    "ct_grid", "consistency_training_loss", "ct_num_points", "ct_ema_decay",
    "update_target",
]

SOLVERS = ("euler", "heun")
METRICS = ("l2", "pseudo_huber")
WEIGHTINGS = ("uniform", "inverse_gap")
# The largest t_max - t_min for which ct_grid's int32 arithmetic cannot overflow
# (2 (N-1) (t_max - t_min) <= 2 · 32767² < 2³¹).
_MAX_CT_SPAN = 32767

Denoiser = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
ModelFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


# ----------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------


def _check_choice(name: str, value, allowed) -> str:
  return check_choice(name, value, allowed, kind=f"values of {name}")


def _check_schedule(schedule: Schedule) -> int:
  """The full training schedule (not respaced), T >= 2. Returns T."""
  T = schedule.num_timesteps
  if T < 2:
    raise ValueError(f"schedule must have num_timesteps >= 2, got {T}.")
  ts = schedule.timesteps
  if is_concrete(ts) and not np.array_equal(np.asarray(ts), np.arange(T)):
    raise ValueError(
        "schedule must be the full training schedule (timesteps 0..T-1), not a respaced "
        "one: consistency functions are indexed by training timestep.")
  return T


def _check_t_min(t_min, T: int) -> int:
  if not is_int(t_min) or not 0 <= t_min <= T - 2:
    raise ValueError(f"t_min must be an integer in [0, {T - 2}] (T = {T}), got {t_min!r}.")
  return int(t_min)


def _check_common(prediction, metric, weighting) -> None:
  _check_choice("prediction", prediction, process.PREDICTIONS)
  _check_choice("metric", metric, METRICS)
  _check_choice("weighting", weighting, WEIGHTINGS)


# ----------------------------------------------------------------------------
# The parameterization.
# ----------------------------------------------------------------------------


def _jump_coefficient_arrays(schedule: Schedule, t_min: int):
  """(c_x, c_D) for every training index 0..T-1, float32 [T] each.

  c_x = σ_min/√(1-ᾱ_t), c_D = 1 - σ_min/σ(t), with exactly c_x = 1/√ᾱ_{t_min}
  (`sqrt_recip_alphas_cumprod[t_min]`) and c_D = 0 at t_min. At a
  zero-terminal-SNR end (σ = ∞, √(1-ᾱ) = 1) c_x = σ_min and c_D = 1. (Entries
  below t_min are meaningless and never used.)
  """
  sig = schedule.sqrt_recipm1_alphas_cumprod
  sig_min = sig[t_min]
  at_min = jnp.arange(sig.shape[0]) == t_min
  c_x = jnp.where(at_min, schedule.sqrt_recip_alphas_cumprod[t_min],
                  sig_min / schedule.sqrt_one_minus_alphas_cumprod)
  c_d = jnp.where(at_min, 0.0, 1.0 - sig_min / sig)
  return c_x, c_d


def _check_t_at_least(t, t_min: int):
  t = jnp.asarray(t)
  if is_concrete(t) and t.size and np.asarray(t).min() < t_min:
    raise ValueError(f"t must be >= t_min = {t_min}, got values down to {np.asarray(t).min()}.")
  return t


def jump_coefficients(schedule: Schedule, t, *, t_min: int = 0):
  """(c_x(t), c_D(t)) of f_θ = c_x x_t + c_D D_θ, the DDIM jump from t to t_min:

      c_x = σ_min/√(1-ᾱ_t),    c_D = 1 - σ_min/σ(t),    σ_min = σ(t_min).

  t: int array (any shape) of training indices >= t_min (a traced index out of
  [0, T-1] gives NaN). Returns two float32 arrays of t's shape: exactly
  (1/√ᾱ_{t_min}, 0) at t_min; c_x decreases and c_D increases with t, to
  (σ_min, 1) at a zero-terminal-SNR end.
  """
  t_min = _check_t_min(t_min, _check_schedule(schedule))
  t = _check_t_at_least(t, t_min)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"t must be an integer array of training indices, got {t.dtype}.")
  get = lambda a: a.at[t].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)
  c_x, c_d = _jump_coefficient_arrays(schedule, t_min)
  return get(c_x), get(c_d)


def consistency_function(schedule: Schedule, output, x_t, t, *, prediction: str,
                         t_min: int = 0):
  """f_θ(x_t, t) = c_x(t) x_t + c_D(t) D_θ(x_t, t) (module docstring): the DDIM
  jump from t to t_min with the network's x̂_0 = D_θ, in VE coordinates.

  Args:
    schedule: the full training schedule (T entries).
    output: the raw network output [B, ...] (x_t's shape, any float dtype).
    x_t: [B, ...]; t: int32 [B] training indices in [t_min, T-1].
    prediction: "eps" | "x0" | "v", what `output` predicts (D_θ is its x0).
    t_min: the boundary index.
  Returns:
    f [B, ...] in x_t's dtype. At t = t_min it is exactly x_t/√ᾱ_{t_min}
    (`sqrt_recip_alphas_cumprod[t_min] * x_t`), whatever the output (even
    non-finite); at a zero-terminal-SNR end (ᾱ = 0) it is σ_min x_t + D_θ.
  """
  _check_choice("prediction", prediction, process.PREDICTIONS)
  t_min = _check_t_min(t_min, _check_schedule(schedule))
  t = _check_t_at_least(t, t_min)
  x0_hat, _ = process.model_output_to_x0_eps(schedule, output, x_t, t, prediction)
  c_x, c_d = _jump_coefficient_arrays(schedule, t_min)
  c_x, c_d = process.extract(c_x, t, x_t), process.extract(c_d, t, x_t)
  at_min = (t == t_min).reshape(c_x.shape)
  return jnp.where(at_min, c_x * x_t, c_x * x_t + c_d * x0_hat)


def consistency_model_fn(model_fn: ModelFn, schedule: Schedule, *, prediction: str,
                         t_min: int = 0) -> ModelFn:
  """Wraps `model_fn(params, x_t, t, cond) -> output` into one returning f_θ.

  The result is an x0-predictor for the sampling engine:
      make_sample_fn(consistency_model_fn(model_fn, schedule, prediction="v"),
                     schedule, shape=..., sampler="consistency",
                     timesteps=[T - 1], prediction="x0")
  generates in one step (CM §3 "Sampling"; more timesteps: CM Alg. 1).
  `schedule` is the full training schedule; t_min must be the one the model was
  trained with (the first grid point of CD). The model must output x_t's shape.
  """
  _check_choice("prediction", prediction, process.PREDICTIONS)
  t_min = _check_t_min(t_min, _check_schedule(schedule))

  def cm_fn(params, x_t, t, cond):
    return consistency_function(schedule, model_fn(params, x_t, t, cond), x_t, t,
                                prediction=prediction, t_min=t_min)
  return cm_fn


# ----------------------------------------------------------------------------
# The teacher's ODE step, the metrics and the weights.
# ----------------------------------------------------------------------------


def pf_ode_step(teacher: Denoiser, schedule: Schedule, x_t, t, s, *, prediction: str,
                solver: str = "euler", clip_x0: float | None = None,
                variance: str = "fixed_small"):
  """One step of the teacher's probability-flow ODE from index t to s < t.

  "euler" is the DDIM step (DDIM Eq. (12), σ = 0), "heun" the second-order
  exponential (trapezoidal) step in log-SNR (module docstring; two teacher calls).
  Args:
    teacher: `teacher(x_t, t) -> output`, t int32 [B] training indices.
    x_t: [B, ...]; t, s: int32 [B] with s < t (training indices).
    prediction: what the teacher predicts; clip_x0: clip its x̂_0 to
      [-clip_x0, clip_x0] (ε̂ recomputed, `process.denoise`); variance: splits
      learned-variance channels off its output (`process.split_model_output`).
  Returns x̂_s [B, ...]. From a zero-terminal-SNR point (h = ∞) the Heun
  correction is α_s (D̂_s - D̂_t), its limit.
  """
  _check_choice("prediction", prediction, process.PREDICTIONS)
  _check_choice("solver", solver, SOLVERS)
  check_optional_positive("clip_x0", clip_x0)
  process.check_variance(variance)
  t, s = jnp.asarray(t), jnp.asarray(s)
  if is_concrete(t) and is_concrete(s) and np.any(np.asarray(s) >= np.asarray(t)):
    raise ArgumentError("s", f"s must be < t elementwise; got s={s} and t={t}.")

  def teacher_denoise(x, idx, level):
    return process.denoise_output(teacher(x, idx), x, level.alpha, level.sigma,
                                  prediction=prediction, variance=variance, clip_x0=clip_x0)

  frm = process.coefficients(schedule, t, x_t)
  to = process.coefficients(schedule, s, x_t, name="s")
  d = teacher_denoise(x_t, t, frm)
  x_s = exp_euler(d.x0, d.eps, to)
  if solver == "euler":
    return x_s
  return exp_heun(x_s, d.x0, teacher_denoise(x_s, s, to).x0, frm, to)


def consistency_distance(x, y, metric: str = "l2"):
  """d(x, y) per example, x, y [B, ...] -> [B].

  "l2": mean over the non-batch axes of (x - y)².
  "pseudo_huber": √(‖x-y‖² + c²) - c, c = 0.00054 √dim (iCT §3.3), dim the
  number of elements per example; computed as ‖x-y‖²/(√(‖x-y‖² + c²) + c).
  """
  _check_choice("metric", metric, METRICS)
  diff = (x - y).reshape(x.shape[0], -1)
  if metric == "l2":
    return jnp.mean(diff ** 2, axis=1)
  c = 0.00054 * math.sqrt(diff.shape[1])
  sq = jnp.sum(diff ** 2, axis=1)
  return sq / (jnp.sqrt(sq + c * c) + c)


def _weight(schedule: Schedule, t, s, weighting: str, dtype):
  if weighting == "uniform":
    return jnp.ones(t.shape, dtype)
  sig = schedule.sqrt_recipm1_alphas_cumprod
  return (1.0 / (sig[t] - sig[s])).astype(dtype)


def _consistency_terms(denoiser, target_denoiser, schedule, x_t, t, x_s, s, *,
                       prediction, t_min, metric, weighting, valid):
  kw = dict(prediction=prediction, t_min=t_min)
  f = consistency_function(schedule, denoiser(x_t, t), x_t, t, **kw)
  x_s = jax.lax.stop_gradient(x_s)
  f_target = jax.lax.stop_gradient(
      consistency_function(schedule, target_denoiser(x_s, s), x_s, s, **kw))
  dist = consistency_distance(f, f_target, metric)
  weight = _weight(schedule, t, s, weighting, dist.dtype)
  return {"loss": jnp.where(valid, weight * dist, jnp.nan), "distance": dist,
          "weight": weight, "t": t}


# ----------------------------------------------------------------------------
# Consistency distillation (CM Alg. 2).
# ----------------------------------------------------------------------------


def check_grid(grid, num_timesteps: int) -> np.ndarray:
  """Validates a CD grid: a static, strictly increasing int array of >= 2
  training indices in [0, T-1]. Returns it as int64 [N]."""
  if not is_concrete(grid):
    raise ArgumentError("grid", "grid must be a static (NumPy or Python) int array, not a "
                                "traced value.")
  g = np.asarray(grid)
  if (g.ndim != 1 or g.size < 2 or not np.issubdtype(g.dtype, np.integer)
      or np.any(np.diff(g) <= 0) or g.min() < 0 or g.max() > num_timesteps - 1):
    shown = g.tolist() if g.size <= 16 else f"{g.size} values"
    raise ArgumentError(
        "grid", f"grid must be a strictly increasing int array of at least 2 training indices "
        f"in [0, {num_timesteps - 1}]; got {shown}.")
  return g.astype(np.int64)


def sample_grid_indices(rng, batch_size: int, num_points):
  """n ~ Uniform{0..N-2} (the interval [g_n, g_{n+1}]), int32 [batch_size].

  num_points = N >= 2 may be a traced int32 scalar (consistency training).
  """
  if not is_int(batch_size) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
  if is_concrete(num_points):
    a = np.asarray(num_points)
    if a.ndim != 0 or not np.issubdtype(a.dtype, np.integer) or int(a) < 2:
      raise ValueError(f"num_points must be an integer scalar >= 2, got {num_points!r}.")
  return jax.random.randint(rng, (batch_size,), 0, jnp.asarray(num_points, jnp.int32) - 1,
                            dtype=jnp.int32)


def _check_n(n, x0, num_points) -> None:
  n = jnp.asarray(n)
  if n.shape != x0.shape[:1] or not jnp.issubdtype(n.dtype, jnp.integer):
    raise ValueError(f"n must be an int array of shape [B] = {x0.shape[:1]}, got "
                     f"{n.dtype} {n.shape}.")
  if is_concrete(n) and is_concrete(num_points) and n.size:
    n_np = np.asarray(n)
    if n_np.min() < 0 or n_np.max() > int(num_points) - 2:
      raise ValueError(f"n must lie in [0, {int(num_points) - 2}] (N = {int(num_points)} grid "
                       f"points), got values in [{n_np.min()}, {n_np.max()}].")


def consistency_distillation_loss(denoiser: Denoiser, target_denoiser: Denoiser,
                                  teacher: Denoiser, schedule: Schedule, grid, x0, n, noise,
                                  *, prediction: str, teacher_prediction: str | None = None,
                                  solver: str = "euler", metric: str = "l2",
                                  weighting: str = "uniform",
                                  teacher_clip_x0: float | None = None,
                                  teacher_variance: str = "fixed_small"):
  """Per-example consistency-distillation loss, CM Eq. (7) / Alg. 2.

  Args:
    denoiser: the student θ, `denoiser(x_t, t) -> output` for training indices
      t int32 [B] (as in `losses.training_losses`); output of x_t's shape.
    target_denoiser: the target network θ⁻ (same convention), under stop_gradient.
    teacher: the diffusion model φ (same convention), under stop_gradient.
    schedule: the full training schedule (T entries).
    grid: static strictly increasing int array g_0 < ... < g_{N-1} of training
      indices (`check_grid`); g_0 is the boundary t_min of f.
    x0: data [B, ...]; n: int32 [B] in [0, N-2] (`sample_grid_indices`);
      noise: ε [B, ...]. x_{n+1} = √ᾱ x0 + √(1-ᾱ) ε at g_{n+1}.
    prediction / teacher_prediction: "eps" | "x0" | "v" of the student (and
      target) and of the teacher (None: the student's).
    solver: "euler" (= DDIM) | "heun" (`pf_ode_step`).
    metric: "l2" | "pseudo_huber" (`consistency_distance`).
    weighting: "uniform" | "inverse_gap" (λ = 1/(σ(g_{n+1}) - σ(g_n))).
    teacher_clip_x0: clip the teacher's x̂_0 to [-teacher_clip_x0, teacher_clip_x0].
    teacher_variance: one of `process.VARIANCES`; splits learned-variance
      channels off the teacher's output.
  Returns:
    {"loss": [B] λ d, "distance": [B] d, "weight": [B] λ, "t": [B] g_{n+1}}.
    A traced n out of range gives a NaN loss, never a silently clamped grid.
  """
  teacher_prediction = prediction if teacher_prediction is None else teacher_prediction
  _check_common(prediction, metric, weighting)
  _check_choice("teacher_prediction", teacher_prediction, process.PREDICTIONS)
  _check_choice("solver", solver, SOLVERS)
  check_optional_positive("teacher_clip_x0", teacher_clip_x0)
  g = check_grid(grid, _check_schedule(schedule))
  _check_n(n, x0, g.size)
  n = jnp.asarray(n, jnp.int32)
  valid = (n >= 0) & (n <= g.size - 2)
  n = jnp.clip(n, 0, g.size - 2)
  gj = jnp.asarray(g, jnp.int32)
  t, s = gj[n + 1], gj[n]
  x_t = process.q_sample(schedule, x0, t, noise)
  x_s = pf_ode_step(teacher, schedule, x_t, t, s, prediction=teacher_prediction,
                    solver=solver, clip_x0=teacher_clip_x0, variance=teacher_variance)
  return _consistency_terms(denoiser, target_denoiser, schedule, x_t, t, x_s, s,
                            prediction=prediction, t_min=int(g[0]),
                            metric=metric, weighting=weighting, valid=valid)


# ----------------------------------------------------------------------------
# Consistency training (CM Alg. 3) and its curriculum (CM App. C).
# ----------------------------------------------------------------------------


def _check_ct_range(t_min, t_max, T: int) -> tuple[int, int]:
  t_max = T - 1 if t_max is None else t_max
  if not is_int(t_max) or not 1 <= t_max <= T - 1:
    raise ValueError(f"t_max must be an integer in [1, {T - 1}] or None, got {t_max!r}.")
  if not is_int(t_min) or not 0 <= t_min < t_max:
    raise ValueError(f"t_min must be an integer in [0, t_max - 1 = {t_max - 1}], got {t_min!r}.")
  if t_max - t_min > _MAX_CT_SPAN:
    raise ValueError(f"t_max - t_min must be <= {_MAX_CT_SPAN} (int32 grid arithmetic), "
                     f"got {t_max - t_min}.")
  return int(t_min), int(t_max)


def _check_num_points(num_points, t_min: int, t_max: int):
  N = jnp.asarray(num_points)
  if N.ndim != 0 or not jnp.issubdtype(N.dtype, jnp.integer):
    raise ValueError(f"num_points must be an integer scalar, got {num_points!r}.")
  if is_concrete(N) and not 2 <= int(N) <= t_max - t_min + 1:
    raise ValueError(f"num_points must be an integer in [2, t_max - t_min + 1 = "
                     f"{t_max - t_min + 1}], got {num_points!r}.")
  return N.astype(jnp.int32)


def ct_grid(n, num_points, *, t_min: int, t_max: int):
  """Grid point g_n = round(t_min + n (t_max - t_min)/(N-1)) of consistency training.

  Rounds halves up, in exact int32 arithmetic:
      g_n = t_min + ⌊(2 n (t_max - t_min) + (N-1)) / (2 (N-1))⌋.
  n: int array (any shape) in [0, N-1]; num_points = N may be traced. For
  2 <= N <= t_max - t_min + 1 the step is >= 1, so the N points are distinct,
  strictly increasing, with g_0 = t_min and g_{N-1} = t_max. Returns int32 of n's shape.
  """
  if not (is_int(t_min) and is_int(t_max) and 0 <= t_min < t_max
          and t_max - t_min <= _MAX_CT_SPAN):
    raise ValueError(f"t_min and t_max must be integers with 0 <= t_min < t_max <= t_min + "
                     f"{_MAX_CT_SPAN}, got t_min={t_min!r}, t_max={t_max!r}.")
  n = jnp.asarray(n, jnp.int32)
  m = jnp.maximum(jnp.asarray(num_points, jnp.int32) - 1, 1)
  span = t_max - t_min
  return t_min + (2 * n * span + m) // (2 * m)


def consistency_training_loss(denoiser: Denoiser, target_denoiser: Denoiser,
                              schedule: Schedule, num_points, x0, n, noise, *,
                              prediction: str, t_min: int = 0, t_max: int | None = None,
                              metric: str = "l2", weighting: str = "uniform"):
  """Per-example consistency-training loss, CM Alg. 3 (no teacher).

  x_{n+1} = √ᾱ x0 + √(1-ᾱ) ε at g_{n+1} and x̂_n the same with the same ε at
  g_n, where g = `ct_grid(·, num_points, t_min=t_min, t_max=t_max)`.
  Args:
    denoiser, target_denoiser: the student θ and the target θ⁻ (stop_gradient),
      `denoiser(x_t, t) -> output` for training indices t int32 [B].
    schedule: the full training schedule (T entries).
    num_points: N, an int32 scalar in [2, t_max - t_min + 1]; may be traced,
      so the curriculum (`ct_num_points`) never recompiles. A traced N or n
      out of range gives a NaN loss.
    x0: data [B, ...]; n: int32 [B] in [0, N-2] (`sample_grid_indices`); noise: ε.
    prediction: "eps" | "x0" | "v" of the network.
    t_min, t_max: the first and last grid point (t_max None: T-1); t_min is
      the boundary index of f.
    metric, weighting: as in `consistency_distillation_loss`.
  Returns {"loss", "distance", "weight", "t"}, each [B] (as for CD).
  """
  _check_common(prediction, metric, weighting)
  t_min, t_max = _check_ct_range(t_min, t_max, _check_schedule(schedule))
  N = _check_num_points(num_points, t_min, t_max)
  _check_n(n, x0, N)
  n = jnp.asarray(n, jnp.int32)
  valid = (N >= 2) & (N <= t_max - t_min + 1) & (n >= 0) & (n <= N - 2)
  n = jnp.clip(n, 0, jnp.maximum(N - 2, 0))
  grid = lambda k: jnp.clip(ct_grid(k, N, t_min=t_min, t_max=t_max), t_min, t_max)
  t, s = grid(n + 1), grid(n)
  x_t = process.q_sample(schedule, x0, t, noise)
  x_s = process.q_sample(schedule, x0, s, noise)
  return _consistency_terms(denoiser, target_denoiser, schedule, x_t, t, x_s, s,
                            prediction=prediction, t_min=t_min,
                            metric=metric, weighting=weighting, valid=valid)


def ct_num_points(step, total_steps: int, s0: int = 2, s1: int = 150):
  """The number of grid points N(k) of the CT curriculum, CM App. C:

      N(k) = ⌈√(k/K ((s1 + 1)² - s0²) + s0²) - 1⌉ + 1,

  k = `step` (int, may be traced; clipped to [0, K]), K = `total_steps`.
  N(0) = s0 and N(K) = s1 + 1. Computed in float32 (as jnp under jit); returns
  an int32 scalar (or array of step's shape).
  """
  check_int("total_steps", total_steps, 1)
  check_int("s0", s0, 2)
  check_int("s1", s1, s0)
  k = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(total_steps))
  q = k / total_steps * float((s1 + 1) ** 2 - s0 ** 2) + float(s0 ** 2)
  return (jnp.ceil(jnp.sqrt(q) - 1.0) + 1.0).astype(jnp.int32)


def ct_ema_decay(num_points, s0: int = 2, mu0: float = 0.9):
  """The target-network EMA decay μ(k) = exp(s0 log μ0 / N(k)), CM App. C.

  num_points = N(k) (`ct_num_points`, may be traced). μ = μ0 at N = s0 and
  grows towards 1 with N. μ0 = 0 gives μ ≡ 0 (iCT §3.2: θ⁻ = θ). Returns float32.
  (The reference code openai/consistency_models divides by N(k) - 1 instead;
  this follows the paper's text.)
  """
  check_int("s0", s0, 2)
  check_number("mu0", mu0, 0.0, 1.0, high_open=True)
  N = jnp.asarray(num_points, jnp.float32)
  if mu0 == 0.0:
    return jnp.zeros_like(N)
  return jnp.exp(s0 * math.log(mu0) / N)


def update_target(target_params, params, decay):
  """θ⁻ ← stopgrad(μ θ⁻ + (1 - μ) θ), CM §4 (after each optimizer step), an
  `optax.incremental_update` with step size 1 - μ.

  target_params, params: pytrees of one structure; decay μ in [0, 1], a
  Python float or a (traced) scalar. Leaves keep target_params' dtypes.
  """
  if is_concrete(decay):
    d = np.asarray(decay)
    if d.ndim != 0 or not 0.0 <= float(d) <= 1.0:
      raise ArgumentError("decay", f"decay must be a scalar in [0, 1], got {decay!r}.")
  new = optax.incremental_update(params, target_params, 1.0 - decay)
  return jax.tree.map(lambda n, tp: jax.lax.stop_gradient(n).astype(jnp.asarray(tp).dtype),
                      new, target_params)
