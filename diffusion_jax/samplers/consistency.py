"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Alg. 1).

The model is a consistency model f(x_t, t) ≈ x_0 (`consistency.consistency_model_fn`),
given to the engine as an x0-predictor (`prediction="x0"`). From grid point i
to the next, less noisy one (α_s = √ᾱ_s and σ_s = √(1-ᾱ_s) from
`schedules.point(sched, i - 1)`, clean data after the last):

    x̂_0 = f(x, t_i),    x_s = α_s x̂_0 + σ_s z,    z ~ N(0, I) fresh,

i.e. jump to the end of the trajectory, then re-noise to the next grid point
with q(x_s|x̂_0) (DDPM Eq. (4)). The last step has ᾱ_s = 1 and returns x̂_0
with no noise. With one grid point, `timesteps=[T-1]`, this is one-step
generation x_0 = f(x_T, T-1) (CM §3 "Sampling"); the paper's τ_1 > ... > τ_{K-1}
are the grid points below the first.

Alg. 1 re-noises in VE terms with variance τ_n² - ε², because f lands at the
boundary σ_min = σ(t_min), not at 0; in VP terms that is
√(1 - ᾱ_s - ᾱ_s σ_min²) instead of √(1-ᾱ_s). The two differ by the relative
factor ≈ ᾱ_s σ_min²/(2(1-ᾱ_s)), negligible for t_min = 0 (σ_min² ≈ 1e-4 for
the linear schedule, T = 1000); this sampler uses the plain q(x_s|x̂_0),
which needs nothing but the grid.

Any x0-predicting model can be sampled this way; it is exact for consistency models.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from diffusion_jax.samplers.base import (DenoiseFn, Sampler, StepInput,
                                         register_sampler)
from diffusion_jax.schedules import Schedule, point

__all__ = ["ConsistencyState", "consistency"]


class ConsistencyState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample


@register_sampler("consistency", order=None, default_spacing="trailing", ancestral=True)
def consistency(sched: Schedule) -> Sampler:
  """Multistep consistency sampling (Alg. 1) on the sampling schedule `sched` (K entries)."""

  def init(x):
    return ConsistencyState(x=x)

  def step(state: ConsistencyState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    x0 = denoise(x, i).x0
    to = point(sched, i - 1)
    x_s = to.alpha * x0 + to.sigma * inp.noise      # q(x_s | x̂_0), DDPM Eq. (4)
    return ConsistencyState(x=x_s.astype(x.dtype)), x0

  return Sampler(init=init, step=step, stochastic=True)
