"""Task "diffusion": a denoising diffusion model trained with L_simple / hybrid / VLB.

The loss is `losses.training_losses` with the settings of `config.diffusion`;
with a conditional model each example's cond is replaced by the null cond
with probability `train.label_dropout` (classifier-free guidance training,
Ho & Salimans 2022). It samples with `config.sample`'s sampler and grid, and
`--mode=eval` gives bits/dim on the test split: the variational bound of
the discrete chain ("vlb") or the exact likelihood of the probability-flow
ODE ("ode", continuous processes), by `eval.method`.

The noise process is `diffusion.process`: the discrete β schedule, or a
continuous one (`schedules.PROCESSES`), whose training times follow
`diffusion.t_sampling`. With `diffusion.preconditioning="edm"` the network is
EDM's F inside D = c_skip x + c_out F(c_in x; c_noise)
(`process.edm_preconditioning`), in training, sampling and evaluation alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import likelihood, losses, models, process, schedules
from diffusion_jax._checks import check_choice, check_number, config_errors
from diffusion_jax.errors import ConfigError
from diffusion_jax.conditioning import make_cond, null_cond_fn
from diffusion_jax.mesh import to_host
from diffusion_jax.tasks.base import (Sampling, Task, default_grid, diffusion_prediction,
                                      example_keys, normal, randint, training_model)

__all__ = ["TASK", "network", "loss_settings", "time_settings", "PRECONDITIONINGS",
           "EVAL_METHODS", "precondition", "eval_method"]

PRECONDITIONINGS = ("none", "edm")
EVAL_METHODS = ("auto", "vlb", "ode")   # auto: vlb for the discrete process, else ode


def loss_settings(config) -> dict:
  """`losses.training_losses` keywords from config.diffusion."""
  d = config.diffusion
  return dict(prediction=d.prediction, variance=d.variance, loss_type=d.loss_type,
              weighting=d.weighting, min_snr_gamma=d.min_snr_gamma, vlb_weight=d.vlb_weight,
              sigma_data=d.sigma_data)


def time_settings(config) -> dict:
  """`losses.sample_times` keywords from config.diffusion."""
  d = config.diffusion
  return dict(t_sampling=d.t_sampling, t_mean=d.t_mean, t_std=d.t_std)


def precondition(config, model_fn):
  """The model_fn the losses and samplers see: `model_fn` itself, or EDM's
  preconditioning around it (diffusion.preconditioning="edm")."""
  d = config.diffusion
  if d.preconditioning == "edm":
    return process.edm_preconditioning(model_fn, sigma_data=d.sigma_data)
  return model_fn


def eval_method(config) -> str:
  """"vlb" or "ode": eval.method, with "auto" resolved by diffusion.process."""
  method = config.eval.method
  if method == "auto":
    return "vlb" if config.diffusion.process == "discrete" else "ode"
  return method


def validate(config, spec) -> None:
  from diffusion_jax import configuration  # Above the tasks; imported when called.
  d = config.diffusion
  schedule = configuration.build_schedule(config)
  settings = loss_settings(config) | time_settings(config)
  with config_errors(config, **{k: f"diffusion.{k}" for k in settings}):
    losses.check_loss_settings(**settings, schedule=schedule)
  with config_errors(config, label_dropout="train.label_dropout"):
    check_number("label_dropout", config.train.label_dropout, 0.0, 1.0, high_open=True)
  with config_errors(config, preconditioning="diffusion.preconditioning",
                     method="eval.method"):
    check_choice("preconditioning", d.preconditioning, PRECONDITIONINGS)
    check_choice("method", config.eval.method, EVAL_METHODS)
  if d.preconditioning == "edm" and (d.process != "edm" or d.prediction != "x0"
                                     or d.variance not in ("fixed_small", "fixed_large")):
    raise ConfigError(
        f"diffusion.preconditioning='edm' wraps the network as D = c_skip x + c_out F(c_in x; "
        f"c_noise(σ)), an x0 prediction of the EDM process: set diffusion.process='edm' and "
        f"diffusion.prediction='x0' with a fixed variance (got diffusion.process="
        f"{d.process!r}, diffusion.prediction={d.prediction!r}, diffusion.variance="
        f"{d.variance!r}).")
  method, discrete = eval_method(config), d.process == "discrete"
  if method == "vlb" and not discrete:
    raise ConfigError(f"eval.method='vlb' is the variational bound of the discrete chain; "
                      f"diffusion.process={d.process!r} has the exact likelihood: set "
                      "eval.method='ode' (or 'auto').")
  if method == "ode" and discrete:
    raise ConfigError("eval.method='ode' needs a continuous-time diffusion.process (one of "
                      f"{sorted(schedules.PROCESSES)}); diffusion.process='discrete' has the "
                      "variational bound: eval.method='vlb' (or 'auto').")
  if not discrete and config.sample.classifier_workdir:
    raise ConfigError(f"sample.classifier_workdir (classifier guidance) needs a classifier of "
                      f"the same noise process; task='classifier' trains on the discrete one, "
                      f"so it cannot guide diffusion.process={d.process!r}. Use classifier-free "
                      "guidance (train.label_dropout, sample.guidance_scale).")


def network(config, spec):
  """The denoising network of config.model (its variance channels from diffusion.variance)."""
  return models.build_network(config.model, spec,
                              learn_sigma=process.is_learned_variance(config.diffusion.variance))


def drop_labels(cond, spec, p: float, keys):
  """Replaces each example's cond by the null cond with probability p (one key per example)."""
  if cond is None or p <= 0:
    return cond
  drop = jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys)
  null = null_cond_fn(spec)(cond)
  return jax.tree_util.tree_map(
      lambda n, c: jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), n, c), null, cond)


