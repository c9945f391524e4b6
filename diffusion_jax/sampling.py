"""The sampling engine: the time grid, per-sample keys, one `lax.scan`, sharding.

Example, from plain JAX code (an analytic "model" stands in for the UNet):

    import jax, jax.numpy as jnp
    import diffusion_jax as dj

    schedule = dj.get_schedule("cosine", num_timesteps=1000)
    def model_fn(params, x_t, t, cond):                  # predicts ε for data ≡ params
      ab = schedule.alphas_cumprod[t][:, None]
      return (x_t - jnp.sqrt(ab) * params) / jnp.sqrt(1.0 - ab)
    sample_fn = dj.make_sample_fn(model_fn, schedule, shape=(16, 2),
                                  sampler="dpmpp_2m", num_steps=20)
    x0 = sample_fn(jnp.array([0.5, -1.0]), jax.random.key(0))   # [16, 2] float32

How a chain runs. `schedule` (T entries) is restricted to K grid points,
S = grid_timesteps(schedule, K, spacing) (a `schedules.TIME_GRIDS` grid, or
explicit `timesteps=`), with `schedules.respace`; the *sampling schedule* has K
entries and maps entry i back to the training index S_i that `model_fn`
receives. The sampler steps from i = K-1 down to 0; the last step goes to
ᾱ = 1 (clean data). The K steps are one `jax.lax.scan`, traced and compiled
once whatever K.

Randomness. Sample b of a call gets the global index i = first_index + b and
the key key_i = fold_in(rng, i); its x_T and the noise of steps n = 1..K are
the rows n = 0..K of `jax.random.normal(key_i, (K + 1, *shape[1:]))`. Each
row is drawn inside its step with one Threefry-2x32 hash per element (the
counter-based layout of JAX's default `jax_threefry_partitionable`), fused
with the step's arithmetic; no key is derived per step. (An `rng` of another
key implementation, e.g. rbg, is first replaced by the threefry key
`jax.random.bits(rng, (2,))`.) Samples therefore do not depend on the batch
size, the number of devices or how the batch is split: N samples drawn in
chunks with first_index = 0, B, 2B, ... equal one call of N.

Devices. Called at top level on a host with several devices (`devices=None`
means all of `jax.devices()`, of every process), the inputs are placed on the
mesh of `mesh.make_mesh` and the batch axis is sharded over it via
`jax.lax.with_sharding_constraint`; params and the key are replicated.
Called inside the caller's own transformation (`jit`, `vmap`, `shard_map`,
`pmap`: any traced argument) with `devices=None`, it adds no sharding of its
own, so the caller's placement decides. `cond`
is any pytree: its array leaves whose leading dimension equals the batch size
are sharded along it, all other leaves replicated. A batch that the device
count does not divide is padded up to the next multiple (extra samples get
global indices B, B+1, ...; per-sample `cond` leaves and `x_T` are padded by
repeating their last row / with zeros) and the padding is dropped from the
result, so the B returned samples are the same as on one device.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion_jax import process
from diffusion_jax._checks import ArgumentError
from diffusion_jax.mesh import BATCH_AXES, make_mesh
from diffusion_jax.samplers import (SAMPLERS, Denoised, DenoiseFn, Sampler,
                                    StepInput, ddim_inversion, get_sampler)
from diffusion_jax.schedules import (Process, Schedule, level_at_logsnr, logsnr_timesteps, point,
                                     sampling_schedule)

__all__ = ["SampleOutput", "make_sample_fn", "make_invert_fn", "make_denoise_fn",
           "build_sampler", "sampling_schedule", "logsnr_timesteps", "slerp"]

ModelFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


class SampleOutput(NamedTuple):
  """Returned by `sample_fn` only when a trajectory or x0-predictions are asked for."""
  x0: jax.Array                        # [B, ...] the samples
  trajectory: Optional[jax.Array]      # [K+1, B, ...]: x_T, then x after steps 1..K
  x0_predictions: Optional[jax.Array]  # [len(x0_steps), B, ...]: x̂_0 at those steps


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------


def build_sampler(schedule: Schedule, *, sampler: str = "ddim",
                  num_steps: Optional[int] = None, spacing: Optional[str] = None,
                  timesteps=None, eta: float = 0.0, prediction: str = "eps",
                  variance: str = "fixed_small", clip_x0: Optional[float] = None,
                  dynamic_threshold: Optional[float] = None,
                  sampler_options: Optional[dict] = None) -> tuple[Schedule, Sampler]:
  """The sampling schedule and the `Sampler` of `make_sample_fn`'s settings.

  Every rule of those settings is checked here or in the constructor it
  calls (`sampling_schedule`, `get_sampler`, `process.check_*`), each raising
  a ValueError that names its argument; config validation calls this too.
  `spacing=None` picks the sampler's registered default grid. `eta` is DDIM's:
  a sampler without an η option only accepts eta=0. `schedule` may be a
  continuous `schedules.Process`; `sampler_options` are further keyword
  options of the sampler (e.g. {"s_churn": 10.0} for "edm_heun").
  """
  info = SAMPLERS.get(sampler)
  options = dict(sampler_options or {})
  if info is not None and info.takes_eta:
    options["eta"] = eta
  elif info is not None and eta != 0.0:
    takes = sorted(n for n, s in SAMPLERS.items() if s.takes_eta)
    raise ArgumentError("eta", f"eta={eta!r} is only for samplers {takes}; sampler "
                               f"{sampler!r} takes no eta.")
  if info is not None and "variance" in info.options:
    options["variance"] = variance
  process.check_variance(variance, schedule)
  process.check_thresholds(clip_x0, dynamic_threshold)
  process.check_prediction(prediction, schedule)
  if spacing is None:
    spacing = info.default_spacing if info is not None else "linspace"
  sched = sampling_schedule(schedule, num_steps, spacing=spacing, timesteps=timesteps)
  return sched, get_sampler(sampler, sched, **options)


def make_denoise_fn(model_fn: ModelFn, sched: Schedule, params, cond, *,
                    prediction: str = "eps", variance: str = "fixed_small",
                    clip_x0: Optional[float] = None,
                    dynamic_threshold: Optional[float] = None,
                    noise_process=None) -> DenoiseFn:
  """The samplers' denoiser `denoise(x_t [B, ...], i int32 []) -> Denoised`.

  Calls `model_fn(params, x_t, sched.timesteps[i] as int32 [B], cond)` and
  converts its output with the one adapter `process.denoise_output` at the
  noise level `schedules.point(sched, i)` (dtype cast, variance channels,
  parameterization, `clip_x0`, `dynamic_threshold`).

  On the (VP-form) sampling schedule of a continuous process, t is the float32
  model time and, unless the process is VP, the model receives its own x,
  `sched.scale[i]` times the sampler's. `denoise(x, i, logsnr=λ)` evaluates
  the model at the level λ of `noise_process` (a `schedules.Process`) off the
  grid (`schedules.level_at_logsnr`; EDM's churn); other schedules refuse it.
  """
  timesteps = jnp.asarray(sched.timesteps)  # int32 indices, or float32 model times

  def denoise(x, i, logsnr=None):
    # The step's scalars are gathered once, then broadcast over the batch.
    if logsnr is None:
      t_i, c = timesteps[i], point(sched, i)
      scale = None if sched.scale is None else sched.scale[i]
    else:
      if not isinstance(noise_process, Process):
        raise ArgumentError("logsnr", "Evaluating the model off the sampling grid (e.g. "
                                      "edm_heun's s_churn > 0) needs a continuous-time process "
                                      "(schedules.PROCESSES), not a discrete schedule.")
      c, t_i, scale = level_at_logsnr(noise_process, logsnr)
    t = jnp.full((x.shape[0],), t_i, timesteps.dtype)
    x_in = x if scale is None else (scale * x).astype(x.dtype)
    return process.denoise_output(
        model_fn(params, x_in, t, cond), x, c.alpha, c.sigma,
        prediction=prediction, variance=variance, clip_x0=clip_x0,
        dynamic_threshold=dynamic_threshold)
  return denoise


@jax.jit
def slerp(z0, z1, alpha):
  """Spherical interpolation between two latents, DDIM §5 (Shoemake 1985).

  θ = arccos(⟨z0, z1⟩ / (‖z0‖ ‖z1‖)) over all elements of z0 and z1 (same
  shape, e.g. one image [H, W, C]);
  slerp = sin((1-α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1 (linear when θ ≈ 0).
  `alpha` is a scalar (returns z0's shape) or a 1-D array [N] (returns [N, *z0.shape]).
  """
  z0, z1 = jnp.asarray(z0, jnp.float32), jnp.asarray(z1, jnp.float32)
  if z0.shape != z1.shape:
    raise ValueError(f"z0 and z1 must have one shape, got {z0.shape} and {z1.shape}.")
  alpha = jnp.asarray(alpha, jnp.float32)
  if alpha.ndim > 1:
    raise ValueError(f"alpha must be a scalar or 1-D, got shape {alpha.shape}.")
  cos = jnp.vdot(z0, z1) / (jnp.linalg.norm(z0) * jnp.linalg.norm(z1))
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  a = alpha.reshape(alpha.shape + (1,) * z0.ndim)
  small = theta < 1e-4
  sin_t = jnp.where(small, 1.0, jnp.sin(theta))
  w0 = jnp.where(small, 1.0 - a, jnp.sin((1.0 - a) * theta) / sin_t)
  w1 = jnp.where(small, a, jnp.sin(a * theta) / sin_t)
  return w0 * z0 + w1 * z1


# ----------------------------------------------------------------------------
# Batch layout over devices.
# ----------------------------------------------------------------------------


class _Layout:
  """The batch layout of one chain: sharded over `mesh` (None: left to the
  caller and XLA), padded to a multiple of the mesh size."""

  def __init__(self, batch: int, mesh):
    self.batch, self.mesh = batch, mesh
    self.n = 1 if mesh is None else mesh.size
    self.padded = -(-batch // self.n) * self.n

  def sharding(self, batch_axis: Optional[int] = None):
    spec = P() if batch_axis is None else P(*([None] * batch_axis + [BATCH_AXES]))
    return NamedSharding(self.mesh, spec)

  def place(self, tree, batch_arg=None):
    """Top level only: puts every array leaf on the mesh, replicated, except
    the leaves of `batch_arg` ([B, ...]; an index or a tuple of indices),
    batch-sharded when B divides evenly.
    Explicit transfers, so inputs committed to any device(s) are accepted."""
    if self.mesh is None:
      return tree
    batch_args = batch_arg if isinstance(batch_arg, tuple) else (batch_arg,)
    rep = self.sharding()
    xs = self.sharding(0) if self.padded == self.batch else rep
    put = lambda sharding: lambda a: (_put(a, sharding)
                                      if isinstance(a, (jax.Array, np.ndarray)) else a)
    return tuple(jax.tree_util.tree_map(put(xs if i in batch_args else rep), arg)
                 for i, arg in enumerate(tree))

  def shard(self, x, axis: int = 0):
    if self.mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.sharding(axis))

  def replicate(self, x):
    if self.mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.sharding())

  def pad(self, x, mode: str = "constant"):
    extra = self.padded - self.batch
    if extra == 0:
      return x
    return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), mode=mode)

  def unpad(self, x, axis: int = 0):
    if self.padded == self.batch:
      return self.shard(x, axis)
    return jax.lax.slice_in_dim(x, 0, self.batch, axis=axis)

  def cond(self, cond):
    if self.mesh is None:
      return cond
    def leaf(c):
      if isinstance(c, (jax.Array, np.ndarray)) and c.ndim >= 1 and c.shape[0] == self.batch:
        return self.shard(self.pad(jnp.asarray(c), mode="edge"))
      if isinstance(c, (jax.Array, np.ndarray)):
        return self.replicate(jnp.asarray(c))
      return c
    return jax.tree_util.tree_map(leaf, cond)


def _put(a, sharding):
  """`jax.device_put`, also of this process's arrays onto a mesh that spans
  other processes' devices (through the host; every process passes the same
  values)."""
  if isinstance(a, jax.Array) and (a.sharding == sharding or sharding.is_fully_addressable
                                   or not a.is_fully_addressable):
    return jax.device_put(a, sharding)
  if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
    data = jax.device_put(np.asarray(jax.random.key_data(a)), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
  return jax.device_put(np.asarray(a), sharding)


def _layouts(batch: int, devices):
  """(top-level layout, layout inside a caller's transformation). The first
  shards over `mesh.make_mesh(devices)` (none for one device); the second
  adds no sharding of its own, so that sample_fn composes with the caller's
  jit, vmap, shard_map and pmap and with inputs on any devices. With explicit
  `devices`, both shard over them."""
  mesh = make_mesh(devices)
  top = _Layout(batch, mesh if mesh.size > 1 else None)
  return top, (_Layout(batch, None) if devices is None else top)


def _entry(jitted_top, jitted_inner, top: _Layout, batch_arg):
  """The call of a jitted chain: at top level (concrete arguments) with the
  inputs placed on the mesh; inside a caller's transformation (any traced
  argument) without sharding of its own."""
  def call(*args):
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)):
      return jitted_inner(*args)
    return jitted_top(*top.place(args, batch_arg))
  return call


# ----------------------------------------------------------------------------
# The chain.
# ----------------------------------------------------------------------------


def _as_key(rng):
  """A typed key from a typed key or a legacy uint32 `PRNGKey`."""
  if not hasattr(rng, "dtype"):
    raise ValueError(f"rng must be a JAX PRNG key, got {type(rng).__name__}.")
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if rng.ndim != 0:
      raise ValueError(f"rng must be a single key, got a key array of shape {rng.shape}.")
    return rng
  if rng.dtype != jnp.uint32 or rng.ndim != 1:
    raise ValueError(
        f"rng must be jax.random.key(...) or a legacy jax.random.PRNGKey(...) "
        f"(uint32 [2]); got dtype {rng.dtype} and shape {rng.shape}.")
  return jax.random.wrap_key_data(rng)


def _check_shape(shape) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in shape)
  except TypeError:
    raise ValueError(f"shape must be a tuple (B, ...) of positive ints, got {shape!r}.") from None
  if not shape or any(s < 1 for s in shape):
    raise ValueError(f"shape must be a tuple (B, ...) of positive ints, got {shape!r}.")
  return shape


def _check_x(x, shape, name):
  if not hasattr(x, "shape") or tuple(x.shape) != shape:
    raise ValueError(
        f"{name} must have shape {shape} (the sample_fn's shape), got "
        f"{getattr(x, 'shape', type(x).__name__)}.")
  return jnp.asarray(x, jnp.float32)


# Per-sample noise (module docstring, "Randomness"). Rows of
# jax.random.normal(key_i, (K + 1, *event)) are computed one step at a time:
# element e of row n is Threefry-2x32 of the 64-bit counter n * E + e under
# key_i, the two output words xor-ed, mapped to N(0, 1) as jax.random.normal
# does. Written out in jnp so that XLA fuses it into the step (JAX's own
# lowering is a rolled loop of small kernels on CPU, and a step would also
# derive a key per sample with fold_in first: 3 hashes per element instead
# of 1 for 2-D data). benchmarks/sampling.py measures the alternatives.

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_NORMAL_LOW = np.nextafter(np.float32(-1.0), np.float32(0.0))


def _threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32, 20 rounds (Salmon et al. 2011), of the counters (x0, x1)
  under the key (k0, k1); uint32 arrays, broadcast together. Bit for bit
  `jax.extend.random.threefry_2x32`."""
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in _THREEFRY_ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = jax.lax.shift_left(x1, np.uint32(r)) | jax.lax.shift_right_logical(
          x1, np.uint32(32 - r))
      x1 = x0 ^ x1
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
  return x0, x1


def _normal_from_bits(bits):
  """uint32 bits -> float32 N(0, 1), the map of `jax.random.normal`: a uniform
  in [nextafter(-1, 0), 1) from the 23 mantissa bits, then √2 erfinv."""
  one = jax.lax.bitcast_convert_type(
      jax.lax.shift_right_logical(bits, np.uint32(9)) | np.uint32(0x3F800000), jnp.float32)
  u = jnp.maximum(_NORMAL_LOW, (one - np.float32(1.0)) * (np.float32(1.0) - _NORMAL_LOW)
                  + _NORMAL_LOW)
  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def _mul_wide(a, b: int):
  """(hi, lo) uint32 words of the 64-bit product of uint32 `a` and 0 <= b < 2**32."""
  a = jnp.asarray(a, jnp.uint32)
  b_lo, b_hi = np.uint32(b & 0xFFFF), np.uint32(b >> 16)
  a_lo, a_hi = a & np.uint32(0xFFFF), jax.lax.shift_right_logical(a, np.uint32(16))
  ll, hl, lh, hh = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
  cross = jax.lax.shift_right_logical(ll, np.uint32(16)) + (hl & np.uint32(0xFFFF)) + lh
  hi = (hh + jax.lax.shift_right_logical(hl, np.uint32(16))
        + jax.lax.shift_right_logical(cross, np.uint32(16)))
  lo = jax.lax.shift_left(cross, np.uint32(16)) | (ll & np.uint32(0xFFFF))
  return hi, lo


def _sample_key_words(key, index):
  """uint32 [2, B]: the threefry key words of key_i = fold_in(key, i) for the
  global indices `index` [B]. A key of another implementation is first
  replaced by the threefry key `bits(key, (2,))`, drawn once: vmapped rbg
  draws depend on the position in the batch, which would break the
  batch-split independence."""
  if str(jax.random.key_impl(key)) != "threefry2x32":
    key = jax.random.wrap_key_data(jax.random.bits(key, (2,), jnp.uint32),
                                   impl="threefry2x32")
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  return jax.random.key_data(keys).T


def _step_noise(words, n, event, num_rows: int):
  """Row n (int, may be traced) of jax.random.normal(key_i, (num_rows, *event))
  for every sample's key words [2, B]; float32 [B, *event]."""
  size = math.prod(event)
  if size >= 2**32:
    raise ValueError(f"A sample of {size} elements is too large for the noise counter.")
  e = jnp.arange(size, dtype=jnp.uint32)
  if num_rows * size <= 2**32:      # The counter fits in its low word.
    hi, lo = np.uint32(0), jnp.asarray(n, jnp.uint32) * np.uint32(size) + e
  else:
    base_hi, base_lo = _mul_wide(n, size)
    lo = base_lo + e
    hi = base_hi + (lo < base_lo).astype(jnp.uint32)
  b0, b1 = _threefry2x32(words[0][:, None], words[1][:, None], hi, lo)
  return _normal_from_bits(b0 ^ b1).reshape((words.shape[1],) + tuple(event))


def _run_chain(smp: Sampler, x, indices, steps, denoise: DenoiseFn, noise_fn,
               layout: _Layout, return_trajectory: bool, x0_slots):
  """One lax.scan of `smp.step` over (indices, steps). Returns (x, traj, x0s)."""
  num_x0 = 0 if x0_slots is None else int(x0_slots.max())
  buf = jnp.zeros((num_x0,) + x.shape, x.dtype) if num_x0 else None
  # Everything that does not depend on x is a per-step scan input: the grid
  # index, the step number and the x̂_0 output slot of the step (num_x0, i.e.
  # dropped, for steps not asked for or beyond the lookup table).
  steps_np = np.asarray(steps)
  if x0_slots is None:
    slots = np.zeros_like(steps_np)
  else:
    table = np.asarray(x0_slots)
    slots = np.where(steps_np < len(table), table[np.minimum(steps_np, len(table) - 1)],
                     num_x0)

  def body(carry, inp):
    state, buf = carry
    i, n, slot = inp
    noise = noise_fn(n) if smp.stochastic else None
    state, x0 = smp.step(state, StepInput(index=i, step=n, noise=noise), denoise)
    state = state._replace(x=layout.shard(state.x))
    if buf is not None:  # Writes to slot num_x0 (steps not asked for) are dropped.
      buf = buf.at[slot].set(x0.astype(buf.dtype), mode="drop")
    return (state, buf), (state.x if return_trajectory else None)

  xs = tuple(jnp.asarray(a, jnp.int32) for a in (indices, steps, slots))
  (state, buf), traj = jax.lax.scan(body, (smp.init(x), buf), xs)
  if return_trajectory:
    traj = jnp.concatenate([x[None], traj])
  return state.x, traj, buf


def _x0_slots(x0_steps, K):
  """[K+1] int32 lookup step n → output slot (len(x0_steps) for steps not asked)."""
  steps = tuple(x0_steps)
  if not steps:
    return None
  bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, (int, np.integer))
         or not 1 <= s <= K]
  if bad or len(set(steps)) != len(steps):
    raise ValueError(
        f"x0_steps must be distinct integers in [1, {K}] (step numbers), got {steps!r}.")
  slots = np.full((K + 1,), len(steps), np.int32)
  slots[np.asarray(steps)] = np.arange(len(steps))
  return slots


def _finish(layout, x, traj, x0s):
  x = layout.unpad(x)
  if traj is None and x0s is None:
    return x
  return SampleOutput(x0=x,
                      trajectory=None if traj is None else layout.unpad(traj, axis=1),
                      x0_predictions=None if x0s is None else layout.unpad(x0s, axis=1))


# ----------------------------------------------------------------------------
# Public entry points.
# ----------------------------------------------------------------------------


def make_sample_fn(model_fn: ModelFn, schedule: Schedule, *, shape: Sequence[int],
                   sampler: str = "ddim", num_steps: Optional[int] = None,
                   spacing: Optional[str] = None, timesteps=None, eta: float = 0.0,
                   prediction: str = "eps", variance: str = "fixed_small",
                   clip_x0: Optional[float] = None,
                   dynamic_threshold: Optional[float] = None,
                   return_trajectory: bool = False, x0_steps: Sequence[int] = (),
                   devices: Optional[Sequence[Any]] = None,
                   sampler_options: Optional[dict] = None):
  """Builds `sample_fn(params, rng, *, x_T=None, cond=None) -> x0`, jit-compiled.

  Args:
    model_fn: `model_fn(params, x_t, t, cond) -> output`, any pure function;
      x_t float32 [B, ...], t int32 [B] training timestep indices; output of
      x_t's shape ([..., 2C] for the learned variances), any float dtype.
    schedule: the training `Schedule` (T entries), or a continuous-time
      `schedules.Process` (then t is the float32 model time, num_steps or
      timesteps are required, and x_T, the trajectory and the sampler's state
      are in the VP form x/√(α² + σ²): x_T ~ N(0, I) whatever the process).
    shape: (B, ...) of the samples: images [B, H, W, C] or vectors [B, D].
    sampler: a name in the registry `samplers.SAMPLERS`.
    num_steps: K in [1, T]; None = T.
    spacing: the time grid, a name in `schedules.TIME_GRIDS`; None picks the
      sampler's registered default (`SAMPLERS[sampler].default_spacing`).
    timesteps: explicit increasing grid indices into `schedule` instead.
    eta: DDIM's η in [0, 1] (samplers taking `eta` only; must be 0 otherwise).
    prediction: "eps" | "x0" | "v", what the model predicts.
    variance: one of `process.VARIANCES`; used by "ddpm", and by every sampler
      to split the variance channels off a learned-variance model's output.
    clip_x0, dynamic_threshold: x̂_0 clipping (see `process.threshold_x0`).
    return_trajectory: static; also return x at every step, [K+1, B, ...].
    x0_steps: static step numbers n in [1, K] whose x̂_0 to return, [M, B, ...].
    devices: the devices to shard the batch over (None: all of them; one
      device: no sharding). A batch they do not divide is padded (module docstring).
    sampler_options: further keyword options of the sampler, e.g. EDM's churn
      {"s_churn": 40.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}.
  Returns:
    `sample_fn(params, rng, *, x_T=None, cond=None, first_index=0)`, a thin
    keyword wrapper over the jitted `sample_fn.jitted(params, rng, x_T, cond,
    first_index)` (which has `.lower(...)` for ahead-of-time compilation).
    `rng` is a typed key (`jax.random.key`) or a legacy `PRNGKey` (same samples
    for the same seed); `x_T` [B, ...], N(0, I)-scaled, replaces the drawn
    prior noise; `cond` is passed to `model_fn` untouched (any pytree);
    `first_index` (an int, may be traced: no recompilation) is the global
    index of the first sample (module docstring). It returns x0 float32
    [B, ...], or a `SampleOutput` when a trajectory or x0-predictions are asked.
  Raises:
    ValueError for an unknown sampler (listing the registry), num_steps out of
    range, eta outside [0, 1], bad settings, and (when called) an x_T of the
    wrong shape.
  """
  return _make_chain_fn(
      model_fn, schedule, shape=shape, sampler=sampler, num_steps=num_steps,
      spacing=spacing, timesteps=timesteps, eta=eta, prediction=prediction,
      variance=variance, clip_x0=clip_x0, dynamic_threshold=dynamic_threshold,
      return_trajectory=return_trajectory, x0_steps=x0_steps, devices=devices,
      sampler_options=sampler_options)


class ChainProgram(NamedTuple):
  """A chain other than plain sampling, run by the same engine (`editing.py`:
  inpainting, SDEdit). Built from the sampling schedule by `program(sched)`.

  The scan runs over the static elements n = 1..L: element n gets
  `StepInput(index=indices[n-1], step=steps[n-1], noise)` with its own noise,
  row steps[n-1] of the sample's noise (module docstring, "Randomness"), so
  the wrapped sampler may look its static program up by the step number.
  """
  indices: np.ndarray   # int [L]: StepInput.index of each scan element
  steps: np.ndarray     # int [L]: distinct step numbers >= 1 (the noise of each element)
  start: Callable       # (x_prior [B, ...], data) -> initial x; x_prior: x_T or the N(0, I) draw
  wrap: Callable        # (sampler, data) -> the Sampler that the scan steps


def _make_chain_fn(model_fn: ModelFn, schedule: Schedule, *, shape, sampler, num_steps,
                   spacing, timesteps, eta, prediction, variance, clip_x0,
                   dynamic_threshold, return_trajectory, x0_steps, devices,
                   program: Optional[Callable[[Schedule], ChainProgram]] = None,
                   sampler_options: Optional[dict] = None):
  """`make_sample_fn`, and with `program` an editing chain: the returned
  function also has `.call(params, rng, x_T, cond, first_index, data)`, whose
  `data` (a pytree of [B, ...] arrays, padded and batch-sharded like x_T)
  reaches the program's `start` and `wrap`."""
  shape = _check_shape(shape)
  sched, smp = build_sampler(
      schedule, sampler=sampler, num_steps=num_steps, spacing=spacing, timesteps=timesteps,
      eta=eta, prediction=prediction, variance=variance, clip_x0=clip_x0,
      dynamic_threshold=dynamic_threshold, sampler_options=sampler_options)
  K = sched.num_timesteps
  slots = _x0_slots(x0_steps, K)
  indices, steps = np.arange(K - 1, -1, -1), np.arange(1, K + 1)
  prog = None if program is None else program(sched)
  if prog is not None:
    indices, steps = prog.indices, prog.steps
  num_rows = int(np.max(steps)) + 1  # Noise rows 0..max step (K + 1 for plain sampling).
  event = shape[1:]

  def sample(layout, params, rng, x_T, cond, first_index, data=None):
    key = _as_key(rng)
    index = jnp.asarray(first_index, jnp.uint32) + jnp.arange(layout.padded, dtype=jnp.uint32)
    words = layout.shard(_sample_key_words(key, index), axis=1)
    draw = lambda n: layout.shard(_step_noise(words, n, event, num_rows))
    x = draw(0) if x_T is None else layout.shard(layout.pad(_check_x(x_T, shape, "x_T")))
    denoise = make_denoise_fn(model_fn, sched, params, layout.cond(cond),
                              prediction=prediction, variance=variance,
                              clip_x0=clip_x0, dynamic_threshold=dynamic_threshold,
                              noise_process=schedule)
    chain = smp
    if prog is not None:  # An editing chain: its start from x_T and its sampler wrapper.
      data = jax.tree_util.tree_map(
          lambda a: layout.shard(layout.pad(jnp.asarray(a, jnp.float32))), data)
      x, chain = prog.start(x, data), prog.wrap(smp, data)
    x, traj, x0s = _run_chain(chain, x, indices, steps, denoise, draw, layout,
                              return_trajectory, slots)
    return _finish(layout, x, traj, x0s)

  top, inner = _layouts(shape[0], devices)
  jitted = jax.jit(functools.partial(sample, top))
  call = _entry(jitted, jax.jit(functools.partial(sample, inner)), top, batch_arg=(2, 5))

  def sample_fn(params, rng, *, x_T=None, cond=None, first_index=0):
    return call(params, rng, x_T, cond, first_index)

  # Positional (params, rng, x_T, cond, first_index); has .lower(...) (top level).
  sample_fn.jitted = jitted
  sample_fn.call = call  # Positional (params, rng, x_T, cond, first_index, data).
  return sample_fn


def make_invert_fn(model_fn: ModelFn, schedule: Schedule, *, shape: Sequence[int],
                   num_steps: Optional[int] = None, spacing: str = "linspace",
                   timesteps=None, prediction: str = "eps",
                   variance: str = "fixed_small", clip_x0: Optional[float] = None,
                   dynamic_threshold: Optional[float] = None,
                   return_trajectory: bool = False,
                   devices: Optional[Sequence[Any]] = None):
  """Builds a jitted DDIM inversion `invert_fn(params, x0, *, cond=None) -> x_T`.

  Deterministic encoding x_0 → x_T (DDIM §4.3 / §5) over the same grid that
  `make_sample_fn(..., sampler="ddim", eta=0)` with the same (num_steps,
  spacing, timesteps) uses, so that sampling from the returned x_T
  regenerates x0 up to the discretization error. One `lax.scan`, K model calls.
  Arguments as in `make_sample_fn`; with `return_trajectory` it returns a
  `SampleOutput` whose `x0` field holds x_T and `trajectory` [K+1, B, ...]
  runs from the data to x_T.
  """
  shape = _check_shape(shape)
  sched, _ = build_sampler(
      schedule, sampler="ddim", num_steps=num_steps, spacing=spacing, timesteps=timesteps,
      prediction=prediction, variance=variance, clip_x0=clip_x0,
      dynamic_threshold=dynamic_threshold)
  smp = ddim_inversion(sched)
  K = sched.num_timesteps
  indices, steps = np.arange(K), np.arange(1, K + 1)

  def invert(layout, params, x0, cond):
    x = layout.shard(layout.pad(_check_x(x0, shape, "x0")))
    denoise = make_denoise_fn(model_fn, sched, params, layout.cond(cond),
                              prediction=prediction, variance=variance,
                              clip_x0=clip_x0, dynamic_threshold=dynamic_threshold,
                              noise_process=schedule)
    x, traj, _ = _run_chain(smp, x, indices, steps, denoise, None, layout,
                            return_trajectory, None)
    return _finish(layout, x, traj, None)

  top, inner = _layouts(shape[0], devices)
  jitted = jax.jit(functools.partial(invert, top))
  call = _entry(jitted, jax.jit(functools.partial(invert, inner)), top, batch_arg=1)

  def invert_fn(params, x0, *, cond=None):
    return call(params, x0, cond)

  invert_fn.jitted = jitted  # Positional (params, x0, cond); has .lower(...) (top level).
  return invert_fn
