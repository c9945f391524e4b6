"""Continuous time: the processes, their grids, the EDM and flow-matching losses,
the stochastic samplers on every process, the exact likelihood, and the configs.

References are the float64 NumPy formulas of tests/np_reference.py, written
from the papers (score SDE, EDM, flow matching, SD3); the analytic models are
the exact denoisers of Gaussian data (tests/test_samplers.py). The ODE order
of every deterministic sampler on every process is tests/test_samplers.py::
test_ode_order.
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _tiny
import np_reference as ref
import diffusion_jax as dj
from diffusion_jax import losses, likelihood, process, schedules
from diffusion_jax.errors import ConfigError
from test_samplers import FORMULATIONS, _assert_moments, process_gaussian_model

PROCESS_NAMES = ("vp_linear", "vp_cosine", "edm", "flow")


def proc(name, **kw):
  return schedules.get_process(name, **kw)


def close(got, want, rtol=1e-5, atol=1e-6, msg=""):
  np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                             rtol=rtol, atol=atol, err_msg=msg)


# ----------------------------------------------------------------------------
# The processes.
# ----------------------------------------------------------------------------


def test_process_closed_forms_against_the_papers():
  t = np.linspace(0.01, 1.0, 50)
  p = proc("vp_linear")
  a, s = p.alpha_sigma(t)
  close(a, ref.vp_linear_mean_coef(t), rtol=1e-13, atol=0)
  close(s, np.sqrt(1 - ref.vp_linear_mean_coef(t) ** 2), rtol=1e-12, atol=0)
  a, s = proc("flow").alpha_sigma(t)
  close(a, 1 - t, rtol=0, atol=0) and close(s, t, rtol=0, atol=0)
  a, s = proc("edm").alpha_sigma(80 * t)
  close(a, np.ones_like(t), rtol=0, atol=0) and close(s, 80 * t, rtol=0, atol=0)
  c = proc("vp_cosine", logsnr_min=-10.0, logsnr_max=10.0)
  close(c.logsnr(np.array([0.0, 1.0])), [10.0, -10.0], rtol=1e-12)
  # Without clipping it is the cosine schedule, α = cos(π t/2) (IDDPM with s = 0).
  wide = proc("vp_cosine", logsnr_min=-30.0, logsnr_max=30.0)
  close(wide.alpha_sigma(t)[0], np.cos(np.pi * t / 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_logsnr_inverse_point_and_vp(name):
  """t(λ(t)) = t in float64; `point` (float32 jnp) agrees with the float64
  forms; α² + σ² = 1 exactly when the process says it is VP."""
  p = proc(name)
  t = np.linspace(p.t_min, p.t_max * 0.999, 40)
  close(p.time(p.logsnr(t)), t, rtol=1e-9, atol=1e-12)
  a, s = p.alpha_sigma(t)
  pt = jax.jit(lambda t: schedules.point(p, t))(jnp.asarray(t, jnp.float32))
  close(pt.alpha, a, rtol=2e-6, atol=1e-7) and close(pt.sigma, s, rtol=2e-6, atol=1e-7)
  close(pt.logsnr, p.logsnr(t), rtol=1e-5, atol=2e-5)
  assert p.variance_preserving == np.allclose(a ** 2 + s ** 2, 1.0, atol=1e-12)
  assert p.zero_terminal_snr == (name == "flow")


def test_settings_are_validated_by_name():
  with pytest.raises(ValueError, match="sigma_max must be > 0.002"):
    proc("edm", sigma_max=0.001)
  with pytest.raises(ValueError, match="process 'flow' has no setting"):
    proc("flow", sigma_max=3.0)
  with pytest.raises(ValueError, match="Unknown process 've'"):
    proc("ve")
  with pytest.raises(ValueError, match="shift must be > 0"):
    proc("flow", shift=0.0)


# ----------------------------------------------------------------------------
# Time grids.
# ----------------------------------------------------------------------------


def test_karras_and_shifted_grids_are_the_papers():
  edm = proc("edm")
  got = dj.grid_timesteps(edm, 18, "karras")
  close(got, ref.karras_sigmas(18)[::-1], rtol=1e-12)        # EDM Eq. (5)
  flow = proc("flow", shift=3.0)
  uniform = np.arange(1, 11) / 10
  close(dj.grid_timesteps(flow, 10, "shifted"), ref.sd3_shift(uniform, 3.0), rtol=1e-12)
  close(dj.grid_timesteps(flow, 10, "trailing"), uniform, rtol=0)
  lam = proc("vp_linear").logsnr(dj.grid_timesteps(proc("vp_linear"), 7, "logsnr"))
  close(np.diff(lam), np.full(6, (lam[-1] - lam[0]) / 6), rtol=1e-9)


def test_zero_snr_top_is_kept_on_logsnr_grids():
  """Flow matching's t = 1 (λ = -∞) is the first point; the other K-1 span
  [λ(1 - 1/K), λ(t_eps)] uniformly (logsnr) or on the ρ-grid (karras)."""
  flow = proc("flow")
  for spacing in ("logsnr", "karras"):
    t = dj.grid_timesteps(flow, 5, spacing)
    assert t[-1] == 1.0 and np.all(np.diff(t) > 0), t
    close(t[[0, -2]], [flow.t_eps, 0.8], rtol=1e-12)
  sched = dj.sampling_schedule(flow, 5, spacing="logsnr")
  assert sched.zero_terminal_snr and float(sched.alphas_cumprod[-1]) == 0.0


def test_discrete_karras_grid_and_refusals():
  s = dj.get_schedule("linear", 1000)
  ts = dj.karras_timesteps(s, 12)
  assert ts[0] == 0 and ts[-1] == 999 and np.all(np.diff(ts) > 0)
  with pytest.raises(ValueError, match="'shifted' needs a continuous-time process"):
    dj.sampling_schedule(s, 10, spacing="shifted")
  with pytest.raises(ValueError, match="'leading' starts at t = 0"):
    dj.sampling_schedule(proc("flow"), 10, spacing="leading")
  with pytest.raises(ValueError, match="give num_steps"):
    dj.sampling_schedule(proc("flow"))
  with pytest.raises(ValueError, match="strictly increasing times"):
    dj.sampling_schedule(proc("flow"), timesteps=[0.5, 0.2])


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_sampling_schedule_is_the_vp_form(name):
  """ᾱ_i = sigmoid(2 λ_i), model times in `timesteps`, √(α² + σ²) in `scale`."""
  p = proc(name)
  t = dj.grid_timesteps(p, 9, "karras" if name == "edm" else "linspace")
  sched = dj.sampling_schedule(p, timesteps=t)
  lam = p.logsnr(t)
  ab = np.where(np.isneginf(lam), 0.0, 1 / (1 + np.exp(-2 * lam)))
  close(sched.alphas_cumprod, ab, rtol=2e-6, atol=1e-12)
  close(sched.timesteps, p.model_time(t), rtol=1e-7)
  assert sched.timesteps.dtype == jnp.float32
  if p.variance_preserving:
    assert sched.scale is None
  else:
    a, s = p.alpha_sigma(t)
    close(sched.scale, np.sqrt(a ** 2 + s ** 2), rtol=1e-7)


def test_discrete_schedule_is_unchanged():
  """The discrete schedule's pytree has no new leaf and integer timesteps."""
  s = dj.get_schedule("cosine", 100)
  assert s.scale is None and s.timesteps.dtype == jnp.int32
  r = dj.sampling_schedule(s, 10)
  assert r.scale is None and r.timesteps.dtype == jnp.int32
  assert schedules.model_time(s, jnp.array([3, 7])).tolist() == [3, 7]


