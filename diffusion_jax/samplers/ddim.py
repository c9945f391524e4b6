"""DDIM (Song et al. 2021): the generalized, possibly deterministic sampler.

From grid point i (ᾱ_t = ᾱ_i) to the next, less noisy one (ᾱ_s = ᾱ_{i-1}, 1
after the last), DDIM Eq. (12):
  x_s = √ᾱ_s x̂_0 + √(1 - ᾱ_s - σ²) ε̂ + σ z,   z ~ N(0, I)
  σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)                        DDIM Eq. (16)
η = 0 is the deterministic DDIM (a first-order solver of the probability-flow
ODE, DDIM Eq. (14)); η = 1 gives σ² = β̃, DDPM's posterior variance on the same
grid. The last step has ᾱ_s = 1, hence σ = 0 and x = x̂_0: no noise is added.
The grid is `make_timesteps(T, K, spacing)` (its docstring states the grids).

`ddim_inversion` runs the deterministic chain backwards (DDIM §4.3 / §5,
encoding x_0 → x_T), from grid point i-1 to i, reusing ε̂ of the model at
(x_{i-1}, t_i): x_i = √ᾱ_i x̂_0 + √(1-ᾱ_i) ε̂ with x̂_0 = (x_{i-1} - √(1-ᾱ_{i-1}) ε̂)/√ᾱ_{i-1}.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import (DenoiseFn, Sampler, StepInput,
                                         register_sampler)
from diffusion_jax.schedules import Schedule

__all__ = ["DDIMState", "ddim", "ddim_inversion", "ddim_sigma", "ddim_step"]


class DDIMState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample


def ddim_step(x0_hat, eps_hat, alpha_bar_s):
  """The deterministic DDIM update (η = 0) to ᾱ_s, DDIM Eq. (12) with σ = 0:
  x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂. It is also the exponential-Euler (first-order)
  step of the probability-flow ODE. x0_hat, eps_hat [B, ...]; alpha_bar_s a
  scalar or broadcastable to them ([B, 1, ...] for per-example grids).
  """
  return jnp.sqrt(alpha_bar_s) * x0_hat + jnp.sqrt(1.0 - alpha_bar_s) * eps_hat


def ddim_sigma(alpha_bar_t, alpha_bar_s, eta):
  """σ of DDIM Eq. (16) for a step ᾱ_t → ᾱ_s (s less noisy); any shapes."""
  return eta * jnp.sqrt((1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
                        * (1.0 - alpha_bar_t / alpha_bar_s))


def _check_eta(eta) -> float:
  if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must be a float in [0, 1], got {eta!r}.")
  return float(eta)


@register_sampler("ddim")
def ddim(sched: Schedule, *, eta: float = 0.0) -> Sampler:
  """DDIM on the sampling schedule `sched` (K entries), η ∈ [0, 1] (static)."""
  eta = _check_eta(eta)

  def init(x):
    return DDIMState(x=x)

  def step(state: DDIMState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    d = denoise(x, i)
    a_t, a_s = sched.alphas_cumprod[i], sched.alphas_cumprod_prev[i]
    if eta == 0.0:
      x_s = ddim_step(d.x0, d.eps, a_s)
    else:
      sigma = ddim_sigma(a_t, a_s, eta)
      x_s = (jnp.sqrt(a_s) * d.x0
             + jnp.sqrt(jnp.maximum(1.0 - a_s - sigma ** 2, 0.0)) * d.eps
             + sigma * inp.noise)
    return DDIMState(x=x_s.astype(x.dtype)), d.x0

  return Sampler(init=init, step=step, stochastic=eta > 0.0)


def ddim_inversion(sched: Schedule) -> Sampler:
  """Deterministic DDIM encoder x_0 → x_T on `sched`; steps run i = 0..K-1.

  Not in the registry: it maps data to noise (see `sampling.make_invert_fn`).
  """

  def init(x):
    return DDIMState(x=x)

  def step(state: DDIMState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    d = denoise(x, i)
    a_prev, a_t = sched.alphas_cumprod_prev[i], sched.alphas_cumprod[i]
    x0 = (x - jnp.sqrt(1.0 - a_prev) * d.eps) / jnp.sqrt(a_prev)
    return DDIMState(x=ddim_step(x0, d.eps, a_t).astype(x.dtype)), x0

  return Sampler(init=init, step=step, stochastic=False)
