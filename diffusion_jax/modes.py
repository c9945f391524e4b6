"""The modes of the CLI, chosen by name (`--mode`): one registry, `MODES`.

Each mode is `run(config, workdir)`; every one ends with a short summary of
what it wrote and its headline figures. Files go through `etils.epath`, so a
`gs://` workdir works like a local one, and are written by process 0 only.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from diffusion_jax import configuration, generate, interrupts, models, runs, tasks, writers
from diffusion_jax import edit as edit_mode
from diffusion_jax import workdir as workdir_lib
from diffusion_jax.conditioning import make_cond
from diffusion_jax.data import pipeline, sources
from diffusion_jax.errors import ConfigError, UserError
from diffusion_jax.mesh import batch_sharded, is_primary, make_mesh
from diffusion_jax.metrics import suite
from diffusion_jax.models.classifier import NoisyClassifier

__all__ = ["Mode", "MODES", "get_mode", "sample", "evaluate", "describe", "export"]


def _output_path(workdir: str, setting_value, default_name: str) -> epath.Path:
  """An output file: the setting's path (relative ones under the workdir), or
  workdir/default_name."""
  if setting_value:
    path = epath.Path(setting_value)
    return path if path.is_absolute() or "://" in str(setting_value) else \
        epath.Path(workdir) / path
  return epath.Path(workdir) / default_name


def sample(config, workdir: str) -> str:
  """--mode=sample: writes sample.output (default samples.npz: uint8 images
  [N,H,W,C] and labels) and a PNG grid beside it, from the EMA params of
  sample.checkpoint_step (default: the latest)."""
  task = tasks.get_task(config.task)
  if task.sampling is None:
    generative = sorted(n for n, t in tasks.TASKS.items() if t.sampling is not None)
    raise ConfigError(f"--mode=sample needs a generative task {generative}, got "
                      f"task={config.task!r}.")
  s = config.sample
  out = _output_path(workdir, s.output, "samples.npz")
  if out.suffix != ".npz":
    raise ConfigError(f"sample.output={s.output!r} must name a .npz file.")
  run = runs.load_run(workdir, config, step=s.checkpoint_step, step_setting="sample.checkpoint_step")
  spec, n = run.spec, s.num_samples
  labels = None
  if spec.conditioning != "none" or s.classifier_workdir:
    num_classes = spec.num_classes or sources.dataset_info(config.data).num_classes
    labels = generate.parse_labels(s.labels, n, num_classes)
  gen, params = generate.make_generator(config, spec, run.model_fn, run.schedule,
                                        run.params, s.batch_size)
  start = time.perf_counter()
  images = writers.to_uint8(gen(params, n, labels, seed=config.seed, progress=True))
  seconds = time.perf_counter() - start
  grid = out.parent / (out.stem + ".png")
  if is_primary():
    writers.save_npz(out, images=images, **({} if labels is None else {"labels": labels}))
    writers.save_image_grid(grid, images[: s.grid_size])
  print(f"sampled {n} images in {seconds:.1f} s from the step-{run.step} EMA params "
        f"({s.sampler}); wrote {out} and {grid}")
  print(out)
  return str(out)


def _test_batches(config):
  """The first eval.max_examples test images (None: all), in order, as global
  arrays over the device mesh: {"image", "label", "mask"} batches of
  eval.batch_size (rounded up to the device count), mask 0 on padding.

  Each process reads only its slice of every global batch
  (`pipeline.BatchSliceSampler`), so the examples, and the task's reduction
  over the gathered results, are the same for any number of processes.
  """
  ev, mesh = config.eval, make_mesh()
  p, processes = jax.process_index(), jax.process_count()
  batch = -(-ev.batch_size // mesh.size) * mesh.size
  local = batch // processes
  source = sources.get_source(config.data, "test")
  total = len(source) if ev.max_examples is None else min(len(source), ev.max_examples)
  loader = iter(pipeline.make_loader(source, batch_size=batch, seed=config.seed,
                                     image_size=config.data.image_size, shuffle=False,
                                     num_epochs=1, drop_remainder=False))
  for j in range(-(-total // batch)):
    take = int(np.clip(total - (j * batch + p * local), 0, local))
    d = config.data
    b = next(loader) if take else {
        "image": np.zeros((0, d.image_size, d.image_size, d.channels), np.float32),
        "label": np.zeros((0,), np.int32)}
    pad = lambda a: np.concatenate([a[:take], np.zeros((local - take,) + a.shape[1:], a.dtype)])
    host = {"image": pad(b["image"]), "label": pad(b["label"]),
            "mask": (np.arange(local) < take).astype(np.float32)}
    yield {k: jax.make_array_from_process_local_data(batch_sharded(mesh), v)
           for k, v in host.items()}


def evaluate(config, workdir: str) -> dict:
  """--mode=eval: `eval.metrics` (`metrics.suite`) with the EMA params of
  eval.checkpoint_step (default: the latest): "bpd", the task's own
  evaluation on the test split (`Task.evaluate`: bits/dim, or a classifier's
  accuracy by noise level), and the sample metrics on `eval.num_samples`
  fresh samples or on the npz `eval.samples`. Writes eval.json."""
  names = suite.parse(config)
  task = tasks.get_task(config.task)
  sample_names = [n for n in names if n in suite.SAMPLE_METRICS]
  if "bpd" in names and task.evaluate is None:
    can = sorted(n for n, t in tasks.TASKS.items() if t.evaluate is not None)
    raise ConfigError(f"eval.metrics 'bpd' needs one of the tasks {can}, got task="
                      f"{config.task!r}: distilled and consistency models sample on their own "
                      "grid and define no likelihood; use the sample metrics.")
  if sample_names and task.sampling is None and not config.eval.samples:
    raise ConfigError(f"eval.metrics {sample_names} score samples, and task={config.task!r} "
                      "does not generate: set eval.samples to an npz of samples.")
  run = runs.load_run(workdir, config, step=config.eval.checkpoint_step,
                      step_setting="eval.checkpoint_step")
  start, result, lines = time.perf_counter(), {"step": run.step}, []
  if "bpd" in names:
    batches = writers.progress(_test_batches(config), desc="eval", unit="batch")
    found, summary = task.evaluate(config, run.spec, run.net, run.schedule, run.params,
                                   batches, jax.random.key(config.seed + 1))
    result |= found
    lines.append(summary)
  if sample_names:
    images = _samples_to_score(config, run)
    found, more = suite.sample_metrics(config, images, sample_names)
    result |= found
    lines += more
  path = epath.Path(workdir) / "eval.json"
  if is_primary():
    writers.save_json(path, result)
  for line in lines:
    print(line)
  print(f"(step {run.step}, {time.perf_counter() - start:.1f} s); wrote {path}")
  return result


def _samples_to_score(config, run) -> np.ndarray:
  """uint8 [N, H, W, C]: eval.samples' images, or eval.num_samples fresh ones
  (balanced labels for a conditional model)."""
  if config.eval.samples:
    path = epath.Path(config.eval.samples)
    if not path.exists():
      raise ConfigError(f"eval.samples={config.eval.samples!r}: no such file.")
    with np.load(io.BytesIO(path.read_bytes())) as f:
      if "images" not in f.files:
        raise ConfigError(f"eval.samples={config.eval.samples!r} holds no 'images' array "
                          "(--mode=sample writes one).")
      return np.asarray(f["images"])
  n = config.eval.num_samples
  labels = (generate.balanced_labels(n, run.spec.num_classes)
            if run.spec.conditioning != "none" else None)
  gen, params = generate.make_generator(config, run.spec, run.model_fn, run.schedule,
                                        run.params, config.sample.batch_size)
  return writers.to_uint8(gen(params, n, labels, seed=config.seed + 2, progress=True))


def fid_stats(config, workdir: str) -> str:
  """--mode=fid_stats: the FID Inception statistics (μ, Σ) of the data split
  eval.reference_split (at most eval.reference_examples images), written to
  eval.fid_stats in pytorch-fid's / TTUR's npz format."""
  del workdir
  from diffusion_jax.metrics import fid
  if not config.eval.fid_stats:
    raise ConfigError("--mode=fid_stats writes eval.fid_stats: set it to the output .npz.")
  feature_fn, why = suite.inception_feature_fn(config)
  if feature_fn is None:
    raise ConfigError(f"--mode=fid_stats needs the FID Inception: {why}.")
  images = suite._reference_images(config)
  start = time.perf_counter()
  mu, sigma = fid.compute_statistics(feature_fn(images))
  if is_primary():
    fid.save_statistics(config.eval.fid_stats, mu, sigma)
  print(f"FID statistics of {len(images)} {config.eval.reference_split} images of "
        f"data.dataset={config.data.dataset!r} in {time.perf_counter() - start:.1f} s; wrote "
        f"{config.eval.fid_stats}")
  return config.eval.fid_stats


def describe(config) -> int:
  """--mode=describe: the config, the data, the devices and mesh, the parameter
  count, and the compiled train step's FLOPs and memory per device (XLA's
  ahead-of-time analysis: nothing runs)."""
  from diffusion_jax import train as train_lib
  try:
    spec, data = configuration.validate_config(config), sources.describe(config.data)
  except UserError as e:  # Describe the model without its data (not readable here).
    spec = configuration.validate_config(config, without_data=True)
    data = (f"data: not readable here ({e}); the figures below assume "
            f"{spec.image_size}x{spec.image_size}x{spec.channels} images"
            + (f" and {spec.num_classes} classes" if spec.num_classes else "") + ".")
  net = tasks.get_task(config.task).model(config, spec)
  shapes = jax.eval_shape(functools.partial(models.init_params, net, spec),
                          jax.random.key(0))
  n = models.count_params(shapes)
  print(workdir_lib.config_to_json(config))
  print(data)
  trainer = train_lib.Trainer(config, spec)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process(es))")
  print(f"mesh: {dict(trainer.mesh.shape)}")
  print(f"flops per example (forward): {_forward_flops(net, spec, shapes)}")
  print("Compiling the train step for its FLOPs and memory...", flush=True)
  for line in _train_step_costs(trainer, spec):
    print(line)
  print(f"parameters: {n}")
  return n


def _train_step_costs(trainer, spec) -> list[str]:
  """FLOPs per step and memory per device of the compiled train step."""
  c = trainer.config
  batch = {"image": jax.ShapeDtypeStruct(
               (c.train.batch_size, spec.image_size, spec.image_size, spec.channels),
               jnp.float32, sharding=trainer.data_sharding),
           "label": jax.ShapeDtypeStruct((c.train.batch_size,), jnp.int32,
                                         sharding=trainer.data_sharding)}
  try:
    compiled = trainer.train_step.lower(trainer.abstract_state(), batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
  except Exception as e:  # The analyses are backend-dependent.
    return [f"train step analysis: unavailable ({type(e).__name__})"]
  size = lambda b: f"{b / 2**30:.3f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"
  return [f"flops per train step (global batch {c.train.batch_size}): {cost['flops']:.4g}",
          f"memory per device: state and batch {size(mem.argument_size_in_bytes)}, "
          f"temporaries {size(mem.temp_size_in_bytes)}, outputs "
          f"{size(mem.output_size_in_bytes)} ({size(mem.alias_size_in_bytes)} of them "
          "donated in place)"]


def _forward_flops(net, spec, param_shapes) -> str:
  """XLA's FLOP count of one forward pass for one example."""
  x = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, spec.channels),
                           jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  if isinstance(net, NoisyClassifier):
    fwd = models.make_classifier_fn(net)
  else:
    model_fn = models.make_model_fn(net)
    cond = make_cond(spec, jnp.zeros((1,), jnp.int32))
    fwd = lambda p, x, t: model_fn(p, x, t, cond)
  try:
    cost = jax.jit(fwd).lower(param_shapes, x, t).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return f"{cost['flops']:.4g}"
  except Exception as e:  # Cost analysis is backend-dependent.
    return f"unavailable ({type(e).__name__})"


