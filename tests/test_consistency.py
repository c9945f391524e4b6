"""Consistency models (Song et al. 2023) with analytic models, no neural network.

References are float64 NumPy, written from the paper equations:
  * VE coordinates: y = x/√ᾱ_t, σ(t) = √((1-ᾱ_t)/ᾱ_t); PF ODE dy/dσ = (y - D)/σ.
  * f = the DDIM jump from t to t_min in VE coordinates, x̂0 + σ_min ε̂, in the
    form f = c_x x + c_D D with c_x = σ_min/√(1-ᾱ_t), c_D = 1 - σ_min/σ(t).
  * Euler: y_s = y_t + (σ_s - σ_t) ε̂ (= DDIM); Heun: EDM Alg. 1.
Gaussian data x0 ~ N(μ, diag s²) (tests/test_samplers.py): the exact denoiser
in VE coordinates is D(y, σ) = μ + s²/(s² + σ²)(y - μ), and the exact
consistency function with boundary t_min is
  f*(x, t) = pf_map(x, ᾱ_t → ᾱ_{t_min}) / √ᾱ_{t_min},
affine in x, so the per-index affine "network" D_θ = a[t] x + b[t] (prediction
"x0") contains it wherever c_D > 0 (every t > t_min; f = c_x x + c_D D_θ). With
a finite grid, CD's minimizer is the chain of teacher steps back to t_min (and
CT's, for the l2 metric and this affine family, the chain of exact-denoiser
Euler steps: E[f⁻(x_s)|x_t] = f⁻(E[x_s|x_t]) = f⁻(DDIM step)); those discrete
fixed points are computed in float64 too.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffusion_jax as dj
from diffusion_jax import consistency as cm
from diffusion_jax import samplers
from diffusion_jax.sampling import make_sample_fn

from test_samplers import alphas_cumprod64, fitted_order, gaussian_model, pf_map, step_noise

T = 1000
LIN = dj.get_schedule("linear", T)
AB = alphas_cumprod64("linear", T)                # float64 ᾱ
SIG = np.sqrt((1.0 - AB) / AB)                    # float64 σ(t)
MU, S = np.array([0.5, -1.0]), np.array([0.3, 1.2])


# ----------------------------------------------------------------------------
# Float64 references and analytic models.
# ----------------------------------------------------------------------------


def jump_ref(t, t_min=0, ab=AB):
  """(c_x, c_D) of the DDIM jump t → t_min: c_x = σ_min/√(1-ᾱ_t), c_D = 1 - σ_min/σ_t."""
  sig = np.sqrt((1.0 - ab) / ab)
  return sig[t_min] / np.sqrt(1.0 - ab[t]), 1.0 - sig[t_min] / sig[t]


def x0_eps_ref(prediction, out, x, ab):
  """(x̂0, ε̂) from a raw output (DDPM Eq. (15); Salimans & Ho 2022 §4)."""
  out, x = np.asarray(out, np.float64), np.asarray(x, np.float64)
  a, s = np.sqrt(ab), np.sqrt(1.0 - ab)
  if prediction == "eps":
    return (x - s * out) / a, out
  if prediction == "x0":
    return out, (x - a * out) / s
  return a * x - s * out, s * x + a * out


def f_ref(prediction, out, x, t, t_min=0):
  """f = c_x x + c_D D, t int [B]."""
  ab = AB[t].reshape((-1,) + (1,) * (np.ndim(x) - 1))
  c_x, c_d = (c.reshape(ab.shape) for c in jump_ref(t, t_min))
  d, _ = x0_eps_ref(prediction, out, x, ab)
  return c_x * np.asarray(x, np.float64) + c_d * d


def ode_step_ref(solver, teacher64, prediction, x, t, s):
  """Euler (DDIM, in VE coordinates) / Heun on the exponential integrator
  (trapezoidal in λ = log(α/σ)). teacher64(x, t) -> output."""
  x = np.asarray(x, np.float64)
  ab_t, ab_s = AB[t][:, None], AB[s][:, None]
  sig_t, sig_s = SIG[t][:, None], SIG[s][:, None]
  d_t, eps = x0_eps_ref(prediction, teacher64(x, t), x, ab_t)
  y_e = x / np.sqrt(ab_t) + (sig_s - sig_t) * eps
  if solver == "euler":
    return np.sqrt(ab_s) * y_e
  x_e = np.sqrt(ab_s) * y_e
  d_s, _ = x0_eps_ref(prediction, teacher64(x_e, s), x_e, ab_s)
  # x_s = σ_s/σ_t x_t + σ_s ∫_{λ_t}^{λ_s} e^λ D(λ) dλ with D linear in λ between d_t, d_s.
  lam = lambda ab: 0.5 * np.log(ab / (1 - ab))
  h = lam(ab_s) - lam(ab_t)
  return x_e + np.sqrt(ab_s) * (h - 1 + np.exp(-h)) / h * (d_s - d_t)


def distance_ref(metric, a, b):
  diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1)
  if metric == "l2":
    return np.mean(diff ** 2, axis=1)
  c = 0.00054 * np.sqrt(diff.shape[1])
  return np.sqrt(np.sum(diff ** 2, axis=1) + c ** 2) - c


def fake(wx, wt):
  """A deterministic fake network w_x x + w_t t, (jnp, float64 NumPy) versions."""
  def jfn(x, t):
    return wx * x + wt * t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))

  def npfn(x, t):
    return wx * np.asarray(x, np.float64) + wt * np.asarray(t, np.float64).reshape(
        (-1,) + (1,) * (np.ndim(x) - 1))
  return jfn, npfn


def gaussian_teacher(mu=MU, s=S):
  model = gaussian_model(LIN, mu, s)
  return lambda x, t: model(None, x, t, None)


def denoiser64(y, sig, mu=MU, s=S):
  """Exact E[x0|y] for Gaussian data in VE coordinates (y = x0 + σ ε)."""
  return mu + s ** 2 / (s ** 2 + sig ** 2) * (y - mu)


def chain64(y, grid, k, solver, mu=MU, s=S):
  """The discrete fixed point: exact-denoiser steps from grid[k] back to grid[0], VE.
  Heun: the trapezoidal exponential step, y_s = y'_s + φ₂(h) (D'_s - D_t) in VE
  coordinates (the VP step divided by α_s), h = log(σ_t/σ_s)."""
  for j in range(k, 0, -1):
    st, ss = SIG[grid[j]], SIG[grid[j - 1]]
    d_t = denoiser64(y, st, mu, s)
    y_e = y + (ss - st) * (y - d_t) / st
    if solver == "euler":
      y = y_e
    else:
      h = np.log(st / ss)
      y = y_e + (h - 1 + np.exp(-h)) / h * (denoiser64(y_e, ss, mu, s) - d_t)
  return y


def f_star(x, t, t_min=0, mu=MU, s=S):
  return pf_map(x, AB[t], AB[t_min], mu, s) / np.sqrt(AB[t_min])


def exact_cm_denoiser(t_min=0, mu=MU, s=S):
  """A raw "x0" output D whose consistency function is f*: f* = c_x x + c_D D, so
  D = (f* - c_x x)/c_D for t > t_min (0 at t_min, where f ignores it). The
  affine map f* = A x + B and c_x, c_D are computed in float64, D in float32 (jnp)."""
  ab_m = AB[t_min]
  r = np.sqrt((ab_m * s ** 2 + 1 - ab_m) / (AB[:, None] * s ** 2 + 1 - AB[:, None]))
  c_x, c_d = (c[:, None] for c in jump_ref(np.arange(T), t_min))
  pos = np.arange(T)[:, None] > t_min
  c_d = np.where(pos, c_d, 1.0)
  # D = ((r - √ᾱ_m c_x) x + √ᾱ_m μ - r √ᾱ_t μ)/(√ᾱ_m c_D).
  a = np.where(pos, (r - np.sqrt(ab_m) * c_x) / (np.sqrt(ab_m) * c_d), 0.0)
  b = np.where(pos, (np.sqrt(ab_m) * mu - r * np.sqrt(AB[:, None]) * mu) / (np.sqrt(ab_m) * c_d),
               0.0)
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return lambda x, t: a[t] * x + b[t]


def gaussian_samples(key, n, mu=MU, s=S):
  return jnp.asarray(mu, jnp.float32) + jnp.asarray(s, jnp.float32) * jax.random.normal(
      key, (n, len(mu)))


# ----------------------------------------------------------------------------
# The parameterization.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("t_min", [0, 37])
def test_jump_coefficients_float64_reference(t_min):
  t = np.arange(t_min, T)
  c_x, c_d = jax.jit(functools.partial(cm.jump_coefficients, t_min=t_min))(LIN, t)
  want_x, want_d = jump_ref(t, t_min)
  np.testing.assert_allclose(c_x, want_x, rtol=2e-6)
  np.testing.assert_allclose(c_d, want_d, rtol=2e-6, atol=2e-7)
  # Exactly the boundary: x/√ᾱ_{t_min}, and no weight on the network.
  assert c_x[0] == LIN.sqrt_recip_alphas_cumprod[t_min] and c_d[0] == 0.0
  # c_D grows from 0 to ~1, linearly in σ - σ_min near the boundary (c_D σ = σ - σ_min);
  # c_x shrinks from 1/√ᾱ_{t_min} to σ_min: no 1/√ᾱ_t factor at high noise.
  assert np.all(np.diff(np.asarray(c_d)) > 0) and np.all(np.diff(np.asarray(c_x)) <= 0)
  assert np.all(np.asarray(c_x)[1:] < c_x[0]) and abs(c_x[-1] - SIG[t_min]) < 1e-4 * SIG[t_min]
  # Multi-dimensional t.
  got = cm.jump_coefficients(LIN, jnp.array([[t_min, 500], [999, t_min + 1]]), t_min=t_min)
  np.testing.assert_allclose(got[1], jump_ref(np.array([[t_min, 500], [999, t_min + 1]]),
                                              t_min)[1], rtol=2e-6, atol=2e-7)


jf = jax.jit(cm.consistency_function, static_argnames=("prediction", "t_min"))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t_min", [0, 37])
def test_boundary_condition_exact(prediction, t_min):
  """f(x, t_min) = x/√ᾱ_{t_min} bit for bit, whatever the network outputs."""
  x = jax.random.normal(jax.random.key(0), (5, 3, 2))
  outputs = [jax.random.normal(jax.random.key(1), (5, 3, 2)) * 1e6,
             jnp.full((5, 3, 2), jnp.inf), jnp.full((5, 3, 2), jnp.nan), jnp.zeros((5, 3, 2))]
  t = jnp.full((5,), t_min, jnp.int32)
  want = np.float32(LIN.sqrt_recip_alphas_cumprod[t_min]) * np.asarray(x)
  for out in outputs:
    got = jf(LIN, out, x, t, prediction=prediction, t_min=t_min)
    np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(want, np.asarray(x, np.float64) / np.sqrt(AB[t_min]), rtol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_consistency_function_float64_reference(prediction):
  B = 8
  t = np.array([0, 1, 5, 40, 200, 500, 900, 999])
  x = np.asarray(jax.random.normal(jax.random.key(2), (B, 3)))
  out = np.asarray(jax.random.normal(jax.random.key(3), (B, 3)))
  for t_min in (0, 1, 37):
    tt = np.maximum(t, t_min)
    got = jf(LIN, out, x, tt, prediction=prediction, t_min=t_min)
    want = f_ref(prediction, out, x, tt, t_min)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    # The same as x̂0 + σ_min ε̂ (the DDIM jump written with the network's ε̂).
    ab = AB[tt][:, None]
    x0r, epsr = x0_eps_ref(prediction, out, x, ab)
    np.testing.assert_allclose(want, np.where(tt[:, None] == t_min, x / np.sqrt(ab),
                                              x0r + SIG[t_min] * epsr), rtol=1e-9, atol=1e-9)


def test_consistency_model_fn_wraps_and_samples_in_one_step():
  jfn, _ = fake(0.3, 0.002)
  model_fn = lambda p, x, t, c: p * jfn(x, t)
  cm_fn = cm.consistency_model_fn(model_fn, LIN, prediction="v", t_min=2)
  x = jax.random.normal(jax.random.key(4), (4, 2))
  t = jnp.array([2, 10, 500, 999], jnp.int32)
  np.testing.assert_allclose(
      jax.jit(cm_fn)(1.5, x, t, None),
      f_ref("v", 1.5 * (0.3 * np.asarray(x) + 0.002 * np.asarray(t)[:, None]), x, t, 2),
      rtol=1e-5, atol=1e-5)
  # One step of the engine returns f(x_T, T-1) itself.
  f = make_sample_fn(cm_fn, LIN, shape=(4, 2), sampler="consistency", timesteps=[T - 1],
                     prediction="x0")
  x_T = np.linspace(-2, 2, 8, dtype=np.float32).reshape(4, 2)
  out = 1.5 * (0.3 * x_T.astype(np.float64) + 0.002 * (T - 1))
  np.testing.assert_allclose(f(1.5, jax.random.key(0), x_T=x_T),
                             f_ref("v", out, x_T, np.full(4, T - 1), 2), rtol=1e-5, atol=1e-5)


def test_zero_terminal_snr_end_is_finite():
  """At ᾱ = 0 (Lin et al. 2024) σ = ∞: c_x = σ_min, c_D = 1, so f = σ_min x + D;
  Heun falls back to Euler there."""
  sched = dj.get_schedule("linear", 100, rescale_to_zero_terminal_snr=True)
  ab0 = 1.0 - dj.schedules.get_betas("linear", 100, rescale_to_zero_terminal_snr=True)[0]
  sig_min = np.sqrt((1 - ab0) / ab0)                 # float64
  assert float(sched.alphas_cumprod[99]) == 0.0
  c_x, c_d = cm.jump_coefficients(sched, jnp.array([99]))
  np.testing.assert_allclose(c_x, sig_min, rtol=1e-6)
  assert float(c_d[0]) == 1.0
  x = jnp.ones((2, 3))
  out = jnp.full((2, 3), 0.25)                       # v = 0.25 at ᾱ = 0: x0 = -v
  t = jnp.full((2,), 99, jnp.int32)
  np.testing.assert_allclose(jf(sched, out, x, t, prediction="v"), sig_min - 0.25, rtol=1e-6)
  teacher = lambda x, t: 0.25 * x
  for solver in ("euler", "heun"):
    x_s = cm.pf_ode_step(teacher, sched, x, t, t - 1, prediction="v", solver=solver)
    assert np.all(np.isfinite(x_s))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t_min", [0, 37])
def test_teacher_initialized_f_is_the_ddim_jump_to_t_min(prediction, t_min):
  """A student that outputs the teacher's raw output has f = the teacher's
  one-step Euler (= DDIM) solution of the PF ODE from t to t_min, /√ᾱ_{t_min}:
  checked against the float64 VE Euler step of the reference and against
  `pf_ode_step`."""
  jteacher, np_teacher = fake(0.3, 0.002)
  x = np.asarray(jax.random.normal(jax.random.key(30), (6, 3)))
  t = np.array([t_min, t_min + 1, t_min + 20, 400, 800, 999])
  got = jf(LIN, jteacher(jnp.asarray(x), jnp.asarray(t)), x, t, prediction=prediction,
           t_min=t_min)
  want = ode_step_ref("euler", np_teacher, prediction, x, t, np.full(6, t_min)) / np.sqrt(
      AB[t_min])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
  step = cm.pf_ode_step(jteacher, LIN, jnp.asarray(x[1:]), jnp.asarray(t[1:]),
                        jnp.full((5,), t_min, jnp.int32), prediction=prediction)
  np.testing.assert_allclose(got[1:], np.asarray(step) * LIN.sqrt_recip_alphas_cumprod[t_min],
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# The teacher's ODE step.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("prediction", "solver", "clip_x0"))
def jstep(x, t, s, wx, wt, prediction, solver, clip_x0=None):
  teacher = lambda x, t: wx * x + wt * t.astype(jnp.float32)[:, None]
  return cm.pf_ode_step(teacher, LIN, x, t, s, prediction=prediction, solver=solver,
                        clip_x0=clip_x0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_euler_step_is_the_ddim_step(prediction):
  x = np.linspace(-1.5, 1.5, 6, dtype=np.float32).reshape(3, 2)
  t, s = np.array([600, 600, 600]), np.array([100, 100, 100])
  got = jstep(x, t, s, 0.3, 0.002, prediction, "euler")
  # The library's DDIM step on the teacher's (x̂0, ε̂)...
  out = 0.3 * x + 0.002 * t[:, None].astype(np.float32)
  x0, eps = dj.denoise(LIN, out, x, t, prediction=prediction)
  to = dj.Point(*(c[:, None] for c in dj.point(LIN, s)))
  np.testing.assert_allclose(got, samplers.exp_euler(x0, eps, to), rtol=1e-6, atol=1e-6)
  # ...DDIM Eq. (12) with σ = 0 in float64...
  x0r, epsr = x0_eps_ref(prediction, out, x, AB[t][:, None])
  want = np.sqrt(AB[s])[:, None] * x0r + np.sqrt(1 - AB[s])[:, None] * epsr
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # ...the VE Euler step of the reference, and the engine's DDIM step t → s.
  _, np_teacher = fake(0.3, 0.002)
  np.testing.assert_allclose(got, ode_step_ref("euler", np_teacher, prediction, x, t, s),
                             rtol=1e-5, atol=1e-5)
  model_fn = lambda p, x, t, c: 0.3 * x + 0.002 * t.astype(jnp.float32)[:, None]
  engine = make_sample_fn(model_fn, LIN, shape=(3, 2), sampler="ddim", timesteps=[100, 600],
                          prediction=prediction, return_trajectory=True)
  np.testing.assert_allclose(engine(None, jax.random.key(0), x_T=x).trajectory[1], got,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_heun_step_float64_reference(prediction):
  x = np.asarray(jax.random.normal(jax.random.key(5), (4, 2)))
  t, s = np.array([999, 600, 50, 1]), np.array([900, 100, 0, 0])
  got = jstep(x, t, s, 0.3, 0.002, prediction, "heun")
  _, np_teacher = fake(0.3, 0.002)
  np.testing.assert_allclose(got, ode_step_ref("heun", np_teacher, prediction, x, t, s),
                             rtol=2e-5, atol=2e-5)


def test_solver_orders_against_exact_pf_map():
  """Chained steps from g_K = 520 down to g_0 = 40 on Gaussian data (K = 10..80,
  halving steps): Euler converges with order ≈ 1, Heun ≈ 2 and is more accurate."""
  mu, s = [0.5, -1.0, 2.0, 0.0], [0.3, 0.1, 1.0, 0.05]
  teacher = gaussian_teacher(mu, s)
  x_T = jax.random.normal(jax.random.key(1), (16, 4))
  Ks, errs = (10, 20, 40, 80), {}
  for solver in ("euler", "heun"):
    step = jax.jit(lambda x, t, s_: cm.pf_ode_step(teacher, LIN, x, t, s_, prediction="eps",
                                                   solver=solver))
    errs[solver] = []
    for K in Ks:
      g = np.arange(40, 521, 480 // K)
      x = x_T
      for a, b in zip(g[:0:-1], g[-2::-1]):
        x = step(x, jnp.full((16,), a, jnp.int32), jnp.full((16,), b, jnp.int32))
      want = pf_map(x_T, AB[g[-1]], AB[g[0]], mu, s)
      errs[solver].append(np.max(np.abs(np.asarray(x, np.float64) - want)))
  assert abs(fitted_order(Ks, errs["euler"]) - 1.0) < 0.2, errs
  assert abs(fitted_order(Ks, errs["heun"]) - 2.0) < 0.3, errs
  assert all(h < e / 4 for h, e in zip(errs["heun"], errs["euler"])), errs


# ----------------------------------------------------------------------------
# The losses against float64 references.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("solver,metric,weighting,prediction,teacher_prediction", [
    ("euler", "l2", "uniform", "eps", "eps"),
    ("heun", "pseudo_huber", "inverse_gap", "v", "eps"),
    ("heun", "l2", "uniform", "x0", "v"),
    ("euler", "pseudo_huber", "uniform", "eps", "x0"),
])
def test_cd_loss_float64_reference(solver, metric, weighting, prediction, teacher_prediction):
  B, grid = 6, np.array([3, 20, 150, 400, 999])
  x0 = np.asarray(gaussian_samples(jax.random.key(6), B))
  n = np.array([0, 1, 2, 3, 3, 0], np.int32)
  noise = np.asarray(jax.random.normal(jax.random.key(7), (B, 2)))
  (student, s64), (target, tg64), (teacher, te64) = fake(0.3, 0.002), fake(0.2, -0.001), \
      fake(0.1, 0.003)
  loss = jax.jit(lambda x0, n, noise: cm.consistency_distillation_loss(
      student, target, teacher, LIN, grid, x0, n, noise, prediction=prediction,
      teacher_prediction=teacher_prediction, solver=solver, metric=metric,
      weighting=weighting))
  got = loss(x0, n, noise)
  t, s = grid[n + 1], grid[n]
  x_t = np.sqrt(AB[t])[:, None] * x0 + np.sqrt(1 - AB[t])[:, None] * noise
  x_s = ode_step_ref(solver, te64, teacher_prediction, x_t, t, s)
  f = f_ref(prediction, s64(x_t, t), x_t, t, grid[0])
  f_tgt = f_ref(prediction, tg64(x_s, s), x_s, s, grid[0])
  d = distance_ref(metric, f, f_tgt)
  w = np.ones(B) if weighting == "uniform" else 1.0 / (SIG[t] - SIG[s])
  np.testing.assert_array_equal(got["t"], t)
  np.testing.assert_allclose(got["distance"], d, rtol=2e-4, atol=1e-7)
  np.testing.assert_allclose(got["weight"], w, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], w * d, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("metric,weighting", [("l2", "uniform"), ("pseudo_huber", "inverse_gap")])
def test_ct_loss_float64_reference(metric, weighting):
  B, N, t_min, t_max = 6, 7, 2, 950
  x0 = np.asarray(gaussian_samples(jax.random.key(8), B))
  n = np.array([0, 1, 2, 3, 4, 5], np.int32)
  noise = np.asarray(jax.random.normal(jax.random.key(9), (B, 2)))
  (student, s64), (target, tg64) = fake(0.3, 0.002), fake(0.2, -0.001)
  loss = jax.jit(lambda N, x0, n, noise: cm.consistency_training_loss(
      student, target, LIN, N, x0, n, noise, prediction="eps", t_min=t_min, t_max=t_max,
      metric=metric, weighting=weighting))
  got = loss(jnp.int32(N), x0, n, noise)
  grid = np.floor(t_min + np.arange(N) * (t_max - t_min) / (N - 1) + 0.5).astype(int)
  t, s = grid[n + 1], grid[n]
  x_t = np.sqrt(AB[t])[:, None] * x0 + np.sqrt(1 - AB[t])[:, None] * noise
  x_s = np.sqrt(AB[s])[:, None] * x0 + np.sqrt(1 - AB[s])[:, None] * noise
  d = distance_ref(metric, f_ref("eps", s64(x_t, t), x_t, t, t_min),
                   f_ref("eps", tg64(x_s, s), x_s, s, t_min))
  w = np.ones(B) if weighting == "uniform" else 1.0 / (SIG[t] - SIG[s])
  np.testing.assert_array_equal(got["t"], t)
  np.testing.assert_allclose(got["loss"], w * d, rtol=2e-4, atol=1e-7)


def test_cd_loss_exact_teacher_initialized_and_wrong_students():
  """Exact teacher, Heun/Euler, grid step 5, Gaussian data:
  * student = target = f*: the loss is the solver error only (tiny for Heun);
  * student = target = the teacher's own denoiser (a freshly teacher-initialized
    student, θ⁻ = θ): f is the teacher's DDIM jump to t_min, so the loss only
    compares a one-step with a two-step jump: small (measured 2.8e-5);
  * a genuinely wrong student (f*'s network output + 0.1) against the exact
    target: clearly positive (measured 9.8e-3).
  (The teacher-initialized student against the exact target is not small,
  0.36: at high noise its f is ≈ E[x0|x_t], far from f*; only the one-step
  jump's first-order accuracy near the boundary is claimed, see below.)"""
  B = 4096
  x0 = gaussian_samples(jax.random.key(10), B)
  noise = jax.random.normal(jax.random.key(11), x0.shape)
  teacher, exact = gaussian_teacher(), exact_cm_denoiser()
  teacher_x0 = lambda x, t: dj.denoise(LIN, teacher(x, t), x, t)[0]
  dens = {"exact": exact, "teacher": teacher_x0, "wrong": lambda x, t: exact(x, t) + 0.1}
  grid = np.arange(0, T, 5)
  n = cm.sample_grid_indices(jax.random.key(12), B, grid.size)

  @functools.partial(jax.jit, static_argnames=("solver", "student", "target"))
  def mean_loss(solver, student, target):
    return cm.consistency_distillation_loss(
        dens[student], dens[target], teacher, LIN, grid, x0, n, noise, prediction="x0",
        teacher_prediction="eps", solver=solver)["loss"].mean()

  heun, euler = mean_loss("heun", "exact", "exact"), mean_loss("euler", "exact", "exact")
  assert heun < 1e-9 and heun < euler / 10 and euler < 1e-5, (heun, euler)
  init = mean_loss("heun", "teacher", "teacher")
  wrong = mean_loss("heun", "wrong", "exact")
  assert init < 1e-4 and wrong > 1e-3, (init, wrong)


def test_teacher_initialized_f_is_first_order_accurate_near_the_boundary():
  """Data narrower than σ_min (s = 0.002, 0.005; ε̂ = O(1) near the boundary, so
  f* moves away from y = x/√ᾱ_t at rate ≈ |ε̂| in σ): near t_min the
  teacher-initialized f (the one-step DDIM jump) is within a few % of σ - σ_min
  of f*, while the zeroth-order f = y (what c_skip ≈ 1 gives) is off by about
  σ - σ_min itself. Measured ratios 0.004-0.026 against 0.91-1.00."""
  mu, s = np.array([0.5, -1.0]), np.array([0.002, 0.005])
  B = 4096
  teacher = gaussian_teacher(mu, s)
  f_init = jax.jit(lambda x, t: cm.consistency_function(
      LIN, dj.denoise(LIN, teacher(x, t), x, t)[0], x, t, prediction="x0"))
  x0 = np.asarray(gaussian_samples(jax.random.key(22), B, mu, s), np.float64)
  eps = np.asarray(jax.random.normal(jax.random.key(23), x0.shape), np.float64)
  rms = lambda e: np.sqrt(np.mean(e ** 2, axis=0))
  for t in (1, 2, 3, 5):
    x_t = np.sqrt(AB[t]) * x0 + np.sqrt(1 - AB[t]) * eps
    want = f_star(x_t, t, 0, mu, s)
    f = np.asarray(f_init(jnp.asarray(x_t, jnp.float32), jnp.full((B,), t, jnp.int32)),
                   np.float64)
    d_sig = SIG[t] - SIG[0]
    r_init, r_y = rms(f - want) / d_sig, rms(x_t / np.sqrt(AB[t]) - want) / d_sig
    assert np.all(r_init < 0.06) and np.all(r_y > 0.5), (t, r_init, r_y)


def test_gradients_reach_only_the_student():
  x0 = gaussian_samples(jax.random.key(13), 8)
  noise = jax.random.normal(jax.random.key(14), x0.shape)
  n = jnp.arange(8, dtype=jnp.int32) % 3
  grid = np.array([0, 10, 300, 999])
  den = lambda p, x, t: p * x

  def total(p_student, p_target, p_teacher):
    return cm.consistency_distillation_loss(
        functools.partial(den, p_student), functools.partial(den, p_target),
        functools.partial(den, p_teacher), LIN, grid, x0, n, noise, prediction="eps",
        solver="heun")["loss"].sum()

  g = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(0.3, 0.2, 0.1)
  assert g[0] != 0 and g[1] == 0 and g[2] == 0

  def total_ct(p_student, p_target):
    return cm.consistency_training_loss(
        functools.partial(den, p_student), functools.partial(den, p_target), LIN, 4, x0, n,
        noise, prediction="eps")["loss"].sum()

  g = jax.jit(jax.grad(total_ct, argnums=(0, 1)))(0.3, 0.2)
  assert g[0] != 0 and g[1] == 0


# ----------------------------------------------------------------------------
# Learning with an affine per-index network.
# ----------------------------------------------------------------------------


def affine(params, x, t):
  """D_θ(x_t, t) = a[t] x_t + b[t] (prediction "x0"); params a, b [T, D]."""
  return params["a"][t] * x + params["b"][t]


def teacher_init():
  """a, b of the exact denoiser E[x0|x_t]: the student starts as the teacher."""
  ab = AB[:, None]
  a = np.sqrt(ab) * S ** 2 / (ab * S ** 2 + 1 - ab)
  return {"a": jnp.asarray(a, jnp.float32),
          "b": jnp.asarray(MU - a * np.sqrt(ab) * MU, jnp.float32)}


def train_affine(mode, grid, *, steps, batch, mu, lr=0.02):
  """Adam on the CD (exact Gaussian teacher, Heun) or CT loss; one lax.scan."""
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))
  teacher, N = gaussian_teacher(), grid.size

  def loss_fn(p, tp, key):
    k_n, k_eps, k_x = jax.random.split(key, 3)
    x0 = gaussian_samples(k_x, batch)
    n = cm.sample_grid_indices(k_n, batch, N)
    noise = jax.random.normal(k_eps, x0.shape)
    den, tden = functools.partial(affine, p), functools.partial(affine, tp)
    if mode == "cd":
      terms = cm.consistency_distillation_loss(den, tden, teacher, LIN, grid, x0, n, noise,
                                               prediction="x0", teacher_prediction="eps",
                                               solver="heun")
    else:
      terms = cm.consistency_training_loss(den, tden, LIN, jnp.int32(N), x0, n, noise,
                                           prediction="x0", t_min=int(grid[0]),
                                           t_max=int(grid[-1]))
    return terms["loss"].mean()

  @jax.jit
  def run(params):
    def body(carry, k):
      p, tp, state = carry
      loss, g = jax.value_and_grad(loss_fn)(p, tp, jax.random.fold_in(jax.random.key(0), k))
      updates, state = opt.update(g, state, p)
      p = optax.apply_updates(p, updates)
      return (p, cm.update_target(tp, p, mu), state), loss
    (p, _, _), losses = jax.lax.scan(body, (params, params, opt.init(params)),
                                     jnp.arange(steps))
    return p, losses
  return run(teacher_init())


