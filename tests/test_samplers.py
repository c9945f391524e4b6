"""Tests of the sampling engine and the samplers with analytic models (no training).

Analytic denoisers:
  * Gaussian data x0 ~ N(μ, diag s²): with α = √ᾱ, σ² = 1-ᾱ,
      E[x0|x_t] = μ + α s²/(α² s² + σ²) (x_t - α μ),
    and the probability-flow ODE maps x at ᾱ_a to ᾱ_b by the monotone map
    between the Gaussian marginals N(α μ, α² s² + σ²) (per dimension):
      x_b = α_b μ + √(ᾱ_b s² + 1-ᾱ_b)/√(ᾱ_a s² + 1-ᾱ_a) · (x_a - α_a μ);
    with ᾱ_b = 1: x_0 = μ + s (x_T - √ᾱ_T μ)/√(ᾱ_T s² + 1-ᾱ_T).
  * A Gaussian mixture Σ_k w_k N(m_k, s_k²): E[x0|x_t] = Σ_k r_k(x_t) E_k[x0|x_t]
    with responsibilities r_k ∝ w_k N(x_t; α m_k, α² s_k² + σ²).
In both, ε̂ = (x_t - α E[x0|x_t])/σ.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import diffusion_jax as dj
from diffusion_jax import samplers
from diffusion_jax.sampling import (SampleOutput, logsnr_timesteps,
                                    make_invert_fn, make_sample_fn,
                                    sampling_schedule, slerp)
from diffusion_jax.schedules import get_betas

ALL = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "heun")


# ----------------------------------------------------------------------------
# Analytic models.
# ----------------------------------------------------------------------------


def gaussian_model(schedule, mu, s):
  mu, s = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32)

  def model_fn(params, x, t, cond):
    ab = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))
    a = jnp.sqrt(ab)
    x0 = mu + a * s ** 2 / (ab * s ** 2 + 1.0 - ab) * (x - a * mu)
    return (x - a * x0) / jnp.sqrt(1.0 - ab)
  return model_fn


def mixture_model(schedule, w, m, s):
  w, m, s = (jnp.asarray(v, jnp.float32) for v in (w, m, s))

  def model_fn(params, x, t, cond):  # x [B, 1]
    ab = schedule.alphas_cumprod[t][:, None]
    a, var_t = jnp.sqrt(ab), ab * s ** 2 + 1.0 - ab               # [B, K]
    logp = jnp.log(w) - 0.5 * jnp.log(var_t) - 0.5 * (x - a * m) ** 2 / var_t
    r = jax.nn.softmax(logp, axis=-1)
    x0 = jnp.sum(r * (m + a * s ** 2 / var_t * (x - a * m)), -1, keepdims=True)
    return (x - a * x0) / jnp.sqrt(1.0 - ab)
  return model_fn


def pf_map(x, ab_a, ab_b, mu, s):
  """Exact PF-ODE map (float64) for Gaussian data from ᾱ_a to ᾱ_b."""
  x, mu, s = (np.asarray(v, np.float64) for v in (x, mu, s))
  return (np.sqrt(ab_b) * mu + np.sqrt(ab_b * s ** 2 + 1 - ab_b)
          / np.sqrt(ab_a * s ** 2 + 1 - ab_a) * (x - np.sqrt(ab_a) * mu))


def alphas_cumprod64(name, T):
  return np.cumprod(1.0 - get_betas(name, T))


def fitted_order(num_steps, errors):
  return np.polyfit(np.log(1.0 / np.asarray(num_steps)), np.log(errors), 1)[0]


def step_noise(rng, batch, event, n):
  """The documented noise of step n for samples 0..B-1: row n of
  jax.random.normal(fold_in(rng, b), (K + 1, *event)) (any K >= n: the rows of
  JAX's counter-based threefry layout do not depend on the row count)."""
  rows = [jax.random.normal(jax.random.fold_in(rng, b), (n + 1,) + tuple(event))[n]
          for b in range(batch)]
  return np.stack([np.asarray(r, np.float64) for r in rows])


LIN100 = dj.get_schedule("linear", 100)
LIN1000 = dj.get_schedule("linear", 1000)


def linear_fake(params, x, t, cond):
  """A deterministic fake model: ε̂ = 0.3 x + 0.002 t."""
  return 0.3 * x + 0.002 * t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


# ----------------------------------------------------------------------------
# Exact single steps with fake deterministic models (NumPy float64).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_one_ddim_step_exact(eta):
  B, ta, tb = 3, 100, 600
  ab = alphas_cumprod64("linear", 1000)
  x_T = np.linspace(-1.5, 1.5, B * 2, dtype=np.float32).reshape(B, 2)
  rng = jax.random.key(7)
  f = make_sample_fn(linear_fake, LIN1000, shape=(B, 2), sampler="ddim", eta=eta,
                     timesteps=[ta, tb], return_trajectory=True)
  out = f(None, rng, x_T=x_T)
  x = x_T.astype(np.float64)
  eps = 0.3 * x + 0.002 * tb                      # the model receives t = 600
  x0 = (x - np.sqrt(1 - ab[tb]) * eps) / np.sqrt(ab[tb])
  sigma = eta * np.sqrt((1 - ab[ta]) / (1 - ab[tb]) * (1 - ab[tb] / ab[ta]))
  want = (np.sqrt(ab[ta]) * x0 + np.sqrt(1 - ab[ta] - sigma ** 2) * eps
          + sigma * step_noise(rng, B, (2,), 1))
  np.testing.assert_allclose(out.trajectory[1], want, rtol=1e-5, atol=1e-5)
  # The last step goes to x̂_0 with no noise, from t = 100.
  x1 = np.asarray(out.trajectory[1], np.float64)
  x0_last = (x1 - np.sqrt(1 - ab[ta]) * (0.3 * x1 + 0.002 * ta)) / np.sqrt(ab[ta])
  np.testing.assert_allclose(out.x0, x0_last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_one_ddpm_step_exact(variance):
  """Respaced DDPM (IDDPM §4): β' = 1 - ᾱ_b/ᾱ_a on the grid (a, b) = (100, 600)."""
  B, ta, tb, v = 3, 100, 600, 0.3
  ab = alphas_cumprod64("linear", 1000)

  def model_fn(params, x, t, cond):
    eps = linear_fake(params, x, t, cond)
    return jnp.concatenate([eps, jnp.full_like(eps, v)], -1) if variance == "learned_range" else eps

  x_T = np.linspace(-1.5, 1.5, B * 2, dtype=np.float32).reshape(B, 2)
  rng = jax.random.key(3)
  f = make_sample_fn(model_fn, LIN1000, shape=(B, 2), sampler="ddpm", variance=variance,
                     timesteps=[ta, tb], return_trajectory=True)
  out = f(None, rng, x_T=x_T)
  x = x_T.astype(np.float64)
  eps = 0.3 * x + 0.002 * tb
  x0 = (x - np.sqrt(1 - ab[tb]) * eps) / np.sqrt(ab[tb])
  beta = 1 - ab[tb] / ab[ta]
  beta_tilde = (1 - ab[ta]) / (1 - ab[tb]) * beta
  mean = (np.sqrt(ab[ta]) * beta / (1 - ab[tb]) * x0
          + np.sqrt(1 - beta) * (1 - ab[ta]) / (1 - ab[tb]) * x)
  frac = (v + 1) / 2
  var = {"fixed_small": beta_tilde, "fixed_large": beta,
         "learned_range": np.exp(frac * np.log(beta) + (1 - frac) * np.log(beta_tilde))}[variance]
  want = mean + np.sqrt(var) * step_noise(rng, B, (2,), 1)
  np.testing.assert_allclose(out.trajectory[1], want, rtol=1e-5, atol=1e-5)


def test_sampler_usable_as_python_object():
  """A manual Python loop over `ddim(...)` equals the scanned sample_fn."""
  sched = sampling_schedule(LIN100, 10)
  smp = samplers.ddim(sched)
  denoise = dj.sampling.make_denoise_fn(linear_fake, sched, None, None)
  x_T = jnp.linspace(-1, 1, 8).reshape(4, 2)
  step = jax.jit(lambda state, i, n: smp.step(state, samplers.StepInput(i, n, None), denoise))
  state = smp.init(x_T)
  for n, i in enumerate(range(9, -1, -1), 1):
    state, _ = step(state, jnp.int32(i), jnp.int32(n))
  f = make_sample_fn(linear_fake, LIN100, shape=(4, 2), sampler="ddim", num_steps=10)
  np.testing.assert_allclose(state.x, f(None, jax.random.key(0), x_T=x_T), rtol=1e-6, atol=1e-6)
  assert samplers.get_sampler("dpmpp_2m", sched).init(x_T).x.shape == (4, 2)


# ----------------------------------------------------------------------------
# Convergence to the exact probability-flow map (Gaussian data).
# ----------------------------------------------------------------------------

MU, S = [0.5, -1.0, 2.0, 0.0], [0.3, 0.1, 1.0, 0.05]


def _final_grid_error(schedule, name, T, sampler, timesteps, x_T):
  model = gaussian_model(schedule, MU, S)
  K = len(timesteps)
  f = make_sample_fn(model, schedule, shape=x_T.shape, sampler=sampler,
                     timesteps=timesteps, return_trajectory=True)
  x = f(None, jax.random.key(0), x_T=x_T).trajectory[K - 1]  # x at grid point 0
  ab = alphas_cumprod64(name, T)
  want = pf_map(x_T, ab[timesteps[-1]], ab[timesteps[0]], MU, S)
  return np.max(np.abs(np.asarray(x, np.float64) - want))


def _logsnr_uniform(name, T, K, lo=-4.0, hi=3.0):
  ab = alphas_cumprod64(name, T)
  lam = 0.5 * np.log(ab / (1 - ab))
  ts = np.sort(np.abs(lam[None] - np.linspace(lo, hi, K)[:, None]).argmin(1))
  assert len(np.unique(ts)) == K
  return ts


DETERMINISTIC = sorted(n for n, info in samplers.SAMPLERS.items() if not info.ancestral)


def test_every_sampler_declares_its_facts():
  assert set(DETERMINISTIC) >= {"ddim", "dpmpp_2m", "dpmpp_3m", "heun"}
  for name, info in samplers.SAMPLERS.items():
    assert (info.order is None) == info.ancestral, name
    assert info.default_spacing in dj.TIME_GRIDS, name


# Each continuous formulation with the prediction its network makes (EDM: the
# preconditioned x0 of `process.edm_preconditioning`).
FORMULATIONS = {"discrete": "eps", "vp_linear": "eps", "vp_cosine": "v", "edm": "edm",
                "flow": "flow"}


def process_time(proc, m):
  """The process time of model time m (1000 t, or σ itself for EDM)."""
  return m / getattr(proc, "time_scale", 1.0)


def process_gaussian_model(proc, prediction, mu, s):
  """model_fn(params, x, m, cond) of the exact denoiser of Gaussian data
  N(μ, diag s²) under the continuous process `proc`, in x of the process and
  model time m, outputting `prediction` ("edm": the raw network F of EDM's
  preconditioning, wrapped by `process.edm_preconditioning`)."""
  mu, s = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32)

  def exact(x, t):
    a, sg = (c.reshape((-1,) + (1,) * (x.ndim - 1)) for c in proc.alpha_sigma(t))
    x0 = mu + a * s ** 2 / (a * a * s ** 2 + sg * sg) * (x - a * mu)
    return x0, (x - a * x0) / sg, a, sg

  if prediction == "edm":
    sd = 0.5

    def net(params, x_in, c_noise, cond):          # F = (D - c_skip x)/c_out
      sigma = jnp.exp(4.0 * c_noise)
      c_skip, c_out, c_in, _ = dj.process.edm_coefficients(sigma, sd)
      b = lambda c: c[:, None]
      x = x_in / b(c_in)
      return (exact(x, sigma)[0] - b(c_skip) * x) / b(c_out)
    return dj.process.edm_preconditioning(net, sigma_data=sd)

  def model_fn(params, x, m, cond):
    x0, eps, a, sg = exact(x, process_time(proc, m))
    return dj.PREDICTIONS[prediction].target(x0, eps, a, sg)
  return model_fn


def _process_grid_error(formulation, sampler, K, x_T):
  """Max error at the last grid point (VP form) on the λ-uniform grid from -4 to 3."""
  proc = dj.get_process(formulation)
  prediction = FORMULATIONS[formulation]
  lam = np.linspace(3.0, -4.0, K)
  f = make_sample_fn(process_gaussian_model(proc, prediction, MU, S), proc, shape=x_T.shape,
                     sampler=sampler, timesteps=np.sort(proc.time(lam)),
                     prediction="x0" if prediction == "edm" else prediction,
                     return_trajectory=True)
  x = f(None, jax.random.key(0), x_T=x_T).trajectory[K - 1]
  ab = 1.0 / (1.0 + np.exp(-2.0 * lam))       # ᾱ of the VP form
  return np.max(np.abs(np.asarray(x, np.float64) - pf_map(x_T, ab[-1], ab[0], MU, S)))


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_ode_order(sampler, formulation):
  """Every registered deterministic sampler converges to the exact PF-ODE map
  (Gaussian data) with its declared order (diffrax's `test_ode_order`), on
  every formulation: the slope of log error against log step size, on
  log-SNR-uniform grids (λ from -4 to 3) of a near-continuous discrete
  schedule (cosine, T = 10000) and of each continuous process (continuous VP
  linear with ε, cosine with v, EDM with its preconditioning, flow matching
  with the velocity), lies within ±0.5 of `SAMPLERS[sampler].order`.
  (DPM-Solver++(3M) measures ≈ 2.6: its first step is first order.)"""
  x_T = jax.random.normal(jax.random.key(1), (16, 4))
  Ks = (10, 20, 40, 80)
  if formulation == "discrete":
    T = 10000
    schedule = dj.get_schedule("cosine", T)
    errs = [_final_grid_error(schedule, "cosine", T, sampler, _logsnr_uniform("cosine", T, K),
                              x_T) for K in Ks]
  else:
    errs = [_process_grid_error(formulation, sampler, K, x_T) for K in Ks]
  order = samplers.SAMPLERS[sampler].order
  assert abs(fitted_order(Ks, errs) - order) < 0.5, (order, errs)
  assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_ddim_full_chain_matches_pf_map():
  """DDIM η=0 lands on the exact x_T → x_0 map, x_0 = μ + s (x_T - √ᾱ_T μ)/√(ᾱ_T s² + 1-ᾱ_T),
  within O(1/K) (the last step, x̂_0 at ᾱ_0 = 1 - 1e-4, adds O(1e-4))."""
  mu, s = [0.5, -1.0, 2.0], [0.5, 1.0, 2.0]
  x_T = jax.random.normal(jax.random.key(2), (32, 3))
  want = pf_map(x_T, alphas_cumprod64("linear", 1000)[-1], 1.0, mu, s)
  errs = []
  for K in (100, 1000):
    f = make_sample_fn(gaussian_model(LIN1000, mu, s), LIN1000, shape=(32, 3),
                       sampler="ddim", num_steps=K)
    errs.append(np.max(np.abs(f(None, jax.random.key(0), x_T=x_T) - want) / (1 + np.abs(want))))
  assert errs[1] < 5e-3 and errs[1] < errs[0] / 5, errs


# ----------------------------------------------------------------------------
# Monte-Carlo: distributions.
# ----------------------------------------------------------------------------


def _assert_moments(x, mu, s, z=5.0):
  x, mu, s = np.asarray(x, np.float64), np.asarray(mu), np.asarray(s)
  n = x.shape[0]
  mean_z = (x.mean(0) - mu) / (s / np.sqrt(n))
  var_z = (x.var(0) / s ** 2 - 1) / np.sqrt(2.0 / n)
  assert np.all(np.abs(mean_z) < z) and np.all(np.abs(var_z) < z), (mean_z, var_z)


@pytest.mark.slow
@pytest.mark.parametrize("num_steps,variance,s", [
    (None, "fixed_small", [0.5, 2.0]),
    (None, "fixed_large", [0.5, 2.0]),
    # β' (fixed_large) is the exact reverse variance for unit-variance data at
    # any step size, so the respaced chain is exact too.
    (100, "fixed_large", [1.0, 1.0]),
])
def test_ddpm_reproduces_gaussian_moments(num_steps, variance, s):
  mu, n = [0.5, -1.0], 10000
  f = make_sample_fn(gaussian_model(LIN1000, mu, s), LIN1000, shape=(n, 2),
                     sampler="ddpm", num_steps=num_steps, variance=variance)
  _assert_moments(f(None, jax.random.key(0)), mu, s)


W, M, SM = [0.2, 0.5, 0.3], [-2.0, 0.0, 2.0], [0.2, 0.3, 0.15]


@pytest.mark.slow
@pytest.mark.parametrize("sampler,num_steps", [("ddpm", None), ("ddim", 200), ("dpmpp_2m", 50)])
def test_mixture_weights_and_spreads(sampler, num_steps):
  n = 8000
  f = make_sample_fn(mixture_model(LIN1000, W, M, SM), LIN1000, shape=(n, 1),
                     sampler=sampler, num_steps=num_steps)
  x = np.asarray(f(None, jax.random.key(0)))[:, 0]
  label = np.digitize(x, [-1.0, 1.0])
  for k in range(3):
    xk = x[label == k]
    assert abs(len(xk) / n - W[k]) < 4 * np.sqrt(W[k] * (1 - W[k]) / n) + 0.005
    assert abs(xk.mean() - M[k]) < 0.1 * SM[k]
    assert abs(xk.std() / SM[k] - 1) < 0.07, (k, xk.std() / SM[k])


def test_inversion_roundtrip():
  """DDIM inversion then regeneration recovers x0, with a first-order error."""
  x0 = (np.asarray(M)[:, None] + np.asarray(SM)[:, None]
        * np.linspace(-2, 2, 8)[None]).reshape(-1, 1).astype(np.float32)
  model = mixture_model(LIN1000, W, M, SM)
  errs = []
  for K in (100, 200):
    x_T = make_invert_fn(model, LIN1000, shape=x0.shape, num_steps=K)(None, x0)
    gen = make_sample_fn(model, LIN1000, shape=x0.shape, sampler="ddim", num_steps=K)
    errs.append(np.max(np.abs(gen(None, jax.random.key(0), x_T=x_T) - x0)))
    assert np.all(np.isfinite(x_T)) and 0.7 < float(np.std(x_T)) < 1.5
  assert errs[1] < 0.02 and 1.6 < errs[0] / errs[1] < 2.5, errs


def test_invert_trajectory():
  x0 = jnp.ones((2, 3))
  out = make_invert_fn(linear_fake, LIN100, shape=(2, 3), num_steps=5,
                       return_trajectory=True)(None, x0)
  assert out.trajectory.shape == (6, 2, 3)
  np.testing.assert_array_equal(out.trajectory[0], x0)
  np.testing.assert_array_equal(out.trajectory[-1], out.x0)


# ----------------------------------------------------------------------------
# Engine properties.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ALL)
def test_one_trace_whatever_the_steps(sampler):
  """model_fn is traced once per model call of a step (`nfe_per_step`: 2 for
  Heun) per sample_fn, for 10 or 1000 steps; new params (same shapes) do not
  retrace."""
  counts = []
  for K in (10, 1000):
    count = [0]

    def model_fn(params, x, t, cond):
      count[0] += 1
      return params * x

    f = make_sample_fn(model_fn, LIN1000, shape=(2, 2), sampler=sampler, num_steps=K)
    x_T = jnp.ones((2, 2))
    f(jnp.float32(0.1), jax.random.key(0), x_T=x_T).block_until_ready()
    f(jnp.float32(0.2), jax.random.key(1), x_T=-x_T).block_until_ready()
    counts.append(count[0])
  assert counts == [samplers.SAMPLERS[sampler].nfe_per_step] * 2


def test_typed_and_legacy_keys_identical():
  f = make_sample_fn(linear_fake, LIN100, shape=(4, 3), sampler="ddpm", num_steps=20)
  a = f(None, jax.random.key(42))
  b = f(None, jax.random.PRNGKey(42))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, f(None, jax.random.key(43)))


