"""Noise processes x_t = α(t) x_0 + σ(t) ε: the discrete DDPM schedule and
continuous-time processes, their time grids, and the one accessor `point`.

Two kinds of process share one interface (`point`, `model_time`, the time
grids of `TIME_GRIDS`, `sampling_schedule`):

* The discrete VP `Schedule`, defined by its betas β_t, t = 0..T-1 (index 0 has
  the least noise); integer t is its index. All derived quantities are
  computed once in NumPy float64 and stored as float32 jax arrays of shape [T]
  in a `Schedule`, which is a pytree (a `flax.struct.dataclass`): it can be
  passed through `jit`, `vmap` and `scan`.
* A continuous-time `Process` (`PROCESSES`: "vp_linear", "vp_cosine", "edm",
  "flow"), static and hashable, whose α(t), σ(t), λ(t) = log(α/σ), inverse
  t(λ) and model time are closed forms at any float t (float64 NumPy for
  NumPy input, jnp otherwise).

Samplers step over a *sampling schedule* of K grid points, always a
`Schedule` in variance-preserving form: for a discrete schedule its
respacing; for a process, the K-entry VP schedule with the same log-SNRs
(ᾱ_i = sigmoid(2 λ_i), i.e. x/√(α² + σ²)), whose `timesteps` are the model
times and whose `scale` = √(α² + σ²) maps its x back to the process's. Every
sampler therefore runs unchanged on every process (its steps are equivariant
under this rescaling), and reads α, σ, λ only through `point`.

References:
  * Ho et al. 2020 (DDPM), Eq. (4), (6), (7): q(x_t|x_0) and q(x_{t-1}|x_t, x_0).
  * Nichol & Dhariwal 2021 (Improved DDPM), Eq. (17): cosine schedule; §4:
    respacing.
  * Lin et al. 2024, Algorithm 1: rescaling to zero terminal SNR.
  * Song et al. 2021 (score SDE), Eq. (32)-(33): the continuous VP process.
  * Kingma et al. 2021 (VDM) / Hoogeboom et al. 2023: cosine log-SNR, clipped.
  * Karras et al. 2022 (EDM), Table 1 and Eq. (5): σ(t) = t, the ρ-grid.
  * Lipman et al. 2023, Liu et al. 2023: flow matching x_t = (1-t) x_0 + t ε;
    Esser et al. 2024 (SD3) §5.3.2: the time shift t' = s t/(1 + (s-1) t).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_jax._checks import ArgumentError, check_choice, check_int, check_number

__all__ = [
    "Schedule",
    "Point",
    "point",
    "SCHEDULES",
    "SPACINGS",
    "TIME_GRIDS",
    "get_schedule",
    "schedule_from_betas",
    "respace",
    "make_timesteps",
    "logsnr_timesteps",
    "grid_timesteps",
    "sampling_schedule",
    "rescale_zero_terminal_snr",
    "Process",
    "VPLinear",
    "VPCosine",
    "EDM",
    "Flow",
    "PROCESSES",
    "get_process",
    "process_settings",
    "model_time",
    "level_at_logsnr",
    "karras_timesteps",
]


@struct.dataclass
class Schedule:
  """A discrete variance-preserving noise schedule. All arrays are float32 [T].

  Index t (0..T-1) refers to the paper's timestep t+1: `alphas_cumprod[t]` is
  ᾱ_{t+1} = Π_{s<=t} (1 - β_s). The sampling schedule of a continuous
  `Process` is a Schedule too (`sampling_schedule`): its VP form on the grid,
  with float32 model times in `timesteps` and, unless the process is VP,
  `scale`.
  """

  betas: jnp.ndarray                           # β_t
  alphas_cumprod: jnp.ndarray                  # ᾱ_t
  alphas_cumprod_prev: jnp.ndarray             # ᾱ_{t-1}, with ᾱ_{-1} = 1
  sqrt_alphas_cumprod: jnp.ndarray             # √ᾱ_t
  sqrt_one_minus_alphas_cumprod: jnp.ndarray   # √(1-ᾱ_t)
  log_one_minus_alphas_cumprod: jnp.ndarray    # log(1-ᾱ_t)
  sqrt_recip_alphas_cumprod: jnp.ndarray       # 1/√ᾱ_t  (inf at a zero-SNR end)
  sqrt_recipm1_alphas_cumprod: jnp.ndarray     # √(1/ᾱ_t - 1)
  logsnr: jnp.ndarray                          # λ_t = log(√ᾱ_t/√(1-ᾱ_t)) (-inf at a zero-SNR end)
  # q(x_{t-1} | x_t, x_0), DDPM Eq. (6)-(7).
  posterior_variance: jnp.ndarray              # β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t
  posterior_log_variance_clipped: jnp.ndarray  # log β̃_t with β̃_0 := β̃_1
  posterior_mean_coef1: jnp.ndarray            # √ᾱ_{t-1} β_t / (1-ᾱ_t)   (x_0)
  posterior_mean_coef2: jnp.ndarray            # √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t) (x_t)
  # Training-time index of each entry: identity for a full schedule, the
  # selected subsequence for a respaced one (what `model_fn` receives as t);
  # float32 model times on the grid of a continuous process.
  timesteps: jnp.ndarray                       # int32 [T] (float32 for a process's grid)
  # √(α² + σ²) of a non-VP process at each grid point (x_process = scale ·
  # x_VP), None for VP schedules (no pytree leaf then).
  scale: Optional[jnp.ndarray] = None          # float32 [T] or None
  # Static metadata (not traced).
  num_timesteps: int = struct.field(pytree_node=False, default=0)
  zero_terminal_snr: bool = struct.field(pytree_node=False, default=False)

  @property
  def snr(self) -> jnp.ndarray:
    """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t), float32 [T]."""
    # From the stored square roots: the float32 1 - ᾱ loses digits at ᾱ ≈ 1.
    return (self.sqrt_alphas_cumprod / self.sqrt_one_minus_alphas_cumprod) ** 2


class Point(NamedTuple):
  """α, σ and λ of x = α x_0 + σ ε at some indices (float32, the indices' shape)."""
  alpha: jnp.ndarray   # α = √ᾱ
  sigma: jnp.ndarray   # σ = √(1-ᾱ)
  logsnr: jnp.ndarray  # λ = log(α/σ)


def point(schedule: Union[Schedule, "Process"], i) -> Point:
  """The one accessor of α, σ and λ at indices `i` of a schedule, or at times
  `i` of a continuous `Process`.

  Every sampler, the distillation teacher and the consistency solvers read
  the noise level through this function, from the float64-derived arrays
  (`sqrt_alphas_cumprod`, `sqrt_one_minus_alphas_cumprod`, `logsnr`), so they
  share one numerical policy. `i` is an int array (any shape) in [-1, T-1];
  i = -1 is clean data (α = 1, σ = 0, λ = +∞), the end point of the last
  sampling step. A concrete index out of range raises ValueError; a traced
  one gives NaN, never a silently clamped value.

  For a `Process`, `i` is a float array of times t (any shape) and the result
  is the process's own α(t), σ(t), λ(t) (not VP-normalized), float32.
  """
  if isinstance(schedule, Process):
    return schedule.point(i)
  i = jnp.asarray(i)
  if not jnp.issubdtype(i.dtype, jnp.integer):
    raise ArgumentError("i", f"i must be an integer index array, got {i.dtype}.")
  T = schedule.num_timesteps
  if not isinstance(i, jax.core.Tracer) and i.size:
    lo, hi = int(np.min(np.asarray(i))), int(np.max(np.asarray(i)))
    if lo < -1 or hi > T - 1:
      raise ArgumentError("i", f"i must lie in [-1, {T - 1}] (T = {T}; -1 = clean data), got "
                               f"values in [{lo}, {hi}].")
  def get(first, arr):
    ext = jnp.concatenate([jnp.full((1,), first, jnp.float32), arr])
    return ext.at[i + 1].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)
  return Point(get(1.0, schedule.sqrt_alphas_cumprod),
               get(0.0, schedule.sqrt_one_minus_alphas_cumprod),
               get(jnp.inf, schedule.logsnr))


