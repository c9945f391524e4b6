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
  ∇ log q(x_t) = -ε/√(1-ᾱ_t)                          Song et al. 2021
  Σ_θ = exp(v log β_t + (1-v) log β̃_t)                              IDDPM Eq. (15)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedules import Schedule

__all__ = [
    "PREDICTIONS", "VARIANCES", "check_prediction", "check_variance",
    "extract", "q_mean_variance", "q_sample", "q_posterior_mean_variance",
    "posterior_coefficients", "q_posterior_general", "predict_x0_from_eps",
    "predict_eps_from_x0", "predict_x0_from_v", "predict_eps_from_v", "get_v",
    "score_from_eps", "eps_from_score", "model_output_to_x0_eps",
    "threshold_x0", "denoise", "split_model_output", "p_variance",
    "PMeanVariance", "p_mean_variance", "p_sample",
]

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")


def check_prediction(prediction: str) -> str:
  if prediction not in PREDICTIONS:
    raise ValueError(
        f"Unknown prediction {prediction!r}; known predictions: {list(PREDICTIONS)}.")
  return prediction


def check_variance(variance: str) -> str:
  if variance not in VARIANCES:
    raise ValueError(
        f"Unknown variance {variance!r}; known variances: {list(VARIANCES)}.")
  return variance


def _is_concrete(a) -> bool:
  return not isinstance(a, jax.core.Tracer)


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
  t = jnp.asarray(t)
  if t.ndim != 1 or x.ndim < 1 or t.shape[0] != x.shape[0]:
    raise ValueError(
        f"{name} must be an int array of shape [B] = ({x.shape[0] if x.ndim else '?'},) "
        f"matching x of shape {x.shape}; got {name} of shape {t.shape}.")
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array of timestep indices, got {t.dtype}.")
  n = arr.shape[0] - offset
  if _is_concrete(t):
    t_np = np.asarray(t)
    if t_np.size and (t_np.min() < -offset or t_np.max() >= n):
      raise ValueError(
          f"{name} must lie in [{-offset}, {n - 1}] for this schedule (T = {n}); got "
          f"values in [{t_np.min()}, {t_np.max()}].")
  # wrap_negative_indices=False: a traced negative index must fill NaN too,
  # not wrap around to the end of the schedule.
  vals = arr.at[t + offset].get(mode="fill", fill_value=jnp.nan,
                                wrap_negative_indices=False)
  return vals.reshape((x.shape[0],) + (1,) * (x.ndim - 1)).astype(x.dtype)


# ----------------------------------------------------------------------------
# Forward process.
# ----------------------------------------------------------------------------


def q_mean_variance(schedule: Schedule, x0, t):
  """q(x_t|x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I), DDPM Eq. (4).

  Returns (mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...]).
  """
  mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
  # (√(1-ᾱ))², not 1 - ᾱ: the float32 ᾱ ≈ 1 at small t loses 1-ᾱ's digits.
  var = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) ** 2
  log_var = extract(schedule.log_one_minus_alphas_cumprod, t, x0)
  return mean, var, log_var


def q_sample(schedule: Schedule, x0, t, noise):
  """Draws x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, DDPM Eq. (4). Shapes [B, ...]."""
  _check_same_shape(x0=x0, noise=noise)
  return (extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


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
  ac_ext = jnp.concatenate([jnp.ones((1,), jnp.float32), schedule.alphas_cumprod])
  om_ext = jnp.concatenate([jnp.zeros((1,), jnp.float32),
                            schedule.sqrt_one_minus_alphas_cumprod ** 2])
  ab_s = extract(ac_ext, s, x_t, offset=1, name="s")
  ab_t = extract(schedule.alphas_cumprod, t, x_t)
  om_s = extract(om_ext, s, x_t, offset=1, name="s")
  om_t = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) ** 2
  # After the shape checks in `extract`, so that s and t broadcast here.
  if _is_concrete(s) and _is_concrete(t) and np.any(np.asarray(s) >= np.asarray(t)):
    raise ValueError(f"s must be < t elementwise; got s={s} and t={t}.")
  c0, ct, var = posterior_coefficients(ab_s, ab_t, om_s, om_t)
  return c0 * x0 + ct * x_t, var