def test_x_T_honoured_and_output_shapes():
  shape = (2, 4, 4, 1)
  x_T = jax.random.normal(jax.random.key(9), shape)
  f = make_sample_fn(linear_fake, LIN100, shape=shape, sampler="ddim", num_steps=10)
  out = f(None, jax.random.key(0), x_T=x_T)
  assert isinstance(out, jax.Array) and out.shape == shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, f(None, jax.random.key(1), x_T=x_T))
  g = make_sample_fn(linear_fake, LIN100, shape=shape, sampler="ddpm", num_steps=10,
                     return_trajectory=True, x0_steps=(1, 5, 10))
  res = g(None, jax.random.key(0), x_T=x_T)
  assert isinstance(res, SampleOutput)
  assert res.trajectory.shape == (11,) + shape and res.x0_predictions.shape == (3,) + shape
  np.testing.assert_array_equal(res.trajectory[0], x_T)
  np.testing.assert_array_equal(res.trajectory[-1], res.x0)
  # The x̂_0 of the last step is the sample itself (no noise at the end).
  np.testing.assert_allclose(res.x0_predictions[2], res.x0, atol=1e-6)
  h = make_sample_fn(linear_fake, LIN100, shape=shape, sampler="ddpm", num_steps=10,
                     x0_steps=(10, 1))
  res2 = h(None, jax.random.key(0), x_T=x_T)
  assert res2.trajectory is None
  np.testing.assert_array_equal(res2.x0_predictions, res.x0_predictions[::2][::-1])
  # One scalar per sample.
  assert make_sample_fn(linear_fake, LIN100, shape=(5,), num_steps=3)(
      None, jax.random.key(0)).shape == (5,)


