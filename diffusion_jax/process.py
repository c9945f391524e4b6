"""The forward process, its posteriors, the parameterizations and the reverse step.

All functions are pure and work under `jit`/`vmap` on any x of shape [B, ...]
(NHWC images or plain vectors). `t` is an int32 array [B] of indices 0..T-1,
index 0 having the least noise. Per-timestep coefficients are gathered from the
`Schedule` and broadcast over the trailing axes of x.

Equations (DDPM = Ho et al. 2020, IDDPM = Nichol & Dhariwal 2021):
  q(x_t|x_0)           = N(√ᾱ_t x_0, (1-ᾱ_t) I)                    DDPM Eq. (4)
  q(x_{t-1}|x_t, x_0)  = N(μ̃_t, β̃_t I)                              DDPM Eq. (6)-(7)
  x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t                                     DDPM Eq. (15)
  v   = √ᾱ_t ε - √(1-ᾱ_t) x_0                         Salimans & Ho 2022, §4
  u   = ε - x_0 (flow velocity dx_t/dt of x_t = (1-t) x_0 + t ε)
                                          Lipman et al. 2023, Liu et al. 2023
  ∇ log q(x_t) = -ε/√(1-ᾱ_t)                          Song et al. 2021
  Σ_θ = exp(v log β_t + (1-v) log β̃_t)                              IDDPM Eq. (15)
  D = c_skip x + c_out F(c_in x; c_noise)            Karras et al. 2022, Eq. (7)

For a continuous `schedules.Process`, `t` is a float array [B] of times and
the coefficients are the process's own α(t), σ(t) (e.g. α = 1, σ = t for EDM).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import ArgumentError, check_choice, check_number, is_concrete
from diffusion_jax.schedules import Point, Process, Schedule, point

__all__ = [
    "PREDICTIONS", "VARIANCES", "Parameterization", "Variance", "Denoised",
    "check_prediction", "check_variance", "is_learned_variance",
    "extract", "coefficients", "q_mean_variance", "q_sample", "q_posterior_mean_variance",
    "posterior_coefficients", "q_posterior_general", "predict_x0_from_eps",
    "predict_eps_from_x0", "predict_x0_from_v", "predict_eps_from_v", "get_v",
    "score_from_eps", "eps_from_score", "model_output_to_x0_eps", "regression_target",
    "threshold_x0", "denoise_output", "denoise", "split_model_output", "p_variance",
    "PMeanVariance", "p_mean_variance", "is_variance_preserving", "edm_preconditioning",
    "edm_coefficients",
]


# ----------------------------------------------------------------------------
# The parameterization table: everything that depends on what the network
# predicts. α and σ are the noise level of x_t = α x_0 + σ ε (here α = √ᾱ_t,
# σ = √(1-ᾱ_t), so α² + σ² = 1), broadcastable against x_t ([B, 1, ...]).
# Adding a prediction type is one entry.
# ----------------------------------------------------------------------------


class Parameterization(NamedTuple):
  """What the model output means, as pure functions of (α, σ)."""
  # (output, x_t, α, σ) -> (x̂_0, ε̂) with x_t = α x̂_0 + σ ε̂.
  to_x0_eps: Callable
  # (x_0, ε, α, σ) -> the output's regression target (L_simple).
  target: Callable
  # (α, σ) -> b in ε̂ = a x_t + b · output at fixed x_t: how a shift of ε̂
  # (guidance) moves the output, Δoutput = Δε̂ / b.
  eps_per_output: Callable
  # (SNR, γ) -> the weight of the output-space squared error that gives every
  # parameterization the x̂_0-space weight min(SNR, γ) (Hang et al. 2023).
  min_snr_weight: Callable
  # Whether x̂_0 is defined at α = 0 (the last index of a zero-terminal-SNR
  # schedule, Lin et al. 2024).
  defined_at_zero_snr: bool
  # SNR -> (∂x̂_0/∂output)² at fixed x_t: the output-space weight that gives
  # an x̂_0-space weight w is w times this (`losses.loss_weight`).
  x0_per_output: Callable = lambda snr: jnp.ones_like(snr)
  # Whether the formulas need α² + σ² = 1 (v); the others are invariant under
  # x, α, σ -> c x, c α, c σ and hold on every process.
  needs_vp: bool = False


def _eps_min_snr(snr, gamma):  # min(SNR, γ)/SNR -> 1 as SNR -> 0 (zero-SNR end).
  return jnp.where(snr > 0, jnp.minimum(snr, gamma) / jnp.where(snr > 0, snr, 1.0), 1.0)


PREDICTIONS: dict[str, Parameterization] = {
    # ε prediction, DDPM Eq. (11)/(15): x̂_0 = (x_t - σ ε̂)/α.
    "eps": Parameterization(
        to_x0_eps=lambda out, x, a, s: ((x - s * out) / a, out),
        target=lambda x0, eps, a, s: eps,
        eps_per_output=lambda a, s: jnp.ones_like(a),
        min_snr_weight=_eps_min_snr,
        defined_at_zero_snr=False,
        x0_per_output=lambda snr: 1.0 / snr),
    # x_0 prediction: ε̂ = (x_t - α x̂_0)/σ.
    "x0": Parameterization(
        to_x0_eps=lambda out, x, a, s: (out, (x - a * out) / s),
        target=lambda x0, eps, a, s: x0,
        eps_per_output=lambda a, s: -a / s,
        min_snr_weight=lambda snr, gamma: jnp.minimum(snr, gamma),
        defined_at_zero_snr=True),
    # v = α ε - σ x_0 (Salimans & Ho 2022, §4): x̂_0 = α x_t - σ v, ε̂ = σ x_t + α v.
    "v": Parameterization(
        to_x0_eps=lambda out, x, a, s: (a * x - s * out, s * x + a * out),
        target=lambda x0, eps, a, s: a * eps - s * x0,
        eps_per_output=lambda a, s: a,
        min_snr_weight=lambda snr, gamma: jnp.minimum(snr, gamma) / (snr + 1.0),
        defined_at_zero_snr=True,
        x0_per_output=lambda snr: 1.0 / (snr + 1.0),
        needs_vp=True),
    # Flow velocity u = ε - x_0 (Lipman et al. 2023; Liu et al. 2023): with
    # x_t = α x_0 + σ ε, x̂_0 = (x_t - σ u)/(α + σ), ε̂ = (x_t + α u)/(α + σ);
    # for x_t = (1-t) x_0 + t ε that is x̂_0 = x_t - t u, ε̂ = x_t + (1-t) u.
    "flow": Parameterization(
        to_x0_eps=lambda out, x, a, s: ((x - s * out) / (a + s), (x + a * out) / (a + s)),
        target=lambda x0, eps, a, s: eps - x0,
        eps_per_output=lambda a, s: a / (a + s),
        min_snr_weight=lambda snr, gamma: jnp.minimum(snr, gamma) / (jnp.sqrt(snr) + 1.0) ** 2,
        defined_at_zero_snr=True,
        x0_per_output=lambda snr: 1.0 / (jnp.sqrt(snr) + 1.0) ** 2),
}


def is_variance_preserving(schedule) -> bool:
  """Whether α² + σ² = 1: a discrete schedule, the grid of a VP process, or a
  VP `Process`."""
  if isinstance(schedule, Process):
    return schedule.variance_preserving
  return schedule.scale is None


def check_prediction(prediction: str, schedule=None) -> str:
  """A name in `PREDICTIONS`; with a zero-terminal-SNR `schedule` (or
  process, e.g. flow matching), one whose x̂_0 is defined at ᾱ = 0 ("v",
  "x0" or "flow", not "eps"); with a process that is not variance
  preserving, one that does not need α² + σ² = 1 (not "v")."""
  check_choice("prediction", prediction, PREDICTIONS)
  entry = PREDICTIONS[prediction]
  if (schedule is not None and schedule.zero_terminal_snr
      and not entry.defined_at_zero_snr):
    usable = [p for p, e in PREDICTIONS.items() if e.defined_at_zero_snr]
    raise ArgumentError(
        "prediction", f"prediction={prediction!r} cannot recover x0 at the last step of a "
        f"zero-terminal-SNR schedule (ᾱ = 0); use a prediction in {usable}.")
  if schedule is not None and entry.needs_vp and not is_variance_preserving(schedule):
    usable = [p for p, e in PREDICTIONS.items() if not e.needs_vp]
    raise ArgumentError(
        "prediction", f"prediction={prediction!r} is defined for variance-preserving processes "
        f"(α² + σ² = 1); this one is not: use a prediction in {usable}.")
  return prediction


def _check_same_shape(**arrays) -> None:
  shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items()}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"Shape mismatch: {shapes}; these arrays must have one shape.")


def extract(arr: jnp.ndarray, t: jnp.ndarray, x: jnp.ndarray,
            *, offset: int = 0, name: str = "t") -> jnp.ndarray:
  """arr[t + offset] reshaped to [B, 1, ..., 1] to broadcast against x [B, ...].

  `t` must be an integer array [B] with B = x.shape[0]. A concrete `t` outside
  [-offset, len(arr) - offset) raises ValueError; a traced one gathers NaN
  instead of being silently clamped, so an out-of-range index is never quiet.
  `name` is the argument's name in error messages.
  """
  t = _check_index(t, x, name)
  n = arr.shape[0] - offset
  if is_concrete(t):
    t_np = np.asarray(t)
    if t_np.size and (t_np.min() < -offset or t_np.max() >= n):
      raise ArgumentError(
          name, f"{name} must lie in [{-offset}, {n - 1}] for this schedule (T = {n}); got "
          f"values in [{t_np.min()}, {t_np.max()}].")
  # wrap_negative_indices=False: a traced negative index must fill NaN too,
  # not wrap around to the end of the schedule.
  vals = arr.at[t + offset].get(mode="fill", fill_value=jnp.nan,
                                wrap_negative_indices=False)
  return vals.reshape((x.shape[0],) + (1,) * (x.ndim - 1)).astype(x.dtype)


def _check_index(t, x, name: str):
  t = jnp.asarray(t)
  if t.ndim != 1 or x.ndim < 1 or t.shape[0] != x.shape[0]:
    raise ArgumentError(
        name, f"{name} must be an int array of shape [B] = ({x.shape[0] if x.ndim else '?'},) "
        f"matching x of shape {x.shape}; got {name} of shape {t.shape}.")
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ArgumentError(name, f"{name} must be an integer array of timestep indices, got "
                              f"{t.dtype}.")
  return t


def coefficients(schedule: Schedule, t, x, *, name: str = "t", clean: bool = False) -> Point:
  """α, σ, λ at indices t [B], each [B, 1, ..., 1] in x's dtype to broadcast
  against x [B, ...] (`schedules.point`). t lies in [0, T-1], or in [-1, T-1]
  with `clean` (-1 = clean data: α = 1, σ = 0); a concrete t outside raises,
  a traced one gives NaN. `name` is the index's name in error messages."""
  if isinstance(schedule, Process):
    return _process_coefficients(schedule, t, x, name)
  t = _check_index(t, x, name)
  if is_concrete(t) and t.size:
    T, low = schedule.num_timesteps, -1 if clean else 0
    t_np = np.asarray(t)
    if t_np.min() < low or t_np.max() > T - 1:
      raise ArgumentError(name, f"{name} must lie in [{low}, {T - 1}] for this schedule (T = "
                                f"{T}); got values in [{t_np.min()}, {t_np.max()}].")
  if not clean:  # A traced t = -1 must give NaN too, not clean data.
    t = jnp.where(t < 0, schedule.num_timesteps, t)
  p = point(schedule, t)
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  return Point(*(c.reshape(shape).astype(x.dtype) for c in p))