def grid_errors(params, grid, solver):
  """RMS over the marginal of x_t, per grid point and dimension, relative to s:
  f_θ against the discrete fixed point and against f*. Returns two maxima."""
  x0 = MU + S * np.asarray(jax.random.normal(jax.random.key(20), (4000, 2)))
  eps = np.asarray(jax.random.normal(jax.random.key(21), (4000, 2)))
  fn = jax.jit(lambda p, x, t: cm.consistency_function(LIN, affine(p, x, t), x, t,
                                                       prediction="x0", t_min=int(grid[0])))
  rms = lambda e: np.sqrt(np.mean((e / S) ** 2, axis=0)).max()
  e_fixed, e_star = [], []
  for k, t in enumerate(grid):
    x_t = np.sqrt(AB[t]) * x0 + np.sqrt(1 - AB[t]) * eps
    f = np.asarray(fn(params, jnp.asarray(x_t, jnp.float32), jnp.full((4000,), t, jnp.int32)),
                   np.float64)
    e_fixed.append(rms(f - chain64(x_t / np.sqrt(AB[t]), grid, k, solver)))
    e_star.append(rms(f - f_star(x_t, t, int(grid[0]))))
  return max(e_fixed), max(e_star)


def sample_moments(params, timesteps, n=20000):
  model_fn = cm.consistency_model_fn(lambda p, x, t, c: affine(p, x, t), LIN, prediction="x0")
  f = make_sample_fn(model_fn, LIN, shape=(n, 2), sampler="consistency", timesteps=timesteps,
                     prediction="x0")
  x = np.asarray(f(params, jax.random.key(3)), np.float64)
  return x.mean(0), x.std(0)