def test_eta_adds_fresh_noise():
  x_T = jnp.ones((4, 3))
  f = make_sample_fn(linear_fake, LIN100, shape=(4, 3), sampler="ddim", num_steps=10, eta=0.5)
  a, b = f(None, jax.random.key(0), x_T=x_T), f(None, jax.random.key(1), x_T=x_T)
  assert np.min(np.abs(a - b)) > 1e-4
  g = make_sample_fn(linear_fake, LIN100, shape=(4, 3), sampler="ddim", num_steps=10)
  np.testing.assert_array_equal(g(None, jax.random.key(0), x_T=x_T),
                                g(None, jax.random.key(1), x_T=x_T))


@pytest.mark.parametrize("num_steps,spacing", [(None, "linspace"), (10, "trailing"), (7, "quadratic")])
def test_ddim_eta1_is_ddpm_posterior(num_steps, spacing):
  """η = 1: σ² = β̃ of the respaced schedule, and the chain equals DDPM's."""
  sched = sampling_schedule(LIN100, num_steps, spacing=spacing)
  ab, ab_prev = np.asarray(sched.alphas_cumprod), np.asarray(sched.alphas_cumprod_prev)
  np.testing.assert_allclose(samplers.ddim_sigma(ab, ab_prev, 1.0) ** 2,
                             sched.posterior_variance, rtol=1e-4, atol=1e-9)
  kw = dict(shape=(4, 3), num_steps=num_steps, spacing=spacing)
  x_T = jnp.linspace(-2, 2, 12).reshape(4, 3)
  a = make_sample_fn(linear_fake, LIN100, sampler="ddim", eta=1.0, **kw)(
      None, jax.random.key(5), x_T=x_T)
  b = make_sample_fn(linear_fake, LIN100, sampler="ddpm", **kw)(None, jax.random.key(5), x_T=x_T)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_learned_range_endpoints_respaced():
  """learned_range with v = ±1 equals fixed_large / fixed_small of the respaced chain."""
  for v, fixed in ((1.0, "fixed_large"), (-1.0, "fixed_small")):
    model = lambda p, x, t, c, v=v: jnp.concatenate(
        [linear_fake(p, x, t, c), jnp.full_like(x, v)], -1)
    kw = dict(shape=(4, 2), sampler="ddpm", num_steps=25)
    x_T = jnp.ones((4, 2))
    a = make_sample_fn(model, LIN1000, variance="learned_range", **kw)(
        None, jax.random.key(1), x_T=x_T)
    b = make_sample_fn(linear_fake, LIN1000, variance=fixed, **kw)(None, jax.random.key(1), x_T=x_T)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ALL)
