"""Per-device memory of the train step on an 8-device host mesh (a script, not a test).

For DiT-XL/2 (675M parameters, 32x32x4 inputs, 1000 classes, learned Σ) and a
UNet of more than 500M parameters, it compiles the jitted train step ahead
of time (`lower(...).compile().memory_analysis()`, XLA's own accounting; no
step runs) at fsdp = 1, 2, 4, 8 (data = 8 / fsdp), with and without
rematerialization, and prints per device:
  * state: params + EMA + Adam moments (+ the batch), the step's arguments;
  * temp: the step's temporaries (activations, gradients, collectives);
and the ratio of the state at fsdp = 8 to fsdp = 1 (goal: <= 0.15). Then it
times one small model's train step with and without remat, interleaved, to
give remat's step-time cost.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory.py
  ... --quick          # smaller global batch, DiT-S/2 and a 60M UNet (minutes, for CI)
  ... --models unet    # only some parts: a comma list of dit, unet, remat
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion_jax import models, train  # noqa: E402
from diffusion_jax.conditioning import DataSpec  # noqa: E402
from diffusion_jax.default_config import get_default_config  # noqa: E402

GiB = 2 ** 30


def dit_config(variant: str):
  c = get_default_config()
  c.model.name, c.model.variant, c.model.conditioning = "dit", variant, "class"
  c.model.dropout = 0.0
  c.diffusion.variance, c.diffusion.loss_type, c.diffusion.weighting = (
      "learned_range", "hybrid", "none")
  c.data.image_size, c.data.channels = 32, 4
  return c, DataSpec(32, 4, 1000, "class")


def unet_config(quick: bool):
  c = get_default_config()
  m = c.model
  if quick:
    m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 128, (1, 2, 2, 2), 2, (16,)
  else:  # ADM-like at 64x64: ch 256, multipliers (1, 2, 4, 4), 3 blocks per level,
    # attention at 32/16/8: 569,238,787 parameters.
    m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 256, (1, 2, 4, 4), 3, (32, 16, 8)
  m.num_heads, m.num_groups, m.dropout = 4, 32, 0.0
  c.data.image_size, c.data.channels = 64, 3
  return c, DataSpec(64, 3, None, "none")


def memory(config, spec, *, fsdp: int, remat: str | None, batch: int):
  config.mesh.fsdp, config.mesh.data = fsdp, jax.device_count() // fsdp
  config.model.remat = remat
  config.train.batch_size = batch
  trainer = train.Trainer(config, spec)
  x = jax.ShapeDtypeStruct((batch, spec.image_size, spec.image_size, spec.channels),
                           jnp.float32, sharding=trainer.data_sharding)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=trainer.data_sharding)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(trainer.abstract_state(), {"image": x, "label": y}).compile()
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes / GiB, m.temp_size_in_bytes / GiB, time.perf_counter() - start


def params_of(config, spec) -> int:
  net = models.build_network(config.model, spec,
                             learn_sigma=config.diffusion.variance.startswith("learned"))
  return models.count_params(jax.eval_shape(lambda: models.init_params(net, spec,
                                                                       jax.random.key(0))))


def remat_cost(repeats: int):
  """Step time of a small UNet (digits, ch 64) with and without remat, interleaved."""
  from diffusion_jax import configuration
  from diffusion_jax.data import pipeline  # noqa: F401  (builds digits offline)
  out = {}
  trainers = {}
  for remat in (None, "nothing_saveable"):
    c = get_default_config()
    c.model.ch, c.model.num_groups, c.model.remat = 64, 16, remat
    c.mesh.fsdp, c.mesh.data = 1, -1
    spec = configuration.validate_config(c)
    t = train.Trainer(c, spec)
    batch = t.global_batch(next(iter(train.make_train_loader(c))))
    state = t.init_state()
    state, _ = t.train_step(state, batch)
    jax.block_until_ready(state)
    trainers[remat] = [t, state, batch]
    out[remat] = []
  for _ in range(repeats):
    for remat, tsb in trainers.items():
      t, state, batch = tsb
      start = time.perf_counter()
      for _ in range(5):
        state, _ = t.train_step(state, batch)
      jax.block_until_ready(state)
      tsb[1] = state
      out[remat].append((time.perf_counter() - start) / 5)
  return {k: statistics.median(v) for k, v in out.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--batch", type=int, default=None, help="global batch (default 64; quick 16)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--models", default="dit,unet,remat",
                      help="what to run: a comma list of dit, unet, remat (the step-time cost)")
  args = parser.parse_args()
  wanted = set(args.models.split(","))
  if not wanted or wanted - {"dit", "unet", "remat"}:
    parser.error(f"--models={args.models!r}: give a comma list of dit, unet, remat")
  batch = args.batch or (16 if args.quick else 64)
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"global batch {batch}, float32 params, Adam")
  models_ = [("DiT-S/2" if args.quick else "DiT-XL/2", *dit_config(
      "DiT-S/2" if args.quick else "DiT-XL/2"))] if "dit" in wanted else []
  models_ += [("UNet", *unet_config(args.quick))] if "unet" in wanted else []
  print(f"{'model':<10} {'params':>12} {'fsdp':>4} {'remat':>6} {'state GiB':>10} "
        f"{'temp GiB':>9} {'compile s':>9}")
  for name, config, spec in models_:
    n = params_of(config, spec)
    state = {}
    for remat in (None, "nothing_saveable"):
      for fsdp in (1, 2, 4, 8):
        args_gib, temp_gib, secs = memory(config, spec, fsdp=fsdp, remat=remat, batch=batch)
        state[(fsdp, remat)] = args_gib
        print(f"{name:<10} {n:>12,} {fsdp:>4} {'on' if remat else 'off':>6} {args_gib:>10.3f} "
              f"{temp_gib:>9.3f} {secs:>9.1f}", flush=True)
    ratio = state[(8, None)] / state[(1, None)]
    print(f"{name}: state per device at fsdp=8 / fsdp=1 = {ratio:.3f} (goal <= 0.15) "
          f"{'PASS' if ratio <= 0.15 else 'FAIL'}", flush=True)
  if "remat" not in wanted:
    return
  times = remat_cost(args.repeats)
  print(f"remat step-time cost (digits UNet ch 64, batch 128, median of {args.repeats}): "
        f"{times[None] * 1e3:.1f} ms without, {times['nothing_saveable'] * 1e3:.1f} ms with "
        f"nothing_saveable: x{times['nothing_saveable'] / times[None]:.2f}")


if __name__ == "__main__":
  main()