LIN41 = np.round(np.linspace(0, T - 1, 41)).astype(np.int64)


def fixed_point_moments(grid, timesteps, solver, n=400_000):
  """Mean and std of consistency sampling (float64, n draws) when f is the
  discrete fixed point `chain64` on `grid` (timesteps ⊂ grid): what CD
  converges to, within the solver's error of the data's moments."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 2))
  for i, t in enumerate(sorted(timesteps, reverse=True)):
    if i:  # Re-noise the previous f to t (the sampler's step).
      x = np.sqrt(AB[t]) * x + np.sqrt(1 - AB[t]) * rng.normal(size=(n, 2))
    x = chain64(x / np.sqrt(AB[t]), grid, int(np.flatnonzero(grid == t)[0]), solver)
  return x.mean(0), x.std(0)


@pytest.mark.slow
def test_consistency_distillation_learns_f_star():
  """CD (Heun, 41 grid points, μ = 0.9, 1000 Adam steps) from the teacher's
  initialization: f_θ reaches the discrete fixed point to 1e-3 s and f* to
  the grid's Heun error (0.044 s for this grid, < 0.06 s); one-step (and
  two-step) consistency sampling reproduces the mean and std of the fixed
  point within Monte-Carlo error, and those are within the solver's error
  of the data's."""
  params, losses = train_affine("cd", LIN41, steps=1000, batch=256, mu=0.9)
  assert float(losses[-20:].mean()) < 1e-3 * float(losses[:20].mean())
  e_fixed, e_star = grid_errors(params, LIN41, "heun")
  assert e_fixed < 1e-3 and e_star < 0.06, (e_fixed, e_star)
  n, z = 20000, 5.0
  for timesteps in ([T - 1], [int(LIN41[20]), T - 1]):
    mean, std = sample_moments(params, timesteps, n)
    want_mean, want_std = fixed_point_moments(LIN41, timesteps, "heun")
    assert np.all(np.abs(want_std / S - 1) < 0.06), want_std   # the solver's error
    assert np.all(np.abs(mean - want_mean) < z * S / np.sqrt(n)), (timesteps, mean)
    assert np.all(np.abs(std / want_std - 1) < z / np.sqrt(2 * n)), (timesteps, std)


