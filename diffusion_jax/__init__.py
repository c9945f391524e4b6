"""diffusion_jax: a functional JAX/Flax framework for diffusion models."""

from diffusion_jax.schedules import (
    SCHEDULES, SPACINGS, TIME_GRIDS, Point, Schedule, get_schedule, grid_timesteps,
    logsnr_timesteps, make_timesteps, point, respace, rescale_zero_terminal_snr,
    sampling_schedule, schedule_from_betas)
from diffusion_jax.process import (
    PREDICTIONS, VARIANCES, Denoised, PMeanVariance, denoise, denoise_output,
    eps_from_score, get_v, model_output_to_x0_eps, p_mean_variance, p_variance,
    posterior_coefficients, predict_eps_from_v, predict_eps_from_x0,
    predict_x0_from_eps, predict_x0_from_v, q_mean_variance, q_posterior_general,
    q_posterior_mean_variance, q_sample, regression_target, score_from_eps,
    split_model_output, threshold_x0)
from diffusion_jax.losses import (
    LOSS_TYPES, WEIGHTINGS, bits_per_dim, discretized_gaussian_log_likelihood,
    loss_weight, normal_kl, prior_bpd, sample_timesteps, training_losses, vlb_terms)

from diffusion_jax.sampling import (
    SampleOutput, build_sampler, make_denoise_fn, make_invert_fn, make_sample_fn, slerp)
from diffusion_jax import samplers
from diffusion_jax.samplers import SAMPLERS, Sampler, get_sampler
from diffusion_jax.guidance import classifier_free_guidance, classifier_guidance
from diffusion_jax import consistency, distillation
from diffusion_jax.distillation import progressive_distillation_loss, round_timesteps
from diffusion_jax.consistency import (
    consistency_distillation_loss, consistency_model_fn, consistency_training_loss)

__version__ = "0.1.0"
