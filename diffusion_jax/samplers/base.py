"""The sampler protocol and the one registry of sampler names.

A sampler is an optax/diffrax-style pair of pure functions over a fixed-shape
NamedTuple state, so that the whole chain is one `jax.lax.scan`:

    sampler = get_sampler("ddim", sched, eta=0.0)   # sched: the *sampling* schedule
    state = sampler.init(x_T)                       # x_T [B, ...] float32
    for n, i in enumerate(reversed(range(K)), 1):   # (in practice: lax.scan)
      state, x0_hat = sampler.step(state, StepInput(i, n, noise), denoise)
    x0 = state.x

* The *sampling schedule* has one entry per step: for K steps over a training
  schedule it is `schedules.respace(schedule, make_timesteps(T, K, spacing))`,
  so entry i holds ᾱ of the i-th grid point and `alphas_cumprod_prev[i]` that of
  the next, less noisy one (1 after the last). `sched.timesteps[i]` is the
  training index that the model receives.
* `denoise(x_t, i) -> Denoised` wraps the model, the parameterization, the
  clipping and the dtype cast (built once by `sampling.make_denoise_fn`), so
  every sampler gets them for free. It is the only place the model is called.
* The engine, not the sampler, draws the noise: `StepInput.noise` is N(0, I) of
  x's shape when `sampler.stochastic`, else None. Samplers never touch keys.
* Every state has a field `x` [B, ...] holding the current sample.

Samplers never call `jax.jit`; `sampling.make_sample_fn` jits the whole chain.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax

from diffusion_jax.schedules import Schedule

__all__ = ["Denoised", "DenoiseFn", "StepInput", "Sampler", "SAMPLERS",
           "register_sampler", "get_sampler", "sampler_options"]

Array = jax.Array


class Denoised(NamedTuple):
  """What the model says about x_t at one grid point (all float32)."""
  x0: Array                    # [B, ...] x̂_0, clipped/thresholded if asked
  eps: Array                   # [B, ...] ε̂, with x_t = √ᾱ x̂_0 + √(1-ᾱ) ε̂
  var_output: Optional[Array]  # [B, ...] variance channels (learned variances) or None


# (x_t [B, ...] float32, i int32 [] index into the sampling schedule) -> Denoised.
DenoiseFn = Callable[[Array, Array], Denoised]


class StepInput(NamedTuple):
  """The per-step input of `Sampler.step` (built by the engine inside the scan)."""
  index: Array            # int32 [], grid index i of the current x in the sampling schedule
  step: Array             # int32 [], step number n = 1..K (1 = first model call)
  noise: Optional[Array]  # [B, ...] fresh N(0, I) if the sampler is stochastic, else None


class Sampler(NamedTuple):
  """A sampler as two pure closures (optax style).

  init: x [B, ...] float32 -> state, a NamedTuple of fixed-shape arrays with a
    field `x`.
  step: (state, StepInput, DenoiseFn) -> (state, x0_hat [B, ...]). It calls the
    denoiser exactly once (one network evaluation per step).
  stochastic: whether `step` needs `StepInput.noise`.
  """
  init: Callable[[Array], Any]
  step: Callable[[Any, StepInput, DenoiseFn], tuple[Any, Array]]
  stochastic: bool = False


SamplerFactory = Callable[..., Sampler]
SAMPLERS: dict[str, SamplerFactory] = {}


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
  """Decorator adding `factory(sched, **options) -> Sampler` to `SAMPLERS`."""
  def add(factory: SamplerFactory) -> SamplerFactory:
    if name in SAMPLERS:
      raise ValueError(f"A sampler named {name!r} is already registered.")
    SAMPLERS[name] = factory
    return factory
  return add


def _check_name(name: str) -> SamplerFactory:
  if not isinstance(name, str) or name not in SAMPLERS:
    raise ValueError(
        f"Unknown sampler {name!r}; known samplers: {sorted(SAMPLERS)}.")
  return SAMPLERS[name]


def sampler_options(name: str) -> tuple[str, ...]:
  """The keyword options (besides the schedule) that sampler `name` accepts."""
  params = inspect.signature(_check_name(name)).parameters
  return tuple(p for p in params if params[p].kind == inspect.Parameter.KEYWORD_ONLY)


def get_sampler(name: str, sched: Schedule, **options) -> Sampler:
  """Builds the registered sampler `name` on the sampling schedule `sched`.

  Raises ValueError for an unknown name (listing the registry) or an option the
  sampler does not take.
  """
  factory = _check_name(name)
  allowed = sampler_options(name)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(
        f"Sampler {name!r} does not take option(s) {unknown}; it takes {list(allowed)}.")
  return factory(sched, **options)