def test_clipping_with_every_sampler(sampler):
  """An x0-predicting model that says 5: clipped to [-1, 1] at every step."""
  model = lambda p, x, t, c: jnp.full_like(x, 5.0)
  kw = dict(shape=(4, 3), sampler=sampler, num_steps=10, prediction="x0",
            return_trajectory=False, x0_steps=(1, 5))
  x_T = jnp.zeros((4, 3))
  if sampler == "ddim":
    raw = make_sample_fn(model, LIN100, **kw)(None, jax.random.key(0), x_T=x_T)
    np.testing.assert_allclose(raw.x0, 5.0, rtol=1e-4)
  for clip in (dict(clip_x0=1.0), dict(dynamic_threshold=0.9)):
    out = make_sample_fn(model, LIN100, **clip, **kw)(None, jax.random.key(0), x_T=x_T)
    np.testing.assert_allclose(out.x0, 1.0, rtol=1e-5)
    np.testing.assert_allclose(out.x0_predictions, 1.0, rtol=1e-5)


@pytest.mark.parametrize("sampler", ALL)
def test_bf16_model_keeps_float32_state(sampler):
  model = lambda p, x, t, c: (0.3 * x).astype(jnp.bfloat16)
  f = make_sample_fn(model, LIN100, shape=(2, 3), sampler=sampler, num_steps=5,
                     return_trajectory=True, x0_steps=(2,))
  out = f(None, jax.random.key(0), x_T=jnp.ones((2, 3), jnp.bfloat16))
  assert out.x0.dtype == out.trajectory.dtype == out.x0_predictions.dtype == jnp.float32