# ----------------------------------------------------------------------------
# Predictions, preconditioning, losses (float64 references).
# ----------------------------------------------------------------------------


def test_flow_prediction_round_trip_and_sensitivity():
  """u = ε - x0; (x̂0, ε̂) from u at (α, σ) and the output-space facts of the
  table entry: ∂ε̂/∂u = α/(α+σ), (∂x̂0/∂u)² = 1/(√SNR + 1)²."""
  rng = np.random.default_rng(0)
  x0, eps = rng.normal(size=(2, 5, 3))
  a, s = np.array([0.9, 0.5, 0.1, 0.0, 1.0])[:, None], np.array([0.1, 0.5, 0.9, 1.0, 0.0])[:, None]
  a, s = a + 0 * x0, s + 0 * x0
  a[-1], s[-1] = 0.7, 0.3
  x = a * x0 + s * eps
  e = process.PREDICTIONS["flow"]
  u = e.target(x0, eps, a, s)
  close(u, eps - x0, rtol=0, atol=0)
  x0_hat, eps_hat = e.to_x0_eps(u, x, a, s)
  close(x0_hat, x0, rtol=1e-12, atol=1e-12) and close(eps_hat, eps, rtol=1e-12, atol=1e-12)
  close(e.eps_per_output(a, s), a / (a + s), rtol=0)
  snr = (a / s)[:3, 0] ** 2
  close(e.x0_per_output(snr), (s / (a + s))[:3, 0] ** 2, rtol=1e-12)


