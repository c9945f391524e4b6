"""The shared solver steps of the probability-flow ODE, in (α, σ, λ) form.

With x_t = α_t x_0 + σ_t ε, λ = log(α/σ) and a denoiser's (x̂_0, ε̂) at x_t,
the steps to a less noisy point s (h = λ_s - λ_t > 0) are:

* exponential Euler, the deterministic DDIM update (DDIM Eq. (12) with σ = 0,
  = DPM-Solver-1 / DPM-Solver++(1), Lu et al. 2022):

      x_s = α_s x̂_0 + σ_s ε̂;

* exponential Heun: the second-order step that interpolates the data
  prediction linearly between D_t = x̂_0(x_t) and D'_s = x̂_0(x'_s) at the
  Euler point x'_s and integrates the linear ODE exactly in λ (Lu et al. 2022,
  DPM-Solver App. B with the end point; the trapezoidal rule of Zhang & Chen
  2023, DEIS):

      x_s = x'_s + α_s φ₂(h) (D'_s - D_t),    φ₂(h) = (h - 1 + e^{-h})/h ∈ (0, 1).

  Unlike EDM's Heun step in σ (Karras et al. 2022, Alg. 1), whose correction
  multiplies ε̂' - ε̂ by α_s (σ_s/α_s - σ_t/α_t) (~10³ from the last index of a
  cosine schedule), the factor α_s φ₂ stays below 1, and h = ∞ (a
  zero-terminal-SNR start, λ_t = -∞) gives its limit α_s (D'_s - D_t).

* EDM's Heun step in σ̃ = σ/α (Karras et al. 2022, Alg. 1-2), in VP form:
  from x_t at σ̃_t with ε̂_t, the Euler point x'_s (= exponential Euler) and
  ε̂'_s = ε̂(x'_s), the trapezoidal rule in σ̃ gives

      x_s = x'_s + α_s (σ̃_s - σ̃_t) (ε̂'_s - ε̂_t)/2;

* the ancestral (DDIM η, k-diffusion Euler-ancestral) split of the step: with
  σ_up = η σ_s √(1 - e^{-2h}) (the posterior standard deviation of q(x_s|x_t,
  x_0) for η = 1), x_s = α_s x̂_0 + √(σ_s² - σ_up²) ε̂ + σ_up z.

Used by the samplers (`ddim`, `heun`, `euler`, `edm_heun`, `euler_ancestral`,
the DPM-Solver++ and UniPC base step), by progressive distillation's teacher
and by consistency distillation's solver.
Shapes: x, x̂_0, ε̂ [B, ...]; α, σ, λ scalars or broadcastable ([B, 1, ...]).
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.schedules import Point

__all__ = ["exp_euler", "phi2", "exp_heun", "sigma_tilde", "heun_sigma", "ancestral_sigma"]


def exp_euler(x0_hat, eps_hat, to: Point):
  """x_s = α_s x̂_0 + σ_s ε̂: the DDIM / exponential-Euler step to `to`."""
  return to.alpha * x0_hat + to.sigma * eps_hat


def phi2(h):
  """φ₂(h) = (h - 1 + e^{-h})/h for h > 0, with its limit 1 at h = ∞."""
  finite = jnp.isfinite(h)
  h_safe = jnp.where(finite, h, 1.0)
  return jnp.where(finite, (h_safe + jnp.expm1(-h_safe)) / h_safe, 1.0)


def exp_heun(x_euler, x0_t, x0_s, frm: Point, to: Point):
  """The exponential-Heun step from `frm` to `to` (module docstring), given
  the Euler point x'_s = `exp_euler(...)`, D_t = `x0_t` and D'_s = `x0_s`, the
  denoiser's x̂_0 at x'_s."""
  return x_euler + to.alpha * phi2(to.logsnr - frm.logsnr) * (x0_s - x0_t)


def sigma_tilde(p: Point):
  """σ̃ = σ/α = e^{-λ}: the noise level in EDM's (variance-exploding) units;
  +∞ at zero SNR, 0 for clean data."""
  return jnp.exp(-p.logsnr)


def heun_sigma(x_euler, eps_t, eps_s, sigma_t, to: Point):
  """EDM's Heun correction in σ̃ (module docstring): x'_s + α_s (σ̃_s - σ̃_t)
  (ε̂'_s - ε̂_t)/2, with σ̃_t = `sigma_t` (the level ε̂_t was evaluated at)."""
  return x_euler + to.alpha * (sigma_tilde(to) - sigma_t) * 0.5 * (eps_s - eps_t)


def ancestral_sigma(frm: Point, to: Point, eta):
  """σ_up = η σ_s √(1 - e^{-2h}), h = λ_s - λ_t: the fresh noise of an
  ancestral step from `frm` to `to` (η = 1: DDPM's posterior variance; 0 at
  the last step, σ_s = 0; η σ_s from a zero-SNR start, h = ∞)."""
  return eta * to.sigma * jnp.sqrt(-jnp.expm1(-2.0 * (to.logsnr - frm.logsnr)))