def _process_coefficients(process: Process, t, x, name: str) -> Point:
  """α(t), σ(t), λ(t) of a continuous process at float times t [B], each
  [B, 1, ..., 1] in x's dtype."""
  t = jnp.asarray(t)
  if t.ndim != 1 or x.ndim < 1 or t.shape[0] != x.shape[0]:
    raise ArgumentError(name, f"{name} must be a float array of shape [B] = ({x.shape[0]},) "
                              f"matching x of shape {x.shape}; got shape {t.shape}.")
  if not jnp.issubdtype(t.dtype, jnp.floating):
    raise ArgumentError(name, f"{name} of process {process.name!r} must be float times, got "
                              f"{t.dtype}.")
  p = point(process, t)
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  return Point(*(c.reshape(shape).astype(x.dtype) for c in p))


# ----------------------------------------------------------------------------
# Forward process.
# ----------------------------------------------------------------------------


def q_mean_variance(schedule: Schedule, x0, t):
  """q(x_t|x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I), DDPM Eq. (4).

  Returns (mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...]).
  """
  c = coefficients(schedule, t, x0)
  # σ², not 1 - ᾱ: the float32 ᾱ ≈ 1 at small t loses 1-ᾱ's digits.
  log_var = extract(schedule.log_one_minus_alphas_cumprod, t, x0)
  return c.alpha * x0, c.sigma ** 2, log_var