def test_samples_do_not_depend_on_batch_size():
  f3 = make_sample_fn(linear_fake, LIN100, shape=(3, 2), sampler="ddpm", num_steps=10)
  f8 = make_sample_fn(linear_fake, LIN100, shape=(8, 2), sampler="ddpm", num_steps=10)
  np.testing.assert_allclose(f3(None, jax.random.key(0)), f8(None, jax.random.key(0))[:3],
                             rtol=1e-6, atol=1e-6)
  # first_index: chunks of 3 starting at 0, 3, 6 are the 8-sample call (no retrace).
  chunks = [f3(None, jax.random.key(0), first_index=jnp.int32(i)) for i in (0, 3, 6)]
  np.testing.assert_allclose(np.concatenate(chunks)[:8], f8(None, jax.random.key(0)),
                             rtol=1e-6, atol=1e-6)


def test_cond_pytree_passed_through_without_retrace():
  count = [0]

  def model_fn(params, x, t, cond):
    count[0] += 1
    return 0.1 * x + cond["scale"] * cond["y"][:, None]

  f = make_sample_fn(model_fn, LIN100, shape=(3, 2), sampler="ddim", num_steps=5)
  x_T = jnp.zeros((3, 2))
  y = jnp.array([0.0, 1.0, -1.0])
  a = f(None, jax.random.key(0), x_T=x_T, cond={"y": y, "scale": jnp.float32(1.0)})
  b = f(None, jax.random.key(0), x_T=x_T, cond={"y": y, "scale": jnp.float32(2.0)})
  assert count[0] == 1
  assert np.abs(a[0]).max() < 1e-6 < np.abs(a[1] - b[1]).min()


