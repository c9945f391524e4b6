"""Training objectives: L_simple with weightings, the variational bound, bits/dim.

`denoiser(x_t, t) -> output` below is any pure function of arrays (typically
`functools.partial(model_fn, params, cond=...)`); its output has the layout of
`process.p_mean_variance` ([B, ..., C], or [B, ..., 2C] for learned variances).
It receives the training-time index `schedule.timesteps[t]` (t itself for a
full schedule, the original index for a respaced one), as the samplers do.

On a continuous-time `schedules.Process` (EDM, flow matching, continuous VP)
t is a float array of times (`sample_times`), the denoiser receives the
process's model time (`schedules.model_time`) and x_t = α(t) x_0 + σ(t) ε.

References:
  * Ho et al. 2020, Eq. (5) (L_T, L_{t-1}, L_0) and Eq. (14) (L_simple).
  * Nichol & Dhariwal 2021, §3.1: L_hybrid = L_simple + λ L_vlb with λ = 0.001
    and a stop-gradient on the mean in L_vlb.
  * Hang et al. 2023: min-SNR-γ loss weighting.
  * Karras et al. 2022 (EDM), §5 and Table 1: ln σ ~ N(P_mean, P_std²) and
    λ(σ) = (σ² + σ_d²)/(σ σ_d)².
  * Esser et al. 2024 (SD3), §3.1 and §5.3.2: logit-normal t and the time shift.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from diffusion_jax import process
from diffusion_jax._checks import ArgumentError, check_choice, check_int, check_number
from diffusion_jax.schedules import Process, Schedule, model_time

__all__ = [
    "LOSS_TYPES", "WEIGHTINGS", "normal_kl", "discretized_gaussian_log_likelihood",
    "prior_bpd", "vlb_terms", "sample_timesteps", "loss_weight", "check_loss_settings",
    "training_losses", "bits_per_dim", "TIME_SAMPLINGS", "sample_times",
]

LOSS_TYPES = ("simple", "hybrid", "vlb")
# "edm": Karras et al.'s λ(σ) = (σ² + σ_d²)/(σ σ_d)² = SNR + 1/σ_d² on the x̂_0 error.
WEIGHTINGS = ("none", "min_snr", "edm")
# Training times of a continuous process: "uniform" in its `train_range`, or
# "log_normal", log(σ/α) ~ N(t_mean, t_std²) (EDM's log-normal σ; for flow
# matching SD3's logit-normal t, since t = sigmoid(log(σ/α)) there).
TIME_SAMPLINGS = ("uniform", "log_normal")
_LN2 = math.log(2.0)

Denoiser = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _mean_flat(x):
  """Mean over all axes but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise (nats)."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _log_ndtr_diff(a, b):
  """log(Φ(b) - Φ(a)) for a < b, stable in both tails (mirrors to the left)."""
  flip = (a + b) > 0
  lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
  return log_hi + jnp.log(-jnp.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """log p(x) of 8-bit data under a Gaussian discretized to 256 bins (DDPM §3.3).

  x ∈ [-1, 1] lies on the grid {-1 + 2k/255}; bin k covers
  [x - 1/255, x + 1/255], with the edge bins extended to ∓∞. Elementwise, nats.
  Shapes: x, means [B, ...]; log_scales (log σ) broadcastable to them.
  """
  centered = x - means
  inv_s = jnp.exp(-log_scales)
  upper = inv_s * (centered + 1.0 / 255.0)
  lower = inv_s * (centered - 1.0 / 255.0)
  # A bin much narrower than σ (width Δ = 2/(255σ) < 1e-3 in standard units):
  # Φ(b) - Φ(a) is below float32 resolution of Φ, so integrate exactly around
  # the midpoint m: log ∫ φ = log Δ + log φ(m) + log(sinh(y)/y) + O(Δ²),
  # y = mΔ/2 (error ≤ Δ²/8). Inputs of the unused branch are made harmless
  # so that neither branch produces NaN gradients.
  log_width = math.log(2.0 / 255.0) - log_scales
  narrow = log_width < math.log(1e-3)
  mid = jnp.where(narrow, centered * inv_s, 0.0)
  y = jnp.abs(mid) * jnp.exp(jnp.minimum(log_width, math.log(1e-3))) / 2.0
  small = y < 1e-2
  y_big = jnp.where(small, 1.0, y)
  log_sinhc = jnp.where(small, y * y / 6.0,
                        y_big + jnp.log(-jnp.expm1(-2.0 * y_big)) - jnp.log(2.0 * y_big))
  log_narrow = log_width - 0.5 * mid * mid - 0.5 * math.log(2.0 * math.pi) + log_sinhc
  log_wide = _log_ndtr_diff(jnp.where(narrow, -1.0, lower), jnp.where(narrow, 1.0, upper))
  return jnp.where(
      x < -0.999, log_ndtr(upper),
      jnp.where(x > 0.999, log_ndtr(-lower), jnp.where(narrow, log_narrow, log_wide)))


def prior_bpd(schedule: Schedule, x0):
  """L_T = KL(q(x_T|x_0) || N(0, I)) in bits per dimension, [B]."""
  T = schedule.num_timesteps
  t = jnp.full((x0.shape[0],), T - 1, jnp.int32)
  mean, _, log_var = process.q_mean_variance(schedule, x0, t)
  return _mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / _LN2


def vlb_terms(schedule: Schedule, model_output, x0, x_t, t, *,
              prediction: str = "eps", variance: str = "fixed_small",
              clip_x0: float | None = None):
  """One term of the bound in bits/dim, [B] (DDPM Eq. (5)).

  L_{t} = KL(q(x_{t-1}|x_t, x_0) || p_θ(x_{t-1}|x_t)) for t > 0 and the decoder
  L_0 = -log p_θ(x_0|x_1) (discretized Gaussian, 8-bit data) at t = 0.
  """
  true_mean, _, true_log_var = process.q_posterior_mean_variance(schedule, x0, x_t, t)
  p = process.p_mean_variance(schedule, model_output, x_t, t, prediction=prediction,
                              variance=variance, clip_x0=clip_x0)
  kl = _mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / _LN2
  nll = -_mean_flat(discretized_gaussian_log_likelihood(
      x0, means=p.mean, log_scales=0.5 * p.log_variance)) / _LN2
  return jnp.where(t == 0, nll, kl)


def sample_timesteps(rng, batch_size: int, num_timesteps: int):
  """t ~ Uniform{0, ..., T-1}, int32 [batch_size]."""
  return jax.random.randint(rng, (batch_size,), 0, num_timesteps, dtype=jnp.int32)


def sample_times(rng, batch_size: int, schedule, *, t_sampling: str = "uniform",
                 t_mean: float = 0.0, t_std: float = 1.0):
  """Training times [batch_size]: int32 indices t ~ U{0..T-1} of a discrete
  `Schedule` (`sample_timesteps`; only "uniform"), float32 times of a
  continuous `Process`:
    * "uniform": t ~ U(train_range) of the process;
    * "log_normal": log(σ/α) = -λ ~ N(t_mean, t_std²), t = t(λ): EDM's
      ln σ ~ N(P_mean, P_std²) (-1.2, 1.2), and for flow matching SD3's
      logit-normal t = sigmoid(N(m, s²)) (0, 1), as t = sigmoid(-λ) there;
  then the process's time shift λ → λ - log(shift) (SD3 §5.3.2), and a clip
  to the process's time domain.
  """
  check_choice("t_sampling", t_sampling, TIME_SAMPLINGS)
  if not isinstance(schedule, Process):
    if t_sampling != "uniform":
      raise ArgumentError("t_sampling", f"t_sampling={t_sampling!r} needs a continuous-time "
                                        "process; a discrete schedule samples its T indices "
                                        "uniformly.")
    return sample_timesteps(rng, batch_size, schedule.num_timesteps)
  if t_sampling == "uniform":
    lo, hi = schedule.train_range
    t = jax.random.uniform(rng, (batch_size,), jnp.float32, lo, hi)
    if schedule.shift == 1.0:
      return t
    lam = schedule.logsnr(t)
  else:
    lam = -(t_mean + t_std * jax.random.normal(rng, (batch_size,), jnp.float32))
  lo, hi = schedule.time_domain
  lam = lam - math.log(schedule.shift)
  return jnp.clip(schedule.time(lam), lo, hi).astype(jnp.float32)


def loss_weight(schedule: Schedule, t, x, *, prediction: str, weighting: str,
                min_snr_gamma: float = 5.0, sigma_data: float = 0.5):
  """Per-example weight [B, 1, ...] of the squared error in `prediction` space.

  "min_snr" (Hang et al. 2023) gives every parameterization the effective
  x0-space weight min(SNR_t, γ) (`process.PREDICTIONS[...].min_snr_weight`):
  the eps loss is weighted by min(SNR, γ)/SNR, the x0 loss by min(SNR, γ),
  the v loss by min(SNR, γ)/(SNR + 1). "edm" gives the x0-space weight
  λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² = SNR + 1/σ_d² of Karras et al. 2022 (σ̃ =
  σ/α), times `PREDICTIONS[...].x0_per_output` in other spaces. `schedule`
  may be a continuous `Process` (t: float times; SNR = e^{2λ}).
  """
  check_loss_settings(prediction=prediction, weighting=weighting, min_snr_gamma=min_snr_gamma,
                      sigma_data=sigma_data)
  if weighting == "none":
    return jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  if isinstance(schedule, Process):
    snr = jnp.exp(2.0 * process.coefficients(schedule, t, x).logsnr)
  else:
    snr = process.extract(schedule.snr, t, x)
  entry = process.PREDICTIONS[prediction]
  if weighting == "edm":
    return ((snr + 1.0 / sigma_data ** 2) * entry.x0_per_output(snr)).astype(x.dtype)
  return entry.min_snr_weight(snr, min_snr_gamma)


def check_loss_settings(*, prediction: str = "eps", variance: str = "fixed_small",
                        loss_type: str = "simple", weighting: str = "none",
                        min_snr_gamma: float = 5.0, vlb_weight: float = 1e-3,
                        sigma_data: float = 0.5, t_sampling: str = "uniform",
                        t_mean: float = 0.0, t_std: float = 1.0, schedule=None) -> None:
  """The rules of `training_losses`' settings (each raises an ArgumentError
  naming its argument): known names, "hybrid" needs a learned variance,
  min_snr_gamma > 0, vlb_weight >= 0 and sigma_data > 0; with a continuous
  `schedule` (a `Process`), the predictions and variances it allows and
  loss_type "simple" (the bound is the discrete chain's)."""
  continuous = schedule if isinstance(schedule, Process) else None
  process.check_prediction(prediction, continuous)
  process.check_variance(variance, continuous)
  check_choice("loss_type", loss_type, LOSS_TYPES)
  check_choice("weighting", weighting, WEIGHTINGS)
  check_number("min_snr_gamma", min_snr_gamma, 0.0, low_open=True)
  check_number("vlb_weight", vlb_weight, 0.0)
  check_number("sigma_data", sigma_data, 0.0, low_open=True)
  check_choice("t_sampling", t_sampling, TIME_SAMPLINGS)
  check_number("t_mean", t_mean)
  check_number("t_std", t_std, 0.0, low_open=True)
  if schedule is not None and continuous is None and t_sampling != "uniform":
    raise ArgumentError("t_sampling", f"t_sampling={t_sampling!r} needs a continuous-time "
                                      "process; a discrete schedule samples its T indices "
                                      "uniformly.")
  if isinstance(schedule, Process) and loss_type != "simple":
    raise ArgumentError("loss_type", f"loss_type={loss_type!r} is the variational bound of a "
                                     f"discrete chain; process {schedule.name!r} trains with "
                                     "'simple' (its likelihood: likelihood.ode_bits_per_dim).")
  if loss_type == "hybrid" and not process.is_learned_variance(variance):
    learned = [v for v, e in process.VARIANCES.items() if e.learned]
    raise ArgumentError("loss_type", f"loss_type='hybrid' needs a learned variance {learned}, "
                                     f"got variance={variance!r}.")


def training_losses(schedule: Schedule, denoiser: Denoiser, x0, t, noise, *,
                    prediction: str = "eps", variance: str = "fixed_small",
                    loss_type: str = "simple", weighting: str = "none",
                    min_snr_gamma: float = 5.0, vlb_weight: float = 1e-3,
                    sigma_data: float = 0.5):
  """Per-example losses for x0 [B, ...] at timesteps t [B] with noise ε [B, ...].

  `schedule` is a discrete `Schedule` (t: int32 indices) or a continuous
  `schedules.Process` (t: float32 times, `sample_times`; "simple" only).
  * "simple": ‖target - output‖² averaged over dimensions (DDPM Eq. (14)),
    target ε, x0, v or the flow velocity ε - x0 (`process.regression_target`),
    optionally weighted (`loss_weight`). EDM's loss is prediction "x0" of the
    preconditioned model (`process.edm_preconditioning`) with the "edm"
    weighting; flow matching's is prediction "flow" with weighting "none".
  * "hybrid": simple + λ T L_t with λ = `vlb_weight`, the single-t estimate of
    λ L_vlb (IDDPM §3.1); the mean is under stop-gradient in the VLB term, so
    only the variance head learns from it. Needs a learned variance.
  * "vlb": T L_t alone (the variational bound, gradients through everything).
  Returns a dict of [B] arrays: "loss", "mse", and "vb" (bits/dim) when used.
  """
  check_loss_settings(prediction=prediction, variance=variance, loss_type=loss_type,
                      weighting=weighting, min_snr_gamma=min_snr_gamma, vlb_weight=vlb_weight,
                      sigma_data=sigma_data, schedule=schedule)
  x_t = process.q_sample(schedule, x0, t, noise)
  output = denoiser(x_t, model_time(schedule, t))
  out, var_out = process.split_model_output(output, variance)
  target = process.regression_target(schedule, x0, noise, t, prediction)
  w = loss_weight(schedule, t, x0, prediction=prediction, weighting=weighting,
                  min_snr_gamma=min_snr_gamma, sigma_data=sigma_data)
  mse = _mean_flat(w * (target - jnp.asarray(out, x0.dtype)) ** 2)
  terms = {"mse": mse}
  T = getattr(schedule, "num_timesteps", None)  # The bound's terms: discrete schedules only.
  if loss_type == "simple":
    terms["loss"] = mse
  elif loss_type == "hybrid":
    frozen = jnp.concatenate([jax.lax.stop_gradient(out), var_out], axis=-1)
    terms["vb"] = vlb_terms(schedule, frozen, x0, x_t, t, prediction=prediction,
                            variance=variance)
    terms["loss"] = mse + vlb_weight * T * terms["vb"]
  else:
    terms["vb"] = vlb_terms(schedule, output, x0, x_t, t, prediction=prediction,
                            variance=variance)
    terms["loss"] = T * terms["vb"]
  return terms


def bits_per_dim(schedule: Schedule, denoiser: Denoiser, x0, rng, *,
                 prediction: str = "eps", variance: str = "fixed_small",
                 clip_x0: float | None = None, chunk_size: int = 1):
  """The full variational bound -log p(x0) ≤ L_T + Σ_t L_t, in bits/dim.

  Evaluates all T terms for the batch x0 [B, ...] (8-bit data scaled to
  [-1, 1]). Timesteps are processed `chunk_size` at a time inside one
  `lax.map`, so peak memory is that of `chunk_size` × B model evaluations,
  whatever T is. The noise for term t is drawn from fold_in(rng, t).
  Returns a dict: "total_bpd" [B], "prior_bpd" [B], "vb" [B, T] (bits/dim).
  """
  check_int("chunk_size", chunk_size, 1)
  B, T = x0.shape[0], schedule.num_timesteps

  def term(t_scalar):
    t = jnp.full((B,), t_scalar, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, t_scalar), x0.shape, x0.dtype)
    x_t = process.q_sample(schedule, x0, t, noise)
    return vlb_terms(schedule, denoiser(x_t, schedule.timesteps[t]), x0, x_t, t,
                     prediction=prediction, variance=variance, clip_x0=clip_x0)

  vb = jax.lax.map(term, jnp.arange(T, dtype=jnp.int32), batch_size=chunk_size).T
  prior = prior_bpd(schedule, x0)
  return {"total_bpd": vb.sum(axis=1) + prior, "prior_bpd": prior, "vb": vb}