def export(config, workdir: str) -> str:
  """--mode=export: the EMA params of export.checkpoint_step (default: the
  latest) as export.output (default export/params.safetensors; .npz works
  too), with the run's config.json beside it, loadable by `diffusion_jax.load`."""
  from diffusion_jax import weights
  out = _output_path(workdir, config.export.output, "export/params.safetensors")
  run = runs.load_run(workdir, config, step=config.export.checkpoint_step,
                      step_setting="export.checkpoint_step")
  if is_primary():
    weights.save(out, run.params, run.config, run.spec)
  n = models.count_params(run.params)
  print(f"exported the step-{run.step} EMA params ({n:,} parameters) to {out} and "
        f"{weights.config_path(out)}")
  print(out)
  return str(out)


def train(config, workdir: str):
  from diffusion_jax import train as train_lib
  return train_lib.train_and_evaluate(config, workdir)


class Mode(NamedTuple):
  run: Callable          # run(config, workdir)
  needs_workdir: bool = True


MODES: dict[str, Mode] = {
    "train": Mode(train),
    "sample": Mode(sample),
    "eval": Mode(evaluate),
    "describe": Mode(lambda config, workdir: describe(config), needs_workdir=False),
    "export": Mode(export),
    "fid_stats": Mode(fid_stats, needs_workdir=False),
    "edit": Mode(edit_mode.edit),
}


def get_mode(name: str) -> Mode:
  if name not in MODES:
    raise ConfigError(f"--mode={name!r} is not valid; modes: {sorted(MODES)}.")
  return MODES[name]