def test_edm_preconditioning_against_table_1():
  sigma = np.array([0.002, 0.1, 1.0, 80.0])
  got = jax.jit(lambda s: process.edm_coefficients(s, 0.5))(jnp.asarray(sigma, jnp.float32))
  for g, w in zip(got, ref.edm_precond(sigma)[:4]):
    close(g, w, rtol=2e-6, atol=1e-7)
  # D of an F that outputs the exact F target is the exact denoiser.
  fn = process_gaussian_model(proc("edm"), "edm", [0.5, -1.0], [0.3, 2.0])
  x = (np.random.default_rng(1).normal(size=(4, 2)) * 3).astype(np.float32)
  d = fn(None, jnp.asarray(x), jnp.asarray(sigma, jnp.float32), None)
  mu, sd = np.array([0.5, -1.0]), np.array([0.3, 2.0])
  want = mu + sd ** 2 / (sd ** 2 + sigma[:, None] ** 2) * (x - mu)
  close(d, want, rtol=2e-4, atol=2e-5)


def _fake_net(x_in, c):
  """A fixed nonlinear 'network' F(x_in, c) for the loss references (NumPy or jnp)."""
  xp = jnp if isinstance(x_in, jax.Array) else np
  return 0.3 * x_in + 0.2 * xp.tanh(x_in) + c.reshape((-1,) + (1,) * (x_in.ndim - 1))


def test_edm_loss_against_numpy():
  """λ(σ) ‖D - x0‖² of EDM Eq. (2), (7), (8) with EDM's log-normal σ."""
  rng = np.random.default_rng(2)
  x0, noise = rng.normal(size=(2, 8, 6)).astype(np.float32)
  key = jax.random.key(3)
  p = proc("edm")
  sigma = jax.jit(lambda k: losses.sample_times(k, 8, p, t_sampling="log_normal",
                                                t_mean=-1.2, t_std=1.2))(key)
  z = np.asarray(jax.random.normal(key, (8,), jnp.float32), np.float64)
  close(sigma, np.exp(-1.2 + 1.2 * z), rtol=2e-6)                 # ln σ ~ N(P_mean, P_std²)
  model = process.edm_preconditioning(lambda pr, x, c, cond: _fake_net(x, c), sigma_data=0.5)
  got = jax.jit(lambda x0, s, n: losses.training_losses(
      p, lambda x, t: model(None, x, t, None), x0, s, n, prediction="x0",
      weighting="edm", sigma_data=0.5)["loss"])(x0, sigma, noise)
  s64 = np.asarray(sigma, np.float64)
  want = ref.edm_loss(_fake_net, x0.astype(np.float64), s64, noise.astype(np.float64))
  close(got, want, rtol=2e-4, atol=1e-6)


