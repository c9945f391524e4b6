"""Benchmark of the sampling engine (a script, not a test).

Claims checked, each printed on one line with its measured value:
  (a) Overhead: `sample_fn` wall time / the bare chain (the same NFE model calls
      chained in one `lax.scan` with no sampler arithmetic: the physical limit),
      for DDIM and DDPM, 200 steps, batch 64, digits UNet (8x8x1, ch=32,
      ch_mult=(1, 2), attention at 4x4). Target <= 1.05.
      Also reported: the ratio to NFE x one standalone jitted forward.
  (b) Dispatch-bound: tiny MLP (2 -> 64 -> 64 -> 2) on 2-D points, 1000 DDIM
      steps: `sample_fn` vs a Python loop calling one jitted step per timestep.
      Target >= 10x faster. The headline case is one trajectory (B = 1, the
      latency case of e.g. a diffusion policy drawing one action), where the
      MLP's own arithmetic is small against the ~30 us cost of dispatching a
      step from Python. Larger batches (default sweep 4, 16) are reported too:
      there the MLP's arithmetic inside the scan (the "bare MLP" column: the
      same 1000 calls in one scan with no sampler) becomes the floor, so the
      ratio falls towards loop / bare whatever the sampler does.
  (c) Compile: trace+lower+compile time at 1000 steps / at 10 steps (UNet), and
      the MLP's first-call time (compile + run) likewise. Target <= 1.2.

Method: block_until_ready on every timed call, warm-up calls first, medians of
repeats, and the two sides of every ratio timed alternately in one run (so
background load hits both alike).

  python benchmarks/sampling.py            # full
  python benchmarks/sampling.py --quick    # fewer repeats
  python benchmarks/sampling.py --model conv   # a stand-in conv net instead of the UNet
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import diffusion_jax as dj
from diffusion_jax.samplers import DDIMState, StepInput, get_sampler
from diffusion_jax.sampling import make_denoise_fn, make_sample_fn, sampling_schedule


# ----------------------------------------------------------------------------
# Models.
# ----------------------------------------------------------------------------


class ConvStandIn(nn.Module):
  """A small conv net with a time embedding, for when the UNet is unavailable."""
  ch: int = 64

  @nn.compact
  def __call__(self, x, t):
    emb = nn.Dense(self.ch)(jnp.sin(t[:, None].astype(jnp.float32)
                                    * jnp.exp(-jnp.arange(16) / 4.0)))
    h = nn.Conv(self.ch, (3, 3))(x) + emb[:, None, None, :]
    for _ in range(4):
      h = h + nn.Conv(self.ch, (3, 3))(nn.swish(nn.GroupNorm(8)(h)))
    return nn.Conv(x.shape[-1], (3, 3))(nn.swish(h))


class TinyMLP(nn.Module):
  """2-D data: [x, sinusoidal(t)] -> 64 -> 64 -> 2."""

  @nn.compact
  def __call__(self, x, t):
    freqs = jnp.exp(-jnp.arange(8) / 2.0)
    emb = t[:, None].astype(jnp.float32) / 1000.0 * freqs * 100.0
    h = jnp.concatenate([x, jnp.sin(emb), jnp.cos(emb)], -1)
    h = nn.swish(nn.Dense(64)(h))
    h = nn.swish(nn.Dense(64)(h))
    return nn.Dense(2)(h)


def image_model(kind: str, batch: int, ch: int):
  """(model_fn, params, shape) for 8x8x1 digits."""
  shape = (batch, 8, 8, 1)
  if kind == "unet":
    from diffusion_jax.models.unet import UNet
    net = UNet(ch=ch, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,),
               dropout=0.0, num_groups=8)
    apply = lambda p, x, t: net.apply(p, x, t, train=False)
    params = net.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((batch,), jnp.int32),
                      train=False)
  else:
    net = ConvStandIn(ch=ch)
    apply = net.apply
    params = net.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((batch,), jnp.int32))
  # Perturb the (zero-initialized) output layer so outputs are O(1), not 0.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])
  model_fn = lambda p, x, t, cond: apply(p, x, t)
  return model_fn, params, shape


# ----------------------------------------------------------------------------
# Timing helpers.
# ----------------------------------------------------------------------------


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready(), x)


def timed(fn, calls: int = 1):
  """Wall time of one call of fn: `calls` calls back to back (each blocked on),
  divided by `calls`."""
  t0 = time.perf_counter()
  for _ in range(calls):
    block(fn())
  return (time.perf_counter() - t0) / calls


class Stat(NamedTuple):
  median: float  # seconds
  min: float


def alternate(fns: dict, repeats: int, warmup: int = 1, calls: dict | None = None) -> dict:
  """Wall time per call (median and min) of each thunk, timed round-robin after
  warm-ups. `calls[k]` > 1 times k as that many calls in a row: a call of a
  millisecond otherwise also measures the transition from the previous thunk
  (e.g. the runtime freeing a Python loop's thousand buffers)."""
  calls = calls or {}
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      times[k].append(timed(fn, calls.get(k, 1)))
  return {k: Stat(statistics.median(v), min(v)) for k, v in times.items()}


def fmt(seconds: float) -> str:
  return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def row(rows, name, stat: Stat, scale: float = 1.0):
  rows.append((name, fmt(stat.median * scale), fmt(stat.min * scale)))


def bare_chain(model_fn, shape, nfe):
  """NFE model calls chained in one scan, the output fed back as the input."""
  ts = jnp.asarray(np.linspace(999, 0, nfe).astype(np.int32))

  @jax.jit
  def run(params, x):
    def body(x, t):
      return model_fn(params, x, jnp.full((shape[0],), t, jnp.int32), None), None
    return jax.lax.scan(body, x, ts)[0]
  return run


# ----------------------------------------------------------------------------
# The three claims.
# ----------------------------------------------------------------------------


def claim_overhead(args, rows, lines):
  schedule = dj.get_schedule("linear", 1000)
  model_fn, params, shape = image_model(args.model, args.batch, args.ch)
  K = args.steps
  x = jax.random.normal(jax.random.key(2), shape)
  forward = jax.jit(lambda p, x: model_fn(p, x, jnp.full((shape[0],), 500, jnp.int32), None))
  bare = bare_chain(model_fn, shape, K)
  n_fwd = 10

  def forwards():  # n_fwd standalone forward calls, each blocked on.
    for _ in range(n_fwd):
      out = block(forward(params, x))
    return out

  fns = {"bare": lambda: bare(params, x), "forward": forwards}
  for sampler in ("ddim", "ddpm"):
    f = make_sample_fn(model_fn, schedule, shape=shape, sampler=sampler, num_steps=K)
    fns[sampler] = (lambda f=f: f(params, jax.random.key(3)))
  t = alternate(fns, args.repeats)
  fwd = Stat(t["forward"].median / n_fwd, t["forward"].min / n_fwd)
  row(rows, f"forward ({args.model} ch={args.ch}, B={shape[0]}), one call", fwd)
  row(rows, f"bare chain: {K} model calls in one scan", t["bare"])
  for s in ("ddim", "ddpm"):
    row(rows, f"sample_fn {s}, {K} steps", t[s])
  for s in ("ddim", "ddpm"):
    r, r_min = t[s].median / t["bare"].median, t[s].min / t["bare"].min
    lines.append(f"(a) overhead {s}: sample_fn / bare chain = {r:.3f} (of mins {r_min:.3f}; "
                 f"target <= 1.05) {'PASS' if r <= 1.05 else 'FAIL'}; sample_fn / ({K} x "
                 f"standalone forward) = {t[s].median / (K * fwd.median):.3f}")
  return params, model_fn, shape


def claim_dispatch(args, rows, lines):
  """(b) for each MLP batch size: the scan, the Python loop and the bare MLP chain."""
  schedule = dj.get_schedule("linear", 1000)
  K = 1000
  net = TinyMLP()
  model_fn = lambda p, x, t, cond: net.apply(p, x, t)
  sched = sampling_schedule(schedule, K)
  smp = get_sampler("ddim", sched)

  @jax.jit
  def one_step(params, x, i, n):
    denoise = make_denoise_fn(model_fn, sched, params, None)
    return smp.step(DDIMState(x), StepInput(i, n, None), denoise)[0].x

  results, first = {}, None
  for B in args.mlp_batches:
    params = net.init(jax.random.key(0), jnp.zeros((B, 2)), jnp.zeros((B,), jnp.int32))
    f = make_sample_fn(model_fn, schedule, shape=(B, 2), sampler="ddim", num_steps=K)
    bare = bare_chain(model_fn, (B, 2), K)
    x_T = jax.random.normal(jax.random.key(1), (B, 2))

    def loop(params=params, x_T=x_T):
      x = x_T
      for n, i in enumerate(range(K - 1, -1, -1), 1):
        x = one_step(params, x, np.int32(i), np.int32(n))
      return x

    np.testing.assert_allclose(loop(), f(params, jax.random.key(0), x_T=x_T), atol=1e-4)
    # Each sample of the scan and the bare chain is 20 calls in a row (>= 20 ms).
    t = alternate({"scan": lambda: f(params, jax.random.key(0), x_T=x_T), "loop": loop,
                   "bare": lambda: bare(params, x_T)}, 3 * args.repeats,
                  calls={"scan": 20, "bare": 20})
    row(rows, f"MLP sample_fn (one scan), {K} steps, B={B}", t["scan"])
    row(rows, f"MLP bare chain ({K} MLP calls in one scan), B={B}", t["bare"])
    row(rows, f"MLP Python loop of {K} jitted steps, B={B}", t["loop"])
    results[B] = t
    first = first or (model_fn, params, B)
  for B, t in results.items():
    r, r_min = t["loop"].median / t["scan"].median, t["loop"].min / t["scan"].min
    head = B == args.mlp_batches[0]
    verdict = f"; target >= 10x) {'PASS' if r >= 10 else 'FAIL'}" if head else ")"
    lines.append(
        f"(b) {'dispatch-bound' if head else 'sweep'} MLP, {K} steps, B={B}: sample_fn is "
        f"{r:.1f}x faster than the Python loop (of mins {r_min:.1f}x{verdict}; per step: "
        f"loop {t['loop'].median / K * 1e6:.1f} us, sample_fn {t['scan'].median / K * 1e6:.2f} us, "
        f"bare MLP {t['bare'].median / K * 1e6:.2f} us")
  return first  # (model_fn, params, B) of the headline batch, for claim (c)


def claim_compile(args, rows, lines, unet, mlp):
  schedule = dj.get_schedule("linear", 1000)
  model_fn, params, shape = unet
  reps = 2 if args.quick else 3

  def compile_time(K):
    f = make_sample_fn(model_fn, schedule, shape=shape, sampler="ddim", num_steps=K)
    t0 = time.perf_counter()
    f.jitted.lower(params, jax.random.key(0), None, None).compile()
    return time.perf_counter() - t0

  c = {10: [], 1000: []}
  for _ in range(reps):
    for K in c:
      c[K].append(compile_time(K))
  c = {K: Stat(statistics.median(v), min(v)) for K, v in c.items()}
  row(rows, f"trace+lower+compile ({args.model}), 10 steps", c[10])
  row(rows, f"trace+lower+compile ({args.model}), 1000 steps", c[1000])
  r = c[1000].median / c[10].median
  lines.append(f"(c) compile time, 1000 / 10 steps ({args.model}): {r:.2f} (target <= 1.2) "
               f"{'PASS' if r <= 1.2 else 'FAIL'}")

  mlp_fn, mlp_params, B = mlp

  def first_call(K):
    f = make_sample_fn(mlp_fn, schedule, shape=(B, 2), sampler="ddim", num_steps=K)
    return timed(lambda: f(mlp_params, jax.random.key(0)))

  fc = {10: [], 1000: []}
  for _ in range(reps):
    for K in fc:
      fc[K].append(first_call(K))
  fc = {K: Stat(statistics.median(v), min(v)) for K, v in fc.items()}
  row(rows, "MLP first call (compile + run), 10 steps", fc[10])
  row(rows, "MLP first call (compile + run), 1000 steps", fc[1000])
  r = fc[1000].median / fc[10].median
  lines.append(f"(c) first-call time (compile + run), 1000 / 10 steps (MLP): {r:.2f} "
               f"(target <= 1.2) {'PASS' if r <= 1.2 else 'FAIL'}")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  parser.add_argument("--model", choices=("unet", "conv"), default="unet",
                      help="image model for (a) and (c)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--ch", type=int, default=32, help="base channels of the image model")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--mlp-batches", type=lambda v: [int(b) for b in v.split(",")],
                      default=[1, 4, 16],
                      help="batch sizes of the MLP case (b); the first is the headline "
                           "dispatch-bound case")
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args()
  if args.repeats is None:
    args.repeats = 3 if args.quick else 7
  if args.model == "unet":
    try:
      import diffusion_jax.models.unet  # noqa: F401
    except ImportError:
      print("UNet not available; using the conv stand-in.")
      args.model = "conv"

  print(f"jax {jax.__version__}, devices {jax.devices()}, os.cpu_count() = {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}")
  print(f"model={args.model} batch={args.batch} steps={args.steps} repeats={args.repeats}")
  rows, lines = [], []
  params, model_fn, shape = claim_overhead(args, rows, lines)
  mlp = claim_dispatch(args, rows, lines)
  claim_compile(args, rows, lines, (model_fn, params, shape), mlp)
  width = max(len(r[0]) for r in rows)
  print()
  print(f"{'measurement':<{width}}  {'median':>10}  {'min':>10}")
  print("-" * (width + 24))
  for name, med, mn in rows:
    print(f"{name:<{width}}  {med:>10}  {mn:>10}")
  print()
  for line in lines:
    print(line)
  print(f"load average at the end {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs; "
        "background load inflates the absolute times)")


if __name__ == "__main__":
  main()
