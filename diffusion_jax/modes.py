"""The non-training modes of the CLI: sample, eval and describe."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import experiment, losses, writers
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.data import pipeline
from diffusion_jax.train import Trainer


def restore_ema_params(config, workdir: str):
  """Validates the config against `workdir` and restores the latest EMA params.
  Returns (trainer, ema_params, step)."""
  spec = experiment.validate_config(config)
  experiment.check_workdir_compatible(workdir, config, spec)
  trainer = Trainer(config, spec)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  if ckpt.latest_step() is None:
    raise ValueError(f"--workdir={workdir!r} holds no checkpoint; train first "
                     "(--mode=train).")
  state, _, step = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  return trainer, state.ema_params, step


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., C-1, 0, 1, ... — every class equally often (±1)."""
  return (np.arange(n) % num_classes).astype(np.int32)


def generate(config, trainer: Trainer, params, num_samples: int, labels=None,
             seed: int | None = None) -> np.ndarray:
  """Draws `num_samples` images in batches of config.sample.batch_size.
  Returns float32 [N, H, W, C] in [-1, 1]."""
  spec, bs = trainer.spec, config.sample.batch_size
  shape = (bs, spec.image_size, spec.image_size, spec.channels)
  sample_fn = experiment.make_config_sample_fn(config, trainer.model_fn,
                                               trainer.schedule, shape)
  key = jax.random.key(config.seed if seed is None else seed)
  out = []
  for b in range(-(-num_samples // bs)):
    cond = None
    if labels is not None:
      chunk = np.resize(labels[b * bs:(b + 1) * bs], bs)  # Pads the last batch.
      cond = {"label": jnp.asarray(chunk)}
    out.append(np.asarray(sample_fn(params, jax.random.fold_in(key, b), cond=cond)))
  return np.concatenate(out)[:num_samples]


def sample(config, workdir: str) -> str:
  """--mode=sample: writes samples.npz (uint8 images [N,H,W,C], labels) + PNG."""
  trainer, params, step = restore_ema_params(config, workdir)
  n, spec = config.sample.num_samples, trainer.spec
  labels = None
  if spec.num_classes is not None:
    labels = (np.asarray(config.sample.labels, np.int32) if config.sample.get("labels")
              else balanced_labels(n, spec.num_classes))
  images = writers.to_uint8(generate(config, trainer, params, n, labels))
  path = os.path.join(workdir, "samples.npz")
  arrays = {"images": images} | ({} if labels is None else {"labels": labels[:n]})
  np.savez_compressed(path, **arrays)
  grid = images[: config.sample.grid_size]
  writers.save_image_grid(os.path.join(workdir, "samples.png"), grid)
  print(f"sampled {n} images from the step-{step} EMA params with "
        f"{config.sample.sampler}; grid: {os.path.join(workdir, 'samples.png')}")
  print(path)
  return path


def evaluate(config, workdir: str) -> dict:
  """--mode=eval: the variational bound in bits/dim on the test split."""
  trainer, params, step = restore_ema_params(config, workdir)
  ev, d = config.eval, config.diffusion
  source = pipeline.get_data_source(config.data.dataset, "test", config.data.data_dir)
  loader = pipeline.make_loader(source, batch_size=ev.batch_size, seed=config.seed,
                                image_size=config.data.image_size, shuffle=False,
                                num_epochs=1, drop_remainder=False)

  @jax.jit
  def bpd(params, x0, labels, rng):
    cond = None if trainer.spec.num_classes is None else {"label": labels}
    denoiser = lambda x_t, t: trainer.model_fn(params, x_t, t, cond)
    return losses.bits_per_dim(trainer.schedule, denoiser, x0, rng,
                               prediction=d.prediction, variance=d.variance,
                               chunk_size=ev.chunk_size)

  totals, priors, seen = [], [], 0
  key = jax.random.key(config.seed + 1)
  for i, batch in enumerate(loader):
    if ev.max_examples is not None and seen >= ev.max_examples:
      break
    out = bpd(params, batch["image"], batch["label"], jax.random.fold_in(key, i))
    totals.append(np.asarray(out["total_bpd"]))
    priors.append(np.asarray(out["prior_bpd"]))
    seen += len(batch["image"])
  total = np.concatenate(totals)[: ev.max_examples]
  result = {"step": step, "num_examples": int(total.size),
            "bits_per_dim": float(total.mean()),
            "bits_per_dim_stderr": float(total.std() / np.sqrt(total.size)),
            "prior_bits_per_dim": float(np.concatenate(priors).mean())}
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"test bits/dim: {result['bits_per_dim']:.4f} ± "
        f"{result['bits_per_dim_stderr']:.4f} over {result['num_examples']} images "
        f"(step {step}, T={config.diffusion.num_timesteps})")
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
  print(f"flops per example (forward): {_forward_flops(model, spec, shapes)}")
  print(f"parameters: {n}")
  return n


def _forward_flops(model, spec, param_shapes) -> str:
  x = jax.ShapeDtypeStruct((1, spec.image_size, spec.image_size, spec.channels),
                           jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = None if spec.num_classes is None else jax.ShapeDtypeStruct((1,), jnp.int32)
  fwd = lambda p, x, t, y: model.apply({"params": p}, x, t, y=y, train=False)
  try:
    cost = jax.jit(fwd).lower(param_shapes, x, t, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return f"{cost['flops']:.4g}"
  except Exception as e:  # Cost analysis is backend-dependent.
    return f"unavailable ({type(e).__name__})"