# ----------------------------------------------------------------------------
# Beta constructors (float64).
# ----------------------------------------------------------------------------


def _linear(T: int) -> np.ndarray:
  """Ho et al. 2020: β from 1e-4 to 0.02 at T = 1000, scaled by 1000/T."""
  scale = 1000.0 / T
  if scale * 0.02 >= 1.0:
    raise ArgumentError("num_timesteps", f"The 'linear' schedule needs num_timesteps >= 21 (its last β is "
                     f"0.02 * 1000/T), got num_timesteps={T}.")
  return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)


def _betas_from_alpha_bar(alpha_bar: Callable[[np.ndarray], np.ndarray], T: int,
                          max_beta: float = 0.999) -> np.ndarray:
  """β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta) for t = 0..T-1."""
  s = np.arange(T + 1, dtype=np.float64) / T
  a = alpha_bar(s)
  return np.minimum(1.0 - a[1:] / a[:-1], max_beta)


def _cosine(T: int, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal 2021, Eq. (17): ᾱ(t) = cos²(((t/T + s)/(1 + s)) π/2)."""
  return _betas_from_alpha_bar(
      lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2, T)


def _sigmoid(T: int, start: float = -3.0, end: float = 3.0,
             tau: float = 1.0) -> np.ndarray:
  """Chen 2023 ("On the importance of noise scheduling"), sigmoid ᾱ(t)."""
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  v_start, v_end = sig(start / tau), sig(end / tau)
  return _betas_from_alpha_bar(
      lambda u: (v_end - sig((u * (end - start) + start) / tau))
      / (v_end - v_start), T)


def _scaled_linear(T: int) -> np.ndarray:
  """Latent/Stable Diffusion: β = linspace(√0.00085, √0.012, T)²."""
  return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=np.float64) ** 2


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear,
    "cosine": _cosine,
    "sigmoid": _sigmoid,
    "scaled_linear": _scaled_linear,
}


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. 2024, Algorithm 1: shift and scale √ᾱ so that ᾱ_{T-1} = 0.

  √ᾱ_0 is kept; the last β becomes exactly 1.
  """
  sqrt_ab = np.sqrt(np.cumprod(1.0 - np.asarray(betas, np.float64)))
  a0, aT = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - aT) * a0 / (a0 - aT)
  ab = sqrt_ab ** 2
  alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
  return 1.0 - alphas


# ----------------------------------------------------------------------------
# Schedule construction.
# ----------------------------------------------------------------------------


