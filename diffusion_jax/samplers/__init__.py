"""Samplers: pure (init, step) pairs over a fixed-shape state, one file per family.

Importing this package fills the one registry, `SAMPLERS`:
  "ddpm"      ancestral (DDPM / respaced Improved DDPM §4)      ddpm.py
  "ddim"      DDIM, η ∈ [0, 1] (Song et al. 2021)                ddim.py
  "dpmpp_2m"  DPM-Solver++(2M) (Lu et al. 2022, Alg. 2)          dpm_solver.py
  "dpmpp_3m"  DPM-Solver++(3M)                                   dpm_solver.py
  "consistency" multistep consistency (Song et al. 2023, Alg. 1) consistency.py
"""

from diffusion_jax.samplers.base import (
    SAMPLERS, Denoised, DenoiseFn, Sampler, StepInput, get_sampler,
    register_sampler, sampler_options)
from diffusion_jax.samplers.ddpm import DDPMState, ddpm
from diffusion_jax.samplers.ddim import (DDIMState, ddim, ddim_inversion, ddim_sigma,
                                         ddim_step)
from diffusion_jax.samplers.dpm_solver import (
    DPMSolverState, dpm_solver_pp, dpmpp_2m, dpmpp_3m)
from diffusion_jax.samplers.consistency import ConsistencyState, consistency

__all__ = [
    "SAMPLERS", "Denoised", "DenoiseFn", "Sampler", "StepInput", "get_sampler",
    "register_sampler", "sampler_options", "DDPMState", "ddpm", "DDIMState",
    "ddim", "ddim_inversion", "ddim_sigma", "ddim_step", "DPMSolverState", "dpm_solver_pp",
    "dpmpp_2m", "dpmpp_3m", "ConsistencyState", "consistency",
]
