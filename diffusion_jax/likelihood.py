"""Exact likelihood by the probability-flow ODE (Song et al. 2021, §4.3 and App. D).

For a continuous-time process x_t = α(t) x_0 + σ(t) ε the probability-flow ODE
is integrated in its VP form y = x/√(α² + σ²), with the angle φ = arctan(σ/α)
as the time variable (α_y = cos φ, σ_y = sin φ), so that the integration runs
over the finite interval [φ(t_min), φ(t_max)] ⊂ [0, π/2] for every process,
the zero-SNR end of flow matching (φ = π/2) included:

    dy/dφ = f(y, φ) = cos φ · ε̂(y, φ) - sin φ · x̂_0(y, φ),

with (x̂_0, ε̂) from the model through the one adapter
(`process.denoise_output`). Along a solution, d log p_φ(y)/dφ = -∇·f, hence
for data x placed at t_min (y_0 = x/s_0, s = √(α² + σ²)):

    log p(x) = log N(y(φ_1); 0, I) + ∫_{φ_0}^{φ_1} ∇·f dφ - D log s_0,

the prior being the sampler's N(0, I) in the VP form. ∇·f is estimated with
Hutchinson's trace estimator z^T (∂f/∂y) z, z ~ Rademacher (or N(0, I)), one
z per example for the whole solve (jax.jvp: one forward and tangent pass of
the model per evaluation). The ODE is solved by an adaptive Dormand-Prince
5(4) method with the absolute and relative tolerances of score SDE (1e-5,
scipy's RK45), jointly over the batch.

Bits per dimension of 8-bit data (`ode_bits_per_dim`): with uniform
dequantization y = (k + u)/256, x = 2y - 1, u ~ U[0, 1)^D (the `dequantize`
of `data.pipeline`), Jensen's inequality gives

    -log₂ P(k) <= E_u[-log₂ p(x)]/D + 7      (bits/dim; 8 - log₂ 2 for [-1, 1])

which is score SDE's offset. The estimate is unbiased in u and z.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax import process
from diffusion_jax._checks import ArgumentError, check_choice, check_int, check_number
from diffusion_jax.schedules import Process

__all__ = ["HUTCHINSON", "ODEResult", "dopri5", "ode_log_likelihood", "ode_bits_per_dim"]

HUTCHINSON = ("rademacher", "gaussian")
_LN2 = math.log(2.0)

# Dormand & Prince 1980, the RK5(4)7FM pair (FSAL): nodes, stages, 5th-order
# weights, and 5th minus 4th-order weights (the error estimate).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
      -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


def _combine(y, ks, coefs, h):
  """y + h Σ_j coefs[j] ks[j] over pytrees; ks: the stacked stages [7, ...]."""
  return jax.tree.map(lambda y0, k: y0 + h * jnp.tensordot(coefs, k, axes=1).astype(y0.dtype),
                      y, ks)


def dopri5(f: Callable, y0, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
           max_steps: int = 4096):
  """Integrates dy/dt = f(t, y) from t0 to t1 > t0 (y a pytree of float32
  arrays) by the adaptive Dormand-Prince 5(4) method; one error norm (RMS of
  err/(atol + rtol max(|y|, |y_new|))) over all leaves. Under jit; a
  `lax.while_loop` over steps with a `lax.scan` over the stages, so f is
  traced twice whatever the number of steps. Returns (y(t1), number of f
  evaluations, number of steps). If `max_steps` is reached before t1, y is NaN.
  """
  t0, t1 = float(t0), float(t1)
  A = jnp.asarray([list(row) + [0.0] * (7 - len(row)) for row in _A], jnp.float32)
  C = jnp.asarray(_C, jnp.float32)
  b5, e5 = jnp.asarray(_B5, jnp.float32), jnp.asarray(_E, jnp.float32)
  f0 = f(jnp.float32(t0), y0)
  h0 = jnp.float32(min(1e-2 * (t1 - t0), t1 - t0))

  def norm(err, ya, yb):
    sq = jax.tree.map(lambda e, a, b: jnp.sum(
        (e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))) ** 2), err, ya, yb)
    n = sum(x.size for x in jax.tree.leaves(err))
    return jnp.sqrt(sum(jax.tree.leaves(sq)) / n)

  def cond(state):
    t, _, _, _, steps, _ = state
    return (t < t1) & (steps < max_steps)

  def body(state):
    t, y, fy, h, steps, nfe = state
    h = jnp.minimum(h, t1 - t)

    def stage(ks, i):
      k = f(t + C[i] * h, _combine(y, ks, A[i], h))
      return jax.tree.map(lambda K, ki: K.at[i].set(ki), ks, k), None

    ks = jax.tree.map(lambda a: jnp.zeros((7,) + a.shape, a.dtype).at[0].set(a), fy)
    ks, _ = jax.lax.scan(stage, ks, jnp.arange(1, 7))
    y_new = _combine(y, ks, b5, h)
    err = _combine(jax.tree.map(jnp.zeros_like, y), ks, e5, h)
    e = norm(err, y, y_new)
    ok = jnp.isfinite(e) & (e <= 1.0)
    factor = jnp.clip(0.9 * jnp.where(e > 0, e, 1e-10) ** -0.2, 0.2, 10.0)
    factor = jnp.where(jnp.isfinite(e), factor, 0.2)
    pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(ok, u, v), a, b)
    t_new = jnp.where(ok, jnp.where(t1 - (t + h) < 1e-6 * (t1 - t0), t1, t + h), t)
    last = jax.tree.map(lambda K: K[6], ks)          # FSAL: f at the 5th-order point
    return (t_new, pick(y_new, y), pick(last, fy), h * factor, steps + 1, nfe + 6)

  state = (jnp.float32(t0), y0, f0, h0, jnp.int32(0), jnp.int32(1))
  t, y, _, _, steps, nfe = jax.lax.while_loop(cond, body, state)
  done = t >= t1
  y = jax.tree.map(lambda a: jnp.where(done, a, jnp.nan), y)
  return y, nfe, steps


class ODEResult(NamedTuple):
  logp: jax.Array         # [B] log p(x) in nats (x placed at t_min)
  prior_logp: jax.Array   # [B] log N(y(φ_1); 0, I)
  delta_logp: jax.Array   # [B] ∫ ∇·f dφ - D log s_0
  nfe: jax.Array          # [] model evaluations (each a forward + tangent pass)


def _angles(proc: Process, t_min):
  lam = lambda t: float(proc.logsnr(float(t)))
  return math.atan(math.exp(-lam(t_min))), math.atan2(1.0, math.exp(lam(proc.t_max)))


def ode_log_likelihood(proc: Process, denoiser, x, rng, *, prediction: str,
                       hutchinson: str = "rademacher", rtol: float = 1e-5,
                       atol: float = 1e-5, t_min: float | None = None,
                       max_steps: int = 4096) -> ODEResult:
  """log p(x) under the probability-flow ODE of a continuous process (module
  docstring), with x placed at t_min (default `proc.t_min`).

  Args:
    proc: a continuous `schedules.Process`.
    denoiser: `denoiser(x_t, t) -> output`, t the float32 model time [B]
      (`functools.partial(model_fn, params, cond=...)` style).
    x: [B, ...] float32 data.
    rng: the key of the Hutchinson probes.
    prediction: what the denoiser outputs (a name in `process.PREDICTIONS`).
    hutchinson: "rademacher" (exact for a diagonal Jacobian) or "gaussian".
  Returns an `ODEResult` ([B] arrays in nats).
  """
  if not isinstance(proc, Process):
    raise ArgumentError("process", "The probability-flow likelihood needs a continuous-time "
                                   "process (schedules.PROCESSES); a discrete schedule has its "
                                   "variational bound (losses.bits_per_dim).")
  process.check_prediction(prediction, proc)
  check_choice("hutchinson", hutchinson, HUTCHINSON)
  check_number("rtol", rtol, 0.0, low_open=True)
  check_number("atol", atol, 0.0, low_open=True)
  check_int("max_steps", max_steps, 1)
  t_min = proc.t_min if t_min is None else check_number("t_min", t_min, 0.0, proc.t_max,
                                                         low_open=True, high_open=True)
  phi0, phi1 = _angles(proc, t_min)
  x = jnp.asarray(x, jnp.float32)
  B, D = x.shape[0], math.prod(x.shape[1:])
  if hutchinson == "rademacher":
    z = jax.random.rademacher(rng, x.shape, jnp.float32)
  else:
    z = jax.random.normal(rng, x.shape, jnp.float32)

  def field(y, phi):
    a = jnp.maximum(jnp.cos(phi), 0.0)                     # cos(fl(π/2)) < 0
    s = jnp.sin(phi)
    lam = jnp.log(a) - jnp.log(s)
    t = proc.time(lam)
    x_in = y if proc.variance_preserving else proc.scale(t) * y
    m = jnp.full((B,), proc.model_time(t), jnp.float32)
    d = process.denoise_output(denoiser(x_in, m), y, a, s, prediction=prediction)
    return a * d.eps - s * d.x0

  def f(phi, state):
    y, _ = state
    dy, jz = jax.jvp(lambda y_: field(y_, phi), (y,), (z,))
    return dy, jnp.sum((jz * z).reshape(B, -1), axis=1)

  s0 = float(proc.scale(float(t_min)))
  y0 = x / s0
  (y1, div), nfe, _ = dopri5(f, (y0, jnp.zeros((B,), jnp.float32)), phi0, phi1,
                             rtol=rtol, atol=atol, max_steps=max_steps)
  flat = y1.reshape(B, -1)
  prior = -0.5 * jnp.sum(flat ** 2, axis=1) - 0.5 * D * math.log(2 * math.pi)
  delta = div - D * math.log(s0)
  return ODEResult(prior + delta, prior, delta, nfe)


def ode_bits_per_dim(proc: Process, denoiser, x0, rng, *, prediction: str,
                     dequantize: bool = True, **kwargs):
  """Bits/dim of 8-bit data x0 [B, ...] (in [-1, 1], `x/127.5 - 1`) under the
  probability-flow ODE: with `dequantize`, x = 2 (k + u)/256 - 1 for the
  pixel values k and u ~ U[0, 1)^D, and bpd = -log p(x)/(D ln 2) + 7, an
  upper bound on the discrete data's bits/dim in expectation (module
  docstring); without, the same formula at x0 itself. `kwargs`: those of
  `ode_log_likelihood`. Returns {"bpd": [B], "logp": [B] nats, "nfe": []}.
  """
  k_u, k_z = jax.random.split(rng)
  x0 = jnp.asarray(x0, jnp.float32)
  if dequantize:
    k = jnp.round((x0 + 1.0) * 127.5)
    x = 2.0 * (k + jax.random.uniform(k_u, x0.shape, jnp.float32)) / 256.0 - 1.0
  else:
    x = x0
  out = ode_log_likelihood(proc, denoiser, x, k_z, prediction=prediction, **kwargs)
  D = math.prod(x0.shape[1:])
  return {"bpd": -out.logp / (D * _LN2) + 7.0, "logp": out.logp, "nfe": out.nfe}
