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
  (d) Lean stochastic step: a 2 -> 32 -> 2 MLP (+ 8 sinusoidal time features)
      at B = 256, 1000 DDPM steps: `sample_fn` / the bare chain *with the same
      per-sample draws* (the same 1000 MLP calls in one scan, each adding the
      engine's noise of that step). Target <= 1.10.
  (e) Noise draws: the per-step cost of each way of drawing B = 256 per-sample
      N(0, I) rows (2-D) that JAX allows, added to the bare MLP chain of (d):
      the engine's (a Threefry-2x32 hash per element on the counter (n, e)
      under key_i, written in jnp so XLA fuses it); the previous engine's
      fold_in(key_i, n) + jax.random.normal, with the key implementations
      threefry2x32, rbg, unsafe_rbg and philox4x32; the same counters through
      JAX's own threefry primitive; one hash per two elements (both output
      words). Each is checked for the guarantee (sample i's draws do not
      depend on the batch it is drawn in). Target: the engine's chain within
      5% of the fastest option that keeps the guarantee.

Method: block_until_ready on every timed call, warm-up calls first, medians of
repeats, and the two sides of every ratio timed alternately in one run (so
background load hits both alike).

  python benchmarks/sampling.py            # full
  python benchmarks/sampling.py --quick    # fewer repeats
  python benchmarks/sampling.py --model conv   # a stand-in conv net instead of the UNet
  python benchmarks/sampling.py --claims d,e    # only the lean-step and noise claims
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
from diffusion_jax import sampling as engine
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


class MLP32(nn.Module):
  """2-D data: [x, sinusoidal(t) (8)] -> 32 -> 2."""

  @nn.compact
  def __call__(self, x, t):
    freqs = jnp.exp(-jnp.arange(4) / 2.0)
    emb = t[:, None].astype(jnp.float32) / 1000.0 * freqs * 100.0
    h = jnp.concatenate([x, jnp.sin(emb), jnp.cos(emb)], -1)
    return nn.Dense(2)(nn.swish(nn.Dense(32)(h)))


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
    f.jitted.lower(params, jax.random.key(0), None, None, 0).compile()
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


# ----------------------------------------------------------------------------
# (d) and (e): the lean stochastic step and the noise draws.
# ----------------------------------------------------------------------------


def _fold_in_draws(impl):
  """The previous engine's draws: key_i = fold_in(rng, i), then per step
  normal(fold_in(key_i, n)); with the key implementation `impl`."""
  def prepare(seed, index):
    key = jax.random.key(seed, impl=impl)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)

  def draw(keys, n, event):
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, n), event))(keys)
  return prepare, draw


def _counter_prepare(seed, index):
  return engine._sample_key_words(jax.random.key(seed), index)


def _primitive_draw(words, n, event):
  """The engine's counters through JAX's own threefry primitive."""
  import jax.extend.random as jxr
  size = int(np.prod(event))
  lo = jnp.asarray(n, jnp.uint32) * np.uint32(size) + jnp.arange(size, dtype=jnp.uint32)
  lo = jnp.broadcast_to(lo, (words.shape[1], size))
  b0, b1 = jxr.threefry2x32_p.bind(words[0][:, None], words[1][:, None], jnp.zeros_like(lo), lo)
  return engine._normal_from_bits(b0 ^ b1).reshape((words.shape[1],) + tuple(event))