def loss(params, state, batch, rng, *, model, schedule, config, spec):
  """L_simple / hybrid / VLB (config.diffusion) on a batch, with label dropout.

  batch: {"image": f32 [B, H, W, C], "label": i32 [B]}. `state` (the
  TrainState before the update) is not used. Returns (mean loss, metrics).
  """
  del state
  rng, k_drop = jax.random.split(rng)
  k_t, k_noise, k_label = example_keys(rng, batch, 3)   # per example (gradient accumulation)
  x0 = batch["image"]
  t = jax.vmap(lambda k: losses.sample_times(k, 1, schedule, **time_settings(config))[0])(k_t)
  noise = normal(k_noise, x0)
  cond = drop_labels(make_cond(spec, batch["label"]), spec, config.train.label_dropout,
                     k_label)
  net = training_model(model, params, cond, k_drop)
  denoiser = net if config.diffusion.preconditioning == "none" else (
      lambda x_t, t: precondition(config, lambda p, x, s, c: net(x, s))(None, x_t, t, None))
  terms = losses.training_losses(schedule, denoiser, x0, t, noise, **loss_settings(config))
  metrics = {k: jnp.mean(v) for k, v in terms.items() if k != "loss"}
  return jnp.mean(terms["loss"]), metrics


def evaluate(config, spec, net, schedule, params, batches, rng):
  """Bits/dim on test batches, by `eval.method` (`eval_method`): "vlb", the
  variational bound of the discrete chain (`losses.bits_per_dim`), or "ode",
  the exact likelihood of the probability-flow ODE with dequantization and
  Hutchinson's trace estimator (`likelihood.ode_bits_per_dim`; Song et al.
  2021, App. D). batches: {"image", "label", "mask"} global arrays (mask 0:
  padding). The mean is over the gathered examples, the same on every
  process. Returns (result dict, one-line summary)."""
  d, model_fn = config.diffusion, precondition(config, models.make_model_fn(net))
  method = eval_method(config)

  @jax.jit
  def bpd(params, x0, labels, rng):
    cond = make_cond(spec, labels)
    denoiser = lambda x_t, t: model_fn(params, x_t, t, cond)
    if method == "ode":
      out = likelihood.ode_bits_per_dim(schedule, denoiser, x0, rng, prediction=d.prediction)
      return {"total_bpd": out["bpd"], "nfe": out["nfe"]}
    return losses.bits_per_dim(schedule, denoiser, x0, rng, prediction=d.prediction,
                               variance=d.variance, chunk_size=config.eval.chunk_size)

  totals, priors, nfes = [], [], []
  for i, batch in enumerate(batches):
    out = bpd(params, batch["image"], batch["label"], jax.random.fold_in(rng, i))
    valid = to_host(batch["mask"]) > 0
    totals.append(to_host(out["total_bpd"])[valid])
    if method == "vlb":
      priors.append(to_host(out["prior_bpd"])[valid])
    else:
      nfes.append(int(to_host(out["nfe"])))
  total = np.concatenate(totals)
  result = {"num_examples": int(total.size), "bits_per_dim": float(total.mean()),
            "bits_per_dim_stderr": float(total.std() / np.sqrt(total.size)), "method": method}
  if method == "vlb":
    result["prior_bits_per_dim"] = float(np.concatenate(priors).mean())
    detail = f"T={d.num_timesteps}"
  else:
    result["mean_nfe"] = float(np.mean(nfes))
    detail = (f"probability-flow ODE of process {d.process!r}, dequantized, "
              f"{result['mean_nfe']:.0f} model evaluations per batch")
  summary = (f"test bits/dim: {result['bits_per_dim']:.4f} ± "
             f"{result['bits_per_dim_stderr']:.4f} over {result['num_examples']} images "
             f"({detail})")
  return result, summary


TASK = Task(
    name="diffusion", validate=validate, model=network, loss=loss,
    sampling=Sampling(model_fn=lambda config, model_fn, schedule: precondition(config, model_fn),
                      grid=default_grid, prediction=diffusion_prediction),
    evaluate=evaluate)