def test_flow_loss_against_numpy():
  """‖u_θ(x_t, t) - (ε - x0)‖², x_t = (1-t) x0 + t ε, with SD3's shifted
  logit-normal t; the network sees 1000 t."""
  rng = np.random.default_rng(4)
  x0, noise = rng.normal(size=(2, 8, 6)).astype(np.float32)
  key = jax.random.key(5)
  p = proc("flow", shift=3.0)
  t = jax.jit(lambda k: losses.sample_times(k, 8, p, t_sampling="log_normal",
                                            t_mean=0.0, t_std=1.0))(key)
  z = np.asarray(jax.random.normal(key, (8,), jnp.float32), np.float64)
  close(t, ref.sd3_shift(1 / (1 + np.exp(-z)), 3.0), rtol=2e-6)     # logit-normal, shifted
  net = lambda x, m: _fake_net(x, m / 1000.0)
  got = jax.jit(lambda x0, t, n: losses.training_losses(
      p, net, x0, t, n, prediction="flow", weighting="none")["loss"])(x0, t, noise)
  want = ref.flow_loss(_fake_net, x0.astype(np.float64), np.asarray(t, np.float64),
                       noise.astype(np.float64))
  close(got, want, rtol=1e-5, atol=1e-6)


def test_uniform_times_and_weights_on_every_process():
  """Uniform training times lie in the process's range; min-SNR gives every
  prediction the x0-space weight min(SNR, γ) on a continuous process too."""
  for name in PROCESS_NAMES:
    p = proc(name)
    t = np.asarray(losses.sample_times(jax.random.key(0), 4000, p))
    lo, hi = p.train_range
    assert t.dtype == np.float32 and t.min() >= lo and t.max() <= hi
    assert abs(t.mean() - (lo + hi) / 2) < 0.03 * (hi - lo)
  p, gamma = proc("vp_linear"), 5.0
  t = jnp.asarray([0.02, 0.1, 0.4, 0.9], jnp.float32)
  x = jnp.zeros((4, 3))
  a, s = p.alpha_sigma(np.asarray(t, np.float64))
  snr = (a / s) ** 2
  for pred, sens in (("eps", 1 / snr), ("x0", 1.0 + 0 * snr), ("v", 1 / (snr + 1)),
                     ("flow", 1 / (np.sqrt(snr) + 1) ** 2)):
    w = losses.loss_weight(p, t, x, prediction=pred, weighting="min_snr", min_snr_gamma=gamma)
    close(w[:, 0], np.minimum(snr, gamma) * sens, rtol=3e-5, msg=pred)
    w = losses.loss_weight(p, t, x, prediction=pred, weighting="edm", sigma_data=0.5)
    close(w[:, 0], (snr + 4.0) * sens, rtol=3e-5, msg=pred)


def test_loss_settings_refused_on_a_process():
  p = proc("edm")
  x, t = jnp.zeros((2, 3)), jnp.ones((2,))
  with pytest.raises(ValueError, match="prediction='v' is defined for variance-preserving"):
    losses.training_losses(p, lambda x, t: x, x, t, x, prediction="v")
  with pytest.raises(ValueError, match="loss_type='vlb' is the variational bound"):
    losses.training_losses(p, lambda x, t: x, x, t, x, prediction="x0", loss_type="vlb")
  with pytest.raises(ValueError, match="variance='learned_range' is learned per step"):
    losses.training_losses(p, lambda x, t: x, x, t, x, prediction="x0",
                           variance="learned_range", loss_type="hybrid")
  with pytest.raises(ValueError, match="prediction='eps' cannot recover x0"):
    losses.check_loss_settings(prediction="eps", schedule=proc("flow"))
  with pytest.raises(ValueError, match="t_sampling='log_normal' needs a continuous"):
    losses.sample_times(jax.random.key(0), 2, dj.get_schedule("linear", 100),
                        t_sampling="log_normal")


