"""EDM's Heun sampler with stochastic churn (Karras et al. 2022, Alg. 1 and 2).

In EDM's variables x̃ = x/α, σ̃ = σ/α = e^{-λ}, from grid point i (σ̃_t) to the
next (σ̃_s; clean data after the last) of the N = K grid points:

    γ = min(S_churn/N, √2 - 1) if S_min <= σ̃_t <= S_max, else 0
    σ̂ = σ̃_t (1 + γ),   x̂ = x̃_t + √(σ̂² - σ̃_t²) S_noise z        (churn)
    x̃'_s = x̂ + (σ̃_s - σ̂) ε̂(x̂; σ̂)                               (Euler)
    x̃_s  = x̂ + (σ̃_s - σ̂) (ε̂(x̂; σ̂) + ε̂(x̃'_s; σ̃_s))/2             (Heun)

The sampler runs on the VP form of the grid (`schedules.sampling_schedule`),
so the steps are written with α, σ, λ (`steps.exp_euler`, `steps.heun_sigma`):
the Euler step is exactly deterministic DDIM, and the Heun correction adds
α_s (σ̃_s - σ̂)(ε̂' - ε̂)/2. The last step (to σ̃ = 0, where the model cannot
be evaluated) is Euler alone, x = x̂_0, as in EDM's Alg. 1; so is a step
from a zero-SNR point (σ̃ = ∞, e.g. flow matching at t = 1), where the
trapezoid in σ̃ is undefined. K steps cost at most 2K - 1 model calls.

With S_churn = 0 (the default) the sampler is deterministic and second
order. With S_churn > 0 the model is evaluated at the churned level σ̂, off
the grid: the engine's denoiser must resolve any noise level, which a
continuous-time process does (`schedules.level_at_logsnr`) and a discrete
schedule does not (an error then). Not to be confused with "heun", the
exponential (log-SNR) Heun step, whose correction factor stays below 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax._checks import ArgumentError, check_number
from diffusion_jax.samplers.base import DenoiseFn, Sampler, StepInput, register_sampler
from diffusion_jax.samplers.steps import exp_euler, heun_sigma, sigma_tilde
from diffusion_jax.schedules import Schedule, point

__all__ = ["EDMState", "edm_heun"]


class EDMState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample


@register_sampler("edm_heun", order=2, default_spacing="karras", nfe_per_step=2)
def edm_heun(sched: Schedule, *, s_churn: float = 0.0, s_min: float = 0.0,
             s_max: float = math.inf, s_noise: float = 1.0) -> Sampler:
  """EDM's Heun sampler on the sampling schedule `sched` (K entries).

  Args (static; EDM Alg. 2, in σ̃ = σ/α units):
    s_churn: S_churn >= 0, the total churn (0: deterministic Alg. 1).
    s_min, s_max: the σ̃ range [S_min, S_max] where churn is applied.
    s_noise: S_noise >= 0, the scale of the added noise.
  """
  s_churn = check_number("s_churn", s_churn, 0.0)
  s_min = check_number("s_min", s_min, 0.0)
  if not (isinstance(s_max, (int, float)) and not isinstance(s_max, bool)
          and s_max >= s_min):
    raise ArgumentError("s_max", f"s_max must be a number >= s_min = {s_min:g} (inf allowed), "
                                 f"got {s_max!r}.")
  s_noise = check_number("s_noise", s_noise, 0.0)
  K = sched.num_timesteps
  gamma_max = min(s_churn / K, math.sqrt(2.0) - 1.0)
  stochastic = s_churn > 0.0

  def init(x):
    return EDMState(x=x)

  def step(state: EDMState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    frm, to = point(sched, i), point(sched, i - 1)
    sig_t = sigma_tilde(frm)
    if stochastic:
      churn = (sig_t >= s_min) & (sig_t <= s_max) & jnp.isfinite(sig_t)
      gamma = jnp.where(churn, gamma_max, 0.0)
      lam_hat = frm.logsnr - jnp.log1p(gamma)
      sig_hat = sig_t * (1.0 + gamma)
      # x̂ = α̂ (x_t/α_t + √(σ̂² - σ̃_t²) S_noise z), in VP form at λ̂.
      a_hat = jnp.sqrt(jax.nn.sigmoid(2.0 * lam_hat))
      add = jnp.sqrt(jnp.maximum(sig_hat ** 2 - sig_t ** 2, 0.0)) * s_noise * inp.noise
      x_hat = jnp.where(churn, a_hat * (x / jnp.where(churn, frm.alpha, 1.0) + add), x)
      d = denoise(x_hat, i, logsnr=lam_hat)
    else:
      x_hat, sig_hat = x, sig_t
      d = denoise(x, i)
    x_euler = exp_euler(d.x0, d.eps, to)
    corrected = lambda: heun_sigma(x_euler, d.eps, denoise(x_euler, i - 1).eps, sig_hat, to)
    x_s = jax.lax.cond((i > 0) & jnp.isfinite(sig_hat), corrected, lambda: x_euler)
    return EDMState(x=x_s.astype(x.dtype)), d.x0

  return Sampler(init=init, step=step, stochastic=stochastic)
