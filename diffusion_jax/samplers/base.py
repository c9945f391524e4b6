"""The sampler protocol and the one registry of samplers, with their facts as data.

A sampler is an optax/diffrax-style pair of pure functions over a fixed-shape
NamedTuple state, so that the whole chain is one `jax.lax.scan`:

    sampler = get_sampler("ddim", sched, eta=0.0)   # sched: the *sampling* schedule
    state = sampler.init(x_T)                       # x_T [B, ...] float32
    for n, i in enumerate(reversed(range(K)), 1):   # (in practice: lax.scan)
      state, x0_hat = sampler.step(state, StepInput(i, n, noise), denoise)
    x0 = state.x

* The *sampling schedule* has one entry per grid point: for K steps over a
  training schedule it is `schedules.sampling_schedule(schedule, K, ...)`, so
  entry i holds the noise level of the i-th grid point; step i goes from grid
  point i to i-1 (-1: clean data). Samplers read α, σ and λ only through
  `schedules.point(sched, i)`, one numerical policy for all of them, and
  build their updates from the shared steps in `samplers/steps.py`.
  `sched.timesteps[i]` is the training index that the model receives.
* `denoise(x_t, i) -> Denoised` wraps the model, the parameterization, the
  clipping and the dtype cast (`sampling.make_denoise_fn`, over the one
  adapter `process.denoise_output`), so every sampler gets them for free. A
  step may call it more than once (two-stage solvers such as Heun evaluate
  the model at the next grid point too). `denoise(x_t, i, logsnr=λ)`
  evaluates it at a noise level λ off the grid (EDM's churn), which only the
  sampling schedule of a continuous-time process can resolve.
* The sampling schedule of a continuous process (EDM, flow matching, ...) is
  its VP form (`schedules.sampling_schedule`): samplers need no change to
  run on any process, and their x is the VP-form x/√(α² + σ²).
* The engine, not the sampler, draws the noise: `StepInput.noise` is N(0, I) of
  x's shape when `sampler.stochastic`, else None. Samplers never touch keys.
* Every state has a field `x` [B, ...] holding the current sample.

Each sampler registers its facts as data (`register_sampler`): its order as
an ODE solver (None for ancestral samplers), its default time grid, whether
it is ancestral, how many model calls a step makes, and its options (e.g.
DDIM's `eta`). One convergence test covers every deterministic sampler.

Samplers never call `jax.jit`; `sampling.make_sample_fn` jits the whole chain.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax

from diffusion_jax._checks import ArgumentError, check_choice
from diffusion_jax.process import Denoised
from diffusion_jax.schedules import TIME_GRIDS, Schedule

__all__ = ["Denoised", "DenoiseFn", "StepInput", "Sampler", "SamplerInfo", "SAMPLERS",
           "register_sampler", "get_sampler", "sampler_options"]

Array = jax.Array

# (x_t [B, ...] float32, i int32 [] index into the sampling schedule[, logsnr=λ
# float32 []: a level off the grid]) -> Denoised.
DenoiseFn = Callable[..., Denoised]


class StepInput(NamedTuple):
  """The per-step input of `Sampler.step` (built by the engine inside the scan)."""
  index: Array            # int32 [], grid index i of the current x in the sampling schedule
  step: Array             # int32 [], step number n = 1..K (1 = first step)
  noise: Optional[Array]  # [B, ...] fresh N(0, I) if the sampler is stochastic, else None


class Sampler(NamedTuple):
  """A sampler as two pure closures (optax style).

  init: x [B, ...] float32 -> state, a NamedTuple of fixed-shape arrays with a
    field `x`.
  step: (state, StepInput, DenoiseFn) -> (state, x0_hat [B, ...]).
  stochastic: whether `step` needs `StepInput.noise`.
  """
  init: Callable[[Array], Any]
  step: Callable[[Any, StepInput, DenoiseFn], tuple[Any, Array]]
  stochastic: bool = False


SamplerFactory = Callable[..., Sampler]


class SamplerInfo(NamedTuple):
  """A registered sampler: its factory and its facts."""
  factory: SamplerFactory    # (sched, **options) -> Sampler
  order: Optional[int]       # order of the deterministic chain as an ODE solver; None: ancestral
  default_spacing: str       # the time grid (`schedules.TIME_GRIDS`) when none is given
  ancestral: bool            # draws fresh noise at every step, whatever its options
  nfe_per_step: int          # model calls per step (at most)
  options: tuple[str, ...]   # keyword options besides the schedule (from the signature)

  @property
  def takes_eta(self) -> bool:
    return "eta" in self.options


SAMPLERS: dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, order: Optional[int], default_spacing: str = "linspace",
                     ancestral: bool = False, nfe_per_step: int = 1
                     ) -> Callable[[SamplerFactory], SamplerFactory]:
  """Decorator adding `factory(sched, **options) -> Sampler` to `SAMPLERS` with its facts."""
  check_choice("default_spacing", default_spacing, TIME_GRIDS)
  if ancestral != (order is None):
    raise ValueError(f"Sampler {name!r}: an ancestral sampler has order None, a deterministic "
                     f"one an integer order (got order={order!r}, ancestral={ancestral!r}).")

  def add(factory: SamplerFactory) -> SamplerFactory:
    if name in SAMPLERS:
      raise ValueError(f"A sampler named {name!r} is already registered.")
    params = inspect.signature(factory).parameters
    options = tuple(p for p in params if params[p].kind == inspect.Parameter.KEYWORD_ONLY)
    SAMPLERS[name] = SamplerInfo(factory, order, default_spacing, ancestral, nfe_per_step,
                                 options)
    return factory
  return add


def _info(name: str) -> SamplerInfo:
  check_choice("sampler", name, sorted(SAMPLERS))
  return SAMPLERS[name]


def sampler_options(name: str) -> tuple[str, ...]:
  """The keyword options (besides the schedule) that sampler `name` accepts."""
  return _info(name).options


def get_sampler(name: str, sched: Schedule, **options) -> Sampler:
  """Builds the registered sampler `name` on the sampling schedule `sched`.

  Raises ValueError for an unknown name (listing the registry) or an option the
  sampler does not take.
  """
  info = _info(name)
  unknown = sorted(set(options) - set(info.options))
  if unknown:
    raise ArgumentError(unknown[0], f"Sampler {name!r} does not take option(s) {unknown}; it "
                                    f"takes {list(info.options)}.")
  return info.factory(sched, **options)