# ----------------------------------------------------------------------------
# Stochastic samplers on every process: the data's moments.
# ----------------------------------------------------------------------------

MU2, S2 = [0.5, -1.0], [0.5, 2.0]
# (sampler, options, grid, steps): ancestral steps have an O(h) variance bias
# (the posterior variance of x̂_0 is not in the step), ≈ 1% at 1,000 steps.
STOCHASTIC = [("ddpm", {}, "logsnr", 1000), ("ddim", dict(eta=1.0), "logsnr", 1000),
              ("euler_ancestral", {}, "logsnr", 1000),
              ("edm_heun", dict(sampler_options=dict(s_churn=30.0, s_noise=1.0)), "logsnr", 150)]


@pytest.mark.parametrize("name", [n for n in FORMULATIONS if n != "discrete"])
@pytest.mark.parametrize("sampler,kw,spacing,steps", STOCHASTIC,
                         ids=[s[0] for s in STOCHASTIC])
def test_stochastic_samplers_reproduce_gaussian_moments(sampler, kw, spacing, steps, name):
  """Mean and variance of 10,000 samples of Gaussian data N(μ, diag s²)
  within 5 Monte-Carlo standard errors (the discretization bias of these
  step counts is below 3 of them)."""
  p = proc(name)
  prediction = FORMULATIONS[name]
  f = dj.make_sample_fn(process_gaussian_model(p, prediction, MU2, S2), p, shape=(10000, 2),
                        sampler=sampler, num_steps=steps, spacing=spacing,
                        prediction="x0" if prediction == "edm" else prediction, **kw)
  _assert_moments(f(None, jax.random.key(0)), MU2, S2)


def test_churn_needs_a_continuous_process():
  s = dj.get_schedule("linear", 100)
  f = dj.make_sample_fn(lambda p, x, t, c: 0.1 * x, s, shape=(2, 2), sampler="edm_heun",
                        num_steps=5, sampler_options=dict(s_churn=5.0))
  with pytest.raises(ValueError, match="needs a continuous-time process"):
    f(None, jax.random.key(0))
  with pytest.raises(ValueError, match="s_max must be a number >= s_min"):
    dj.make_sample_fn(lambda p, x, t, c: x, s, shape=(2, 2), sampler="edm_heun",
                      num_steps=5, sampler_options=dict(s_min=2.0, s_max=1.0))


def test_guidance_and_trace_count_on_a_process():
  """Classifier-free guidance composes with a process's sampler; one trace
  of the model per model call of a step, for 10 or 200 steps."""
  p = proc("flow")
  counts = []
  for K in (10, 200):
    count = [0]

    def model_fn(params, x, t, cond):
      count[0] += 1
      return params * x + cond["label"][:, None].astype(jnp.float32)

    guided = dj.classifier_free_guidance(model_fn, null_cond=dj.guidance.null_label(3))
    f = dj.make_sample_fn(guided, p, shape=(4, 2), sampler="edm_heun", num_steps=K,
                          prediction="flow")
    cond = {"label": jnp.array([0, 1, 2, 1]), "guidance_scale": jnp.float32(2.0)}
    out = f(jnp.float32(0.1), jax.random.key(0), cond=cond)
    assert np.all(np.isfinite(out))
    counts.append(count[0])
  assert counts == [2, 2]


