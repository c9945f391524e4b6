"""diffusion_jax: a functional JAX/Flax framework for diffusion models."""

from diffusion_jax.schedules import (
    SCHEDULES, SPACINGS, TIME_GRIDS, Point, Schedule, get_schedule, grid_timesteps,
    logsnr_timesteps, make_timesteps, point, respace, rescale_zero_terminal_snr,
    sampling_schedule, schedule_from_betas, PROCESSES, Process, get_process, karras_timesteps,
    model_time)
from diffusion_jax.process import (
    PREDICTIONS, VARIANCES, Denoised, PMeanVariance, denoise, denoise_output,
    eps_from_score, get_v, model_output_to_x0_eps, p_mean_variance, p_variance,
    posterior_coefficients, predict_eps_from_v, predict_eps_from_x0,
    predict_x0_from_eps, predict_x0_from_v, q_mean_variance, q_posterior_general,
    q_posterior_mean_variance, q_sample, regression_target, score_from_eps,
    split_model_output, threshold_x0, edm_preconditioning)
from diffusion_jax.losses import (
    LOSS_TYPES, WEIGHTINGS, bits_per_dim, discretized_gaussian_log_likelihood,
    loss_weight, normal_kl, prior_bpd, sample_timesteps, training_losses, vlb_terms,
    TIME_SAMPLINGS, sample_times)
from diffusion_jax import likelihood
from diffusion_jax.likelihood import ode_bits_per_dim, ode_log_likelihood

from diffusion_jax.sampling import (
    SampleOutput, build_sampler, make_denoise_fn, make_invert_fn, make_sample_fn, slerp)
from diffusion_jax import samplers
from diffusion_jax.samplers import SAMPLERS, Sampler, get_sampler
from diffusion_jax.guidance import classifier_free_guidance, classifier_guidance
from diffusion_jax import consistency, distillation
from diffusion_jax import editing
from diffusion_jax.editing import (
    make_inpaint_fn, make_interpolate_fn, make_relabel_fn, make_sdedit_fn)
from diffusion_jax.distillation import progressive_distillation_loss, round_timesteps
from diffusion_jax.consistency import (
    consistency_distillation_loss, consistency_model_fn, consistency_training_loss)

__version__ = "0.1.0"


def load(path, *, step=None):
  """A trained model as `weights.Loaded(model_fn, params, schedule, prediction,
  shape, config)`, ready for `make_sample_fn`: from a training workdir, an
  exported file (`--mode=export`) or a diffusers UNet2DModel folder
  (`diffusion_jax/weights.py`)."""
  from diffusion_jax import weights
  return weights.load(path, step=step)