def _both_words_draw(words, n, event):
  """One hash per two elements: counter (n, j), both output words kept."""
  size = int(np.prod(event))
  m = -(-size // 2)
  b0, b1 = engine._threefry2x32(words[0][:, None], words[1][:, None],
                                jnp.asarray(n, jnp.uint32), jnp.arange(m, dtype=jnp.uint32)[None])
  bits = jnp.concatenate([b0, b1], axis=1)[:, :size]
  return engine._normal_from_bits(bits).reshape((words.shape[1],) + tuple(event))


def draw_options():
  """name -> (prepare(seed, index) -> per-sample state, draw(state, n, event))."""
  opts = {"engine: fused threefry, 1 hash/element (chosen)":
          (_counter_prepare, lambda w, n, e: engine._step_noise(w, n, e, 1001))}
  for impl in ("threefry2x32", "rbg", "unsafe_rbg", "philox4x32"):
    opts[f"fold_in + normal, {impl}" + (" (before)" if impl == "threefry2x32" else "")] = (
        _fold_in_draws(impl))
  opts["same counters, JAX's threefry primitive"] = (_counter_prepare, _primitive_draw)
  opts["1 hash/2 elements (both words)"] = (_counter_prepare, _both_words_draw)
  return opts


def keeps_guarantee(prepare, draw, event=(2,)):
  """Whether samples 2, 3 draw the same rows in a batch of 4 and of 2."""
  def rows(index):
    st = prepare(0, jnp.asarray(index, jnp.uint32))
    return np.stack([np.asarray(jax.jit(lambda s, n: draw(s, n, event))(st, n)) for n in (1, 7)])
  return bool(np.array_equal(rows([0, 1, 2, 3])[:, 2:], rows([2, 3])))


def noise_chain(model_fn, B, K, draw=None, prepare=None):
  """K MLP calls in one scan, each adding draw(n) (none: the bare chain)."""
  ts = jnp.asarray(np.arange(K - 1, -1, -1).astype(np.int32))

  @jax.jit
  def run(params, x, seed):
    state = None if prepare is None else prepare(seed, jnp.arange(B, dtype=jnp.uint32))

    def body(x, inp):
      t, n = inp
      y = model_fn(params, x, jnp.full((B,), t, jnp.int32), None)
      if draw is not None:
        y = y + 0.01 * draw(state, n, (2,))
      return y, None
    return jax.lax.scan(body, x, (ts, jnp.arange(1, K + 1, dtype=jnp.int32)))[0]
  return run


def claim_lean_and_noise(args, rows, lines):
  """(d) sample_fn / the bare chain with the engine's draws; (e) the draw options."""
  B, K = args.lean_batch, 1000
  net = MLP32()
  model_fn = lambda p, x, t, cond: net.apply(p, x, t)
  params = net.init(jax.random.key(0), jnp.zeros((B, 2)), jnp.zeros((B,), jnp.int32))
  x = jax.random.normal(jax.random.key(1), (B, 2))
  schedule = dj.get_schedule("linear", 1000)
  f = make_sample_fn(model_fn, schedule, shape=(B, 2), sampler="ddpm", num_steps=K)
  opts = draw_options()
  fns = {"bare": (lambda g=noise_chain(model_fn, B, K): g(params, x, 0)),
         "sample_fn": lambda: f(params, jax.random.key(0))}
  for name, (prepare, draw) in opts.items():
    fns[name] = (lambda g=noise_chain(model_fn, B, K, draw, prepare): g(params, x, 0))
  # Each timed sample is 5 calls in a row (each call is ~10-40 ms here).
  reps = max(5, args.repeats)
  t = alternate(fns, reps, calls={k: 5 for k in fns})
  engine_name = next(iter(opts))
  row(rows, f"MLP32 bare chain ({K} calls in one scan), B={B}", t["bare"])
  row(rows, f"MLP32 sample_fn ddpm, {K} steps, B={B}", t["sample_fn"])
  for name in opts:
    row(rows, f"MLP32 bare chain + draws: {name}", t[name])
  r = t["sample_fn"].median / t[engine_name].median
  r_min = t["sample_fn"].min / t[engine_name].min
  lines.append(f"(d) lean DDPM step, MLP 2->32->2, B={B}, {K} steps: sample_fn / bare chain with the "
               f"same per-sample draws = {r:.3f} (of mins {r_min:.3f}; target <= 1.10) "
               f"{'PASS' if r <= 1.10 else 'FAIL'}; per step: sample_fn "
               f"{t['sample_fn'].median / K * 1e6:.2f} us, bare+draws "
               f"{t[engine_name].median / K * 1e6:.2f} us, bare {t['bare'].median / K * 1e6:.2f} us")
  costs = []
  for name, (prepare, draw) in opts.items():
    ok = keeps_guarantee(prepare, draw)
    cost = (t[name].median - t["bare"].median) / K * 1e6
    costs.append((name, ok, cost, t[name].median))
  valid = [c for c in costs if c[1]]
  fastest = min(valid, key=lambda c: c[3])
  mine = next(c for c in costs if c[0] == engine_name)
  rel = mine[3] / fastest[3]
  lines.append(
      f"(e) noise draws, B={B}, 2-D, per step over the bare chain: "
      + "; ".join(f"{n} {c:.2f} us{'' if ok else ' (depends on the batch: breaks the guarantee)'}"
                  for n, ok, c, _ in costs)
      + f". Engine's chain / fastest valid option's ({fastest[0]}) = {rel:.3f} (target <= 1.05) "
      f"{'PASS' if rel <= 1.05 else 'FAIL'}")


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
  parser.add_argument("--lean-batch", type=int, default=256, help="batch of claims (d), (e)")
  parser.add_argument("--claims", default="a,b,c,d,e",
                      help="comma-separated claims to measure (c needs a and b)")
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
  claims = set(args.claims.split(","))
  rows, lines = [], []
  if claims & {"a", "c"}:
    params, model_fn, shape = claim_overhead(args, rows, lines)
  if claims & {"b", "c"}:
    mlp = claim_dispatch(args, rows, lines)
  if "c" in claims:
    claim_compile(args, rows, lines, (model_fn, params, shape), mlp)
  if claims & {"d", "e"}:
    claim_lean_and_noise(args, rows, lines)
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