def test_engine_properties_on_a_process():
  """On a continuous process the samples do not depend on the batch split
  (first_index), and DDIM inversion then regeneration returns the data."""
  p = proc("edm")
  fn = process_gaussian_model(p, "edm", [0.5, -1.0], [0.3, 2.0])
  kw = dict(sampler="euler_ancestral", num_steps=12, prediction="x0")
  f8 = dj.make_sample_fn(fn, p, shape=(8, 2), **kw)
  f4 = dj.make_sample_fn(fn, p, shape=(4, 2), **kw)
  key = jax.random.key(3)
  chunks = np.concatenate([f4(None, key, first_index=i) for i in (0, 4)])
  close(chunks, f8(None, key), rtol=1e-6, atol=1e-6)
  x0 = jnp.asarray([[0.4, -0.5], [0.7, -3.0], [0.5, 1.0]], jnp.float32)
  errs = []
  for K in (100, 400):
    grid = dict(num_steps=K, spacing="logsnr", prediction="x0")
    x_T = dj.make_invert_fn(fn, p, shape=(3, 2), **grid)(None, x0)
    again = dj.make_sample_fn(fn, p, shape=(3, 2), sampler="ddim", **grid)(None, key, x_T=x_T)
    errs.append(float(np.max(np.abs(np.asarray(again) - np.asarray(x0)))))
  assert errs[1] < 0.05 and errs[0] / errs[1] > 3.0, errs   # first order


