"""Ancestral sampling (DDPM), over all T steps or respaced to K < T steps.

Each step draws x_{i-1} ~ p_θ(x_{i-1}|x_i) = N(μ̃_i(x_i, x̂_0), Σ_θ):
  μ̃_i = √ᾱ_{i-1} β_i/(1-ᾱ_i) x̂_0 + √α_i (1-ᾱ_{i-1})/(1-ᾱ_i) x_i   DDPM Eq. (6)-(7)
  x_{i-1} = μ̃_i + σ_i z,  z ~ N(0, I),  no noise at the last step  DDPM Alg. 2
with the variance of `process.p_variance` ("fixed_small" β̃, "fixed_large" β,
"learned" log σ², "learned_range" IDDPM Eq. (15)).

Respacing (Improved DDPM §4): the sampler runs on the sampling schedule
`respace(schedule, S)`, whose betas β'_i = 1 - ᾱ_{S_i}/ᾱ_{S_{i-1}} are recomputed
for the subsequence S, so the posterior mean, β̃' and β' — and therefore every
variance type, `learned_range` included — refer to the coarse chain. With
S = 0..T-1 this is plain DDPM.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import process
from diffusion_jax._checks import ArgumentError
from diffusion_jax.samplers.base import (DenoiseFn, Sampler, StepInput,
                                         register_sampler)
from diffusion_jax.schedules import Schedule

__all__ = ["DDPMState", "ddpm"]


class DDPMState(NamedTuple):
  x: jax.Array  # [B, ...] float32, the current sample x_i


@register_sampler("ddpm", order=None, ancestral=True)
def ddpm(sched: Schedule, *, variance: str = "fixed_small") -> Sampler:
  """Ancestral sampler on the sampling schedule `sched` (K entries).

  Args:
    sched: the sampling schedule (the training schedule, or a respaced one).
    variance: one of `process.VARIANCES`. The learned variances read the
      variance channels that the denoiser split off the model output;
      "learned" (a raw log-variance) needs the full chain.
  """
  process.check_variance(variance)
  K = sched.num_timesteps
  if variance == "learned" and not np.array_equal(np.asarray(sched.timesteps), np.arange(K)):
    raise ArgumentError(
        "variance", "variance='learned' outputs the log-variance of one training step, which "
        "is not defined on a respaced chain; use variance='learned_range' (IDDPM §4) or all "
        "T steps.")

  def init(x):
    return DDPMState(x=x)

  def step(state: DDPMState, inp: StepInput, denoise: DenoiseFn):
    x, i = state.x, inp.index
    d = denoise(x, i)
    # The step's coefficients are scalars shared by the batch: gathered once
    # (t has one entry, broadcast over x's batch), not once per sample.
    t, ref = jnp.full((1,), i, jnp.int32), x[:1]
    mean = (process.extract(sched.posterior_mean_coef1, t, ref) * d.x0
            + process.extract(sched.posterior_mean_coef2, t, ref) * x)
    _, log_var = process.p_variance(sched, d.var_output, t, ref, variance)
    std = jnp.where(i > 0, jnp.exp(0.5 * log_var), 0.0)
    return DDPMState(x=(mean + std * inp.noise).astype(x.dtype)), d.x0

  return Sampler(init=init, step=step, stochastic=True)