def q_sample(schedule: Schedule, x0, t, noise):
  """Draws x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, DDPM Eq. (4). Shapes [B, ...]."""
  _check_same_shape(x0=x0, noise=noise)
  c = coefficients(schedule, t, x0)
  return c.alpha * x0 + c.sigma * noise


# ----------------------------------------------------------------------------
# Posteriors.
# ----------------------------------------------------------------------------


def q_posterior_mean_variance(schedule: Schedule, x0, x_t, t):
  """q(x_{t-1}|x_t, x_0) = N(μ̃_t, β̃_t I), DDPM Eq. (6)-(7).

  μ̃_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) x_0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t.
  Returns (mean [B, ...], variance [B, 1, ...], log_variance_clipped [B, 1, ...]).
  """
  _check_same_shape(x0=x0, x_t=x_t)
  mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x0
          + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
  var = extract(schedule.posterior_variance, t, x_t)
  log_var = extract(schedule.posterior_log_variance_clipped, t, x_t)
  return mean, var, log_var


def posterior_coefficients(alpha_bar_s, alpha_bar_t, one_minus_alpha_bar_s=None,
                           one_minus_alpha_bar_t=None):
  """Coefficients of q(x_s|x_t, x_0) for s < t, from ᾱ_s and ᾱ_t (any shape).

  With α_{t|s} = ᾱ_t/ᾱ_s (DDIM Eq. (7) with σ² = β̃, or VDM Eq. (A.10)):
    mean = √ᾱ_s (1-α_{t|s})/(1-ᾱ_t) x_0 + √α_{t|s} (1-ᾱ_s)/(1-ᾱ_t) x_t,
    var  = (1-ᾱ_s)(1-α_{t|s})/(1-ᾱ_t).
  `one_minus_alpha_bar_s/t` optionally give 1-ᾱ accurately (e.g. the square of
  `sqrt_one_minus_alphas_cumprod`); near ᾱ ≈ 1 the float32 1 - ᾱ has lost most
  digits, and with them 1 - α_{t|s} = (ᾱ_s - ᾱ_t)/ᾱ_s is computed as
  ((1-ᾱ_t) - (1-ᾱ_s))/ᾱ_s where ᾱ_s > 1/2.
  Returns (coef_x0, coef_xt, variance).
  """
  om_s = 1.0 - alpha_bar_s if one_minus_alpha_bar_s is None else one_minus_alpha_bar_s
  om_t = 1.0 - alpha_bar_t if one_minus_alpha_bar_t is None else one_minus_alpha_bar_t
  alpha_ts = alpha_bar_t / alpha_bar_s
  # ᾱ_s - ᾱ_t from whichever of ᾱ or 1-ᾱ is stored with more relative accuracy.
  diff = jnp.where(alpha_bar_s > 0.5, om_t - om_s, alpha_bar_s - alpha_bar_t)
  one_minus_alpha_ts = diff / alpha_bar_s
  coef_x0 = jnp.sqrt(alpha_bar_s) * one_minus_alpha_ts / om_t
  coef_xt = jnp.sqrt(alpha_ts) * om_s / om_t
  var = om_s * one_minus_alpha_ts / om_t
  return coef_x0, coef_xt, var


