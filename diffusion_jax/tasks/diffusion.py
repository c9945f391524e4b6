"""Task "diffusion": a denoising diffusion model trained with L_simple / hybrid / VLB.

The loss is `losses.training_losses` with the settings of `config.diffusion`;
with a conditional model each example's cond is replaced by the null cond
with probability `train.label_dropout` (classifier-free guidance training,
Ho & Salimans 2022). It samples with `config.sample`'s sampler and grid, and
`--mode=eval` gives the variational bound in bits/dim on the test split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import losses, models, process
from diffusion_jax._checks import check_number, config_errors
from diffusion_jax.conditioning import make_cond, null_cond_fn
from diffusion_jax.mesh import to_host
from diffusion_jax.tasks.base import (Sampling, Task, default_grid, diffusion_prediction,
                                      training_model)

__all__ = ["TASK", "network", "loss_settings"]


def loss_settings(config) -> dict:
  """`losses.training_losses` keywords from config.diffusion."""
  d = config.diffusion
  return dict(prediction=d.prediction, variance=d.variance, loss_type=d.loss_type,
              weighting=d.weighting, min_snr_gamma=d.min_snr_gamma, vlb_weight=d.vlb_weight)


def validate(config, spec) -> None:
  with config_errors(config, **{k: f"diffusion.{k}" for k in loss_settings(config)}):
    losses.check_loss_settings(**loss_settings(config))
  with config_errors(config, label_dropout="train.label_dropout"):
    check_number("label_dropout", config.train.label_dropout, 0.0, 1.0, high_open=True)


def network(config, spec):
  """The denoising network of config.model (its variance channels from diffusion.variance)."""
  return models.build_network(config.model, spec,
                              learn_sigma=process.is_learned_variance(config.diffusion.variance))


def drop_labels(cond, spec, p: float, rng):
  """Replaces each example's cond by the null cond with probability p."""
  if cond is None or p <= 0:
    return cond
  drop = jax.random.bernoulli(rng, p, (jax.tree.leaves(cond)[0].shape[0],))
  null = null_cond_fn(spec)(cond)
  return jax.tree_util.tree_map(
      lambda n, c: jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), n, c), null, cond)


def loss(params, state, batch, rng, *, model, schedule, config, spec):
  """L_simple / hybrid / VLB (config.diffusion) on a batch, with label dropout.

  batch: {"image": f32 [B, H, W, C], "label": i32 [B]}. `state` (the
  TrainState before the update) is not used. Returns (mean loss, metrics).
  """
  del state
  k_t, k_noise, k_drop, k_label = jax.random.split(rng, 4)
  x0 = batch["image"]
  t = losses.sample_timesteps(k_t, x0.shape[0], schedule.num_timesteps)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  cond = drop_labels(make_cond(spec, batch["label"]), spec, config.train.label_dropout,
                     k_label)
  terms = losses.training_losses(schedule, training_model(model, params, cond, k_drop),
                                 x0, t, noise, **loss_settings(config))
  metrics = {k: jnp.mean(v) for k, v in terms.items() if k != "loss"}
  return jnp.mean(terms["loss"]), metrics


def evaluate(config, spec, net, schedule, params, batches, rng):
  """The variational bound in bits/dim on test batches (`losses.bits_per_dim`);
  batches: {"image", "label", "mask"} global arrays (mask 0: padding). The
  mean is over the gathered examples, the same on every process. Returns
  (result dict, one-line summary)."""
  d, model_fn = config.diffusion, models.make_model_fn(net)

  @jax.jit
  def bpd(params, x0, labels, rng):
    cond = make_cond(spec, labels)
    denoiser = lambda x_t, t: model_fn(params, x_t, t, cond)
    return losses.bits_per_dim(schedule, denoiser, x0, rng, prediction=d.prediction,
                               variance=d.variance, chunk_size=config.eval.chunk_size)

  totals, priors = [], []
  for i, batch in enumerate(batches):
    out = bpd(params, batch["image"], batch["label"], jax.random.fold_in(rng, i))
    valid = to_host(batch["mask"]) > 0
    totals.append(to_host(out["total_bpd"])[valid])
    priors.append(to_host(out["prior_bpd"])[valid])
  total = np.concatenate(totals)
  result = {"num_examples": int(total.size), "bits_per_dim": float(total.mean()),
            "bits_per_dim_stderr": float(total.std() / np.sqrt(total.size)),
            "prior_bits_per_dim": float(np.concatenate(priors).mean())}
  summary = (f"test bits/dim: {result['bits_per_dim']:.4f} ± "
             f"{result['bits_per_dim_stderr']:.4f} over {result['num_examples']} images "
             f"(T={d.num_timesteps})")
  return result, summary


TASK = Task(
    name="diffusion", validate=validate, model=network, loss=loss,
    sampling=Sampling(model_fn=lambda config, model_fn, schedule: model_fn,
                      grid=default_grid, prediction=diffusion_prediction),
    evaluate=evaluate)
