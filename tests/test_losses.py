"""Losses against independent float64 NumPy/SciPy references (tests/np_reference.py)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import np_reference as ref
from diffusion_jax.losses import (bits_per_dim, discretized_gaussian_log_likelihood,
                                  loss_weight, normal_kl, prior_bpd, sample_timesteps,
                                  training_losses, vlb_terms)
from diffusion_jax.schedules import get_schedule, make_timesteps, respace

f32 = functools.partial(np.asarray, dtype=np.float32)
LN2 = math.log(2.0)


@functools.lru_cache(maxsize=None)
def sched(name="cosine", T=1000, zero_snr=False):
  return get_schedule(name, T, rescale_to_zero_terminal_snr=zero_snr)


def bc(a, x):
  return np.asarray(a).reshape((-1,) + (1,) * (np.ndim(x) - 1))


def close(got, want, rtol=1e-5, atol=1e-6, msg=""):
  np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                             rtol=rtol, atol=atol, err_msg=msg)


# ----------------------------------------------------------------------------
# normal_kl.
# ----------------------------------------------------------------------------

KL_CASES = np.array([  # m1, logvar1, m2, logvar2
    [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, -0.5, 0.7], [-3.0, 2.0, 1.0, -2.0],
    [0.2, -10.0, 0.1, -9.0], [5.0, 1.0, 5.0, 1.0], [0.0, -3.0, 2.0, -3.0]])


def test_normal_kl_closed_form_and_quadrature():
  m1, lv1, m2, lv2 = KL_CASES.T
  got = np.asarray(jax.jit(normal_kl)(*map(f32, (m1, lv1, m2, lv2))), np.float64)
  close(got, ref.normal_kl(m1, lv1, m2, lv2), rtol=2e-5, atol=1e-6)
  for k, (a, la, b, lb) in enumerate(KL_CASES):
    sa, sb = math.exp(la / 2), math.exp(lb / 2)
    logp = lambda x: -0.5 * ((x - a) / sa) ** 2 - math.log(sa * math.sqrt(2 * math.pi))
    logq = lambda x: -0.5 * ((x - b) / sb) ** 2 - math.log(sb * math.sqrt(2 * math.pi))
    val = integrate.quad(lambda x: math.exp(logp(x)) * (logp(x) - logq(x)),
                         a - 40 * sa, a + 40 * sa, points=[a], limit=200, epsabs=1e-12)[0]
    assert abs(got[k] - val) <= 2e-5 * abs(val) + 2e-6, (k, got[k], val)
  assert got[0] == 0.0 and got[4] == 0.0 and np.all(got >= 0)


def test_normal_kl_broadcasts_and_vmaps():
  rng = np.random.default_rng(0)
  m1, m2 = f32(rng.normal(size=(4, 3))), f32(rng.normal(size=(4, 3)))
  lv1 = f32(rng.normal(size=(4, 1)))
  got = jax.jit(normal_kl)(m1, lv1, m2, 0.0)
  close(got, ref.normal_kl(m1, lv1, m2, 0.0), rtol=2e-5, atol=1e-6)
  vm = jax.jit(jax.vmap(normal_kl, in_axes=(0, 0, 0, None)))(m1, lv1, m2, 0.0)
  close(vm, np.asarray(got), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# Discretized Gaussian decoder.
# ----------------------------------------------------------------------------

GRID = np.arange(256) / 127.5 - 1.0  # the 8-bit grid in [-1, 1]
jdgll = jax.jit(discretized_gaussian_log_likelihood)
jdgll_grad = jax.jit(jax.grad(lambda x, m, s: discretized_gaussian_log_likelihood(
    x, means=m, log_scales=s).sum(), argnums=(1, 2)))


def dgll(x, means, log_scales):
  x, means, log_scales = np.broadcast_arrays(x, means, log_scales)
  return np.asarray(jdgll(f32(x), means=f32(means), log_scales=f32(log_scales)), np.float64)


@pytest.mark.parametrize("log_scale", [-30.0, -12.0, -6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 8.0, 15.0])
def test_discretized_gaussian_matches_quadrature(log_scale):
  xs = GRID[[0, 1, 2, 64, 127, 128, 200, 253, 254, 255]]
  means = np.array([-80.0, -1.3, -1.0, -0.41, 0.01, 0.3, 1.0, 1.6, 80.0])
  # No mean on a bin edge -1 + (2k+1)/255, where float32 rounding of the edge
  # decides between two bins once σ is tiny.
  k = ((means + 1) * 255 - 1) / 2
  assert np.all((np.abs(k - np.round(k)) > 0.01) | (np.abs(means) >= 1))
  X, M = np.meshgrid(xs, means, indexing="ij")
  # The float32 grid points and means are what the code sees: use them exactly.
  X, M = f32(X).astype(np.float64), f32(M).astype(np.float64)
  ls = float(np.float32(log_scale))
  got = dgll(X, M, ls)
  assert np.all(np.isfinite(got)) and np.all(got <= 0)
  want = np.vectorize(lambda x, m: ref.discretized_gaussian_log_prob_quad(x, m, ls))(X, M)
  # log-probabilities down to -1e30: compare relative to max(1, |log p|).
  err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
  assert err.max() < 1e-4, (log_scale, err.max(), np.unravel_index(err.argmax(), err.shape))


@pytest.mark.parametrize("log_scale", [-30.0, -8.0, -4.5, -2.0, 0.0, 2.0, 2.1, 5.0, 30.0])
@pytest.mark.parametrize("mean", [-100.0, -1.2, -1.0, -0.37, 0.0, 0.5, 1.0, 3.0, 100.0])
def test_discretized_gaussian_normalized_finite_with_finite_grads(mean, log_scale):
  x = f32(GRID)
  lp = dgll(x, mean, log_scale)
  assert np.all(np.isfinite(lp)) and np.all(lp <= 0)
  # The 256 bins partition the real line: probabilities sum to 1.
  total = np.exp(lp - lp.max()).sum() * np.exp(lp.max())
  assert abs(total - 1.0) < 1e-4, total
  g = jdgll_grad(x, jnp.full(256, mean, jnp.float32), jnp.full(256, log_scale, jnp.float32))
  assert all(np.all(np.isfinite(np.asarray(gi))) for gi in g)


def test_discretized_gaussian_moderate_against_log_ndtr_all_bins():
  rng = np.random.default_rng(1)
  x = np.tile(GRID, (4, 1))
  means = f32(rng.uniform(-1.2, 1.2, size=(4, 1))).astype(np.float64)
  log_scales = np.array([[-5.0], [-3.0], [-1.0], [0.5]])
  got = dgll(x, means, log_scales)
  want = ref.discretized_gaussian_log_prob(f32(x).astype(np.float64), means, log_scales)
  close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Prior term.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,T,zero", [("linear", 1000, False), ("cosine", 37, False),
                                         ("scaled_linear", 50, True)])
def test_prior_bpd(name, T, zero):
  s = sched(name, T, zero)
  r = ref.named(name, T, zero)
  rng = np.random.default_rng(2)
  x0 = f32(rng.uniform(-1, 1, size=(3, 4, 4, 2)))
  got = jax.jit(prior_bpd)(s, x0)
  ab = r["alphas_cumprod"][-1]
  kl = ref.normal_kl(np.sqrt(ab) * x0.astype(np.float64), np.log(1 - ab), 0.0, 0.0)
  want = kl.reshape(3, -1).mean(1) / LN2
  assert got.shape == (3,)
  close(got, want, rtol=1e-4, atol=1e-9)
  if zero:
    assert np.all(np.asarray(got) == 0.0)


# ----------------------------------------------------------------------------
# NumPy reference for one VLB term.
# ----------------------------------------------------------------------------


def np_p_mean_logvar(r, out, x_t, t, prediction, variance):
  if variance in ("learned", "learned_range"):
    out, vout = np.split(out, 2, axis=-1)
  ab = r["alphas_cumprod"][t]
  a, b = bc(np.sqrt(ab), x_t), bc(np.sqrt(1 - ab), x_t)
  x0_hat = {"eps": (x_t - b * out) / np.where(a > 0, a, np.nan), "x0": out,
            "v": a * x_t - b * out}[prediction]
  mean = bc(r["posterior_mean_coef1"][t], x_t) * x0_hat + bc(r["posterior_mean_coef2"][t],
                                                              x_t) * x_t
  pv, beta = r["posterior_variance"], r["betas"]
  log_small = bc(np.log(np.append(pv[1], pv[1:]))[t], x_t)
  if variance == "fixed_small":
    lv = log_small + 0 * x_t
  elif variance == "fixed_large":
    lv = bc(np.log(np.append(pv[1], beta[1:]))[t], x_t) + 0 * x_t
  elif variance == "learned":
    lv = vout
  else:
    frac = (vout + 1) / 2
    lv = frac * bc(np.log(beta)[t], x_t) + (1 - frac) * log_small
  return mean, lv, x0_hat


def np_vlb_term(r, out, x0, x_t, t, prediction, variance):
  """DDPM Eq. (5): KL(q(x_{t-1}|x_t,x0) || p) for t > 0, -log p(x0|x1) at t = 0, bits/dim."""
  mean, lv, _ = np_p_mean_logvar(r, out, x_t, t, prediction, variance)
  pv = r["posterior_variance"]
  true_mean = bc(r["posterior_mean_coef1"][t], x0) * x0 + bc(r["posterior_mean_coef2"][t],
                                                              x0) * x_t
  true_lv = bc(np.log(np.append(pv[1], pv[1:]))[t], x0)
  B = x0.shape[0]
  kl = ref.normal_kl(true_mean, true_lv, mean, lv).reshape(B, -1).mean(1) / LN2
  nll = -ref.discretized_gaussian_log_prob(x0, mean, 0.5 * lv).reshape(B, -1).mean(1) / LN2
  return np.where(t == 0, nll, kl)


def eight_bit(rng, shape):
  k = rng.integers(0, 256, size=shape)
  k.flat[0], k.flat[1] = 0, 255  # include both edge bins
  return (k / 127.5 - 1.0).astype(np.float32)


def np_denoiser(x_t, t, channels_out=1):
  """A smooth analytic 'model' and its NumPy twin below (jnp version)."""
  tt = np.asarray(t, np.float64).reshape((-1,) + (1,) * (x_t.ndim - 1))
  main = 0.4 * np.tanh(x_t) + 1e-3 * tt
  if channels_out == 1:
    return main
  return np.concatenate([main, np.tanh(0.7 * x_t - 2e-3 * tt)], -1)


def jnp_denoiser(x_t, t, channels_out=1):
  tt = t.astype(jnp.float32).reshape((-1,) + (1,) * (x_t.ndim - 1))
  main = 0.4 * jnp.tanh(x_t) + 1e-3 * tt
  if channels_out == 1:
    return main
  return jnp.concatenate([main, jnp.tanh(0.7 * x_t - 2e-3 * tt)], -1)


def test_vlb_terms_against_numpy():
  T = 1000
  s, r = sched("cosine", T), ref.named("cosine", T)
  rng = np.random.default_rng(3)
  x0 = eight_bit(rng, (6, 3, 2, 2)).astype(np.float64)
  t = np.array([0, 1, 5, 500, 998, 999], np.int32)
  noise = rng.normal(size=x0.shape)
  ab = r["alphas_cumprod"][t]
  x_t = bc(np.sqrt(ab), x0) * x0 + bc(np.sqrt(1 - ab), x0) * noise
  # (eps, learned_range) is in the hybrid test, (x0, fixed_large) in the vlb-loss
  # test and (v, learned_range) in the bits/dim test.
  for prediction, variance, C in (("eps", "fixed_small", 1), ("v", "learned", 2)):
    out = np_denoiser(x_t, t, C)
    if variance == "learned":
      out[..., 2:] = -4.0 + out[..., 2:]
    got = jax.jit(functools.partial(vlb_terms, prediction=prediction, variance=variance))(
        s, f32(out), f32(x0), f32(x_t), t)
    want = np_vlb_term(r, out, x0, x_t, t, prediction, variance)
    close(got, want, rtol=2e-4, atol=1e-5, msg=f"{prediction} {variance}")


# ----------------------------------------------------------------------------
# training_losses.
# ----------------------------------------------------------------------------


def setup_batch(shape=(8, 3, 2, 2), T=1000, seed=4):
  rng = np.random.default_rng(seed)
  x0 = f32(rng.uniform(-1, 1, size=shape))
  noise = f32(rng.normal(size=shape))
  t = np.array([0, 1, 2, 50, T // 2, T - 2, T - 1, 7][:shape[0]], np.int32)
  return x0, noise, t


def np_snr(r):
  return r["alphas_cumprod"] / (1 - r["alphas_cumprod"])


@pytest.mark.parametrize("weighting,gamma", [("none", 5.0), ("min_snr", 5.0)])
@pytest.mark.parametrize("prediction", ("eps", "x0", "v"))
def test_simple_loss(prediction, weighting, gamma):
  T = 1000
  s, r = sched("cosine", T), ref.named("cosine", T)
  x0, noise, t = setup_batch()
  X0, N = x0.astype(np.float64), noise.astype(np.float64)
  ab = r["alphas_cumprod"][t]
  a, b = bc(np.sqrt(ab), X0), bc(np.sqrt(1 - ab), X0)
  x_t = a * X0 + b * N
  target = {"eps": N, "x0": X0, "v": a * N - b * X0}[prediction]
  snr = np_snr(r)[t]
  w = {"eps": np.minimum(snr, gamma) / snr, "x0": np.minimum(snr, gamma),
       "v": np.minimum(snr, gamma) / (snr + 1)}[prediction] if weighting == "min_snr" \
      else np.ones_like(snr)
  want = (bc(w, X0) * (target - np_denoiser(x_t, t)) ** 2).reshape(8, -1).mean(1)
  fn = jax.jit(functools.partial(training_losses, denoiser=jnp_denoiser,
                                 prediction=prediction, weighting=weighting,
                                 min_snr_gamma=gamma))
  terms = fn(s, x0=x0, t=t, noise=noise)
  assert set(terms) == {"loss", "mse"}
  assert terms["loss"].shape == (8,)
  close(terms["mse"], want, rtol=2e-5, atol=1e-7)
  close(terms["loss"], want, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("zero", (False, True))
def test_loss_weight_formulas(zero):
  T = 1000
  s, r = sched("scaled_linear", T, zero), ref.named("scaled_linear", T, zero)
  t = np.arange(T, dtype=np.int32)
  x = np.zeros((T, 2, 2), np.float32)
  snr = np_snr(r)
  lw = jax.jit(loss_weight, static_argnames=("prediction", "weighting", "min_snr_gamma"))
  for gamma in (5.0, 1.0):
    m = np.minimum(snr, gamma)
    preds = {"x0": m, "v": m / (snr + 1)}
    if not zero:
      preds["eps"] = m / snr
    for prediction, want in preds.items():
      got = lw(s, t, x, prediction=prediction, weighting="min_snr", min_snr_gamma=gamma)
      assert got.shape == (T, 1, 1) and got.dtype == jnp.float32
      close(got[:, 0, 0], want, rtol=1e-5, atol=0, msg=prediction)
    got = lw(s, t, x, prediction="v", weighting="none")
    np.testing.assert_array_equal(np.asarray(got), np.ones((T, 1, 1), np.float32))
  if zero:
    assert float(lw(s, t, x, prediction="v", weighting="min_snr")[-1, 0, 0]) == 0.0


def test_min_snr_gives_the_same_x0_weight_to_every_parameterization():
  """Hang et al. 2023: with the same x̂0, every weighted loss is min(SNR, γ)‖x0 - x̂0‖²."""
  T, gamma = 1000, 5.0
  s, r = sched("linear", T), ref.named("linear", T)
  x0, noise, t = setup_batch(shape=(6, 5), seed=5)
  t = np.array([3, 40, 200, 500, 800, 999], np.int32)
  X0, N = x0.astype(np.float64), noise.astype(np.float64)
  ab = r["alphas_cumprod"][t]
  a, b = bc(np.sqrt(ab), X0), bc(np.sqrt(1 - ab), X0)
  x_t = a * X0 + b * N
  x0_hat = X0 + 0.3 * np.random.default_rng(6).normal(size=X0.shape)
  eps_hat = (x_t - a * x0_hat) / b
  outs = {"x0": x0_hat, "eps": eps_hat, "v": a * eps_hat - b * x0_hat}
  want = (bc(np.minimum(np_snr(r)[t], gamma), X0) * (X0 - x0_hat) ** 2).mean(1)
  for prediction, out in outs.items():
    terms = training_losses(s, lambda xt, tt: jnp.asarray(f32(out)), x0, t, noise,
                            prediction=prediction, weighting="min_snr", min_snr_gamma=gamma)
    close(terms["loss"], want, rtol=5e-4, atol=1e-7, msg=prediction)


def test_hybrid_loss_and_stop_gradient():
  variance = "learned_range"
  T, lam = 1000, 1e-3
  s, r = sched("cosine", T), ref.named("cosine", T)
  x0, noise, t = setup_batch(seed=7)
  x0 = eight_bit(np.random.default_rng(7), x0.shape)

  def model(params, x_t, tt):
    tt = tt.astype(jnp.float32).reshape((-1,) + (1,) * (x_t.ndim - 1))
    mean_out = params["wm"] * jnp.tanh(x_t) + 1e-3 * tt
    var_out = params["wv"] * jnp.tanh(x_t) + (-4.0 if variance == "learned" else 0.0)
    return jnp.concatenate([mean_out, var_out], -1)

  params = {"wm": jnp.float32(0.4), "wv": jnp.float32(0.5)}

  def terms_of(params, loss_type):
    return training_losses(s, functools.partial(model, params), x0, t, noise,
                           variance=variance, loss_type=loss_type, vlb_weight=lam)

  def sums(p, loss_type):
    terms = terms_of(p, loss_type)
    return jnp.stack([terms[k].sum() for k in ("vb", "mse", "loss")])

  @jax.jit
  def run(params):  # one compilation for everything below
    return (terms_of(params, "hybrid"), terms_of(params, "vlb"),
            jax.jacrev(sums)(params, "hybrid"), jax.jacrev(sums)(params, "vlb"))

  terms, terms_vlb, g, g_vlb = run(params)
  assert set(terms) == {"loss", "mse", "vb"}
  close(terms["loss"], np.asarray(terms["mse"]) + lam * T * np.asarray(terms["vb"]),
        rtol=1e-6, atol=1e-7)
  # vb against the NumPy VLB term, and the mse part against the simple loss.
  X0, N = x0.astype(np.float64), noise.astype(np.float64)
  ab = r["alphas_cumprod"][t]
  x_t = bc(np.sqrt(ab), X0) * X0 + bc(np.sqrt(1 - ab), X0) * N
  out = np.asarray(model(params, jnp.asarray(f32(x_t)), jnp.asarray(t)), np.float64)
  close(terms["vb"], np_vlb_term(r, out, X0, x_t, t, "eps", variance), rtol=2e-4, atol=1e-5)
  close(terms["mse"], ((N - out[..., :2]) ** 2).reshape(8, -1).mean(1), rtol=2e-5, atol=1e-7)

  g_vb, g_mse, g_loss = ({k: g[k][i] for k in g} for i in range(3))
  assert float(g_vb["wm"]) == 0.0           # the mean is under stop-gradient in L_vlb
  assert abs(float(g_vb["wv"])) > 1e-3      # the variance head learns from L_vlb
  assert float(g_mse["wv"]) == 0.0
  close(g_loss["wm"], g_mse["wm"], rtol=1e-5, atol=1e-8)
  close(g_loss["wv"], lam * T * np.asarray(g_vb["wv"]), rtol=1e-4, atol=1e-8)
  # With loss_type="vlb" the gradient reaches the mean too, and loss = T vb.
  close(terms_vlb["loss"], T * np.asarray(terms_vlb["vb"]), rtol=1e-6, atol=1e-6)
  close(terms_vlb["vb"], np.asarray(terms["vb"]), rtol=1e-6, atol=1e-7)
  assert abs(float(g_vlb["wm"][0])) > 1e-3


def test_fixed_variance_vlb_loss():
  T = 1000
  s, r = sched("linear", T), ref.named("linear", T)
  x0, noise, t = setup_batch(shape=(8, 4), seed=8)
  x0 = eight_bit(np.random.default_rng(8), x0.shape)
  terms = jax.jit(functools.partial(training_losses, denoiser=jnp_denoiser, loss_type="vlb",
                                    variance="fixed_large", prediction="x0"))(
      s, x0=x0, t=t, noise=noise)
  X0, N = x0.astype(np.float64), noise.astype(np.float64)
  ab = r["alphas_cumprod"][t]
  x_t = bc(np.sqrt(ab), X0) * X0 + bc(np.sqrt(1 - ab), X0) * N
  want = np_vlb_term(r, np_denoiser(x_t, t), X0, x_t, t, "x0", "fixed_large")
  close(terms["vb"], want, rtol=2e-4, atol=1e-5)
  close(terms["loss"], T * want, rtol=2e-4, atol=1e-2)


# ----------------------------------------------------------------------------
# bits_per_dim on a tiny problem.
# ----------------------------------------------------------------------------


def np_bits_per_dim(r, x0, rng, prediction, variance, C, timesteps=None):
  """Plain NumPy sum of L_T and all L_t, with the noise of term t from fold_in(rng, t)."""
  T = r["betas"].size
  B = x0.shape[0]
  X0 = x0.astype(np.float64)
  vb = np.zeros((B, T))
  model_t = np.arange(T) if timesteps is None else np.asarray(timesteps)
  for t in range(T):
    noise = np.asarray(jax.random.normal(jax.random.fold_in(rng, t), x0.shape, jnp.float32),
                       np.float64)
    tt = np.full((B,), t)
    ab = r["alphas_cumprod"][t]
    x_t = np.sqrt(ab) * X0 + np.sqrt(1 - ab) * noise
    out = np_denoiser(x_t, np.full((B,), model_t[t]), C)
    vb[:, t] = np_vlb_term(r, out, X0, x_t, tt, prediction, variance)
  abT = r["alphas_cumprod"][-1]
  prior = ref.normal_kl(np.sqrt(abT) * X0, np.log(1 - abT), 0.0, 0.0).reshape(B, -1).mean(
      1) / LN2
  return vb, prior, vb.sum(1) + prior


jbpd = jax.jit(bits_per_dim, static_argnames=(
    "denoiser", "prediction", "variance", "clip_x0", "chunk_size"))
jnp_denoiser2 = functools.partial(jnp_denoiser, channels_out=2)


def test_bits_per_dim_tiny():
  """T = 8, two 4-dim 8-bit samples, v prediction with learned_range variance."""
  T = 8
  s, r = sched("cosine", T), ref.named("cosine", T)
  x0 = eight_bit(np.random.default_rng(9), (2, 4))
  rng = jax.random.key(123)
  bpd = functools.partial(jbpd, denoiser=jnp_denoiser2, prediction="v",
                          variance="learned_range")
  out = bpd(s, x0=x0, rng=rng, chunk_size=1)
  vb, prior, total = np_bits_per_dim(r, x0, rng, "v", "learned_range", 2)
  assert out["vb"].shape == (2, T) and out["total_bpd"].shape == (2,)
  close(out["vb"], vb, rtol=1e-4, atol=2e-6)
  close(out["prior_bpd"], prior, rtol=1e-4, atol=1e-8)
  close(out["total_bpd"], total, rtol=1e-4, atol=1e-5)
  close(out["total_bpd"], np.asarray(out["vb"]).sum(1) + np.asarray(out["prior_bpd"]),
        rtol=1e-6, atol=1e-6)
  # The chunking is an implementation detail; 3 does not divide T = 8, so this
  # also covers the remainder chunk.
  other = bpd(s, x0=x0, rng=rng, chunk_size=3)
  for k in ("vb", "prior_bpd", "total_bpd"):
    close(other[k], np.asarray(out[k]), rtol=1e-6, atol=1e-7, msg=f"chunk 3 {k}")


def test_bits_per_dim_respaced_model_sees_training_timesteps():
  base = sched("linear", 100)
  S = make_timesteps(100, 8, "trailing")
  s = respace(base, S)
  ab = np.cumprod(1 - ref.betas("linear", 100))[S]
  r = ref.derived(1 - ab / np.append(1.0, ab[:-1]))
  x0 = eight_bit(np.random.default_rng(10), (2, 4))
  rng = jax.random.key(7)
  out = jbpd(s, x0=x0, rng=rng, denoiser=jnp_denoiser2, prediction="v",
             variance="learned_range", chunk_size=1)  # shares the compilation above
  vb, prior, total = np_bits_per_dim(r, x0, rng, "v", "learned_range", 2, timesteps=S)
  close(out["vb"], vb, rtol=1e-4, atol=2e-6)
  close(out["total_bpd"], total, rtol=1e-4, atol=1e-5)


def test_training_losses_respaced_model_sees_training_timesteps():
  base = sched("cosine", 1000)
  S = make_timesteps(1000, 10, "leading")
  s = respace(base, S)
  x0, noise, t = setup_batch(shape=(3, 2), seed=11)
  t = np.array([0, 4, 9], np.int32)
  # An "eps model" that outputs the timestep it was given.
  den = lambda x_t, tt: jnp.zeros_like(x_t) + tt.astype(jnp.float32)[:, None]
  mse = jax.jit(lambda s, x0, t, n: training_losses(s, den, x0, t, n)["mse"])(s, x0, t, noise)
  want = ((noise.astype(np.float64) - S[t][:, None]) ** 2).mean(1)
  close(mse, want, rtol=1e-6, atol=0)


def test_sample_timesteps():
  t = jax.jit(sample_timesteps, static_argnums=(1, 2))(jax.random.key(0), 4000, 10)
  assert t.shape == (4000,) and t.dtype == jnp.int32
  counts = np.bincount(np.asarray(t), minlength=10)
  assert counts.size == 10 and counts.min() > 300  # ~400 each, all 0..9 present
  assert int(t.min()) == 0 and int(t.max()) == 9