def q_posterior_general(schedule: Schedule, x0, x_t, t, s):
  """The two-time posterior q(x_s|x_t, x_0) for s < t (respacing, DDIM).

  Args:
    x0, x_t: [B, ...].
    t: int32 [B] in [0, T-1].
    s: int32 [B] in [-1, t-1]; s = -1 means clean data (ᾱ_{-1} = 1).
  Returns (mean [B, ...], variance [B, 1, ...]). For s = t-1 this equals
  `q_posterior_mean_variance`.
  """
  _check_same_shape(x0=x0, x_t=x_t)
  c_s, c_t = coefficients(schedule, s, x_t, name="s", clean=True), coefficients(schedule, t, x_t)
  ab_s, ab_t, om_s, om_t = c_s.alpha ** 2, c_t.alpha ** 2, c_s.sigma ** 2, c_t.sigma ** 2
  # After the shape checks in `extract`, so that s and t broadcast here.
  if is_concrete(s) and is_concrete(t) and np.any(np.asarray(s) >= np.asarray(t)):
    raise ArgumentError("s", f"s must be < t elementwise; got s={s} and t={t}.")
  c0, ct, var = posterior_coefficients(ab_s, ab_t, om_s, om_t)
  return c0 * x0 + ct * x_t, var


# ----------------------------------------------------------------------------
# Parameterizations: eps, x0, v and the score.
# ----------------------------------------------------------------------------