def test_classifier_guidance_shift_on_a_non_vp_process():
  """On EDM's grid the guided ε̂ is ε̂ - s σ ∇_x log p(y|x) with σ and ∇ of the
  process's own x (the model's input), whatever the sampler's VP form."""
  p = proc("edm")
  sched = dj.sampling_schedule(p, 6, spacing="karras")
  w = jnp.array([[0.5, -1.0], [2.0, 0.3]])                     # logits = x @ w.T
  clf = lambda params, x, t: x @ w.T
  guided = dj.classifier_guidance(lambda params, x, t, c: jnp.zeros_like(x), clf, sched,
                                  prediction="x0", mode="eps")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2)), jnp.float32)
  labels, scale = jnp.array([0, 1]), 0.7
  for i in range(6):
    denoise = dj.make_denoise_fn(guided, sched, {"model": None, "classifier": None},
                                 {"label": labels, "classifier_scale": jnp.float32(scale)},
                                 prediction="x0", noise_process=p)
    c = schedules.point(sched, i)
    got = denoise(x, jnp.int32(i)).eps
    x_process = np.asarray(x, np.float64) * float(sched.scale[i])   # what the model sees
    logits = x_process @ np.asarray(w, np.float64).T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    grad = np.asarray(w, np.float64)[labels] - probs @ np.asarray(w, np.float64)
    sigma_process = float(c.sigma) * float(sched.scale[i])
    close(got, x / c.sigma - scale * sigma_process * grad, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# Exact likelihood.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_ode_likelihood_matches_the_gaussian_closed_form(name):
  """log p(x) by the probability-flow ODE with the exact denoiser equals the
  closed form of the affine flow between Gaussian marginals (Rademacher
  Hutchinson probes are exact for its diagonal Jacobian)."""
  p = proc(name)
  mu, s = np.array([0.3, -0.5, 0.8, 0.0]), np.array([0.5, 0.2, 1.0, 0.05])
  prediction = FORMULATIONS[name]
  fn = process_gaussian_model(p, prediction, mu, s)
  x = (mu + s * np.random.default_rng(0).normal(size=(6, 4))).astype(np.float32)
  out = jax.jit(lambda x: likelihood.ode_log_likelihood(
      p, lambda x_t, t: fn(None, x_t, t, None), x, jax.random.key(1),
      prediction="x0" if prediction == "edm" else prediction))(x)
  alpha = lambda t: p.alpha_sigma(np.float64(t))[0]
  sigma = lambda t: p.alpha_sigma(np.float64(t))[1]
  want = ref.gaussian_flow_logp(x.astype(np.float64), mu, s, alpha, sigma, p.t_min, p.t_max)
  close(out.logp, want, rtol=0, atol=2e-4 * x.shape[1])
  assert 20 < int(out.nfe) < 400


def test_ode_bits_per_dim_dequantization_and_offset():
  """bpd = -log p(x)/(D ln 2) + 7 at x = 2 (k + u)/256 - 1 (u the documented
  draw), and without dequantization at the data itself."""
  p = proc("flow")
  mu, s = np.zeros(4), np.full(4, 0.5)
  fn = process_gaussian_model(p, "flow", mu, s)
  den = lambda x_t, t: fn(None, x_t, t, None)
  k = np.array([[0, 64, 128, 255], [3, 200, 17, 90]], np.float32)
  x0 = k / 127.5 - 1.0
  rng = jax.random.key(7)
  out = jax.jit(lambda x0: likelihood.ode_bits_per_dim(p, den, x0, rng, prediction="flow"))(x0)
  u = np.asarray(jax.random.uniform(jax.random.split(rng)[0], x0.shape, jnp.float32))
  x = 2.0 * (k + u) / 256.0 - 1.0
  alpha = lambda t: p.alpha_sigma(np.float64(t))[0]
  sigma = lambda t: p.alpha_sigma(np.float64(t))[1]
  logp = ref.gaussian_flow_logp(x.astype(np.float64), mu, s, alpha, sigma, p.t_min, p.t_max)
  close(out["bpd"], -logp / (4 * math.log(2)) + 7.0, rtol=0, atol=2e-4)
  plain = likelihood.ode_bits_per_dim(p, den, x0, rng, prediction="flow", dequantize=False)
  logp0 = ref.gaussian_flow_logp(x0.astype(np.float64), mu, s, alpha, sigma, p.t_min, p.t_max)
  close(plain["bpd"], -logp0 / (4 * math.log(2)) + 7.0, rtol=0, atol=2e-4)
  with pytest.raises(ValueError, match="needs a continuous-time process"):
    likelihood.ode_log_likelihood(dj.get_schedule("linear", 100), den, x0, rng,
                                  prediction="eps")


# ----------------------------------------------------------------------------
# Configs: validation and a few training steps with the tiny test settings.
# ----------------------------------------------------------------------------


def _config(data_dir, name, overrides=None):
  return _tiny.make_config(data_dir, overrides, path=_tiny.ROOT / "configs" / f"{name}.py")


@pytest.mark.parametrize("overrides,match", [
    ({"diffusion.process": "ve"}, r"diffusion.process='ve'.*'discrete', 'edm', 'flow'"),
    ({"diffusion.process": "edm", "diffusion.sigma_max": -1.0}, r"diffusion.sigma_max=-1.0"),
    ({"diffusion.prediction": "v"}, r"diffusion.prediction='v'.*variance-preserving"),
    ({"diffusion.preconditioning": "edm", "diffusion.prediction": "flow"},
     r"diffusion.preconditioning='edm'.*diffusion.prediction='x0'"),
    ({"eval.method": "vlb"}, r"eval.method='vlb'.*diffusion.process='flow'"),
    ({"diffusion.loss_type": "hybrid", "diffusion.variance": "learned_range"},
     r"diffusion.variance='learned_range'.*process 'flow' needs"),
    ({"task": "distill", "distill.teacher_workdir": "x"},
     r"task='distill'.*needs diffusion.process='discrete'"),
    ({"sample.classifier_workdir": "x"}, r"sample.classifier_workdir.*process='flow'"),
    ({"diffusion.t_sampling": "beta"}, r"diffusion.t_sampling='beta'"),
    ({"sample.sampler": "edm_heun", "sample.s_churn": -1.0}, r"sample.s_churn.*>= 0"),
    ({"sample.sampler": "edm_heun", "sample.s_min": 2.0, "sample.s_max": 1.0},
     r"sample.s_max.*>= s_min"),
])
def test_config_errors_name_the_settings(data_dir, overrides, match):
  from diffusion_jax import configuration
  with pytest.raises(ConfigError, match=match):
    configuration.validate_config(_config(data_dir, "digits_flow", overrides))


def test_churn_settings_reach_the_sampler(data_dir):
  """sample.s_churn/s_min/s_max/s_noise are EDM Heun's options (None keeps
  its default S_max = inf); other samplers get none of them."""
  from diffusion_jax.tasks.base import sampler_options
  config = _config(data_dir, "digits_edm", {"sample.s_churn": 40.0, "sample.s_min": 0.05,
                                             "sample.s_noise": 1.003})
  assert sampler_options(config) == {"s_churn": 40.0, "s_min": 0.05, "s_noise": 1.003}
  config.sample.s_max = 50.0
  assert sampler_options(config)["s_max"] == 50.0
  config.sample.sampler = "euler"
  assert sampler_options(config) == {}


def test_discrete_config_refuses_continuous_settings(data_dir):
  from diffusion_jax import configuration
  for overrides, match in (({"eval.method": "ode"}, "eval.method='ode' needs a continuous"),
                           ({"diffusion.t_sampling": "log_normal"},
                            "diffusion.t_sampling='log_normal'"),
                           ({"sample.sampler": "edm_heun", "sample.s_churn": 5.0},
                            "sample.s_churn=5.0 .*continuous-time")):
    with pytest.raises(ConfigError, match=match):
      configuration.validate_config(_tiny.make_config(data_dir, overrides))


def test_configs_build(data_dir):
  """digits_edm, digits_flow and cifar10_edm are valid configs of the stated
  size (cifar10_edm: shapes only, no data)."""
  from diffusion_jax import configuration, conditioning, models, tasks
  for name in ("digits_edm", "digits_flow"):
    config = _tiny.load_config_file(_tiny.ROOT / "configs" / f"{name}.py")
    config.data.data_dir = data_dir
    configuration.validate_config(config)
  config = _tiny.load_config_file(_tiny.ROOT / "configs" / "cifar10_edm.py")
  spec = conditioning.DataSpec(32, 3, None)
  net = tasks.get_task("diffusion").model(config, spec)
  shapes = jax.eval_shape(functools.partial(models.init_params, net, spec), jax.random.key(0))
  assert models.count_params(shapes) == 53_634_563
  assert isinstance(configuration.build_schedule(config), schedules.EDM)


@pytest.mark.slow
def test_tiny_training_sampling_and_ode_eval(tmp_path_factory):
  """digits_edm and digits_flow with the tiny settings: 3 train steps, then
  --mode=sample and --mode=eval (the ODE likelihood), as CLI runs side by
  side (tests/_tiny.py's environment and compilation cache)."""
  data_dir, cache_dir = _tiny.session_dirs(tmp_path_factory)
  env = _tiny.env(cache_dir)
  tiny = {"train.num_steps": 3, "train.log_every": 1, "eval.max_examples": 4,
          "eval.batch_size": 4}
  runs = {name: tmp_path_factory.mktemp(name) for name in ("digits_edm", "digits_flow")}
  for mode in ("train", "sample", "eval"):
    _tiny.run_all_ok([(_tiny.cli_args(str(w), data_dir, tiny, mode=mode,
                                      config=f"configs/{name}.py"), env)
                      for name, w in runs.items()])
  for name, w in runs.items():
    images = np.load(w / "samples.npz")["images"]
    assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8, name
    result = json.loads((w / "eval.json").read_text())
    assert result["method"] == "ode" and 0 < result["bits_per_dim"] < 30, (name, result)
  # diffusion_jax.load returns the network as the sampler calls it: EDM's
  # preconditioning around it (its prediction is then x0), flow's velocity as is.
  from diffusion_jax import runs as runs_lib
  for name, w in runs.items():
    loaded, run = dj.load(str(w)), runs_lib.load_run(str(w))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.full((2,), 0.7, jnp.float32)
    raw = run.model_fn(run.params, x, t, None)
    want = (process.edm_preconditioning(run.model_fn, sigma_data=run.config.diffusion.sigma_data)
            (run.params, x, t, None) if name == "digits_edm" else raw)
    np.testing.assert_allclose(loaded.model_fn(loaded.params, x, t, None), want, rtol=1e-5, atol=1e-6)
    assert loaded.prediction == ("x0" if name == "digits_edm" else "flow"), (name, loaded.prediction)
    assert name == "digits_flow" or not np.allclose(raw, want)
