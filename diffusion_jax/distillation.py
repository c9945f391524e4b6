"""Progressive distillation (Salimans & Ho 2022): each round halves the sampling steps.

Grids. A base grid of K0 = 2^m training indices b_0 < ... < b_{K0-1} is fixed
for the whole distillation (e.g. `make_timesteps(T, K0, "trailing")`). Round
r = 0, 1, ... distills a teacher that samples with deterministic DDIM on the
sub-grid of stride 2^r into a student that samples with deterministic DDIM on
the sub-grid of stride 2^(r+1):

    round_timesteps(b, r) = b[2^(r+1) - 1 :: 2^(r+1)]      (K0 / 2^(r+1) steps)

and the teacher of round r samples on `round_timesteps(b, r - 1)` (round -1 is
the base grid itself). Both grids keep b_{K0-1}, the noisiest point. Student
grid point j = 0..N-1 (N = K0/2^(r+1)) is base index k = (j+1) 2^(r+1) - 1;
its DDIM step goes to base index k - 2^(r+1) (clean data, ᾱ = 1, for j = 0)
and spans the two teacher steps k → k - 2^r → k - 2^(r+1).

The target (Salimans & Ho 2022, Algorithm 2). With α = √ᾱ, σ = √(1-ᾱ), z_t =
α_t x + σ_t ε, two teacher DDIM steps t → t' → t'' give z_{t''}, and

    x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t)

is the x̂_0 with which one DDIM step from z_t lands exactly on z_{t''} (x̃ =
z_{t''} when t'' is clean data). The student minimizes the truncated-SNR
weighted error (§4, "truncated SNR weighting")

    L = max(α_t²/σ_t², 1) ‖x̃ - x̂_θ(z_t)‖²,

whatever its parameterization (ε, x0 or v; Salimans & Ho recommend v or x0,
because x̂_0 from ε is ill-conditioned at the noisiest point).

`round` may be a traced int32 scalar: all rounds share one compiled step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import process
from diffusion_jax._checks import ArgumentError, is_concrete
from diffusion_jax.samplers.steps import exp_euler
from diffusion_jax.schedules import Point, Schedule

__all__ = ["check_base_grid", "num_rounds", "round_timesteps", "distillation_target",
           "num_student_steps",
           "sample_student_indices", "progressive_distillation_loss"]

Denoiser = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def check_base_grid(base_timesteps, num_timesteps: int) -> np.ndarray:
  """Validates a base grid: strictly increasing integers in [0, T-1] whose
  length is a power of two >= 2. Returns it as int64 [K0]."""
  b = np.asarray(base_timesteps)
  K0 = b.size
  if (b.ndim != 1 or not np.issubdtype(b.dtype, np.integer) or K0 < 2 or K0 & (K0 - 1)
      or np.any(np.diff(b) <= 0) or b.min() < 0 or b.max() > num_timesteps - 1):
    raise ArgumentError(
        "base_timesteps", f"base_timesteps must be a strictly increasing int array of training indices in "
        f"[0, {num_timesteps - 1}] whose length is a power of two >= 2; got "
        f"{b.tolist() if b.size <= 16 else f'{b.size} values'}.")
  return b.astype(np.int64)


def num_rounds(base_len: int) -> int:
  """How many rounds a base grid of K0 = 2^m points allows (m: down to 1 step)."""
  return int(base_len).bit_length() - 1


def _check_round(round_, base_len: int, low: int = 0) -> None:
  if not is_concrete(round_):
    return
  r = np.asarray(round_)
  if (r.ndim or not np.issubdtype(r.dtype, np.integer)
      or not low <= int(r) < num_rounds(base_len)):
    raise ArgumentError("round", f"round must be an integer in [{low}, {num_rounds(base_len) - 1}] for "
                     f"a base grid of {base_len} steps; got {round_!r}.")


def round_timesteps(base_timesteps, round_: int) -> np.ndarray:
  """The student's grid after round `round_` (-1: the base grid), int64 [K0/2^(r+1)].

  For a "trailing" base grid this is `make_timesteps(T, K0/2^(r+1), "trailing")`.
  """
  b = np.asarray(base_timesteps)
  _check_round(round_, b.size, low=-1)
  stride = 2 ** (int(round_) + 1)
  return b[stride - 1::stride].astype(np.int64)


def distillation_target(z_t, z_next, alpha_bar_t, alpha_bar_next):
  """x̃ of Salimans & Ho 2022, Algorithm 2: the x̂_0 that makes one DDIM step
  z_t → z_next exact. z_t, z_next [B, ...]; ᾱ's broadcastable ([B, 1, ...]).
  For ᾱ_next = 1 (clean data) x̃ = z_next."""
  point_of = lambda ab: Point(jnp.sqrt(ab), jnp.sqrt(1.0 - ab), None)
  return _target(z_t, z_next, point_of(alpha_bar_t), point_of(alpha_bar_next))


def _target(z_t, z_next, frm: Point, to: Point):
  """x̃ = (z_next - (σ_next/σ_t) z_t) / (α_next - (σ_next/σ_t) α_t)."""
  ratio = to.sigma / frm.sigma
  return (z_next - ratio * z_t) / (to.alpha - ratio * frm.alpha)


def num_student_steps(base_len: int, round_):
  """N = K0 / 2^(round+1), the student's steps in round `round_` (may be traced), int32."""
  return jnp.right_shift(jnp.int32(base_len), jnp.asarray(round_, jnp.int32) + 1)