@pytest.mark.slow
def test_consistency_training_learns_f_star_loosely():
  """CT (41 grid points, μ = 0.9, batch 4096, 1000 steps; no teacher): f_θ
  reaches its fixed point (the exact-denoiser Euler chain) to 0.05 s and f*
  to its O(Δt) bias (< 0.15 s); one-step samples have the data's mean and
  std to within 0.15 s and 15 %."""
  params, _ = train_affine("ct", LIN41, steps=1000, batch=4096, mu=0.9)
  e_fixed, e_star = grid_errors(params, LIN41, "euler")
  assert e_fixed < 0.05 and e_star < 0.15, (e_fixed, e_star)
  mean, std = sample_moments(params, [T - 1])
  assert np.all(np.abs(mean - MU) < 0.15 * S), mean
  assert np.all(np.abs(std / S - 1) < 0.15), std


# ----------------------------------------------------------------------------
# The sampler.
# ----------------------------------------------------------------------------


def x0_fake(params, x, t, cond):
  """A deterministic fake x0-predictor: x̂0 = 0.3 x + 0.002 t."""
  return 0.3 * x + 0.002 * t.astype(jnp.float32)[:, None]


def test_consistency_sampler_registered():
  assert "consistency" in samplers.SAMPLERS
  smp = samplers.get_sampler("consistency", dj.sampling.sampling_schedule(LIN, 3))
  assert smp.stochastic and isinstance(smp.init(jnp.ones((2, 2))), samplers.ConsistencyState)
  assert samplers.sampler_options("consistency") == ()


