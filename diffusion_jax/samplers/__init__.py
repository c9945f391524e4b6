"""Samplers: pure (init, step) pairs over a fixed-shape state, one file per family.

Importing this package fills the one registry, `SAMPLERS` (name -> its factory
and facts: order, default grid, ancestral or not, options); the shared ODE
steps are in `steps.py`.
"""

from diffusion_jax.samplers.base import (
    SAMPLERS, Denoised, DenoiseFn, Sampler, SamplerInfo, StepInput, get_sampler,
    register_sampler, sampler_options)
from diffusion_jax.samplers.steps import (ancestral_sigma, exp_euler, exp_heun, heun_sigma,
                                          phi2, sigma_tilde)
from diffusion_jax.samplers.ddpm import DDPMState, ddpm
from diffusion_jax.samplers.ddim import DDIMState, ddim, ddim_inversion, ddim_sigma
from diffusion_jax.samplers.dpm_solver import (
    DPMSolverState, dpm_solver_pp, dpmpp_2m, dpmpp_3m)
from diffusion_jax.samplers.heun import HeunState, heun
from diffusion_jax.samplers.consistency import ConsistencyState, consistency
from diffusion_jax.samplers.euler import EulerState, euler, euler_ancestral
from diffusion_jax.samplers.edm import EDMState, edm_heun
from diffusion_jax.samplers.unipc import UniPCState, unipc, unipc_bh1, unipc_bh2

__all__ = [
    "SAMPLERS", "Denoised", "DenoiseFn", "Sampler", "SamplerInfo", "StepInput", "get_sampler",
    "register_sampler", "sampler_options", "exp_euler", "exp_heun", "phi2", "ancestral_sigma",
    "heun_sigma", "sigma_tilde", "DDPMState",
    "ddpm", "DDIMState", "ddim", "ddim_inversion", "ddim_sigma", "DPMSolverState",
    "dpm_solver_pp", "dpmpp_2m", "dpmpp_3m", "HeunState", "heun", "ConsistencyState",
    "consistency", "EulerState", "euler", "euler_ancestral", "EDMState", "edm_heun",
    "UniPCState", "unipc", "unipc_bh1", "unipc_bh2",
]