def _convert(prediction: str, which: int, schedule: Schedule, x_t, t, output):
  c = coefficients(schedule, t, x_t)
  return PREDICTIONS[prediction].to_x0_eps(output, x_t, c.alpha, c.sigma)[which]


def predict_x0_from_eps(schedule: Schedule, x_t, t, eps):
  """x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t, DDPM Eq. (15)."""
  return _convert("eps", 0, schedule, x_t, t, eps)


def predict_eps_from_x0(schedule: Schedule, x_t, t, x0):
  """ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t)."""
  return _convert("x0", 1, schedule, x_t, t, x0)


def get_v(schedule: Schedule, x0, eps, t):
  """v = √ᾱ_t ε - √(1-ᾱ_t) x_0, Salimans & Ho 2022 §4."""
  return regression_target(schedule, x0, eps, t, "v")


def predict_x0_from_v(schedule: Schedule, x_t, t, v):
  """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
  return _convert("v", 0, schedule, x_t, t, v)


def predict_eps_from_v(schedule: Schedule, x_t, t, v):
  """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
  return _convert("v", 1, schedule, x_t, t, v)


def score_from_eps(schedule: Schedule, eps, t):
  """∇_x log q(x_t) = -ε/√(1-ᾱ_t) (Song et al. 2021, Eq. (9) for VP)."""
  return -eps / coefficients(schedule, t, eps).sigma


def eps_from_score(schedule: Schedule, score, t):
  """ε = -√(1-ᾱ_t) ∇_x log q(x_t)."""
  return -score * coefficients(schedule, t, score).sigma


def model_output_to_x0_eps(schedule: Schedule, output, x_t, t, prediction: str):
  """Converts a model output of the given prediction type to (x0_hat, eps_hat).

  The output is cast to x_t's dtype, so bf16 models keep float32 sampler state.
  Shapes: output, x_t [B, ...]; t int32 [B].
  """
  check_prediction(prediction, schedule)
  _check_same_shape(output=output, x_t=x_t)
  c = coefficients(schedule, t, x_t)
  return PREDICTIONS[prediction].to_x0_eps(jnp.asarray(output, x_t.dtype), x_t, c.alpha,
                                           c.sigma)


