"""Noise schedules: float64 NumPy constructors stored as an immutable float32 pytree.

Every schedule is defined by its betas β_t, t = 0..T-1 (index 0 has the least
noise). All derived quantities are computed once in NumPy float64 and stored as
float32 jax arrays of shape [T] in a `Schedule`, which is a pytree (a
`flax.struct.dataclass`): it can be passed through `jit`, `vmap` and `scan`.

References:
  * Ho et al. 2020 (DDPM), Eq. (4), (6), (7): q(x_t|x_0) and q(x_{t-1}|x_t, x_0).
  * Nichol & Dhariwal 2021 (Improved DDPM), Eq. (17): cosine schedule; §4:
    respacing.
  * Lin et al. 2024, Algorithm 1: rescaling to zero terminal SNR.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_jax._checks import ArgumentError, check_choice, check_int

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
]


@struct.dataclass
class Schedule:
  """A discrete variance-preserving noise schedule. All arrays are float32 [T].

  Index t (0..T-1) refers to the paper's timestep t+1: `alphas_cumprod[t]` is
  ᾱ_{t+1} = Π_{s<=t} (1 - β_s).
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
  # selected subsequence for a respaced one (what `model_fn` receives as t).
  timesteps: jnp.ndarray                       # int32 [T]
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


def point(schedule: Schedule, i) -> Point:
  """The one accessor of α, σ and λ at indices `i` of a schedule.

  Every sampler, the distillation teacher and the consistency solvers read
  the noise level through this function, from the float64-derived arrays
  (`sqrt_alphas_cumprod`, `sqrt_one_minus_alphas_cumprod`, `logsnr`), so they
  share one numerical policy. `i` is an int array (any shape) in [-1, T-1];
  i = -1 is clean data (α = 1, σ = 0, λ = +∞), the end point of the last
  sampling step. A concrete index out of range raises ValueError; a traced
  one gives NaN, never a silently clamped value.
  """
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


def schedule_from_betas(betas, *, timesteps=None,
                        zero_terminal_snr: bool = False) -> Schedule:
  """Builds a `Schedule` from betas [T] (any float dtype; computed in float64).

  Args:
    betas: β_t, shape [T], each in (0, 1). The last may be exactly 1 only when
      `zero_terminal_snr` is True.
    timesteps: optional int [T] training indices of the entries (respacing).
    zero_terminal_snr: whether ᾱ_{T-1} = 0 (Lin et al. 2024).
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
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
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
      timesteps=jnp.asarray(timesteps, dtype=jnp.int32),
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
  targets = np.linspace(lam[0], lo, K)
  ts = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
  ts[0], ts[-1] = 0, T - 1
  for j in range(1, K):                                 # distinct, increasing,
    ts[j] = max(ts[j], ts[j - 1] + 1)
  ts[-1] = T - 1
  for j in range(K - 2, -1, -1):                        # and within [0, T-1].
    ts[j] = min(ts[j], ts[j + 1] - 1)
  return ts.astype(np.int64)


# Every time grid, by name: (schedule, K) -> int64 [K] increasing indices.
TIME_GRIDS: dict[str, Callable[[Schedule, int], np.ndarray]] = {
    **{name: (lambda name: lambda s, K: make_timesteps(s.num_timesteps, K, name))(name)
       for name in SPACINGS},
    "logsnr": logsnr_timesteps,
}


def grid_timesteps(schedule: Schedule, num_steps: int, spacing: str) -> np.ndarray:
  """The K-point grid `spacing` (a name in `TIME_GRIDS`) over `schedule`."""
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


def sampling_schedule(schedule: Schedule, num_steps: int | None = None, *,
                      spacing: str = "linspace", timesteps=None) -> Schedule:
  """The K-entry schedule a sampler runs on (Improved DDPM §4 respacing).

  Args:
    schedule: the training schedule (T entries), or an already respaced one.
    num_steps: K in [1, T]; None means T (every timestep).
    spacing: a name in `TIME_GRIDS`: a `make_timesteps` grid ("linspace", the
      default, includes 0 and T-1) or "logsnr" (`logsnr_timesteps`).
    timesteps: optional explicit increasing indices into `schedule`, used
      instead of (num_steps, spacing).
  """
  if timesteps is not None:
    ts = np.asarray(timesteps)
    if num_steps is not None and num_steps != ts.size:
      raise ArgumentError("num_steps",
                          f"num_steps={num_steps!r} disagrees with len(timesteps)={ts.size}.")
    return respace(schedule, ts)
  K = schedule.num_timesteps if num_steps is None else num_steps
  return respace(schedule, grid_timesteps(schedule, K, spacing))
