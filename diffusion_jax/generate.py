"""Sampling from a config: labels, guidance and batching around `make_sample_fn`.

`Generator` is built once per (config, batch size): it wraps the model_fn
with the guidance the config asks for and compiles one `sample_fn`. The
guidance scales travel in `cond` as arrays, so `Generator.__call__` with a
new scale reuses the compiled chain.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import consistency, distillation, experiment, guidance
from diffusion_jax.samplers import sampler_options
from diffusion_jax.sampling import make_sample_fn, sampling_schedule


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., C-1, 0, 1, ... — every class equally often (±1), int32 [n]."""
  return (np.arange(n) % num_classes).astype(np.int32)


def parse_labels(text: str | None, n: int, num_classes: int) -> np.ndarray:
  """`sample.labels` ("3" or "0,1,2"; None = balanced) -> int32 [n], cycled."""
  if text is None or str(text).strip() == "":
    return balanced_labels(n, num_classes)
  try:
    values = [int(v) for v in str(text).split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 0 or max(values) >= num_classes:
    raise ValueError(f"sample.labels={text!r} must be comma-separated class labels "
                     f"in [0, {num_classes - 1}], e.g. '3' or '0,1,2'.")
  return np.resize(np.asarray(values, np.int32), n)


def sampler_grid(config) -> dict:
  """The time grid of the config's sampler, as `make_sample_fn` keywords:
  (num_steps, spacing) of config.sample; for a progressively distilled student
  the explicit grid of its last round; for a consistency model
  consistency.sample_timesteps."""
  if config.task == "distill":
    base = experiment.distill_base_timesteps(config)
    return {"timesteps": distillation.round_timesteps(
        base, experiment.distill_rounds(config) - 1)}
  if config.task == "consistency":
    return {"timesteps": experiment.consistency_sample_timesteps(config)}
  return {"num_steps": config.sample.num_steps, "spacing": config.sample.spacing}


def sampled_prediction(config) -> str:
  """What the sampled model_fn predicts: a consistency model's f is an x̂_0."""
  return "x0" if config.task == "consistency" else config.diffusion.prediction


def sampling_model_fn(config, spec: experiment.DataSpec, model_fn, schedule, *,
                      classifier_fn: Callable | None = None,
                      cfg: bool | None = None):
  """`model_fn` wrapped with the guidance of `config.sample` (for a consistency
  model: its consistency function f, then the guidance).

  Classifier-free guidance is applied to conditional models when `cfg` is True
  (default: when sample.guidance_scale != 1); classifier guidance when a
  `classifier_fn(params, x_t, t) -> logits` is given ("mean" mode for the
  ancestral sampler, "eps" mode otherwise). With a classifier, the params
  of the returned function are {"model": ..., "classifier": ...}.
  """
  s, d = config.sample, config.diffusion
  if cfg is None:
    cfg = spec.conditioning != "none" and s.guidance_scale != 1.0
  fn = model_fn
  if config.task == "consistency":
    fn = consistency.consistency_model_fn(fn, schedule, prediction=d.prediction)
  if cfg:
    fn = guidance.classifier_free_guidance(
        fn, null_cond=experiment.null_cond_fn(spec), variance=d.variance)
  if classifier_fn is not None:
    # The grid the Generator's sample_fn steps on.
    sched = sampling_schedule(schedule, **sampler_grid(config))
    fn = guidance.classifier_guidance(
        fn, classifier_fn, sched, prediction=sampled_prediction(config), variance=d.variance,
        mode="mean" if s.sampler == "ddpm" else "eps")
  return fn


class Generator:
  """Draws images for a config in batches of `batch_size`."""

  def __init__(self, config, spec: experiment.DataSpec, model_fn, schedule, *,
               batch_size: int, classifier_fn: Callable | None = None,
               cfg: bool | None = None):
    self.config, self.spec, self.batch_size = config, spec, batch_size
    self.classifier_guided = classifier_fn is not None
    fn = sampling_model_fn(config, spec, model_fn, schedule,
                           classifier_fn=classifier_fn, cfg=cfg)
    s, d = config.sample, config.diffusion
    shape = (batch_size, spec.image_size, spec.image_size, spec.channels)
    # sample.eta is DDIM's; the samplers without an η ignore it.
    eta = s.eta if "eta" in sampler_options(s.sampler) else 0.0
    self.sample_fn = make_sample_fn(
        fn, schedule, shape=shape, sampler=s.sampler, eta=eta,
        prediction=sampled_prediction(config), variance=d.variance, clip_x0=s.clip_x0,
        **sampler_grid(config))

  def cond(self, labels, guidance_scale=None, classifier_scale=None):
    """The sampler's cond for int32 labels [B] (None for an unconditional model
    without classifier guidance)."""
    s = self.config.sample
    cond = experiment.make_cond(self.spec, labels) if labels is not None else None
    if cond is not None:
      w = s.guidance_scale if guidance_scale is None else guidance_scale
      cond = cond | {"guidance_scale": jnp.float32(w)}
    if self.classifier_guided:
      scale = s.classifier_scale if classifier_scale is None else classifier_scale
      cond = (cond or {}) | {"label": jnp.asarray(labels, jnp.int32),
                             "classifier_scale": jnp.float32(scale)}
    return cond

  def __call__(self, params, num_samples: int, labels=None, *, seed: int = 0,
               **scales) -> np.ndarray:
    """float32 [num_samples, H, W, C] in [-1, 1]; batch b uses fold_in(key, b)."""
    bs, key, out = self.batch_size, jax.random.key(seed), []
    for b in range(-(-num_samples // bs)):
      chunk = None if labels is None else np.resize(labels[b * bs:(b + 1) * bs], bs)
      x = self.sample_fn(params, jax.random.fold_in(key, b),
                         cond=self.cond(chunk, **scales))
      out.append(np.asarray(x))
    return np.concatenate(out)[:num_samples]
