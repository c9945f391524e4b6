"""Samplers: pure (init, step) pairs over a fixed-shape state, one file per family.

Importing this package fills the one registry, `SAMPLERS` (name -> its factory
and facts: order, default grid, ancestral or not, options); the shared ODE
steps are in `steps.py`.
"""

from diffusion_jax.samplers.base import (
    SAMPLERS, Denoised, DenoiseFn, Sampler, SamplerInfo, StepInput, get_sampler,
    register_sampler, sampler_options)
from diffusion_jax.samplers.steps import exp_euler, exp_heun, phi2
from diffusion_jax.samplers.ddpm import DDPMState, ddpm
from diffusion_jax.samplers.ddim import DDIMState, ddim, ddim_inversion, ddim_sigma
from diffusion_jax.samplers.dpm_solver import (
    DPMSolverState, dpm_solver_pp, dpmpp_2m, dpmpp_3m)
from diffusion_jax.samplers.heun import HeunState, heun
from diffusion_jax.samplers.consistency import ConsistencyState, consistency

__all__ = [
    "SAMPLERS", "Denoised", "DenoiseFn", "Sampler", "SamplerInfo", "StepInput", "get_sampler",
    "register_sampler", "sampler_options", "exp_euler", "exp_heun", "phi2", "DDPMState",
    "ddpm", "DDIMState", "ddim", "ddim_inversion", "ddim_sigma", "DPMSolverState",
    "dpm_solver_pp", "dpmpp_2m", "dpmpp_3m", "HeunState", "heun", "ConsistencyState",
    "consistency",
]
