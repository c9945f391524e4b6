"""The non-training modes of the CLI: sample, eval and describe."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import experiment, generate, losses, process, writers
from diffusion_jax.data import pipeline
from diffusion_jax.train import Trainer, restore_ema_params


def restore_classifier(workdir: str):
  """The EMA params of a noise-aware classifier trained in `workdir` (task
  "classifier"), with its `classifier_fn(params, x_t, t) -> logits`."""
  config = experiment.load_run_config(workdir, "sample.classifier_workdir")
  if config.get("task") != "classifier":
    raise ValueError(f"sample.classifier_workdir={workdir!r} holds a "
                     f"task={config.get('task')!r} run, not a classifier.")
  trainer, params, _ = restore_ema_params(config, workdir)
  return experiment.make_classifier_fn(trainer.model), params


def make_generator(config, trainer: Trainer, params, batch_size: int):
  """(Generator, params) for config.sample, with classifier guidance when
  sample.classifier_workdir is set."""
  classifier_fn = None
  if config.sample.classifier_workdir:
    classifier_fn, classifier_params = restore_classifier(config.sample.classifier_workdir)
    params = {"model": params, "classifier": classifier_params}
  gen = generate.Generator(config, trainer.spec, trainer.model_fn, trainer.schedule,
                           batch_size=batch_size, classifier_fn=classifier_fn)
  return gen, params


def sample(config, workdir: str) -> str:
  """--mode=sample: writes samples.npz (uint8 images [N,H,W,C], labels) + PNG."""
  if config.task not in experiment.GENERATIVE_TASKS:
    raise ValueError(f"--mode=sample needs task in {list(experiment.GENERATIVE_TASKS)}, "
                     f"got task={config.task!r}.")
  trainer, params, step = restore_ema_params(config, workdir)
  s, spec = config.sample, trainer.spec
  n = s.num_samples
  labels = None
  if spec.conditioning != "none" or s.classifier_workdir:
    num_classes = spec.num_classes or pipeline.dataset_info(
        config.data.dataset, config.data.data_dir)[3]
    labels = generate.parse_labels(s.labels, n, num_classes)
  gen, params = make_generator(config, trainer, params, s.batch_size)
  images = writers.to_uint8(gen(params, n, labels, seed=config.seed))
  path = os.path.join(workdir, "samples.npz")
  arrays = {"images": images} | ({} if labels is None else {"labels": labels})
  np.savez_compressed(path, **arrays)
  grid = images[: s.grid_size]
  writers.save_image_grid(os.path.join(workdir, "samples.png"), grid)
  print(f"sampled {n} images from the step-{step} EMA params with "
        f"{s.sampler}; grid: {os.path.join(workdir, 'samples.png')}")
  print(path)
  return path


def _test_batches(config):
  """Test-split batches, up to eval.max_examples images."""
  ev = config.eval
  source = pipeline.get_data_source(config.data.dataset, "test", config.data.data_dir)
  loader = pipeline.make_loader(source, batch_size=ev.batch_size, seed=config.seed,
                                image_size=config.data.image_size, shuffle=False,
                                num_epochs=1, drop_remainder=False)
  seen = 0
  for batch in loader:
    if ev.max_examples is not None and seen >= ev.max_examples:
      return
    seen += len(batch["image"])
    yield batch


def _write_json(workdir: str, name: str, result: dict) -> None:
  with open(os.path.join(workdir, name), "w") as f:
    json.dump(result, f, indent=2)


def evaluate(config, workdir: str) -> dict:
  """--mode=eval: bits/dim on the test split, or the classifier's accuracy per
  noise level for task "classifier"."""
  if config.task not in ("diffusion", "classifier"):
    raise ValueError(f"--mode=eval (bits/dim) needs task in ['diffusion', 'classifier'], "
                     f"got task={config.task!r}: distilled and consistency models sample "
                     "on their own grid and define no likelihood; use --mode=sample.")
  trainer, params, step = restore_ema_params(config, workdir)
  if config.task == "classifier":
    return evaluate_classifier(config, workdir, trainer, params, step)
  ev, d, spec = config.eval, config.diffusion, trainer.spec

  @jax.jit
  def bpd(params, x0, labels, rng):
    cond = experiment.make_cond(spec, labels)
    denoiser = lambda x_t, t: trainer.model_fn(params, x_t, t, cond)
    return losses.bits_per_dim(trainer.schedule, denoiser, x0, rng,
                               prediction=d.prediction, variance=d.variance,
                               chunk_size=ev.chunk_size)

  totals, priors = [], []
  key = jax.random.key(config.seed + 1)
  for i, batch in enumerate(_test_batches(config)):
    out = bpd(params, batch["image"], batch["label"], jax.random.fold_in(key, i))
    totals.append(np.asarray(out["total_bpd"]))
    priors.append(np.asarray(out["prior_bpd"]))
  total = np.concatenate(totals)[: ev.max_examples]
  result = {"step": step, "num_examples": int(total.size),
            "bits_per_dim": float(total.mean()),
            "bits_per_dim_stderr": float(total.std() / np.sqrt(total.size)),
            "prior_bits_per_dim": float(np.concatenate(priors).mean())}
  _write_json(workdir, "eval.json", result)
  print(f"test bits/dim: {result['bits_per_dim']:.4f} ± "
        f"{result['bits_per_dim_stderr']:.4f} over {result['num_examples']} images "
        f"(step {step}, T={config.diffusion.num_timesteps})")
  return result


def evaluate_classifier(config, workdir, trainer, params, step) -> dict:
  """Test accuracy of the noise-aware classifier at 10 noise levels
  t = 0, T/10, ..., 9T/10 and T-1, on x_t ~ q(x_t|x_0)."""
  T = config.diffusion.num_timesteps
  levels = sorted(set(np.linspace(0, T - 1, 11).round().astype(int).tolist()))
  classifier_fn = experiment.make_classifier_fn(trainer.model)

  @jax.jit
  def correct(params, x0, labels, t_scalar, rng):
    t = jnp.full(labels.shape, t_scalar, jnp.int32)
    x_t = process.q_sample(trainer.schedule, x0, t, jax.random.normal(rng, x0.shape))
    return jnp.sum(jnp.argmax(classifier_fn(params, x_t, t), -1) == labels)

  hits, total = np.zeros(len(levels)), 0
  key = jax.random.key(config.seed + 1)
  for i, batch in enumerate(_test_batches(config)):
    total += len(batch["label"])
    for j, t in enumerate(levels):
      hits[j] += int(correct(params, batch["image"], batch["label"], t,
                             jax.random.fold_in(key, i * 1000 + j)))
  result = {"step": step, "num_examples": total,
            "accuracy_by_t": {str(t): hits[j] / total for j, t in enumerate(levels)}}
  _write_json(workdir, "eval.json", result)
  print("noise-aware classifier test accuracy by timestep t: " + ", ".join(
      f"t={t}: {hits[j] / total:.1%}" for j, t in enumerate(levels)))
  return result


def describe(config) -> int:
  """--mode=describe: config, devices, mesh, FLOPs per example, parameter count."""
  spec = experiment.validate_config(config)
  model = experiment.build_model(config, spec)
  shapes = jax.eval_shape(functools.partial(experiment.init_params, model, spec),
                          jax.random.key(0))
  n = experiment.count_params(shapes)
  mesh = experiment.make_mesh()
  print(experiment.config_to_json(config))
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process(es))")
  print(f"mesh: {dict(mesh.shape)}")
  print(f"flops per example (forward): {_forward_flops(config, model, spec, shapes)}")
  print(f"parameters: {n}")
  return n


def _forward_flops(config, model, spec, param_shapes) -> str:
  """XLA's FLOP count of one forward pass for one example."""
  x = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, spec.channels),
                           jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  if config.task == "classifier":
    fwd = experiment.make_classifier_fn(model)
  else:
    model_fn = experiment.make_model_fn(model)
    cond = experiment.make_cond(spec, jnp.zeros((1,), jnp.int32))
    fwd = lambda p, x, t: model_fn(p, x, t, cond)
  try:
    cost = jax.jit(fwd).lower(param_shapes, x, t).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return f"{cost['flops']:.4g}"
  except Exception as e:  # Cost analysis is backend-dependent.
    return f"unavailable ({type(e).__name__})"
