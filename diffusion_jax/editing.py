"""Editing with a diffusion model: inpainting, SDEdit, and edits through DDIM inversion.

Each entry point builds a jitted function in the style of `make_sample_fn`,
for any `model_fn(params, x_t, t, cond)` (the project's networks, an analytic
model, a guided model_fn from `guidance.py`) and every registered sampler:

    inpaint_fn = dj.make_inpaint_fn(model_fn, schedule, shape=(16, 8, 8, 1), sampler="ddpm",
                                    num_steps=50, method="repaint", jump_length=10,
                                    jump_n_sample=10)
    x = inpaint_fn(params, rng, x_known, mask)        # mask: 1 = known, [8, 8, 1] or [16, 8, 8, 1]
    sdedit_fn = dj.make_sdedit_fn(model_fn, schedule, shape=(16, 8, 8, 1), strength=0.5)
    x = sdedit_fn(params, rng, x_input)
    relabel_fn = dj.make_relabel_fn(guided_fn, schedule, shape=(16, 8, 8, 1), num_steps=50)
    x = relabel_fn(params, x_input, source_cond={"label": y}, target_cond={"label": y2, ...})

Why separate `make_*_fn` builders and not more `sample_fn` arguments: an edit
changes what is static about the chain (RePaint's resampling schedule, SDEdit's
truncated grid) and what a call needs (the known pixels and the mask, the input
image), so each gets its own builder with its own required arguments and checks,
while the chain itself is the sampling engine's: `sampling.ChainProgram` gives
the engine a static sequence of scan elements, the start of the chain and a
wrapper around the registered sampler; per-sample keys from global indices
(`first_index`), the one `lax.scan`, the sharding over devices, the composition
with the caller's jit/vmap, and guidance through model_fn wrappers are the
engine's, exactly as for `make_sample_fn`.

Inpainting (known pixels `x_known`, `mask` = 1 where known). The chain is a
static program of three kinds of scan elements on the sampling grid
(positions K-1 .. 0, and -1 = clean data):

  * denoise (position i -> i-1): one step of the wrapped sampler;
  * replace (position i): the known region becomes a fresh draw of
    q(x_i | x_known) = N(α_i x_known, σ_i² I) (DDPM Eq. (4)); at i = -1 it is
    x_known itself, so the result equals x_known exactly where mask = 1;
  * jump (position i -> i + j): re-noising with q(x_{i+j} | x_i) =
    N(√(ᾱ_{i+j}/ᾱ_i) x_i, (1 - ᾱ_{i+j}/ᾱ_i) I), after which the wrapped
    sampler restarts (its `init`, and step numbers from 1), so multistep
    samplers drop a history that belongs to the other side of the jump.

"replace" is every denoise step followed by a replacement (the "replacement"
method of Song et al. 2021, score SDE App. I.2; Lugmayr et al. 2022, Eq. (8)).
"repaint" is RePaint (Lugmayr et al. 2022, Alg. 1 and §4.2): after reaching
positions 0, j, 2j, ... < K - j on the way down, the chain jumps back j grid
points, `jump_n_sample - 1` times each, as `get_schedule_jump` of the
authors' code (`repaint_schedule`); jump_n_sample = 1 is "replace". Each
element draws its own noise (a row of the sample's noise, as the steps of
`make_sample_fn` do), so samples stay independent of the batch split.

Neither method samples the exact conditional p(x_unknown | x_known): both
condition the unknown region only through the noisy known region. On
Gaussian data (tests/test_editing.py, float64 moments of the whole chain)
replacement keeps a large part of the prior, and RePaint's resampling removes
much of that bias, but not all: at a fixed grid its error stops falling as
jump_n_sample grows, and it shrinks only with finer grids and more
resampling together.

SDEdit (Meng et al. 2022, Alg. 1): the input is noised with q(x_t | x_input)
to the training index t = round(strength · T) - 1 and the chain runs from
there on the sampler's time grid over [0, t] with ceil(strength · K) steps.
strength = 1 starts from q(x_{T-1} | x_input), which differs from the prior
N(0, I) by √ᾱ_{T-1} (4.5e-5 for the cosine schedule; 0 with zero terminal
SNR, where it equals `make_sample_fn` bit for bit); as strength -> 0 the result
tends to the input (one step from t = 0).

Inversion (DDIM §4.3, §5): `make_relabel_fn` encodes images with
`sampling.make_invert_fn` under `source_cond` and decodes them with
deterministic DDIM under `target_cond` on the same grid (same cond: a round
trip up to discretization error); `make_interpolate_fn` decodes the spherical
interpolation (`sampling.slerp`) between two encoded images.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import ArgumentError, check_choice, check_int, check_number, is_concrete
from diffusion_jax.samplers import SAMPLERS, Sampler, StepInput
from diffusion_jax.sampling import (ChainProgram, ModelFn, _make_chain_fn, make_invert_fn,
                                    make_sample_fn, slerp)
from diffusion_jax.schedules import Schedule, grid_timesteps, point, respace

__all__ = ["INPAINT_METHODS", "repaint_schedule", "inpaint_program", "make_inpaint_fn",
           "sdedit_timesteps", "make_sdedit_fn", "make_relabel_fn", "make_interpolate_fn"]

# The inpainting methods, by name: (K, jump_length, jump_n_sample) -> positions.
INPAINT_METHODS = {
    "replace": lambda K, jump_length, jump_n_sample: repaint_schedule(K, 1, 1),
    "repaint": lambda K, jump_length, jump_n_sample: repaint_schedule(
        K, jump_length, jump_n_sample),
}

DENOISE, REPLACE, JUMP = 0, 1, 2  # The kinds of the program's scan elements.


# ----------------------------------------------------------------------------
# Inpainting.
# ----------------------------------------------------------------------------


def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> np.ndarray:
  """The positions RePaint visits on a K-point grid (Lugmayr et al. 2022, §4.2).

  `get_schedule_jump` of the authors' code in grid positions: from K-1 down
  to -1 (clean data), and after reaching each position p in 0, j, 2j, ... < K - j
  (j = `jump_length`) a jump back to p + j, `jump_n_sample - 1` times.
  Returns int64 [L + 1]; consecutive positions differ by -1 (a denoising
  step) or +j (a jump). jump_n_sample = 1 gives K-1, K-2, ..., -1.
  """
  K = check_int("num_steps", num_steps, 1)
  n_sample = check_int("jump_n_sample", jump_n_sample, 1)
  if n_sample > 1:
    check_int("jump_length", jump_length, 1, K - 1)
  jumps = {p: n_sample - 1 for p in range(0, K - jump_length, jump_length)} if n_sample > 1 else {}
  p, out = K - 1, [K - 1]
  while p >= 0:
    p -= 1
    out.append(p)
    if jumps.get(p, 0) > 0:
      jumps[p] -= 1
      p += jump_length
      out.append(p)
  return np.asarray(out, np.int64)


class InpaintProgram(NamedTuple):
  """The static scan elements of an inpainting chain (module docstring)."""
  kinds: np.ndarray   # int32 [L]: DENOISE, REPLACE or JUMP
  frm: np.ndarray     # int32 [L]: the position the element starts from (REPLACE: where it acts)
  to: np.ndarray      # int32 [L]: the position it ends at


def inpaint_program(positions) -> InpaintProgram:
  """The scan elements of a walk over grid positions (`repaint_schedule`):
  a denoising step and a replacement per step down, a jump per step up."""
  kinds, frm, to = [], [], []
  for a, b in zip(positions[:-1], positions[1:]):
    if b == a - 1:
      kinds += [DENOISE, REPLACE]
      frm += [a, b]
      to += [b, b]
    elif b > a:
      kinds.append(JUMP)
      frm.append(a)
      to.append(b)
    else:
      raise ArgumentError("positions", f"positions must step by -1 or jump up, got {a} -> {b}.")
  as32 = lambda v: np.asarray(v, np.int32)
  return InpaintProgram(as32(kinds), as32(frm), as32(to))


def _jump_coefficients(sched, prog: InpaintProgram):
  """float32 [L] (√r, √(1-r)) of each jump, r = ᾱ_to/ᾱ_frm, in float64 from
  the grid points' λ = log(α/σ) (`schedules.point`): log ᾱ = -softplus(-2λ), so
  1 - r = -expm1(log r) keeps its digits between two ᾱ ≈ 1; zeros for the
  other elements."""
  jump = prog.kinds == JUMP
  lam = lambda i: np.asarray(point(sched, jnp.asarray(i, jnp.int32)).logsnr, np.float64)
  log_abar = lambda i: -np.logaddexp(0.0, -2.0 * lam(i))
  log_r = np.where(jump, log_abar(prog.to) - log_abar(np.where(jump, prog.frm, 0)), 0.0)
  scale = np.where(jump, np.exp(0.5 * log_r), 0.0)
  std = np.where(jump, np.sqrt(-np.expm1(log_r)), 0.0)
  return scale.astype(np.float32), std.astype(np.float32)


class InpaintState(NamedTuple):
  """The state of the inpainting wrapper around a sampler."""
  x: jax.Array      # [B, ...] float32, the current sample
  inner: Any        # the wrapped sampler's state (its field x equals x)
  since: jax.Array  # int32 [], the wrapped sampler's step number: 1 after each (re)start


def _like(new, old):
  """`new` with the dtypes of `old` (a pytree of the same structure)."""
  return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a).astype(b.dtype), new, old)


def inpaint_sampler(base: Sampler, sched: Schedule, prog: InpaintProgram, x_known,
                    mask, jump_coefficients=None) -> Sampler:
  """Wraps `base` (built on `sched`) to run the inpainting program `prog`.

  Its `step` looks element n = StepInput.step of the program up (kind and
  positions), so the engine scans over n = 1..L. x_known and mask: [B, ...]
  float32 (mask 1 = known). `jump_coefficients`: `_jump_coefficients(sched,
  prog)`, computed outside any trace (None: here). Always stochastic:
  replacements and jumps draw noise.
  """
  kinds, frm, to = (jnp.asarray(a) for a in prog)
  if jump_coefficients is None:
    jump_coefficients = _jump_coefficients(sched, prog)
  scale, std = (jnp.asarray(a) for a in jump_coefficients)

  def init(x):
    return InpaintState(x=x, inner=base.init(x), since=jnp.ones((), jnp.int32))

  def step(state: InpaintState, inp: StepInput, denoise):
    e = inp.step - 1

    def denoise_step(_):
      noise = inp.noise if base.stochastic else None
      inner, x0 = base.step(state.inner, StepInput(index=frm[e], step=state.since, noise=noise),
                            denoise)
      inner = _like(inner, state.inner)
      return InpaintState(inner.x, inner, state.since + 1), x0.astype(state.x.dtype)

    def replace(_):
      c = point(sched, frm[e])
      x = mask * (c.alpha * x_known + c.sigma * inp.noise) + (1.0 - mask) * state.x
      x = x.astype(state.x.dtype)
      return InpaintState(x, state.inner._replace(x=x), state.since), state.x

    def jump(_):
      x = (scale[e] * state.x + std[e] * inp.noise).astype(state.x.dtype)
      return InpaintState(x, _like(base.init(x), state.inner), jnp.ones((), jnp.int32)), state.x

    return jax.lax.switch(kinds[e], (denoise_step, replace, jump), None)

  return Sampler(init=init, step=step, stochastic=True)


def _check_batch_array(name: str, a, shape) -> jax.Array:
  if not hasattr(a, "shape") or tuple(a.shape) != tuple(shape):
    raise ArgumentError(name, f"{name} must have shape {tuple(shape)} (the function's shape), "
                              f"got {getattr(a, 'shape', type(a).__name__)}.")
  return jnp.asarray(a, jnp.float32)


def _check_mask(mask, shape) -> jax.Array:
  """mask broadcast to [B, ...] float32; concrete values must lie in [0, 1]."""
  if not hasattr(mask, "shape"):
    mask = np.asarray(mask)
  try:
    out = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), shape)
  except ValueError:
    raise ArgumentError("mask", f"mask of shape {tuple(mask.shape)} does not broadcast to the "
                                f"samples' shape {tuple(shape)}; give [{', '.join(map(str, shape[1:]))}] "
                                f"or {list(shape)}.") from None
  if is_concrete(mask):
    m = np.asarray(mask, np.float32)
    if m.size and (not np.all(np.isfinite(m)) or m.min() < 0.0 or m.max() > 1.0):
      raise ArgumentError("mask", "mask must hold values in [0, 1] (1 = known pixel, 0 = to "
                                  f"generate), got values in [{m.min()}, {m.max()}].")
  return out


def make_inpaint_fn(model_fn: ModelFn, schedule: Schedule, *, shape: Sequence[int],
                    method: str = "repaint", jump_length: int = 10, jump_n_sample: int = 10,
                    sampler: str = "ddpm", num_steps: Optional[int] = None,
                    spacing: Optional[str] = None, timesteps=None, eta: float = 0.0,
                    prediction: str = "eps", variance: str = "fixed_small",
                    clip_x0: Optional[float] = None, dynamic_threshold: Optional[float] = None,
                    return_trajectory: bool = False,
                    devices: Optional[Sequence[Any]] = None,
                    sampler_options: Optional[dict] = None):
  """Builds `inpaint_fn(params, rng, x_known, mask, *, cond=None, x_T=None, first_index=0)`.

  Args:
    model_fn, schedule, shape, sampler, num_steps, spacing, timesteps, eta,
      prediction, variance, clip_x0, dynamic_threshold, devices, sampler_options:
      as in `sampling.make_sample_fn` (any registered sampler; the grid has K points).
    method: a name in `INPAINT_METHODS`: "replace" or "repaint" (module docstring).
    jump_length: RePaint's j, in grid points, in [1, K-1] ("repaint" only).
    jump_n_sample: how often RePaint traverses each resampled segment (the
      paper's r; 1 = no resampling, i.e. "replace"). The chain makes about
      K + (jump_n_sample - 1) · K denoising steps (fewer near the start).
    return_trajectory: also return x after every scan element (denoising
      steps, replacements and jumps), [L+1, B, ...].
  Returns:
    `inpaint_fn`: `x_known` [B, ...] holds the known values (any values where
    mask = 0); `mask` is [B, ...] or broadcasts to it (e.g. [H, W, 1]), 1 =
    known, 0 = to generate; `cond`, `x_T` and `first_index` as for
    `sample_fn`. Returns float32 [B, ...] equal to x_known where mask = 1 (or
    a `SampleOutput` with the trajectory). `.jitted` / `.call` as `sample_fn`'s.
  Raises:
    ValueError (`_checks.ArgumentError`) naming the argument.
  """
  check_choice("method", method, INPAINT_METHODS, "inpainting methods")
  shape = tuple(int(s) for s in shape)

  def program(sched: Schedule) -> ChainProgram:
    positions = INPAINT_METHODS[method](sched.num_timesteps, jump_length, jump_n_sample)
    prog = inpaint_program(positions)
    top = point(sched, sched.num_timesteps - 1)

    def start(x_prior, data):  # The known region of x_T: q(x_T | x_known), from x_T's noise.
      x_known, mask = data
      return mask * (top.alpha * x_known + top.sigma * x_prior) + (1.0 - mask) * x_prior

    coefficients = _jump_coefficients(sched, prog)   # float64, before any trace
    wrap = lambda smp, data: inpaint_sampler(smp, sched, prog, *data, coefficients)
    return ChainProgram(indices=prog.frm, steps=np.arange(1, prog.kinds.size + 1),
                        start=start, wrap=wrap)

  fn = _make_chain_fn(
      model_fn, schedule, shape=shape, sampler=sampler, num_steps=num_steps, spacing=spacing,
      timesteps=timesteps, eta=eta, prediction=prediction, variance=variance,
      clip_x0=clip_x0, dynamic_threshold=dynamic_threshold,
      return_trajectory=return_trajectory, x0_steps=(), devices=devices, program=program,
      sampler_options=sampler_options)

  def inpaint_fn(params, rng, x_known, mask, *, cond=None, x_T=None, first_index=0):
    data = (_check_batch_array("x_known", x_known, shape), _check_mask(mask, shape))
    return fn.call(params, rng, x_T, cond, first_index, data)

  inpaint_fn.jitted, inpaint_fn.call = fn.jitted, fn.call
  return inpaint_fn


# ----------------------------------------------------------------------------
# SDEdit.
# ----------------------------------------------------------------------------


def sdedit_timesteps(schedule: Schedule, strength: float, *, num_steps: Optional[int] = None,
                     spacing: str = "linspace", timesteps=None) -> np.ndarray:
  """The increasing grid (training indices) of SDEdit at `strength` in (0, 1].

  The chain starts at t = round(strength · T) - 1 (at least 0): with
  `timesteps`, their points <= t; otherwise the `spacing` grid (a name in
  `schedules.TIME_GRIDS`) over [0, t] with ceil(strength · K) points (K =
  `num_steps`, None = T), at most t + 1. At strength 1 this is the sampler's
  full grid.
  """
  s = check_number("strength", strength, 0.0, 1.0, low_open=True)
  T = schedule.num_timesteps
  t_start = max(int(round(s * T)) - 1, 0)
  if timesteps is not None:
    ts = np.asarray(timesteps)
    kept = ts[ts <= t_start]
    if kept.size == 0:
      raise ArgumentError("strength", f"strength={strength!r} starts at t={t_start}, below the "
                                      f"first of the timesteps ({int(ts.min())}).")
    return kept.astype(np.int64)
  K = T if num_steps is None else check_int("num_steps", num_steps, 1, T)
  k = min(max(1, math.ceil(s * K - 1e-9)), t_start + 1)
  prefix = schedule if t_start == T - 1 else respace(schedule, np.arange(t_start + 1))
  return np.asarray(grid_timesteps(prefix, k, spacing), np.int64)


def make_sdedit_fn(model_fn: ModelFn, schedule: Schedule, *, shape: Sequence[int],
                   strength: float, sampler: str = "ddim", num_steps: Optional[int] = None,
                   spacing: Optional[str] = None, timesteps=None, eta: float = 0.0,
                   prediction: str = "eps", variance: str = "fixed_small",
                   clip_x0: Optional[float] = None, dynamic_threshold: Optional[float] = None,
                   return_trajectory: bool = False,
                   devices: Optional[Sequence[Any]] = None,
                   sampler_options: Optional[dict] = None):
  """Builds `sdedit_fn(params, rng, x, *, cond=None, noise=None, first_index=0)`.

  SDEdit (Meng et al. 2022): x [B, ...] is noised to x_t = α_t x + σ_t z at the
  first point t of `sdedit_timesteps(schedule, strength, ...)` and sampled
  from there with `sampler` on that grid. `strength` in (0, 1] is static (a
  new strength is a new grid: it compiles again). `noise` [B, ...] replaces
  the drawn z (which is the prior draw of `make_sample_fn`: with zero terminal
  SNR and strength 1 the two agree bit for bit). Other arguments as in
  `make_sample_fn`; spacing=None picks the sampler's default grid.
  """
  info = SAMPLERS.get(sampler)
  if spacing is None:
    spacing = info.default_spacing if info is not None else "linspace"
  grid = sdedit_timesteps(schedule, strength, num_steps=num_steps, spacing=spacing,
                          timesteps=timesteps)
  shape = tuple(int(s) for s in shape)

  def program(sched: Schedule) -> ChainProgram:
    K = sched.num_timesteps
    top = point(sched, K - 1)
    return ChainProgram(indices=np.arange(K - 1, -1, -1), steps=np.arange(1, K + 1),
                        start=lambda z, x: top.alpha * x + top.sigma * z,
                        wrap=lambda smp, x: smp)

  fn = _make_chain_fn(
      model_fn, schedule, shape=shape, sampler=sampler, num_steps=None, spacing=spacing,
      timesteps=grid, eta=eta, prediction=prediction, variance=variance, clip_x0=clip_x0,
      dynamic_threshold=dynamic_threshold, return_trajectory=return_trajectory, x0_steps=(),
      devices=devices, program=program, sampler_options=sampler_options)

  def sdedit_fn(params, rng, x, *, cond=None, noise=None, first_index=0):
    return fn.call(params, rng, noise, cond, first_index, _check_batch_array("x", x, shape))

  sdedit_fn.jitted, sdedit_fn.call, sdedit_fn.timesteps = fn.jitted, fn.call, grid
  return sdedit_fn


# ----------------------------------------------------------------------------
# Edits through DDIM inversion.
# ----------------------------------------------------------------------------


def make_relabel_fn(model_fn: ModelFn, schedule: Schedule, *, shape: Sequence[int],
                    num_steps: Optional[int] = None, spacing: str = "linspace",
                    timesteps=None, prediction: str = "eps", variance: str = "fixed_small",
                    devices: Optional[Sequence[Any]] = None):
  """Builds `relabel_fn(params, x, *, source_cond=None, target_cond=None) -> x'`.

  DDIM inversion of x [B, ...] under `source_cond` (`sampling.make_invert_fn`),
  then deterministic DDIM (η = 0) from the latents under `target_cond`, on one
  grid (DDIM §4.3, §5). With a class-conditional model wrapped by
  `guidance.classifier_free_guidance`, source_cond = {"label": y,
  "guidance_scale": 1} and target_cond = {"label": y', "guidance_scale": w}
  redraw each image as class y' (inversion is most faithful at w = 1, null-text
  inversion's observation). Equal conds give back x up to the discretization
  error of the grid. No clipping of x̂_0 (it would break the inversion).
  """
  kw = dict(shape=shape, num_steps=num_steps, spacing=spacing, timesteps=timesteps,
            prediction=prediction, variance=variance, devices=devices)
  invert_fn = make_invert_fn(model_fn, schedule, **kw)
  sample_fn = make_sample_fn(model_fn, schedule, sampler="ddim", eta=0.0, **kw)
  key = jax.random.key(0)  # Deterministic DDIM draws no noise.

  def relabel_fn(params, x, *, source_cond=None, target_cond=None):
    return sample_fn(params, key, x_T=invert_fn(params, x, cond=source_cond), cond=target_cond)

  return relabel_fn


def make_interpolate_fn(model_fn: ModelFn, schedule: Schedule, *, num_points: int,
                        event_shape: Sequence[int], num_steps: Optional[int] = None,
                        spacing: str = "linspace", timesteps=None, prediction: str = "eps",
                        variance: str = "fixed_small",
                        devices: Optional[Sequence[Any]] = None):
  """Builds `interpolate_fn(params, pair, *, pair_cond=None, cond=None) -> [N, ...]`.

  DDIM §5: the two images of `pair` [2, *event_shape] are inverted (under
  `pair_cond`, batched [2]), their latents interpolated with `sampling.slerp`
  at α = 0, 1/(N-1), ..., 1 (N = `num_points` >= 2), and decoded with
  deterministic DDIM (under `cond`, batched [N]). The end points give back the
  two images up to the discretization error of the grid.
  """
  n = check_int("num_points", num_points, 2)
  event = tuple(int(s) for s in event_shape)
  kw = dict(num_steps=num_steps, spacing=spacing, timesteps=timesteps,
            prediction=prediction, variance=variance, devices=devices)
  invert_fn = make_invert_fn(model_fn, schedule, shape=(2,) + event, **kw)
  sample_fn = make_sample_fn(model_fn, schedule, shape=(n,) + event, sampler="ddim",
                             eta=0.0, **kw)
  alphas = jnp.linspace(0.0, 1.0, n)
  key = jax.random.key(0)

  def interpolate_fn(params, pair, *, pair_cond=None, cond=None):
    z = invert_fn(params, pair, cond=pair_cond)
    return sample_fn(params, key, x_T=slerp(z[0], z[1], alphas), cond=cond)

  return interpolate_fn