@pytest.mark.parametrize("sampler", ALL)
def test_zero_terminal_snr_v_prediction(sampler):
  """From ᾱ_{T-1} = 0 (λ = -∞) every sampler stays finite and near the data."""
  sched = dj.get_schedule("linear", 1000, rescale_to_zero_terminal_snr=True)
  mu = 0.7

  def model_fn(params, x, t, cond):  # v for data ≡ mu: v = α ε - σ x0
    ab = sched.alphas_cumprod[t][:, None]
    a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    eps = jnp.where(s > 0, (x - a * mu) / jnp.where(s > 0, s, 1.0), x)
    return a * eps - s * mu

  f = make_sample_fn(model_fn, sched, shape=(4, 2), sampler=sampler, num_steps=10,
                     prediction="v")
  np.testing.assert_allclose(f(None, jax.random.key(0)), mu, atol=1e-4)


def test_slerp():
  z0, z1 = jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 2.0, 0.0])
  np.testing.assert_allclose(slerp(z0, z1, 0.0), z0, atol=1e-6)
  np.testing.assert_allclose(slerp(z0, z1, 1.0), z1, atol=1e-6)
  mid = slerp(z0, z1, 0.5)
  np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(2.0), 0.0], atol=1e-6)
  path = slerp(jnp.ones((2, 2)), -jnp.ones((2, 2)) + 1e-3, jnp.linspace(0, 1, 5))
  assert path.shape == (5, 2, 2) and np.all(np.isfinite(path))
  np.testing.assert_allclose(slerp(z0, 2 * z0, 0.5), 1.5 * z0, atol=1e-6)  # θ = 0: lerp


