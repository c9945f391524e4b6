"""Sampling from a config: labels, guidance, batching and grids around `make_sample_fn`.

The one place that turns a config into samples, used by training (the PNG
grids), `--mode=sample` and the benchmarks. `Generator` is built once per
(config, batch size): it wraps the task's model_fn with the guidance the
config asks for and compiles one `sample_fn`. The guidance scales travel in
`cond` as arrays, so calling it with a new scale reuses the compiled chain.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import guidance, interrupts, models, runs, tasks, writers
from diffusion_jax.conditioning import DataSpec, make_cond, null_cond_fn
from diffusion_jax.errors import ConfigError
from diffusion_jax.mesh import is_primary, to_host
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.samplers import SAMPLERS
from diffusion_jax.sampling import make_sample_fn, sampling_schedule
from diffusion_jax.tasks.base import sampler_eta, sampler_options

__all__ = ["balanced_labels", "parse_labels", "sampling_model_fn", "Generator",
           "restore_classifier", "make_generator", "write_grid"]


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
    raise ConfigError(f"sample.labels={text!r} must be comma-separated class labels "
                      f"in [0, {num_classes - 1}], e.g. '3' or '0,1,2'.")
  return np.resize(np.asarray(values, np.int32), n)


def sampling_model_fn(config, spec: DataSpec, model_fn, schedule, *,
                      classifier_fn: Callable | None = None, cfg: bool | None = None):
  """`model_fn` wrapped by the task (`Sampling.model_fn`, e.g. a consistency
  model's f) and then with the guidance of `config.sample`.

  Classifier-free guidance is applied to conditional models when `cfg` is True
  (default: when sample.guidance_scale != 1); classifier guidance when a
  `classifier_fn(params, x_t, t) -> logits` is given ("mean" mode for the
  ancestral samplers, "eps" mode otherwise). With a classifier, the params of
  the returned function are {"model": ..., "classifier": ...}.
  """
  s, d = config.sample, config.diffusion
  task_sampling = tasks.get_task(config.task).sampling
  if cfg is None:
    cfg = spec.conditioning != "none" and s.guidance_scale != 1.0
  fn = task_sampling.model_fn(config, model_fn, schedule)
  if cfg:
    fn = guidance.classifier_free_guidance(fn, null_cond=null_cond_fn(spec),
                                           variance=d.variance)
  if classifier_fn is not None:
    sched = sampling_schedule(schedule, **task_sampling.grid(config))  # The sampler's grid.
    fn = guidance.classifier_guidance(
        fn, classifier_fn, sched, prediction=task_sampling.prediction(config),
        variance=d.variance, mode="mean" if SAMPLERS[s.sampler].ancestral else "eps")
  return fn


class Generator:
  """Draws images for a config in batches of `batch_size`."""

  def __init__(self, config, spec: DataSpec, model_fn, schedule, *,
               batch_size: int, classifier_fn: Callable | None = None,
               cfg: bool | None = None):
    self.config, self.spec, self.batch_size = config, spec, batch_size
    self.classifier_guided = classifier_fn is not None
    task_sampling = tasks.get_task(config.task).sampling
    fn = sampling_model_fn(config, spec, model_fn, schedule,
                           classifier_fn=classifier_fn, cfg=cfg)
    s, d = config.sample, config.diffusion
    shape = (batch_size, spec.image_size, spec.image_size, spec.channels)
    self.sample_fn = make_sample_fn(
        fn, schedule, shape=shape, sampler=s.sampler, eta=sampler_eta(config),
        prediction=task_sampling.prediction(config), variance=d.variance,
        clip_x0=s.clip_x0, sampler_options=sampler_options(config),
        **task_sampling.grid(config))

  def cond(self, labels, guidance_scale=None, classifier_scale=None):
    """The sampler's cond for int32 labels [B] (None for an unconditional model
    without classifier guidance)."""
    s = self.config.sample
    cond = make_cond(self.spec, labels) if labels is not None else None
    if cond is not None:
      w = s.guidance_scale if guidance_scale is None else guidance_scale
      cond = cond | {"guidance_scale": jnp.float32(w)}
    if self.classifier_guided:
      scale = s.classifier_scale if classifier_scale is None else classifier_scale
      cond = (cond or {}) | {"label": jnp.asarray(labels, jnp.int32),
                             "classifier_scale": jnp.float32(scale)}
    return cond

  def __call__(self, params, num_samples: int, labels=None, *, seed: int = 0,
               progress: bool = False, **scales) -> np.ndarray:
    """float32 [num_samples, H, W, C] in [-1, 1], on every process.

    Sample i (label `labels[i]`) is drawn with `sample_fn`'s global index i
    (`first_index`), so the samples do not depend on `batch_size`. With
    `progress`, a bar counts the batches (and a stop request ends between them).
    """
    bs, key, out = self.batch_size, jax.random.key(seed), []
    firsts = range(0, num_samples, bs)
    if progress:
      firsts = writers.progress(firsts, desc="sample", unit="batch")
    for first in firsts:
      if progress:
        interrupts.check("while sampling; nothing was written")
      chunk = None if labels is None else np.resize(labels[first:first + bs], bs)
      x = self.sample_fn(params, key, cond=self.cond(chunk, **scales), first_index=first)
      out.append(to_host(x))
    return np.concatenate(out)[:num_samples]


def restore_classifier(workdir: str):
  """The EMA params of a noise-aware classifier trained in `workdir` (a
  classifier-task run), with its `classifier_fn(params, x_t, t) -> logits`."""
  setting = "sample.classifier_workdir"
  run = runs.load_run(workdir, runs.run_config(workdir, setting), setting=setting)
  if not isinstance(run.net, NoisyClassifier):
    raise ConfigError(f"{setting}={workdir!r} holds a task={run.config.task!r} run, "
                      "not a classifier.")
  return models.make_classifier_fn(run.net), run.params


def make_generator(config, spec: DataSpec, model_fn, schedule, params, batch_size: int):
  """(Generator, params) for config.sample, with classifier guidance when
  sample.classifier_workdir is set."""
  classifier_fn = None
  if config.sample.classifier_workdir:
    classifier_fn, classifier_params = restore_classifier(config.sample.classifier_workdir)
    params = {"model": params, "classifier": classifier_params}
  gen = Generator(config, spec, model_fn, schedule, batch_size=batch_size,
                  classifier_fn=classifier_fn)
  return gen, params


def write_grid(generator: Generator, params, path: str, *, seed: int) -> str:
  """A PNG grid of `config.sample.grid_size` samples (one row per class if
  conditional). Every process samples; process 0 writes the file."""
  spec, n = generator.spec, generator.config.sample.grid_size
  labels, ncols = None, None
  if spec.conditioning != "none":
    ncols = -(-n // spec.num_classes)
    labels = np.repeat(np.arange(spec.num_classes, dtype=np.int32), ncols)[:n]
  images = generator(params, n, labels, seed=seed)
  return writers.save_image_grid(path, images, ncols=ncols) if is_primary() else path

