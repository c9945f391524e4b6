"""Exponential Heun: a second-order deterministic sampler, two model calls a step.

Each step from grid point i to i-1 takes the exponential-Euler (DDIM) point
x'_s, evaluates the denoiser there and corrects with the trapezoidal rule in
log-SNR (`steps.exp_heun`):

    x'_s = α_s x̂_0(x_t) + σ_s ε̂(x_t),
    x_s  = x'_s + α_s φ₂(h) (x̂_0(x'_s) - x̂_0(x_t)),    h = λ_s - λ_t.

The last step goes to clean data (λ = ∞), where the model cannot be
evaluated: it is the Euler step alone (x = x̂_0), as in EDM's Alg. 1. So K steps
cost 2K - 1 model calls.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from diffusion_jax.samplers.base import DenoiseFn, Sampler, StepInput, register_sampler
from diffusion_jax.samplers.steps import exp_euler, exp_heun
from diffusion_jax.schedules import Schedule, point

__all__ = ["HeunState", "heun"]


class HeunState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample


@register_sampler("heun", order=2, default_spacing="logsnr", nfe_per_step=2)
def heun(sched: Schedule) -> Sampler:
  """Exponential Heun on the sampling schedule `sched` (K entries)."""

  def init(x):
    return HeunState(x=x)

  def step(state: HeunState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    d = denoise(x, i)
    frm, to = point(sched, i), point(sched, i - 1)
    x_euler = exp_euler(d.x0, d.eps, to)
    corrected = lambda: exp_heun(x_euler, d.x0, denoise(x_euler, i - 1).x0, frm, to)
    x_s = jax.lax.cond(i > 0, corrected, lambda: x_euler)
    return HeunState(x=x_s.astype(x.dtype)), d.x0

  return Sampler(init=init, step=step, stochastic=False)