def sample_student_indices(rng, batch_size: int, base_len: int, round_):
  """j ~ Uniform{0..N-1} over the student grid of round `round_`, int32 [B]."""
  _check_round(round_, base_len)
  return jax.random.randint(rng, (batch_size,), 0, num_student_steps(base_len, round_),
                            dtype=jnp.int32)


def progressive_distillation_loss(denoiser: Denoiser, teacher: Denoiser, schedule: Schedule,
                                  base_timesteps, round_, x0, j, noise, *,
                                  prediction: str = "v", teacher_prediction: str | None = None,
                                  variance: str = "fixed_small",
                                  teacher_clip_x0: float | None = None):
  """Per-example progressive-distillation loss of round `round_` (module docstring).

  Args:
    denoiser: the student, `denoiser(x_t, t) -> output` for training indices t
      int32 [B] (as in `losses.training_losses`).
    teacher: the teacher, same convention; its outputs are under stop_gradient.
    schedule: the training schedule (T entries).
    base_timesteps: the static base grid (`check_base_grid`), int [K0].
    round_: int32 scalar in [0, log2 K0 - 1], may be traced (a traced round
      or j out of range gives a NaN loss, never a silently clamped grid).
    x0: data [B, ...]; j: student grid indices int32 [B] in [0, N-1]
      (`sample_student_indices`); noise: ε [B, ...].
    prediction / teacher_prediction: "eps" | "x0" | "v" of the student and the
      teacher (None: the student's).
    variance: splits learned-variance channels off both outputs (one of
      `process.VARIANCES`); only the mean channels are distilled.
    teacher_clip_x0: clip the teacher's x̂_0 to [-c, c] (ε recomputed).
  Returns:
    {"loss": [B] weighted loss, "mse": [B] unweighted ‖x̃ - x̂_θ‖² mean,
     "t": [B] the student's training index}.
  """
  base = check_base_grid(base_timesteps, schedule.num_timesteps)
  teacher_prediction = prediction if teacher_prediction is None else teacher_prediction
  process.check_prediction(prediction, schedule)
  process.check_prediction(teacher_prediction, schedule)
  _check_round(round_, base.size)
  r = jnp.asarray(round_, jnp.int32)
  valid = ((r >= 0) & (r < num_rounds(base.size))
           & (j >= 0) & (j < num_student_steps(base.size, r)))
  half = jnp.left_shift(jnp.int32(1), r)          # the teacher's stride 2^r
  k_t = (j + 1) * 2 * half - 1                     # base-grid indices
  k_mid, k_next = k_t - half, k_t - 2 * half       # k_next = -1: clean data
  # Base-grid index k -> training index, with k = -1 -> -1 (clean data); a
  # traced k out of range gathers T, whose noise level is NaN.
  b = jnp.concatenate([jnp.array([-1], jnp.int32), jnp.asarray(base, jnp.int32)])
  index = lambda k: b.at[k + 1].get(mode="fill", fill_value=schedule.num_timesteps)
  t, t_mid, t_next = index(k_t), index(k_mid), index(k_next)
  level = lambda idx, x: process.coefficients(schedule, idx, x, name="grid index", clean=True)

  z_t = process.q_sample(schedule, x0, t, noise)

  def teacher_step(z, t_now, t_to):
    c = level(t_now, z)
    d = process.denoise_output(teacher(z, t_now), z, c.alpha, c.sigma,
                               prediction=teacher_prediction, variance=variance,
                               clip_x0=teacher_clip_x0)
    return exp_euler(d.x0, d.eps, level(t_to, z))

  z_next = teacher_step(teacher_step(z_t, t, t_mid), t_mid, t_next)
  target = jax.lax.stop_gradient(_target(z_t, z_next, level(t, z_t), level(t_next, z_t)))
  out, _ = process.split_model_output(jnp.asarray(denoiser(z_t, t), z_t.dtype), variance)
  x0_hat, _ = process.model_output_to_x0_eps(schedule, out, z_t, t, prediction)
  mse = jnp.mean((target - x0_hat) ** 2, axis=tuple(range(1, x0.ndim)))
  weight = jnp.maximum(schedule.snr[t], 1.0)
  loss = jnp.where(valid, weight * mse, jnp.nan)
  return {"loss": loss, "mse": mse, "t": t}
