"""DPM-Solver++ multistep, data-prediction form (Lu et al. 2022, Alg. 2).

With α = √ᾱ, σ = √(1-ᾱ) and λ = log(α/σ), one step from grid point i (t) to
the next, less noisy one (s), with h = λ_s - λ_t and D_0 = x̂_0(x_t, t):
  x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D                 (exponential integrator)
  1st order (= DDIM η=0):  D = D_0, i.e. x_s = α_s D_0 + σ_s ε̂ (`steps.exp_euler`,
                           which every order starts from)
  2M (Alg. 2):             D = D_0 + (D_0 - D_{-1}) / (2 r_0),   r_0 = h_{-1}/h
  3M (as in k-diffusion / diffusers), with D1_0 = (D_0 - D_{-1})/r_0,
     D1_1 = (D_{-1} - D_{-2})/r_1, r_1 = h_{-2}/h:
     x_s = (σ_s/σ_t) x_t - α_s φ_1 D_0 + α_s (φ_1/h + 1) D_1 - α_s ((φ_1 + h)/h² - ½) D_2,
     φ_1 = e^{-h} - 1,  D_1 = D1_0 + r_0/(r_0+r_1) (D1_0 - D1_1),  D_2 = (D1_0 - D1_1)/(r_0+r_1)
where D_{-1}, D_{-2} are the data predictions of the previous steps and h_{-1},
h_{-2} their step sizes, kept in the fixed-shape state. The order is lowered
at the first step(s) (no history yet) and at the final step, which goes to
ᾱ = 1 (h = ∞) and therefore returns D_0 exactly. Steps from a zero-SNR start
(σ_t = 1, λ_t = -∞) are well defined: the history term vanishes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax._checks import ArgumentError
from diffusion_jax.samplers.base import DenoiseFn, Sampler, StepInput, register_sampler
from diffusion_jax.samplers.steps import exp_euler
from diffusion_jax.schedules import Schedule, point

__all__ = ["DPMSolverState", "dpm_solver_pp", "dpmpp_2m", "dpmpp_3m"]


class DPMSolverState(NamedTuple):
  x: jax.Array        # [B, ...] float32, the current sample
  # History, newest first (zeros until filled; the step number says how much is valid).
  x0_hist: jax.Array  # [order-1, B, ...] float32, D_{-1}, D_{-2}
  h_hist: jax.Array   # [order-1] float32, h_{-1}, h_{-2}


def dpm_solver_pp(sched: Schedule, order: int) -> Sampler:
  """DPM-Solver++ multistep of `order` 1, 2 or 3 on the sampling schedule `sched`."""
  if order not in (1, 2, 3):
    raise ArgumentError("order", f"order must be 1, 2 or 3, got {order!r}.")
  m = max(order - 1, 1)

  def init(x):
    return DPMSolverState(x=x, x0_hist=jnp.zeros((m,) + x.shape, x.dtype),
                          h_hist=jnp.ones((m,), jnp.float32))

  def step(state: DPMSolverState, inp: StepInput, denoise: DenoiseFn):
    x, i, n = state.x, inp.index, inp.step
    d = denoise(x, i)
    d0 = d.x0
    frm, to = point(sched, i), point(sched, i - 1)
    h = to.logsnr - frm.logsnr                       # +inf at the final step
    phi1 = jnp.expm1(-h)                             # e^{-h} - 1, -1 at h = ∞
    final = i == 0
    x_s = exp_euler(d0, d.eps, to)                   # the first-order (DDIM) step
    if order >= 2:
      use2 = (n >= 2) & ~final
      r0 = jnp.where(use2, state.h_hist[0] / h, 1.0)
      d1_0 = (d0 - state.x0_hist[0]) / r0
      if order == 2:
        corr = -to.alpha * phi1 * 0.5 * d1_0
      else:
        use3 = (n >= 3) & ~final
        r1 = jnp.where(use3, state.h_hist[1] / h, 1.0)
        hs = jnp.where(use3, h, 1.0)
        d1_1 = (state.x0_hist[0] - state.x0_hist[1]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        p1 = jnp.expm1(-hs)
        corr3 = to.alpha * ((p1 / hs + 1.0) * d1 - ((p1 + hs) / hs ** 2 - 0.5) * d2)
        corr = jnp.where(use3, corr3, -to.alpha * phi1 * 0.5 * d1_0)
      x_s = jnp.where(use2, x_s + corr, x_s)
    x0_hist = jnp.concatenate([d0[None], state.x0_hist[:-1]]) if order >= 2 else state.x0_hist
    h_hist = jnp.concatenate([h[None], state.h_hist[:-1]]) if order >= 2 else state.h_hist
    new = DPMSolverState(x=x_s.astype(x.dtype), x0_hist=x0_hist.astype(x.dtype),
                         h_hist=h_hist.astype(jnp.float32))
    return new, d0

  return Sampler(init=init, step=step, stochastic=False)


@register_sampler("dpmpp_2m", order=2, default_spacing="logsnr")
def dpmpp_2m(sched: Schedule) -> Sampler:
  """DPM-Solver++(2M), Lu et al. 2022 Alg. 2; second order (first at the ends)."""
  return dpm_solver_pp(sched, 2)


@register_sampler("dpmpp_3m", order=3, default_spacing="logsnr")
def dpmpp_3m(sched: Schedule) -> Sampler:
  """DPM-Solver++(3M); third order (lower at the first two steps and the last)."""
  return dpm_solver_pp(sched, 3)