def test_consistency_sampler_one_step_exact():
  x_T = np.linspace(-2, 2, 8, dtype=np.float32).reshape(4, 2)
  f = make_sample_fn(x0_fake, LIN, shape=(4, 2), sampler="consistency", timesteps=[T - 1],
                     prediction="x0")
  for seed in (0, 1):   # no noise is added at the last (here: only) step
    np.testing.assert_allclose(f(None, jax.random.key(seed), x_T=x_T),
                               0.3 * x_T.astype(np.float64) + 0.002 * (T - 1), rtol=1e-6)


def test_consistency_sampler_two_steps_float64():
  B, ta, tb = 3, 300, 999
  x_T = np.linspace(-1.5, 1.5, B * 2, dtype=np.float32).reshape(B, 2)
  rng = jax.random.key(11)
  f = make_sample_fn(x0_fake, LIN, shape=(B, 2), sampler="consistency", timesteps=[ta, tb],
                     prediction="x0", return_trajectory=True, x0_steps=(1, 2))
  out = f(None, rng, x_T=x_T)
  x0_1 = 0.3 * x_T.astype(np.float64) + 0.002 * tb
  x1 = np.sqrt(AB[ta]) * x0_1 + np.sqrt(1 - AB[ta]) * step_noise(rng, B, (2,), 1)
  np.testing.assert_allclose(out.trajectory[1], x1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.x0_predictions[0], x0_1, rtol=1e-5, atol=1e-5)
  x1 = np.asarray(out.trajectory[1], np.float64)
  np.testing.assert_allclose(out.x0, 0.3 * x1 + 0.002 * ta, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Consistency training with a traced N, and the curriculum.
# ----------------------------------------------------------------------------


def test_ct_one_trace_for_every_num_points():
  count = [0]

  def den(x, t):
    count[0] += 1
    return 0.1 * x

  B, t_min, t_max = 64, 1, 998
  x0 = gaussian_samples(jax.random.key(15), B)
  noise = jax.random.normal(jax.random.key(16), x0.shape)

  @jax.jit
  def loss(N, key):
    n = cm.sample_grid_indices(key, B, N)
    return cm.consistency_training_loss(den, den, LIN, N, x0, n, noise, prediction="eps",
                                        t_min=t_min, t_max=t_max)

  counts = []
  for N in (2, 5, 11, 151, t_max - t_min + 1):
    terms = loss(jnp.int32(N), jax.random.key(N))
    counts.append(count[0])
    grid = np.floor(t_min + np.arange(N) * (t_max - t_min) / (N - 1) + 0.5).astype(int)
    t = np.asarray(terms["t"])
    assert np.all(np.isin(t, grid[1:])) and np.all(np.isfinite(terms["loss"]))
  assert counts == [2] * 5, counts   # student and target, traced once


@pytest.mark.parametrize("t_min,t_max", [(0, 999), (3, 99), (0, 1)])
def test_ct_grid_distinct_and_in_range(t_min, t_max):
  span = t_max - t_min
  grid_fn = jax.jit(lambda N: cm.ct_grid(jnp.arange(span + 1), N, t_min=t_min, t_max=t_max))
  for N in sorted(n for n in {2, 3, 7, span // 2 + 1, span, span + 1} if 2 <= n <= span + 1):
    g = np.asarray(grid_fn(jnp.int32(N)))[:N]
    want = np.floor(t_min + np.arange(N) * span / (N - 1) + 0.5).astype(int)
    np.testing.assert_array_equal(g, want)
    assert g[0] == t_min and g[-1] == t_max and np.all(np.diff(g) >= 1), (N, g)


def test_ct_num_points_and_ema_decay_hand_values():
  K = 100
  num = jax.jit(lambda k: cm.ct_num_points(k, K))          # s0 = 2, s1 = 150
  # N(k) = ⌈√(k/K ((s1+1)² - s0²) + s0²) - 1⌉ + 1 by hand:
  #   k = 0: √4 = 2 → 2;  k = 1: √(227.97 + 4) = 15.23 → 16;
  #   k = 50: √(11398.5 + 4) = 106.78 → 107;  k = K: √22801 = 151 → 151; k > K: clipped.
  for k, want in ((0, 2), (1, 16), (50, 107), (100, 151), (250, 151)):
    assert int(num(jnp.int32(k))) == want, k
  ks = np.arange(0, 1001)
  got = np.asarray(jax.jit(lambda k: cm.ct_num_points(k, 1000, 3, 40))(ks))
  want = np.ceil(np.sqrt(ks / 1000 * (41 ** 2 - 9) + 9) - 1) + 1
  np.testing.assert_array_equal(got, want)
  # μ(k) = exp(s0 log μ0 / N): μ0 at N = s0, 0.9^(2/151) at N = 151.
  ema = jax.jit(lambda N: cm.ct_ema_decay(N))
  np.testing.assert_allclose(ema(jnp.int32(2)), 0.9, rtol=1e-6)
  np.testing.assert_allclose(ema(jnp.int32(151)), 0.9 ** (2 / 151), rtol=1e-6)
  np.testing.assert_allclose(cm.ct_ema_decay(10, s0=4, mu0=0.95), math.exp(4 * math.log(0.95) / 10),
                             rtol=1e-6)
  assert float(cm.ct_ema_decay(10, mu0=0.0)) == 0.0


def test_update_target():
  tp = {"a": jnp.ones((2, 3)), "b": (jnp.zeros(4), jnp.full((1,), 2.0, jnp.bfloat16))}
  p = {"a": jnp.zeros((2, 3)), "b": (jnp.ones(4), jnp.full((1,), 4.0, jnp.bfloat16))}
  out = jax.jit(cm.update_target)(tp, p, jnp.float32(0.75))
  np.testing.assert_allclose(out["a"], 0.75)
  np.testing.assert_allclose(out["b"][0], 0.25)
  assert out["b"][1].dtype == jnp.bfloat16 and float(out["b"][1][0]) == 2.5
  g = jax.grad(lambda p: cm.update_target(tp, p, 0.5)["a"].sum())(p)
  assert float(jnp.abs(g["a"]).sum()) == 0.0


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def _cd(**kw):
  args = dict(prediction="eps")
  args.update(kw)
  grid = args.pop("grid", [0, 10, 999])
  den = lambda x, t: x
  x0 = jnp.zeros((2, 2))
  n = args.pop("n", jnp.zeros((2,), jnp.int32))
  sched = args.pop("schedule", LIN)
  return cm.consistency_distillation_loss(den, den, den, sched, grid, x0, n, x0, **args)


def _ct(**kw):
  args = dict(prediction="eps")
  args.update(kw)
  N = args.pop("num_points", 3)
  den = lambda x, t: x
  x0 = jnp.zeros((2, 2))
  return cm.consistency_training_loss(den, den, LIN, N, x0, jnp.zeros((2,), jnp.int32), x0,
                                      **args)


jnp_x = jnp.zeros((2, 2))


@pytest.mark.parametrize("call,match", [
    (lambda: _cd(solver="rk4"), r"solver 'rk4'.*'euler', 'heun'"),
    (lambda: _cd(metric="lpips"), r"metric 'lpips'.*'l2', 'pseudo_huber'"),
    (lambda: _cd(weighting="snr"), r"weighting 'snr'.*'uniform', 'inverse_gap'"),
    (lambda: _cd(prediction="score"), r"prediction 'score'.*'eps', 'x0', 'v'"),
    (lambda: _cd(teacher_prediction="score"), r"teacher_prediction 'score'"),
    (lambda: _cd(teacher_clip_x0=0.0), "teacher_clip_x0"),
    (lambda: _cd(teacher_variance="big"), "variance"),
    (lambda: _cd(grid=[0, 10, 10]), "grid must be a strictly increasing int array"),
    (lambda: _cd(grid=[10, 0]), "grid"),
    (lambda: _cd(grid=[5]), "grid"),
    (lambda: _cd(grid=[0.0, 10.0]), "grid"),
    (lambda: _cd(grid=[0, 1000]), r"grid.*\[0, 999\]"),
    (lambda: _cd(grid=[-1, 10]), "grid"),
    (lambda: _cd(grid=[[0, 10]]), "grid"),
    (lambda: _cd(n=jnp.array([0, 2], jnp.int32)), r"n must lie in \[0, 1\]"),
    (lambda: _cd(n=jnp.zeros((3,), jnp.int32)), "n must be an int array of shape"),
    (lambda: _cd(schedule=dj.respace(LIN, np.arange(0, 1000, 10))), "full training schedule"),
    (lambda: _ct(num_points=1), "num_points must be an integer in"),
    (lambda: _ct(num_points=1001), "num_points must be an integer in"),
    (lambda: _ct(num_points=2.5), "num_points must be an integer"),
    (lambda: _ct(num_points=3, t_min=5, t_max=5), "t_min"),
    (lambda: _ct(t_max=1000), "t_max"),
    (lambda: _ct(t_min=-1), "t_min"),
    (lambda: _ct(metric="l1"), "metric"),
    (lambda: jf(LIN, jnp_x, jnp_x, jnp.zeros(2, jnp.int32), prediction="eps", t_min=999),
     r"t_min must be an integer in \[0, 998\]"),
    (lambda: cm.consistency_function(LIN, jnp_x, jnp_x, jnp.array([3, 5]), prediction="eps",
                                     t_min=4), "t must be >= t_min"),
    (lambda: cm.consistency_model_fn(x0_fake, LIN, prediction="x1"), "prediction"),
    (lambda: cm.consistency_model_fn(x0_fake, dj.sampling.sampling_schedule(LIN, 10),
                                     prediction="x0"), "full training schedule"),
    (lambda: cm.pf_ode_step(lambda x, t: x, LIN, jnp_x, jnp.array([5, 5]), jnp.array([5, 6]),
                            prediction="eps"), "s must be < t"),
    (lambda: cm.consistency_distance(jnp_x, jnp_x, "l1"), "metric"),
    (lambda: cm.sample_grid_indices(jax.random.key(0), 4, 1), "num_points"),
    (lambda: cm.sample_grid_indices(jax.random.key(0), 0, 5), "batch_size"),
    (lambda: cm.ct_grid(jnp.arange(3), 3, t_min=5, t_max=5), "t_min and t_max"),
    (lambda: cm.ct_num_points(0, 0), "total_steps"),
    (lambda: cm.ct_num_points(0, 10, s0=1), "s0"),
    (lambda: cm.ct_num_points(0, 10, s0=5, s1=4), "s1"),
    (lambda: cm.ct_ema_decay(5, mu0=1.0), "mu0"),
    (lambda: cm.ct_ema_decay(5, s0=0), "s0"),
    (lambda: cm.update_target({"a": 1.0}, {"a": 2.0}, 1.5), "decay"),
    (lambda: cm.jump_coefficients(LIN, jnp.arange(3), t_min=1), "t must be >= t_min"),
    (lambda: cm.jump_coefficients(LIN, jnp.arange(3), t_min=-1), "t_min"),
    (lambda: cm.jump_coefficients(LIN, jnp.zeros(3)), "integer array"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_sigma_data_is_gone():
  """The jump parameterization has no σ_d: passing one is an error, not ignored."""
  for call in (lambda: cm.consistency_model_fn(x0_fake, LIN, prediction="x0", sigma_data=0.5),
               lambda: cm.consistency_function(LIN, jnp_x, jnp_x, jnp.zeros(2, jnp.int32),
                                               prediction="x0", sigma_data=0.5),
               lambda: _cd(sigma_data=0.5), lambda: _ct(sigma_data=0.5)):
    with pytest.raises(TypeError, match="sigma_data"):
      call()
  assert not hasattr(cm, "c_skip")


def test_traced_out_of_range_gives_nan():
  """A traced n or N out of range is never silently clamped: the loss is NaN."""
  x0 = jnp.zeros((2, 2))
  den = lambda x, t: x
  cd = jax.jit(lambda n: cm.consistency_distillation_loss(
      den, den, den, LIN, [0, 10, 999], x0, n, x0, prediction="eps")["loss"])
  assert np.isnan(cd(jnp.array([0, 2], jnp.int32))).tolist() == [False, True]
  ct = jax.jit(lambda N, n: cm.consistency_training_loss(
      den, den, LIN, N, x0, n, x0, prediction="eps", t_max=99)["loss"])
  assert np.all(np.isfinite(ct(jnp.int32(100), jnp.array([0, 98], jnp.int32))))
  assert np.all(np.isnan(ct(jnp.int32(101), jnp.array([0, 1], jnp.int32))))
  assert np.all(np.isnan(ct(jnp.int32(1), jnp.array([0, 0], jnp.int32))))
  assert np.isnan(ct(jnp.int32(5), jnp.array([3, 4], jnp.int32))).tolist() == [False, True]


def test_heun_is_accurate_from_the_cosine_schedules_last_index():
  """The cosine schedule's clipped last β puts σ(999) at 2·10⁴: EDM's σ-space
  Heun step from there multiplies the teacher's ε̂' - ε̂ by ~10³ (relative error
  7.9 on this chain in a float64 check); the exponential Heun step stays second
  order and beats Euler on the 18-point linspace grid (measured 0.007 vs 0.069)."""
  cos = dj.get_schedule("cosine", T)
  ab = alphas_cumprod64("cosine", T)
  assert np.sqrt((1 - ab[-1]) / ab[-1]) > 1e4
  teacher = functools.partial(gaussian_model(cos, [0.0], [1.0]), None, cond=None)
  grid = np.round(np.linspace(0, T - 1, 18)).astype(int)
  x_T = jax.random.normal(jax.random.key(3), (2000, 1))
  want = pf_map(x_T, ab[-1], ab[0], [0.0], [1.0])
  errs = {}
  for solver in ("euler", "heun"):
    step = jax.jit(lambda x, t, s_: cm.pf_ode_step(teacher, cos, x, t, s_, prediction="eps",
                                                   solver=solver))
    x = x_T
    for a, b in zip(grid[:0:-1], grid[-2::-1]):
      x = step(x, jnp.full((2000,), a, jnp.int32), jnp.full((2000,), b, jnp.int32))
    errs[solver] = float(np.sqrt(np.mean((np.asarray(x, np.float64) - want) ** 2)))
  assert errs["heun"] < 0.02 and errs["heun"] < errs["euler"] / 4, errs
