"""Euler and Euler-ancestral (Karras et al. 2022; k-diffusion), on any process.

The sampling schedule is in VP form (`schedules.sampling_schedule`), so a step
from grid point i (α_t, σ_t, λ_t) to the next, less noisy one (α_s, σ_s, λ_s;
clean data after the last) is written in α, σ, λ; in EDM's variables
x̃ = x/α, σ̃ = σ/α the same steps read as below.

* "euler": Euler's method for the probability-flow ODE dx̃/dσ̃ = ε̂(x̃)
  (EDM Eq. (3)), x̃_s = x̃_t + (σ̃_s - σ̃_t) ε̂ = x̂_0 + σ̃_s ε̂. Times α_s:

      x_s = α_s x̂_0 + σ_s ε̂,

  the deterministic DDIM step (`steps.exp_euler`; DDIM Eq. (12) with η = 0).
  First order. It is registered under its own name with EDM's ρ-grid as its
  default grid.
* "euler_ancestral" (k-diffusion's `sample_euler_ancestral`): the step to σ̃_s
  split into a deterministic part to σ̃_down and fresh noise σ̃_up, with
  σ̃_up = η σ̃_s √(1 - σ̃_s²/σ̃_t²), σ̃_down = √(σ̃_s² - σ̃_up²). In VP form
  (`steps.ancestral_sigma`, σ_up = α_s σ̃_up = η σ_s √(1 - e^{-2h})):

      x_s = α_s x̂_0 + √(σ_s² - σ_up²) ε̂ + s_noise σ_up z.

  η = 1 is DDPM's posterior q(x_s|x_t, x̂_0) on the grid (DDIM η = 1 written
  for any process); the last step has σ_s = 0 and adds no noise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_number
from diffusion_jax.samplers.base import DenoiseFn, Sampler, StepInput, register_sampler
from diffusion_jax.samplers.steps import ancestral_sigma, exp_euler
from diffusion_jax.schedules import Schedule, point

__all__ = ["EulerState", "euler", "euler_ancestral"]


class EulerState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample


@register_sampler("euler", order=1, default_spacing="karras")
def euler(sched: Schedule) -> Sampler:
  """Euler in σ̃ (= deterministic DDIM) on the sampling schedule `sched`."""

  def init(x):
    return EulerState(x=x)

  def step(state: EulerState, inp: StepInput, denoise: DenoiseFn):
    d = denoise(state.x, inp.index)
    x_s = exp_euler(d.x0, d.eps, point(sched, inp.index - 1))
    return EulerState(x=x_s.astype(state.x.dtype)), d.x0

  return Sampler(init=init, step=step, stochastic=False)


@register_sampler("euler_ancestral", order=None, default_spacing="karras", ancestral=True)
def euler_ancestral(sched: Schedule, *, eta: float = 1.0, s_noise: float = 1.0) -> Sampler:
  """Euler-ancestral with η ∈ [0, 1] and noise scale s_noise >= 0 (static)."""
  eta = check_number("eta", eta, 0.0, 1.0)
  s_noise = check_number("s_noise", s_noise, 0.0)

  def init(x):
    return EulerState(x=x)

  def step(state: EulerState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    d = denoise(x, i)
    frm, to = point(sched, i), point(sched, i - 1)
    up = ancestral_sigma(frm, to, eta)
    down = jnp.sqrt(jnp.maximum(to.sigma ** 2 - up ** 2, 0.0))
    x_s = to.alpha * d.x0 + down * d.eps + s_noise * up * inp.noise
    return EulerState(x=x_s.astype(x.dtype)), d.x0

  return Sampler(init=init, step=step, stochastic=True)
