"""UniPC: the unified predictor-corrector multistep solver (Zhao et al. 2023),
data-prediction form, solver order p = 2, B(h) variants "bh1" and "bh2".

With λ = log(α/σ), data predictions m = x̂_0 and, for a step from the current
grid point t to the next, less noisy one s, h = λ_s - λ_t, hh = -h,
φ = e^{hh} - 1 and B(h) = hh ("bh1", Zhao et al. Eq. (5) for few unguided
steps) or e^{hh} - 1 ("bh2", for guided sampling):

  UniP-2 (predictor; Alg. 1 with ρ = ½, as in the reference code):
      x_s = (σ_s/σ_t) x_t - α_s φ m_t - α_s B(h) ½ D_1,
      D_1 = (m_{t-1} - m_t)/r_1,  r_1 = (λ_{t-1} - λ_t)/h,
  UniC (corrector, Alg. 2): after the model call at the predicted x_s, which
  the next predictor needs anyway (so a step costs one call), x_s is
  recomputed from x_t with the new m_s:
      x_s^c = (σ_s/σ_t) x_t - α_s φ m_t
              - α_s B(h) (ρ_1 D_1 + ρ_2 (m_s - m_t)),
  where (ρ_1, ρ_2) solve [[1, 1], [r_1, 1]] ρ = (g_1, 2 g_2)/B(h), g_1 = φ/hh - 1,
  g_2 = g_1/hh - ½ (Zhao et al. Thm. 3.1; ρ = ½ for the first-order
  corrector). Subsequent steps use m_s (at the uncorrected point) and the
  corrected x_s. The corrector raises the order by one: UniPC-2 is a
  third-order method (Zhao et al. §3.2), with lower orders at the first two
  steps. The last step goes to clean data (h = ∞) and returns m exactly, as
  DPM-Solver++ does. From a zero-SNR start (λ = -∞, flow matching at t = 1)
  the history terms vanish (r = -∞); bh1's corrector, whose B(h) is infinite
  there, is skipped on that one step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_choice
from diffusion_jax.samplers.base import DenoiseFn, Sampler, StepInput, register_sampler
from diffusion_jax.schedules import Point, Schedule, point

__all__ = ["UniPCState", "unipc", "unipc_bh1", "unipc_bh2", "VARIANTS"]

VARIANTS = ("bh1", "bh2")


class UniPCState(NamedTuple):
  x: jax.Array        # [B, ...] float32, the current (predicted) sample
  x_prev: jax.Array   # [B, ...] float32, the corrected sample at the previous grid point
  x0_hist: jax.Array  # [2, B, ...] float32, m at the previous two grid points, newest first


def _g(hh):
  """(g_1, g_2) = (φ/hh - 1, g_1/hh - ½) with φ = e^{hh} - 1; series for small |hh|
  (the direct forms cancel), their limits (-1, -½) at hh = -∞."""
  small = jnp.abs(hh) < 0.3
  hs = jnp.where(small, 1.0, hh)
  g1_direct = jnp.expm1(hs) / hs - 1.0
  g2_direct = g1_direct / hs - 0.5
  z = jnp.where(small, hh, 0.0)
  # Σ_k z^k/(k+1)! and Σ_k z^k/(k+2)!, k = 1..6.
  g1_series = z * (1/2 + z * (1/6 + z * (1/24 + z * (1/120 + z * (1/720 + z / 5040)))))
  g2_series = z * (1/6 + z * (1/24 + z * (1/120 + z * (1/720 + z * (1/5040 + z / 40320)))))
  g1 = jnp.where(small, g1_series, jnp.where(jnp.isfinite(hh), g1_direct, -1.0))
  g2 = jnp.where(small, g2_series, jnp.where(jnp.isfinite(hh), g2_direct, -0.5))
  return g1, g2


def _base(x, m, frm: Point, to: Point):
  """(σ_s/σ_t) x - α_s (e^{-h} - 1) m, the exponential-Euler part."""
  return to.sigma / frm.sigma * x - to.alpha * jnp.expm1(frm.logsnr - to.logsnr) * m


def unipc(sched: Schedule, variant: str = "bh2") -> Sampler:
  """UniPC-2 (predictor UniP-2, corrector UniC) with B(h) `variant`."""
  check_choice("variant", variant, VARIANTS)

  def b_of(hh):
    return hh if variant == "bh1" else jnp.expm1(hh)

  def init(x):
    return UniPCState(x=x, x_prev=x, x0_hist=jnp.zeros((2,) + x.shape, x.dtype))

  def step(state: UniPCState, inp: StepInput, denoise: DenoiseFn):
    x, i, n = state.x, inp.index, inp.step
    last = sched.num_timesteps - 1
    frm, to = point(sched, i), point(sched, i - 1)
    prev, prev2 = point(sched, jnp.minimum(i + 1, last)), point(sched, jnp.minimum(i + 2, last))
    m_t = denoise(x, i).x0
    m0, m1 = state.x0_hist[0], state.x0_hist[1]
    # The corrector of the previous step's prediction (order 1 after the first
    # step, then 2), with the model call just made at the predicted point.
    hh_c = prev.logsnr - frm.logsnr
    b_c = b_of(hh_c)
    g1, g2 = _g(hh_c)
    two = n >= 3
    r1 = jnp.where(two, (prev2.logsnr - prev.logsnr) / (frm.logsnr - prev.logsnr), 0.0)
    rho0 = jnp.where(two, (g1 - 2.0 * g2) / b_c / (1.0 - r1), 0.0)
    rho1 = jnp.where(two, g1 / b_c - rho0, 0.5)
    d1 = jnp.where(two, (m1 - m0) / jnp.where(two, r1, 1.0), 0.0)
    x_c = _base(state.x_prev, m0, prev, frm) - frm.alpha * b_c * (rho0 * d1 + rho1 * (m_t - m0))
    x = jnp.where((n >= 2) & jnp.isfinite(b_c), x_c, x)
    # The predictor (order 1 at the first step, then 2) to the next point.
    h = to.logsnr - frm.logsnr
    r = jnp.where(n >= 2, (prev.logsnr - frm.logsnr) / h, 1.0)
    x_p = _base(x, m_t, frm, to)
    x_p = jnp.where(n >= 2, x_p - to.alpha * b_of(-h) * 0.5 * (m0 - m_t) / r, x_p)
    x_s = jnp.where(i == 0, m_t, x_p)
    new = UniPCState(x=x_s.astype(x.dtype), x_prev=x.astype(x.dtype),
                     x0_hist=jnp.stack([m_t, m0]).astype(x.dtype))
    return new, m_t

  return Sampler(init=init, step=step, stochastic=False)


@register_sampler("unipc_bh1", order=3, default_spacing="logsnr")
def unipc_bh1(sched: Schedule) -> Sampler:
  """UniPC-2 with B(h) = h (Zhao et al. 2023: few-step unconditional sampling)."""
  return unipc(sched, "bh1")


@register_sampler("unipc_bh2", order=3, default_spacing="logsnr")
def unipc_bh2(sched: Schedule) -> Sampler:
  """UniPC-2 with B(h) = e^h - 1 (Zhao et al. 2023: guided sampling)."""
  return unipc(sched, "bh2")
