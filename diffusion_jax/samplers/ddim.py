"""DDIM (Song et al. 2021): the generalized, possibly deterministic sampler.

From grid point i (α_t, σ_t) to the next, less noisy one (α_s, σ_s; clean data
after the last), DDIM Eq. (12) with α = √ᾱ, σ = √(1-ᾱ):
  x_s = α_s x̂_0 + √(σ_s² - σ_η²) ε̂ + σ_η z,   z ~ N(0, I)
  σ_η = η (σ_s/σ_t) √(1 - α_t²/α_s²)                               DDIM Eq. (16)
η = 0 is the deterministic DDIM (the exponential-Euler step `steps.exp_euler`,
a first-order solver of the probability-flow ODE, DDIM Eq. (14)); η = 1 gives
σ_η² = β̃, DDPM's posterior variance on the same grid. The last step has σ_s = 0,
hence σ_η = 0 and x = x̂_0: no noise is added.

`ddim_inversion` runs the deterministic chain backwards (DDIM §4.3 / §5,
encoding x_0 → x_T), from grid point i-1 to i, reusing ε̂ of the model at
(x_{i-1}, t_i): x_i = α_i x̂_0 + σ_i ε̂ with x̂_0 = (x_{i-1} - σ_{i-1} ε̂)/α_{i-1}.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_number
from diffusion_jax.samplers.base import DenoiseFn, Sampler, StepInput, register_sampler
from diffusion_jax.samplers.steps import exp_euler
from diffusion_jax.schedules import Schedule, point

__all__ = ["DDIMState", "ddim", "ddim_inversion", "ddim_sigma"]


class DDIMState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample


def ddim_sigma(alpha_bar_t, alpha_bar_s, eta):
  """σ_η of DDIM Eq. (16) for a step ᾱ_t → ᾱ_s (s less noisy); any shapes."""
  return eta * jnp.sqrt((1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
                        * (1.0 - alpha_bar_t / alpha_bar_s))


@register_sampler("ddim", order=1)
def ddim(sched: Schedule, *, eta: float = 0.0) -> Sampler:
  """DDIM on the sampling schedule `sched` (K entries), η ∈ [0, 1] (static)."""
  eta = check_number("eta", eta, 0.0, 1.0)

  def init(x):
    return DDIMState(x=x)

  def step(state: DDIMState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    d = denoise(x, i)
    frm, to = point(sched, i), point(sched, i - 1)
    if eta == 0.0:
      x_s = exp_euler(d.x0, d.eps, to)
    else:
      sigma = ddim_sigma(frm.alpha ** 2, to.alpha ** 2, eta)
      x_s = (to.alpha * d.x0 + jnp.sqrt(jnp.maximum(to.sigma ** 2 - sigma ** 2, 0.0)) * d.eps
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
    frm = point(sched, i - 1)
    x0 = (x - frm.sigma * d.eps) / frm.alpha
    return DDIMState(x=exp_euler(x0, d.eps, point(sched, i)).astype(x.dtype)), x0

  return Sampler(init=init, step=step, stochastic=False)