def test_logsnr_timesteps():
  for K in (2, 10, 100, 999):
    ts = logsnr_timesteps(LIN1000, K)
    assert len(ts) == K and ts[0] == 0 and ts[-1] == 999 and np.all(np.diff(ts) > 0)
  np.testing.assert_array_equal(logsnr_timesteps(LIN1000, 1000), np.arange(1000))


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_registry_and_unknown_sampler():
  assert set(ALL) <= set(samplers.SAMPLERS)
  with pytest.raises(ValueError, match=r"Unknown sampler 'lms'.*'ddim'.*'dpmpp_2m'"):
    make_sample_fn(linear_fake, LIN100, shape=(2, 2), sampler="lms")
  with pytest.raises(ValueError, match="does not take option"):
    samplers.get_sampler("ddpm", LIN100, eta=0.5)
  with pytest.raises(ValueError, match="already registered"):
    samplers.register_sampler("ddim", order=1)(samplers.ddim)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=101), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(eta=-0.1), "eta"),
    (dict(eta=1.5), "eta"),
    (dict(sampler="ddpm", eta=0.5), "eta"),
    (dict(sampler="dpmpp_2m", eta=0.5), "eta"),
    (dict(prediction="score"), "prediction"),
    (dict(variance="big"), "variance"),
    (dict(clip_x0=0.0), "clip_x0"),
    (dict(dynamic_threshold=1.5), "dynamic_threshold"),
    (dict(spacing="cubic"), "spacing"),
    (dict(x0_steps=(0,)), "x0_steps"),
    (dict(num_steps=10, x0_steps=(11,)), "x0_steps"),
    (dict(shape=()), "shape"),
    (dict(shape=(2, 0)), "shape"),
    (dict(timesteps=[5, 3]), "timesteps"),
    (dict(timesteps=[3, 5], num_steps=3), "num_steps"),
    (dict(sampler="ddpm", variance="learned", num_steps=10), "learned_range"),
])
def test_bad_arguments(kwargs, match):
  kw = dict(shape=(2, 2), sampler="ddim")
  kw.update(kwargs)
  with pytest.raises(ValueError, match=match):
    make_sample_fn(linear_fake, LIN100, **kw)


def test_bad_call_arguments():
  f = make_sample_fn(linear_fake, LIN100, shape=(2, 2), num_steps=5)
  with pytest.raises(ValueError, match=r"x_T must have shape \(2, 2\)"):
    f(None, jax.random.key(0), x_T=jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="rng"):
    f(None, jax.random.split(jax.random.key(0), 2))
  with pytest.raises(ValueError, match="rng"):
    f(None, jnp.zeros((2,), jnp.float32))
  g = make_sample_fn(lambda p, x, t, c: jnp.zeros((2, 5)), LIN100, shape=(2, 2), num_steps=5)
  with pytest.raises(ValueError, match="[Ss]hape"):
    g(None, jax.random.key(0))