# ----------------------------------------------------------------------------
# Parameterizations: eps, x0, v and the score.
# ----------------------------------------------------------------------------


def predict_x0_from_eps(schedule: Schedule, x_t, t, eps):
  """x_0 = x_t/√ᾱ_t - √(1/ᾱ_t - 1) ε, DDPM Eq. (15)."""
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
          - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def predict_eps_from_x0(schedule: Schedule, x_t, t, x0):
  """ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t)."""
  return ((x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * x0)
          / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t))


def get_v(schedule: Schedule, x0, eps, t):
  """v = √ᾱ_t ε - √(1-ᾱ_t) x_0, Salimans & Ho 2022 §4."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0) * eps
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def predict_x0_from_v(schedule: Schedule, x_t, t, v):
  """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def predict_eps_from_v(schedule: Schedule, x_t, t, v):
  """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
  return (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
          + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v)


def score_from_eps(schedule: Schedule, eps, t):
  """∇_x log q(x_t) = -ε/√(1-ᾱ_t) (Song et al. 2021, Eq. (9) for VP)."""
  return -eps / extract(schedule.sqrt_one_minus_alphas_cumprod, t, eps)


def eps_from_score(schedule: Schedule, score, t):
  """ε = -√(1-ᾱ_t) ∇_x log q(x_t)."""
  return -score * extract(schedule.sqrt_one_minus_alphas_cumprod, t, score)


def model_output_to_x0_eps(schedule: Schedule, output, x_t, t, prediction: str):
  """Converts a model output of the given prediction type to (x0_hat, eps_hat).

  The output is cast to x_t's dtype, so bf16 models keep float32 sampler state.
  """
  check_prediction(prediction)
  _check_same_shape(output=output, x_t=x_t)
  if schedule.zero_terminal_snr and prediction == "eps":
    raise ValueError(
        "prediction='eps' cannot recover x0 at the last step of a zero-terminal-"
        "SNR schedule (ᾱ = 0); use prediction 'v' or 'x0'.")
  output = jnp.asarray(output, x_t.dtype)
  if prediction == "eps":
    return predict_x0_from_eps(schedule, x_t, t, output), output
  if prediction == "x0":
    return output, predict_eps_from_x0(schedule, x_t, t, output)
  return (predict_x0_from_v(schedule, x_t, t, output),
          predict_eps_from_v(schedule, x_t, t, output))


def threshold_x0(x0, clip_x0: float | None = None,
                 dynamic_threshold: float | None = None):
  """Clips x0 [B, ...] to the data range.

  Args:
    clip_x0: clip to [-clip_x0, clip_x0] (None: no static clipping).
    dynamic_threshold: percentile p in (0, 1) of Saharia et al. 2022 (Imagen
      §2.3): per sample, s = max(quantile_p(|x0|), clip_x0 or 1), then
      x0 = clip(x0, -s, s) * (clip_x0 or 1) / s.
  """
  if dynamic_threshold is not None:
    if not 0.0 < dynamic_threshold < 1.0:
      raise ValueError(f"dynamic_threshold must be in (0, 1), got {dynamic_threshold!r}.")
    bound = 1.0 if clip_x0 is None else clip_x0
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, dynamic_threshold, axis=1), bound)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) * (bound / s)
  if clip_x0 is not None:
    if not clip_x0 > 0:
      raise ValueError(f"clip_x0 must be > 0 or None, got {clip_x0!r}.")
    return jnp.clip(x0, -clip_x0, clip_x0)
  return x0


def denoise(schedule: Schedule, output, x_t, t, *, prediction: str = "eps",
            clip_x0: float | None = None, dynamic_threshold: float | None = None):
  """Model output → (x0_hat, eps_hat), with optional x0 clipping / thresholding.

  When x0 is clipped, eps is recomputed from the clipped x0 so that the pair
  stays consistent with x_t (x_t = √ᾱ x0_hat + √(1-ᾱ) eps_hat).
  Shapes: output, x_t [B, ...]; t int32 [B].
  """
  x0_hat, eps_hat = model_output_to_x0_eps(schedule, output, x_t, t, prediction)
  if clip_x0 is None and dynamic_threshold is None:
    return x0_hat, eps_hat
  x0_hat = threshold_x0(x0_hat, clip_x0, dynamic_threshold)
  return x0_hat, predict_eps_from_x0(schedule, x_t, t, x0_hat)


# ----------------------------------------------------------------------------
# The learned reverse process p_θ(x_{t-1}|x_t).
# ----------------------------------------------------------------------------


def split_model_output(output, variance: str):
  """Splits a learned-variance output [B, ..., 2C] into ([B, ..., C], [B, ..., C]).

  For fixed variances returns (output, None).
  """
  check_variance(variance)
  if variance in ("fixed_small", "fixed_large"):
    return output, None
  if output.shape[-1] % 2:
    raise ValueError(
        f"variance={variance!r} needs a model output with 2x channels on the last "
        f"axis; got shape {output.shape}.")
  return jnp.split(output, 2, axis=-1)


def p_variance(schedule: Schedule, var_output, t, x_t, variance: str):
  """Σ_θ(x_t, t) of p_θ(x_{t-1}|x_t). Returns (variance, log_variance).

  * "fixed_small": β̃_t (log clipped at t = 0 as in IDDPM).
  * "fixed_large": β_t, with β̃_1 used at t = 0 (IDDPM / ADM convention, which
    makes the decoder at t = 0 well defined).
  * "learned": the model outputs log σ² directly.
  * "learned_range": the model outputs v ∈ [-1, 1] and
    log σ² = ((v+1)/2) log β_t + (1 - (v+1)/2) log β̃_t, IDDPM Eq. (15).
  Shapes: broadcastable to x_t [B, ...].
  """
  check_variance(variance)
  if variance == "fixed_small":
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t)
  elif variance == "fixed_large":
    log_betas = jnp.log(jnp.concatenate(
        [schedule.posterior_variance[1:2], schedule.betas[1:]]))
    if schedule.num_timesteps == 1:
      log_betas = jnp.log(schedule.betas)
    log_var = extract(log_betas, t, x_t)
  elif variance == "learned":
    log_var = jnp.asarray(var_output, x_t.dtype)
  else:
    min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
    max_log = extract(jnp.log(schedule.betas), t, x_t)
    frac = (jnp.asarray(var_output, x_t.dtype) + 1.0) / 2.0
    log_var = frac * max_log + (1.0 - frac) * min_log
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
  out, var_out = split_model_output(model_output, variance)
  x0_hat, eps_hat = denoise(schedule, out, x_t, t, prediction=prediction,
                            clip_x0=clip_x0, dynamic_threshold=dynamic_threshold)
  mean, _, _ = q_posterior_mean_variance(schedule, x0_hat, x_t, t)
  var, log_var = p_variance(schedule, var_out, t, x_t, variance)
  return PMeanVariance(mean, var, log_var, x0_hat, eps_hat)


def p_sample(schedule: Schedule, model_output, x_t, t, noise, **kwargs):
  """One ancestral step x_{t-1} ~ p_θ(x_{t-1}|x_t) (DDPM Algorithm 2, line 4).

  x_{t-1} = μ_θ + σ_θ z, with no noise added where t = 0 (it returns the mean).
  kwargs are those of `p_mean_variance`. Returns (x_{t-1} [B, ...], x0_hat).
  """
  _check_same_shape(x_t=x_t, noise=noise)
  pmv = p_mean_variance(schedule, model_output, x_t, t, **kwargs)
  nonzero = (jnp.asarray(t) > 0).reshape((-1,) + (1,) * (x_t.ndim - 1))
  x_prev = pmv.mean + jnp.where(nonzero, jnp.exp(0.5 * pmv.log_variance), 0.0) * noise
  return x_prev, pmv.x0_hat