def _check_num_timesteps(num_timesteps) -> int:
  return check_int("num_timesteps", num_timesteps, 1)


def _check_betas(betas: np.ndarray, allow_terminal_one: bool) -> None:
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}.")
  inner = betas[:-1] if allow_terminal_one else betas
  bad = ~np.isfinite(betas) | (betas <= 0) | (betas > 1)
  bad[: inner.size] |= inner >= 1
  if bad.any():
    i = int(np.argmax(bad))
    allowed = "(0, 1), with the last one allowed to be 1 for zero terminal SNR" \
        if allow_terminal_one else "(0, 1)"
    raise ValueError(
        f"betas must lie in {allowed}; betas[{i}] = {betas[i]!r}.")


def schedule_from_betas(betas, *, timesteps=None, zero_terminal_snr: bool = False,
                        scale=None) -> Schedule:
  """Builds a `Schedule` from betas [T] (any float dtype; computed in float64).

  Args:
    betas: β_t, shape [T], each in (0, 1). The last may be exactly 1 only when
      `zero_terminal_snr` is True.
    timesteps: optional [T] what the model receives at each entry: int
      training indices (respacing; stored as int32) or float model times (a
      continuous process's grid; stored as float32).
    zero_terminal_snr: whether ᾱ_{T-1} = 0 (Lin et al. 2024).
    scale: optional float [T], √(α² + σ²) of a non-VP process at each entry.
  """
  betas = np.asarray(betas, dtype=np.float64)
  _check_betas(betas, allow_terminal_one=zero_terminal_snr)
  T = betas.size
  alphas = 1.0 - betas
  ac = np.cumprod(alphas)
  ac_prev = np.concatenate([[1.0], ac[:-1]])
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  # Improved DDPM: log β̃_0 = log β̃_1 since β̃_0 = 0 (for T = 1: log β_0).
  first = post_var[1] if T > 1 else betas[0]
  post_log_var = np.log(np.concatenate([[first], post_var[1:]]))
  with np.errstate(divide="ignore"):  # ᾱ = 0 at a zero-SNR end gives inf.
    recip = 1.0 / np.sqrt(ac)
    recipm1 = np.sqrt(1.0 / ac - 1.0)
    logsnr = 0.5 * (np.log(ac) - np.log1p(-ac))
  if timesteps is None:
    timesteps = np.arange(T)
  timesteps = np.asarray(timesteps)
  if timesteps.shape != (T,):
    raise ValueError(f"timesteps must have shape ({T},), got {timesteps.shape}.")
  integer = np.issubdtype(timesteps.dtype, np.integer)
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  if scale is not None and np.shape(scale) != (T,):
    raise ValueError(f"scale must have shape ({T},), got {np.shape(scale)}.")
  return Schedule(
      betas=f32(betas),
      alphas_cumprod=f32(ac),
      alphas_cumprod_prev=f32(ac_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(ac)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
      log_one_minus_alphas_cumprod=f32(np.log(1.0 - ac)),
      sqrt_recip_alphas_cumprod=f32(recip),
      sqrt_recipm1_alphas_cumprod=f32(recipm1),
      logsnr=f32(logsnr),
      posterior_variance=f32(post_var),
      posterior_log_variance_clipped=f32(post_log_var),
      posterior_mean_coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
      posterior_mean_coef2=f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
      timesteps=jnp.asarray(timesteps, dtype=jnp.int32 if integer else jnp.float32),
      scale=None if scale is None else f32(scale),
      num_timesteps=T,
      zero_terminal_snr=zero_terminal_snr,
  )


def get_betas(name: str, num_timesteps: int, *,
              rescale_to_zero_terminal_snr: bool = False) -> np.ndarray:
  """The float64 betas [T] of a named schedule."""
  T = _check_num_timesteps(num_timesteps)
  check_choice("schedule", name, sorted(SCHEDULES))
  betas = SCHEDULES[name](T)
  if rescale_to_zero_terminal_snr:
    if T < 2:
      raise ArgumentError("rescale_to_zero_terminal_snr",
                          "rescale_to_zero_terminal_snr needs num_timesteps >= 2.")
    betas = rescale_zero_terminal_snr(betas)
  return betas


def get_schedule(name: str, num_timesteps: int = 1000, *,
                 rescale_to_zero_terminal_snr: bool = False) -> Schedule:
  """Returns the named schedule with T = `num_timesteps` entries.

  Args:
    name: one of `SCHEDULES` ("linear", "cosine", "sigmoid", "scaled_linear").
    num_timesteps: T >= 1.
    rescale_to_zero_terminal_snr: apply Lin et al. 2024 so that ᾱ_{T-1} = 0.
      Such a schedule needs the "v" or "x0" prediction.
  """
  betas = get_betas(name, num_timesteps,
                    rescale_to_zero_terminal_snr=rescale_to_zero_terminal_snr)
  return schedule_from_betas(betas,
                             zero_terminal_snr=rescale_to_zero_terminal_snr)


# ----------------------------------------------------------------------------
# Continuous-time processes.
# ----------------------------------------------------------------------------


def _xp(a):
  """NumPy for NumPy / Python input (computed in float64), jnp otherwise."""
  return jnp if isinstance(a, (jax.Array, jax.core.Tracer)) else np


def _arr(t):
  xp = _xp(t)
  return xp, (np.asarray(t, np.float64) if xp is np else jnp.asarray(t, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Process:
  """A continuous-time noise process x_t = α(t) x_0 + σ(t) ε (static, hashable).

  Time t is a float; t = 0 is (at or next to) clean data and the sampling
  grids run over [t_min, t_max]. The subclasses in `PROCESSES` give, as pure
  functions of t (float64 NumPy for NumPy input, float32 jnp otherwise):
  `alpha_sigma(t)`, `logsnr(t)` = λ = log(α/σ), its inverse `time(λ)`, and
  `model_time(t)`, what the network receives. Settings shared by all:
    shift: the time shift s of Esser et al. 2024 (SD3) §5.3.2 as a log-SNR
      shift λ → λ - log s (for flow matching t → s t/(1 + (s-1) t)); used
      by the "shifted" grid and by the training-time distribution.
    rho: ρ of the "karras" grid (Karras et al. 2022, Eq. (5)).
  """
  shift: float = 1.0
  rho: float = 7.0

  name = "process"               # the key in PROCESSES (a class attribute)
  variance_preserving = True     # α² + σ² = 1

  def __post_init__(self):
    check_number("shift", self.shift, 0.0, low_open=True)
    check_number("rho", self.rho, 0.0, low_open=True)

  # The interface (subclasses).
  def alpha_sigma(self, t):
    raise NotImplementedError

  def logsnr(self, t):
    raise NotImplementedError

  def time(self, logsnr):
    raise NotImplementedError

  def model_time(self, t):
    raise NotImplementedError

  @property
  def t_min(self) -> float:
    """The least noisy time of the sampling grids."""
    raise NotImplementedError

  @property
  def t_max(self) -> float:
    """The noisiest time: where sampling starts, x ~ N(0, α² + σ²)."""
    return 1.0

  @property
  def train_range(self) -> tuple[float, float]:
    """The interval of uniform training times."""
    return (0.0, 1.0)

  @property
  def time_domain(self) -> tuple[float, float]:
    """Where the formulas hold (training times are clipped into it)."""
    return (0.0, 1.0)

  # Derived.
  @property
  def zero_terminal_snr(self) -> bool:
    """Whether α(t_max) = 0 (λ = -∞): x̂_0 from ε is undefined there."""
    return bool(np.isneginf(self.logsnr(np.float64(self.t_max))))

  def scale(self, t):
    """√(α² + σ²), the factor from the VP form x/√(α² + σ²) back to x."""
    xp, t = _arr(t)
    a, s = self.alpha_sigma(t)
    return xp.sqrt(a * a + s * s)

  def point(self, t) -> Point:
    """α(t), σ(t), λ(t) as float32 (`schedules.point`)."""
    _, t = _arr(jnp.asarray(t, jnp.float32))
    a, s = self.alpha_sigma(t)
    return Point(a, s, self.logsnr(t))

  def shifted(self, t):
    """The time whose λ is λ(t) - log(shift) (identity for shift = 1)."""
    if self.shift == 1.0:
      return t
    return self.time(self.logsnr(t) - math.log(self.shift))


@dataclasses.dataclass(frozen=True)
class _UnitTime(Process):
  """A process on t ∈ [0, 1] whose sampling grids stop at t_eps and whose
  network receives `time_scale` t (VP linear, VP cosine, flow)."""
  t_eps: float = 1e-3
  time_scale: float = 1000.0

  t_eps_may_be_zero = False      # whether λ(0) is finite, so t_eps = 0 is allowed

  def __post_init__(self):
    super().__post_init__()
    check_number("t_eps", self.t_eps, 0.0, 1.0, low_open=not self.t_eps_may_be_zero,
                 high_open=True)
    check_number("time_scale", self.time_scale, 0.0, low_open=True)

  def model_time(self, t):
    return self.time_scale * t

  @property
  def t_min(self):
    return self.t_eps


@dataclasses.dataclass(frozen=True)
class VPLinear(_UnitTime):
  """The continuous VP process with linear β(t) = β_min + t (β_max - β_min)
  (Song et al. 2021, Eq. (32)-(33); DDPM's β as T → ∞):
  α(t)² = exp(-g(t)), g(t) = ½ t² (β_max - β_min) + t β_min, σ² = 1 - α².
  The network receives 1000 t (`time_scale` t)."""
  beta_min: float = 0.1
  beta_max: float = 20.0

  name = "vp_linear"

  def __post_init__(self):
    super().__post_init__()
    check_number("beta_min", self.beta_min, 0.0)
    check_number("beta_max", self.beta_max, self.beta_min)
    if self.beta_max <= 0:
      raise ArgumentError("beta_max", f"beta_max must be > 0, got {self.beta_max!r}.")

  def _g(self, t):
    return 0.5 * (self.beta_max - self.beta_min) * t * t + self.beta_min * t

  def alpha_sigma(self, t):
    xp, t = _arr(t)
    g = self._g(t)
    return xp.exp(-0.5 * g), xp.sqrt(-xp.expm1(-g))

  def logsnr(self, t):
    xp, t = _arr(t)
    g = self._g(t)
    with np.errstate(divide="ignore"):
      return -0.5 * (g + xp.log(-xp.expm1(-g)))

  def time(self, logsnr):
    xp, lam = _arr(logsnr)
    g = xp.logaddexp(0.0, -2.0 * lam)                       # -log α² = softplus(-2λ)
    return 2.0 * g / (self.beta_min + xp.sqrt(self.beta_min ** 2
                                              + 2.0 * (self.beta_max - self.beta_min) * g))

  @property
  def train_range(self):
    return (1e-5, 1.0)       # score SDE's training ε


@dataclasses.dataclass(frozen=True)
class VPCosine(_UnitTime):
  """The continuous cosine VP process in log-SNR form, clipped to
  [logsnr_min, logsnr_max] (Kingma et al. 2021; Hoogeboom et al. 2023):
  α = cos(a t + b), σ = sin(a t + b), λ = -log tan(a t + b), with
  b = arctan(e^{-λ_max}), a = arctan(e^{-λ_min}) - b, so λ(0) = λ_max and
  λ(1) = λ_min (Nichol & Dhariwal's ᾱ = cos²(π t/2) up to the clipping).
  The network receives 1000 t."""
  logsnr_min: float = -10.0
  logsnr_max: float = 10.0

  name = "vp_cosine"
  t_eps_may_be_zero = True       # λ(0) = logsnr_max

  def __post_init__(self):
    super().__post_init__()
    check_number("logsnr_max", self.logsnr_max)
    check_number("logsnr_min", self.logsnr_min, high=self.logsnr_max, high_open=True)

  def _ab(self):
    b = math.atan(math.exp(-self.logsnr_max))
    return math.atan(math.exp(-self.logsnr_min)) - b, b

  def alpha_sigma(self, t):
    xp, t = _arr(t)
    a, b = self._ab()
    return xp.cos(a * t + b), xp.sin(a * t + b)

  def logsnr(self, t):
    xp, t = _arr(t)
    a, b = self._ab()
    return -xp.log(xp.tan(a * t + b))

  def time(self, logsnr):
    xp, lam = _arr(logsnr)
    a, b = self._ab()
    return (xp.arctan(xp.exp(-lam)) - b) / a


@dataclasses.dataclass(frozen=True)
class EDM(Process):
  """The variance-exploding process of Karras et al. 2022 (EDM, Table 1):
  α = 1, σ(t) = t, so t is the noise level σ ∈ [sigma_min, sigma_max] and
  λ = -log t. The network receives σ itself; EDM's preconditioning
  (`process.edm_preconditioning`) turns it into c_noise = ¼ log σ."""
  sigma_min: float = 0.002
  sigma_max: float = 80.0

  name = "edm"
  variance_preserving = False

  def __post_init__(self):
    super().__post_init__()
    check_number("sigma_min", self.sigma_min, 0.0, low_open=True)
    check_number("sigma_max", self.sigma_max, self.sigma_min, low_open=True)

  def alpha_sigma(self, t):
    xp, t = _arr(t)
    return xp.ones_like(t), t

  def logsnr(self, t):
    xp, t = _arr(t)
    with np.errstate(divide="ignore"):
      return -xp.log(t)

  def time(self, logsnr):
    xp, lam = _arr(logsnr)
    return xp.exp(-lam)

  def model_time(self, t):
    return t

  @property
  def t_min(self):
    return self.sigma_min

  @property
  def t_max(self):
    return self.sigma_max

  @property
  def train_range(self):
    return (self.sigma_min, self.sigma_max)

  @property
  def time_domain(self):
    return (0.0, math.inf)


@dataclasses.dataclass(frozen=True)
class Flow(_UnitTime):
  """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023):
  x_t = (1 - t) x_0 + t ε, λ = log((1-t)/t), t(λ) = sigmoid(-λ). t = 1 is
  pure noise (zero SNR). The network receives 1000 t (as SD3)."""
  name = "flow"
  variance_preserving = False

  def alpha_sigma(self, t):
    xp, t = _arr(t)
    return 1.0 - t, t

  def logsnr(self, t):
    xp, t = _arr(t)
    with np.errstate(divide="ignore"):
      return xp.log1p(-t) - xp.log(t)

  def time(self, logsnr):
    xp, lam = _arr(logsnr)
    return 1.0 / (1.0 + xp.exp(lam))


# name -> constructor(**settings) (a frozen dataclass; every setting has a default).
PROCESSES: dict[str, type] = {c.name: c for c in (VPLinear, VPCosine, EDM, Flow)}


def get_process(name: str, **settings) -> Process:
  """The continuous process `name` (a key of `PROCESSES`) with `settings`
  (its dataclass fields, e.g. sigma_max=80.0). Unknown settings and bad
  values raise an ArgumentError naming them."""
  check_choice("process", name, sorted(PROCESSES))
  cls = PROCESSES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(settings) - fields)
  if unknown:
    raise ArgumentError(unknown[0], f"process {name!r} has no setting(s) {unknown}; it has "
                                    f"{sorted(fields)}.")
  return cls(**settings)


def process_settings(name: str) -> tuple[str, ...]:
  """The setting names of process `name` (its dataclass fields)."""
  check_choice("process", name, sorted(PROCESSES))
  return tuple(f.name for f in dataclasses.fields(PROCESSES[name]))


def model_time(process: Union[Schedule, Process], t):
  """What the network receives at time t: the training index
  `schedule.timesteps[t]` of a discrete schedule (int32), the process's
  `model_time(t)` of a continuous one (float32)."""
  if isinstance(process, Process):
    return jnp.asarray(process.model_time(jnp.asarray(t, jnp.float32)), jnp.float32)
  return process.timesteps[t]


def level_at_logsnr(process: Process, logsnr):
  """The noise level λ of a continuous process, as a sampler sees it:
  (the VP-form Point (√sigmoid(2λ), √sigmoid(-2λ), λ), the model time, and
  √(α² + σ²) or None for a VP process). For evaluations off the grid
  (EDM's churn, the probability-flow ODE). `logsnr`: float32, any shape."""
  lam = jnp.asarray(logsnr, jnp.float32)
  t = process.time(lam)
  vp = Point(jnp.sqrt(jax.nn.sigmoid(2.0 * lam)), jnp.sqrt(jax.nn.sigmoid(-2.0 * lam)), lam)
  scale = None if process.variance_preserving else process.scale(t)
  return vp, jnp.asarray(process.model_time(t), jnp.float32), scale


def _process_schedule(process: Process, times) -> Schedule:
  """The VP-form sampling schedule of `process` on increasing float64 times
  [K]: ᾱ_i = sigmoid(2 λ_i), `timesteps` = the model times, `scale` =
  √(α² + σ²) unless the process is VP."""
  t = np.asarray(times, np.float64)
  lam = process.logsnr(t)
  with np.errstate(divide="ignore"):
    log_ab = -np.logaddexp(0.0, -2.0 * lam)                  # log sigmoid(2λ)
  betas = -np.expm1(log_ab - np.concatenate([[0.0], log_ab[:-1]]))
  zero = bool(np.isneginf(lam[-1]))
  return schedule_from_betas(
      betas, timesteps=np.asarray(process.model_time(t), np.float64),
      zero_terminal_snr=zero,
      scale=None if process.variance_preserving else process.scale(t))


# ----------------------------------------------------------------------------
# Timestep subsequences and respacing (Improved DDPM §4, DDIM §4.2).
# ----------------------------------------------------------------------------

SPACINGS = ("linspace", "leading", "trailing", "quadratic")  # the grids that need only T


def make_timesteps(num_timesteps: int, num_steps: int,
                   spacing: str = "leading") -> np.ndarray:
  """An increasing subsequence of K = `num_steps` indices of 0..T-1.

  The grids (T = `num_timesteps`, K = `num_steps`, i = 0..K-1):
    * "linspace":  round(i (T-1)/(K-1))            — includes 0 and T-1.
    * "leading":   i ⌊T/K⌋                          — DDIM's uniform grid.
    * "trailing":  round(T - i T/K) - 1, ascending  — always includes T-1
                   (Lin et al. 2024, Table 2).
    * "quadratic": ⌊(i √(0.8 T)/(K-1))²⌋           — DDIM's quadratic grid.
  For K = T every spacing gives 0..T-1. Returns int64 [K], strictly increasing.
  (`grid_timesteps` also offers the schedule-dependent "logsnr" grid.)
  """
  T = _check_num_timesteps(num_timesteps)
  K = check_int("num_steps", num_steps, 1, T)
  check_choice("spacing", spacing, SPACINGS)
  if K == T:
    return np.arange(T)
  i = np.arange(K, dtype=np.float64)
  if spacing == "linspace":
    ts = np.round(i * (T - 1) / max(K - 1, 1))
  elif spacing == "leading":
    ts = i * (T // K)
  elif spacing == "trailing":
    ts = np.round(T - i * T / K)[::-1] - 1
  else:  # ⌊i² 0.8 T/(K-1)²⌋ in exact integer arithmetic (no float floor error).
    ii = np.arange(K, dtype=np.int64)
    ts = (ii * ii * 4 * T) // (5 * max(K - 1, 1) ** 2)
  ts = ts.astype(np.int64)
  if np.any(np.diff(ts) <= 0):
    raise ArgumentError(
        "num_steps", f"spacing={spacing!r} gives repeated timesteps for num_steps={K} and "
        f"num_timesteps={T}; use fewer steps or another spacing.")
  return ts


def _nearest_indices(lam: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Indices of the decreasing table `lam` [T] nearest to K `targets` (from
  the least to the most noisy), made distinct and increasing, with 0 (if
  K > 1) and T-1 included."""
  T, K = lam.size, targets.size
  ts = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
  ts[0], ts[-1] = 0, T - 1
  for j in range(1, K):                                 # distinct, increasing,
    ts[j] = max(ts[j], ts[j - 1] + 1)
  ts[-1] = T - 1
  for j in range(K - 2, -1, -1):                        # and within [0, T-1].
    ts[j] = min(ts[j], ts[j + 1] - 1)
  return ts.astype(np.int64)


def logsnr_timesteps(schedule: Schedule, num_steps: int) -> np.ndarray:
  """K indices of `schedule` roughly uniform in λ = log(α/σ) (DPM-Solver §3.4).

  Includes 0 (if K > 1) and T-1. Each point is the index nearest to its λ target, moved
  just enough to keep the K indices distinct where the schedule is too coarse
  (near t = 0). Returns int64 [K], strictly increasing.
  """
  T = schedule.num_timesteps
  K = check_int("num_steps", num_steps, 1, T)
  if K == T:
    return np.arange(T)
  if K == 1:
    return np.array([T - 1])
  lam = np.asarray(schedule.logsnr, np.float64)          # decreasing in t
  lo = lam[-1] if np.isfinite(lam[-1]) else lam[-2]    # zero terminal SNR: λ = -∞
  return _nearest_indices(lam, np.linspace(lam[0], lo, K))


def _karras_logsnr(n: int, lam_lo: float, lam_hi: float, rho: float) -> np.ndarray:
  """n log-SNRs of Karras et al. 2022, Eq. (5), from the noisiest λ_lo to λ_hi:
  σ̃_i = (σ̃_max^{1/ρ} + i/(n-1) (σ̃_min^{1/ρ} - σ̃_max^{1/ρ}))^ρ, σ̃ = e^{-λ} = σ/α."""
  if n == 1:
    return np.array([lam_lo])
  hi, lo = math.exp(-lam_lo / rho), math.exp(-lam_hi / rho)   # σ̃^{1/ρ}
  return -rho * np.log(hi + np.arange(n) / (n - 1) * (lo - hi))


def karras_timesteps(schedule: Schedule, num_steps: int, rho: float = 7.0) -> np.ndarray:
  """K indices of `schedule` nearest to Karras et al.'s ρ-grid in σ̃ = σ/α
  (EDM Eq. (5)) between the schedule's ends, made distinct as in
  `logsnr_timesteps`. Includes 0 (if K > 1) and T-1; int64 [K]."""
  T = schedule.num_timesteps
  K = check_int("num_steps", num_steps, 1, T)
  if K == T:
    return np.arange(T)
  if K == 1:
    return np.array([T - 1])
  lam = np.asarray(schedule.logsnr, np.float64)
  lo = lam[-1] if np.isfinite(lam[-1]) else lam[-2]
  return _nearest_indices(lam, _karras_logsnr(K, lo, lam[0], rho)[::-1])


def _logsnr_spaced_times(process: Process, K: int, make) -> np.ndarray:
  """K times of `process` whose λ are `make(n, λ_lo, λ_hi)` between λ(t_max)
  and λ(t_min). A zero-SNR top (λ(t_max) = -∞) is kept as the noisiest point
  and the other K-1 span [λ(t_max (K-1)/K), λ(t_min)] (the upper end: the
  second noisiest point of the "trailing" grid)."""
  top = process.t_max
  if K == 1:
    return np.array([top])
  lam_hi = float(process.logsnr(np.float64(process.t_min)))
  lam_top = float(process.logsnr(np.float64(top)))
  if np.isneginf(lam_top):
    lam = make(K - 1, float(process.logsnr(np.float64(top * (K - 1) / K))), lam_hi)
    times = np.concatenate([process.time(lam), [top]])
  else:
    times = process.time(make(K, lam_top, lam_hi))
  return np.sort(times)


def _process_times(process: Process, K: int, spacing: str) -> np.ndarray:
  """The K increasing float64 times of grid `spacing` over `process`."""
  K = check_int("num_steps", K, 1)
  lo, hi = process.t_min, process.t_max
  i = np.arange(K, dtype=np.float64)
  if spacing == "linspace":        # uniform in t, both ends
    return np.linspace(lo, hi, K) if K > 1 else np.array([hi])
  if spacing == "trailing":        # uniform in t from the top, clean end excluded
    return hi * (i + 1) / K
  if spacing == "quadratic":       # DDIM's quadratic grid in t
    return lo + (hi - lo) * (i / max(K - 1, 1)) ** 2 if K > 1 else np.array([hi])
  if spacing == "shifted":         # SD3: the trailing grid, time-shifted
    return process.shifted(hi * (i + 1) / K)
  if spacing == "logsnr":
    return _logsnr_spaced_times(process, K, lambda n, a, b: np.linspace(a, b, n))
  if spacing == "karras":
    return _logsnr_spaced_times(process, K,
                                lambda n, a, b: _karras_logsnr(n, a, b, process.rho))
  raise ArgumentError("spacing", f"spacing={spacing!r} starts at t = 0 (clean data) on a "
                                 f"continuous process ({process.name!r}); use 'trailing'.")


def _time_grid(name: str, discrete):
  def grid(process, K):
    if isinstance(process, Process):
      return _process_times(process, K, name)
    if discrete is None:
      raise ArgumentError("spacing", f"spacing={name!r} needs a continuous-time process "
                                     f"(one of {sorted(PROCESSES)}), not a discrete schedule.")
    return discrete(process, K)
  return grid


# Every time grid, by name: (schedule or process, K) -> the K grid points,
# increasing: int64 indices of a discrete schedule, float64 times of a process.
#   linspace, leading, trailing, quadratic: `make_timesteps` (discrete); on a
#     process uniform in t over [t_min, t_max], uniform from t_max with the
#     clean end excluded, and DDIM's quadratic (leading: discrete only);
#   logsnr: uniform in λ (DPM-Solver §3.4); karras: EDM's ρ-grid in σ/α;
#   shifted: the trailing grid under the process's time shift (SD3).
TIME_GRIDS: dict[str, Callable[[object, int], np.ndarray]] = {
    **{name: _time_grid(name, (lambda name: lambda s, K: make_timesteps(
        s.num_timesteps, K, name))(name)) for name in SPACINGS},
    "logsnr": _time_grid("logsnr", logsnr_timesteps),
    "karras": _time_grid("karras", karras_timesteps),
    "shifted": _time_grid("shifted", None),
}


def grid_timesteps(schedule, num_steps: int, spacing: str) -> np.ndarray:
  """The K-point grid `spacing` (a name in `TIME_GRIDS`) over `schedule` (a
  discrete `Schedule`: int64 indices) or a `Process` (float64 times)."""
  check_choice("spacing", spacing, TIME_GRIDS)
  return TIME_GRIDS[spacing](schedule, num_steps)


def respace(schedule: Schedule, timesteps) -> Schedule:
  """Improved DDPM §4: the schedule restricted to a subsequence of timesteps.

  With S = `timesteps` (increasing indices into `schedule`), the new schedule
  has ᾱ'_i = ᾱ_{S_i} and β'_i = 1 - ᾱ_{S_i}/ᾱ_{S_{i-1}} (ᾱ_{S_{-1}} = 1), so
  every posterior and variance type is exact for the coarser chain. The new
  `timesteps` field maps entry i back to the training index the model expects.
  """
  ts = np.asarray(timesteps)
  T = schedule.num_timesteps
  if ts.ndim != 1 or ts.size < 1 or not np.issubdtype(ts.dtype, np.integer):
    raise ArgumentError("timesteps",
                        f"timesteps must be a non-empty 1-D integer array, got {ts!r}.")
  if ts.min() < 0 or ts.max() >= T or np.any(np.diff(ts) <= 0):
    raise ArgumentError(
        "timesteps", f"timesteps must be strictly increasing integers in [0, {T - 1}], got {ts}.")
  if ts.size == T:  # The identity: keep the float64-derived arrays exact.
    return schedule
  # In float64, from the stored float32 arrays. A small β' = 1 - ᾱ_{S_i}/ᾱ_{S_{i-1}}
  # is taken from the betas it spans (the float32 ᾱ ≈ 1 has lost the digits of
  # 1 - ᾱ); a large one from the ratio of the float32 ᾱ (a float32 β ≈ 1 has
  # lost the digits of 1 - β).
  ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)[ts]
  with np.errstate(divide="ignore"):  # β = 1 at a zero-SNR end.
    log_a = np.concatenate([[0.0], np.cumsum(
        np.log1p(-np.asarray(schedule.betas, dtype=np.float64)))])
  from_betas = -np.expm1(log_a[ts + 1] - log_a[np.concatenate([[0], ts[:-1] + 1])])
  from_ratio = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
  betas = np.where(from_betas < 0.5, from_betas, from_ratio)
  terminal = bool(schedule.zero_terminal_snr and ts[-1] == T - 1)
  return schedule_from_betas(
      betas, timesteps=np.asarray(schedule.timesteps)[ts],
      zero_terminal_snr=terminal)


def sampling_schedule(schedule: Union[Schedule, Process], num_steps: int | None = None, *,
                      spacing: str = "linspace", timesteps=None) -> Schedule:
  """The K-entry schedule a sampler runs on (Improved DDPM §4 respacing).

  Args:
    schedule: the training schedule (T entries), or an already respaced one;
      or a continuous `Process`, whose sampling schedule is its VP form on the
      grid (module docstring; float32 model times in `timesteps`).
    num_steps: K in [1, T]; None means T (every timestep; a process needs K).
    spacing: a name in `TIME_GRIDS`: a `make_timesteps` grid ("linspace", the
      default, includes 0 and T-1), "logsnr" (`logsnr_timesteps`), "karras",
      or (processes only) "shifted".
    timesteps: optional explicit increasing indices into `schedule` (for a
      process: increasing float times in (0, t_max]), used instead of
      (num_steps, spacing).
  """
  if isinstance(schedule, Process):
    return _process_sampling_schedule(schedule, num_steps, spacing, timesteps)
  if timesteps is not None:
    ts = np.asarray(timesteps)
    if num_steps is not None and num_steps != ts.size:
      raise ArgumentError("num_steps",
                          f"num_steps={num_steps!r} disagrees with len(timesteps)={ts.size}.")
    return respace(schedule, ts)
  K = schedule.num_timesteps if num_steps is None else num_steps
  return respace(schedule, grid_timesteps(schedule, K, spacing))


def _process_sampling_schedule(process: Process, num_steps, spacing, timesteps) -> Schedule:
  if timesteps is not None:
    ts = np.asarray(timesteps, np.float64)
    lo, hi = process.time_domain
    if (ts.ndim != 1 or ts.size < 1 or not np.all(np.isfinite(ts)) or ts.min() <= lo
        or ts.max() > max(hi, process.t_max) or np.any(np.diff(ts) <= 0)):
      raise ArgumentError("timesteps", f"timesteps of process {process.name!r} must be strictly "
                                       f"increasing times in ({lo:g}, {process.t_max:g}], got "
                                       f"{timesteps!r}.")
    if num_steps is not None and num_steps != ts.size:
      raise ArgumentError("num_steps",
                          f"num_steps={num_steps!r} disagrees with len(timesteps)={ts.size}.")
    return _process_schedule(process, ts)
  if num_steps is None:
    raise ArgumentError("num_steps", f"process {process.name!r} is continuous: give num_steps "
                                     "(or timesteps).")
  check_int("num_steps", num_steps, 1)
  return _process_schedule(process, grid_timesteps(process, num_steps, spacing))