def regression_target(schedule: Schedule, x0, eps, t, prediction: str):
  """The target of a `prediction`-type output for x_t = α x0 + σ ε: ε, x0 or
  v = α ε - σ x0. Shapes [B, ...]; t int32 [B]."""
  check_prediction(prediction)
  c = coefficients(schedule, t, x0)
  return PREDICTIONS[prediction].target(x0, eps, c.alpha, c.sigma)


def edm_coefficients(sigma, sigma_data: float):
  """EDM's preconditioning (Karras et al. 2022, Table 1), any shapes:
  c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²),
  c_noise = ¼ log σ. Returns (c_skip, c_out, c_in, c_noise)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  sd2 = sigma_data * sigma_data
  r = jax.lax.rsqrt(sigma * sigma + sd2)
  return sd2 * r * r, sigma * sigma_data * r, r, 0.25 * jnp.log(sigma)


def edm_preconditioning(net_fn, *, sigma_data: float = 0.5):
  """EDM's preconditioning as a model wrapper (Karras et al. 2022, Eq. (7)):

      D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)),

  with the coefficients of `edm_coefficients`. `net_fn(params, x, t, cond)`
  is the raw network F; it receives c_in x and c_noise = ¼ log σ. The
  returned `model_fn(params, x, sigma, cond)` takes x of the EDM process
  (α = 1, `schedules.EDM`, whose model time is σ itself, [B]) and returns D,
  an x_0 prediction (`prediction="x0"`), float32 whatever F's dtype.
  Trained with the "edm" weighting λ(σ) = 1/c_out², the x_0 loss
  λ ‖D - x_0‖² is ‖F - F_target‖² (EDM Eq. (8)).
  """
  check_number("sigma_data", sigma_data, 0.0, low_open=True)

  def model_fn(params, x, sigma, cond):
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
    b = lambda c: c.reshape((-1,) + (1,) * (x.ndim - 1))
    f = net_fn(params, (b(c_in) * x).astype(x.dtype), c_noise, cond)
    return b(c_skip) * x.astype(jnp.float32) + b(c_out) * jnp.asarray(f, jnp.float32)
  return model_fn


def threshold_x0(x0, clip_x0: float | None = None,
                 dynamic_threshold: float | None = None):
  """Clips x0 [B, ...] to the data range.

  Args:
    clip_x0: clip to [-clip_x0, clip_x0] (None: no static clipping).
    dynamic_threshold: percentile p in (0, 1) of Saharia et al. 2022 (Imagen
      §2.3): per sample, s = max(quantile_p(|x0|), clip_x0 or 1), then
      x0 = clip(x0, -s, s) * (clip_x0 or 1) / s.
  """
  check_thresholds(clip_x0, dynamic_threshold)
  if dynamic_threshold is not None:
    bound = 1.0 if clip_x0 is None else clip_x0
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, dynamic_threshold, axis=1), bound)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) * (bound / s)
  if clip_x0 is not None:
    return jnp.clip(x0, -clip_x0, clip_x0)
  return x0


def check_thresholds(clip_x0, dynamic_threshold) -> None:
  """clip_x0: None or > 0; dynamic_threshold: None or a percentile in (0, 1)."""
  check_number("clip_x0", clip_x0, 0.0, low_open=True, optional=True)
  check_number("dynamic_threshold", dynamic_threshold, 0.0, 1.0, low_open=True,
               high_open=True, optional=True)


class Denoised(NamedTuple):
  """What the model says about x_t (all in x_t's dtype)."""
  x0: jax.Array                    # [B, ...] x̂_0, clipped/thresholded if asked
  eps: jax.Array                   # [B, ...] ε̂, with x_t = α x̂_0 + σ ε̂
  var_output: Optional[jax.Array]  # [B, ...] variance channels (learned variances) or None


def denoise_output(output, x_t, alpha, sigma, *, prediction: str = "eps",
                   variance: str = "fixed_small", clip_x0: float | None = None,
                   dynamic_threshold: float | None = None) -> Denoised:
  """The one adapter from a raw model output to (x̂_0, ε̂).

  Used by the samplers, the distillation and consistency teachers and the
  losses: casts the output to x_t's dtype (float32 state for bf16 models),
  splits off the variance channels of a learned variance, converts with the
  `PREDICTIONS` entry and clips / thresholds x̂_0 (`threshold_x0`); when x̂_0
  is clipped, ε̂ is recomputed from it so that x_t = α x̂_0 + σ ε̂ still holds.
  Args:
    output: [B, ..., C] ([..., 2C] for learned variances), any float dtype.
    x_t: [B, ..., C]; alpha, sigma: the noise level, broadcastable to x_t.
  """
  out, var_out = split_model_output(jnp.asarray(output).astype(x_t.dtype), variance)
  _check_same_shape(output=out, x_t=x_t)
  x0, eps = PREDICTIONS[check_prediction(prediction)].to_x0_eps(out, x_t, alpha, sigma)
  if clip_x0 is not None or dynamic_threshold is not None:
    x0 = threshold_x0(x0, clip_x0, dynamic_threshold)
    eps = (x_t - alpha * x0) / sigma
  return Denoised(x0, eps, var_out)


def denoise(schedule: Schedule, output, x_t, t, *, prediction: str = "eps",
            clip_x0: float | None = None, dynamic_threshold: float | None = None):
  """Model output → (x0_hat, eps_hat) at training indices t, with optional x0
  clipping / thresholding (`denoise_output`, eps recomputed after clipping).

  Shapes: output, x_t [B, ...]; t int32 [B]. Returns (x0_hat, eps_hat).
  """
  check_prediction(prediction, schedule)
  c = coefficients(schedule, t, x_t)
  d = denoise_output(output, x_t, c.alpha, c.sigma, prediction=prediction,
                     clip_x0=clip_x0, dynamic_threshold=dynamic_threshold)
  return d.x0, d.eps


# ----------------------------------------------------------------------------
# The learned reverse process p_θ(x_{t-1}|x_t).
# ----------------------------------------------------------------------------


class Variance(NamedTuple):
  """A variance type of p_θ(x_{t-1}|x_t) (DDPM §3.2, IDDPM §3.1)."""
  # Whether the model outputs variance channels (output [B, ..., 2C]).
  learned: bool
  # (schedule, var_output [B, ...] or None, t [B], x_t) -> log σ², broadcastable to x_t.
  log_variance: Callable


def _log_fixed_large(schedule, var_output, t, x_t):
  # β_t, with β̃_1 at t = 0 (IDDPM / ADM: the decoder at t = 0 is well defined).
  if schedule.num_timesteps == 1:
    return extract(jnp.log(schedule.betas), t, x_t)
  return extract(jnp.log(jnp.concatenate(
      [schedule.posterior_variance[1:2], schedule.betas[1:]])), t, x_t)


def _log_learned_range(schedule, var_output, t, x_t):
  # IDDPM Eq. (15): log σ² = ((v+1)/2) log β_t + (1 - (v+1)/2) log β̃_t.
  min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
  max_log = extract(jnp.log(schedule.betas), t, x_t)
  frac = (jnp.asarray(var_output, x_t.dtype) + 1.0) / 2.0
  return frac * max_log + (1.0 - frac) * min_log


VARIANCES: dict[str, Variance] = {
    # β̃_t, log clipped at t = 0 as in IDDPM.
    "fixed_small": Variance(False, lambda sched, v, t, x: extract(
        sched.posterior_log_variance_clipped, t, x)),
    "fixed_large": Variance(False, _log_fixed_large),
    # The model outputs log σ² directly.
    "learned": Variance(True, lambda sched, v, t, x: jnp.asarray(v, x.dtype)),
    "learned_range": Variance(True, _log_learned_range),
}


def check_variance(variance: str, schedule=None) -> str:
  """A name in `VARIANCES`; a continuous `schedules.Process` needs a fixed one
  (a learned variance is one step of a discrete chain)."""
  check_choice("variance", variance, VARIANCES)
  if isinstance(schedule, Process) and VARIANCES[variance].learned:
    raise ArgumentError("variance", f"variance={variance!r} is learned per step of a discrete "
                                    f"schedule; process {schedule.name!r} needs 'fixed_small' "
                                    "or 'fixed_large'.")
  return variance


def is_learned_variance(variance: str) -> bool:
  """Whether the model outputs variance channels for this variance type."""
  return VARIANCES[check_variance(variance)].learned


def split_model_output(output, variance: str):
  """Splits a learned-variance output [B, ..., 2C] into ([B, ..., C], [B, ..., C]).

  For fixed variances returns (output, None).
  """
  if not is_learned_variance(variance):
    return output, None
  if output.shape[-1] % 2:
    raise ArgumentError(
        "variance", f"variance={variance!r} needs a model output with 2x channels on the last "
        f"axis; got shape {output.shape}.")
  return jnp.split(output, 2, axis=-1)


def p_variance(schedule: Schedule, var_output, t, x_t, variance: str):
  """Σ_θ(x_t, t) of p_θ(x_{t-1}|x_t) by `VARIANCES[variance]`. Returns
  (variance, log_variance), broadcastable to x_t [B, ...]:
  * "fixed_small": β̃_t (log clipped at t = 0 as in IDDPM).
  * "fixed_large": β_t, with β̃_1 used at t = 0 (IDDPM / ADM convention, which
    makes the decoder at t = 0 well defined).
  * "learned": the model outputs log σ² directly.
  * "learned_range": the model outputs v ∈ [-1, 1] and
    log σ² = ((v+1)/2) log β_t + (1 - (v+1)/2) log β̃_t, IDDPM Eq. (15).
  """
  log_var = VARIANCES[check_variance(variance)].log_variance(schedule, var_output, t, x_t)
  return jnp.exp(log_var), log_var


class PMeanVariance(NamedTuple):
  """p_θ(x_{t-1}|x_t) = N(mean, variance) and the implied denoised estimates."""
  mean: jnp.ndarray          # [B, ...]
  variance: jnp.ndarray      # broadcastable to [B, ...]
  log_variance: jnp.ndarray  # broadcastable to [B, ...]
  x0_hat: jnp.ndarray        # [B, ...]
  eps_hat: jnp.ndarray       # [B, ...]


def p_mean_variance(schedule: Schedule, model_output, x_t, t, *,
                    prediction: str = "eps", variance: str = "fixed_small",
                    clip_x0: float | None = None,
                    dynamic_threshold: float | None = None) -> PMeanVariance:
  """Mean and variance of p_θ(x_{t-1}|x_t) from a model output.

  μ_θ(x_t, t) = μ̃_t(x_t, x0_hat), which for eps prediction without clipping
  equals DDPM Eq. (11): (x_t - β_t/√(1-ᾱ_t) ε_θ)/√α_t.
  Args:
    model_output: [B, ..., C], or [B, ..., 2C] for learned variances.
    x_t: [B, ..., C]; t: int32 [B].
  """
  check_prediction(prediction, schedule)
  c = coefficients(schedule, t, x_t)
  d = denoise_output(model_output, x_t, c.alpha, c.sigma, prediction=prediction,
                     variance=variance, clip_x0=clip_x0, dynamic_threshold=dynamic_threshold)
  mean, _, _ = q_posterior_mean_variance(schedule, d.x0, x_t, t)
  var, log_var = p_variance(schedule, d.var_output, t, x_t, variance)
  return PMeanVariance(mean, var, log_var, d.x0, d.eps)
