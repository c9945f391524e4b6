"""The forward process, posteriors, parameterizations and reverse step against
independent float64 NumPy references (tests/np_reference.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from diffusion_jax import samplers
from diffusion_jax.sampling import make_denoise_fn
from diffusion_jax.process import (denoise, eps_from_score, get_v, model_output_to_x0_eps,
                                   p_mean_variance, p_variance,
                                   posterior_coefficients, predict_eps_from_v,
                                   predict_eps_from_x0, predict_x0_from_eps,
                                   predict_x0_from_v, q_mean_variance, q_posterior_general,
                                   q_posterior_mean_variance, q_sample, score_from_eps,
                                   split_model_output, threshold_x0)
from diffusion_jax.schedules import get_schedule, make_timesteps, respace

SHAPES = {"vector": (6, 5), "image": (6, 4, 3, 2)}  # [B, D] and [B, H, W, C]
f32 = functools.partial(np.asarray, dtype=np.float32)

# The code under test, jitted once with the Schedule as a (pytree) argument, so
# that schedules of one length share a compilation.
_STATIC = ("prediction", "variance", "clip_x0", "dynamic_threshold")
jq_sample = jax.jit(q_sample)
jq_mean_variance = jax.jit(q_mean_variance)
jq_posterior = jax.jit(q_posterior_mean_variance)
jq_posterior_general = jax.jit(q_posterior_general)
jp_mean_variance = jax.jit(p_mean_variance, static_argnames=_STATIC)


def jp_sample(schedule, output, x_t, t, noise, prediction="eps", variance="fixed_small",
              clip_x0=None, dynamic_threshold=None):
  """One step of the registered "ddpm" sampler from index t[b] for each example
  b (the step draws x_{t-1} ~ p_θ(x_{t-1}|x_t), DDPM Alg. 2). Returns (x_{t-1}, x̂_0)."""
  smp = samplers.get_sampler("ddpm", schedule, variance=variance)

  def one(out, x, i, z):
    denoise = make_denoise_fn(lambda p, x_, tt, c: out[None], schedule, None, None,
                              prediction=prediction, variance=variance, clip_x0=clip_x0,
                              dynamic_threshold=dynamic_threshold)
    state, x0 = smp.step(samplers.DDPMState(x[None]),
                         samplers.StepInput(i, jnp.int32(1), z[None]), denoise)
    return state.x[0], x0[0]
  return jax.jit(jax.vmap(one))(output, x_t, jnp.asarray(t, jnp.int32), noise)


jp_variance = jax.jit(p_variance, static_argnames=("variance",))
jthreshold = jax.jit(threshold_x0, static_argnames=("clip_x0", "dynamic_threshold"))


@functools.lru_cache(maxsize=None)
def sched(name="cosine", T=1000, zero_snr=False):
  return get_schedule(name, T, rescale_to_zero_terminal_snr=zero_snr)


@functools.lru_cache(maxsize=None)
def npsched(name="cosine", T=1000, zero_snr=False):
  return ref.named(name, T, zero_snr)


def bc(a, x):
  """Per-example [B] float64 values broadcast against x [B, ...]."""
  return np.asarray(a).reshape((-1,) + (1,) * (np.ndim(x) - 1))


def t_grid(B, T):
  """B timesteps covering both ends and the middle."""
  return np.array([0, 1, 2, T // 2, T - 2, T - 1, 3, T // 3][:B], np.int32)


def close(got, want, rtol=1e-5, atol=1e-6, msg=""):
  """|got - want| <= atol + rtol |want| elementwise; atol may be an array."""
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  assert got.shape == np.broadcast_shapes(got.shape, want.shape), (got.shape, want.shape)
  err = np.abs(got - want)
  tol = np.broadcast_to(atol + rtol * np.abs(want), err.shape)
  bad = ~(err <= tol)
  if bad.any():
    i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(tol, 1e-300), 0)), err.shape)
    raise AssertionError(
        f"{msg}: {bad.sum()}/{bad.size} mismatched; worst at {i}: got "
        f"{got[i]!r}, want {np.broadcast_to(want, err.shape)[i]!r}, tol {tol[i]:.3g}")


# ----------------------------------------------------------------------------
# q(x_t | x_0).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", ("linear", "cosine"))
def test_q_sample_and_q_mean_variance(name, shape):
  s, r = sched(name), npsched(name)
  rng = np.random.default_rng(0)
  x0, noise = rng.normal(size=shape), rng.normal(size=shape)
  t = t_grid(shape[0], 1000)
  ab = r["alphas_cumprod"][t]
  want = bc(np.sqrt(ab), x0) * x0 + bc(np.sqrt(1 - ab), x0) * noise
  got = jq_sample(s, f32(x0), t, f32(noise))
  assert got.shape == shape and got.dtype == jnp.float32
  close(got, want, rtol=1e-6, atol=1e-6)

  mean, var, log_var = jq_mean_variance(s, f32(x0), t)
  close(mean, bc(np.sqrt(ab), x0) * x0, rtol=1e-6, atol=1e-7)
  assert var.shape == log_var.shape == (shape[0],) + (1,) * (len(shape) - 1)
  close(var, bc(1 - ab, x0), rtol=1e-6, atol=0, msg="variance 1 - ᾱ")
  close(log_var, bc(np.log(1 - ab), x0), rtol=1e-6, atol=0)

  # vmap over independent noise draws equals the batched call.
  noises = f32(rng.normal(size=(3,) + shape))
  vm = jax.jit(jax.vmap(jq_sample, in_axes=(None, None, None, 0)))(s, f32(x0), t, noises)
  for k in range(3):
    close(vm[k], bc(np.sqrt(ab), x0) * x0 + bc(np.sqrt(1 - ab), x0) * noises[k],
          rtol=1e-6, atol=1e-6)
  # vmap over examples (each call has batch 1).
  per_ex = jax.jit(jax.vmap(lambda x, tt, n: q_sample(s, x[None], tt[None], n[None])[0]))(
      f32(x0), t, f32(noise))
  close(per_ex, np.asarray(got), rtol=1e-6, atol=1e-7)


def test_q_sample_statistics():
  """Monte Carlo: x_t has mean √ᾱ x0 and variance 1-ᾱ."""
  s, r = sched("linear"), npsched("linear")
  t = np.full((20000,), 300, np.int32)
  x0 = np.full((20000, 1), 0.8, np.float32)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  xt = np.asarray(jq_sample(s, x0, t, noise), np.float64)
  ab = r["alphas_cumprod"][300]
  assert abs(xt.mean() - np.sqrt(ab) * 0.8) < 4 * np.sqrt((1 - ab) / 20000)
  assert abs(xt.var() / (1 - ab) - 1) < 0.04


# ----------------------------------------------------------------------------
# q(x_{t-1} | x_t, x_0): closed form and Bayes' rule by quadrature.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ("linear", "cosine"))
def test_q_posterior_closed_form_all_t(name):
  s, r = sched(name), npsched(name)
  T = 1000
  rng = np.random.default_rng(1)
  x0, xt = rng.normal(size=(T, 3)), rng.normal(size=(T, 3))
  t = np.arange(T, dtype=np.int32)
  mean, var, log_var = jq_posterior(s, f32(x0), f32(xt), t)
  b, ab, abp = r["betas"], r["alphas_cumprod"], r["alphas_cumprod_prev"]
  want_mean = (bc(np.sqrt(abp) * b / (1 - ab), x0) * x0
               + bc(np.sqrt(1 - b) * (1 - abp) / (1 - ab), x0) * xt)
  close(mean, want_mean, rtol=1e-5, atol=2e-6)
  want_var = b * (1 - abp) / (1 - ab)
  close(var[:, 0], want_var, rtol=1e-6, atol=0)
  close(log_var[:, 0], np.log(np.append(want_var[1], want_var[1:])), rtol=1e-6)
  # t = 0: the posterior is the point mass at x0.
  close(mean[0], x0[0], rtol=1e-6, atol=1e-7)
  assert float(var[0, 0]) == 0.0


@pytest.mark.parametrize("t", [1, 2, 10, 500, 998, 999])
@pytest.mark.parametrize("name", ("linear", "cosine"))
def test_q_posterior_is_bayes_rule(name, t):
  """q(x_{t-1}|x_t,x0) ∝ q(x_{t-1}|x0) q(x_t|x_{t-1}), integrated numerically."""
  s, r = sched(name), npsched(name)
  x0, xt = 0.7, -0.4
  abp, b = r["alphas_cumprod_prev"][t], r["betas"][t]
  m_num, v_num = ref.numeric_posterior(np.sqrt(abp) * x0, 1 - abp, np.sqrt(1 - b), xt, b)
  mean, var, _ = jq_posterior(s, jnp.full((1, 1), x0), jnp.full((1, 1), xt), jnp.array([t], jnp.int32))
  sd = np.sqrt(v_num)
  assert abs(float(mean[0, 0]) - m_num) < 1e-4 * sd + 2e-7
  assert abs(float(var[0, 0]) / v_num - 1) < 1e-5


@pytest.mark.parametrize("ts", [(3, 0), (10, 4), (500, 250), (999, 0), (999, 998), (600, 100)])
def test_q_posterior_general_is_bayes_rule(ts):
  """q(x_s|x_t,x0) ∝ q(x_s|x0) q(x_t|x_s), q(x_t|x_s) = N(√(ᾱ_t/ᾱ_s) x_s, 1 - ᾱ_t/ᾱ_s)."""
  t, s_ = ts
  s, r = sched("cosine"), npsched("cosine")
  ab = r["alphas_cumprod"]
  x0, xt = -0.3, 1.1
  a_ts = ab[t] / ab[s_]
  m_num, v_num = ref.numeric_posterior(np.sqrt(ab[s_]) * x0, 1 - ab[s_], np.sqrt(a_ts), xt,
                                       1 - a_ts)
  mean, var = jq_posterior_general(s, jnp.full((1, 1), x0), jnp.full((1, 1), xt), jnp.array([t]), jnp.array([s_]))
  sd = np.sqrt(v_num)
  assert abs(float(mean[0, 0]) - m_num) < 2e-4 * sd + 2e-7
  assert abs(float(var[0, 0]) / v_num - 1) < 5e-5


@pytest.mark.parametrize("name", ("linear", "cosine", "sigmoid", "scaled_linear"))
def test_q_posterior_general_reduces_to_one_step(name):
  s = sched(name)
  T = 1000
  rng = np.random.default_rng(2)
  x0, xt = f32(rng.normal(size=(T - 1, 2, 2))), f32(rng.normal(size=(T - 1, 2, 2)))
  t = np.arange(1, T, dtype=np.int32)
  both = jax.jit(lambda x0, xt, t: (q_posterior_mean_variance(s, x0, xt, t)[:2],
                                    q_posterior_general(s, x0, xt, t, t - 1)))
  (m1, v1), (mg, vg) = both(x0, xt, t)
  # The general form rebuilds β_t from ᾱ_{t-1} - ᾱ_t of float32 arrays; where
  # neither ᾱ nor 1-ᾱ is small that difference carries ~1e-7/β relative error.
  close(vg, np.asarray(v1), rtol=1e-4, atol=0)
  close(mg, np.asarray(m1), rtol=1e-4, atol=1e-5)
  # At small t (ᾱ ≈ 1), where the naive 1 - ᾱ_t/ᾱ_s loses 3-4 digits, it is exact
  # to float32 accuracy.
  close(vg[:100], np.asarray(v1)[:100], rtol=2e-5, atol=0)


def test_q_posterior_general_closed_form_and_clean_end():
  s, r = sched("linear"), npsched("linear")
  ab = r["alphas_cumprod"]
  rng = np.random.default_rng(3)
  t = np.array([5, 40, 999, 700, 300, 2], np.int32)
  sv = np.array([-1, 20, 0, 699, -1, 1], np.int32)
  x0, xt = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
  mean, var = jq_posterior_general(s, f32(x0), f32(xt), t, sv)
  ab_s = np.where(sv < 0, 1.0, ab[np.maximum(sv, 0)])
  ab_t = ab[t]
  a_ts = ab_t / ab_s
  c0 = np.sqrt(ab_s) * (1 - a_ts) / (1 - ab_t)
  ct = np.sqrt(a_ts) * (1 - ab_s) / (1 - ab_t)
  v = (1 - ab_s) * (1 - a_ts) / (1 - ab_t)
  close(mean, bc(c0, x0) * x0 + bc(ct, x0) * xt, rtol=1e-4, atol=1e-6)
  close(var[:, 0], v, rtol=1e-4, atol=0)
  # s = -1: the clean data, with zero variance.
  for i in (0, 4):
    close(mean[i], x0[i], rtol=1e-6, atol=1e-6)
    assert float(var[i, 0]) == 0.0
  # The public coefficient helper on plain ᾱ values.
  c0_, ct_, v_ = jax.jit(posterior_coefficients)(f32(ab_s), f32(ab_t))
  close(c0_, c0, rtol=1e-3, atol=1e-6)
  close(ct_, ct, rtol=1e-3, atol=1e-6)
  close(v_, v, rtol=1e-3, atol=1e-9)


def test_q_posterior_general_matches_respaced_one_step():
  """The posterior of the respaced chain (IDDPM §4) is the two-time posterior."""
  base = sched("cosine")
  S = make_timesteps(1000, 25, "leading")
  rs = respace(base, S)
  rng = np.random.default_rng(4)
  i = np.arange(1, 25, dtype=np.int32)
  x0, xt = f32(rng.normal(size=(24, 3))), f32(rng.normal(size=(24, 3)))
  m1, v1, _ = jq_posterior(rs, x0, xt, i)
  mg, vg = jq_posterior_general(base, x0, xt, S[i].astype(np.int32), S[i - 1].astype(np.int32))
  close(mg, np.asarray(m1), rtol=2e-5, atol=1e-6)
  close(vg, np.asarray(v1), rtol=2e-5, atol=0)


# ----------------------------------------------------------------------------
# Parameterizations.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_parameterization_formulas_and_round_trips(shape):
  s, r = sched("linear"), npsched("linear")
  rng = np.random.default_rng(5)
  x0, eps = rng.normal(size=shape), rng.normal(size=shape)
  t = t_grid(shape[0], 1000)
  a, b = bc(np.sqrt(r["alphas_cumprod"][t]), x0), bc(np.sqrt(1 - r["alphas_cumprod"][t]), x0)
  xt = a * x0 + b * eps
  v = a * eps - b * x0
  X0, E, XT, V = f32(x0), f32(eps), f32(xt), f32(v)
  score = -eps / b

  @jax.jit
  def run(X0, E, XT, V, S, t):
    out = dict(
        v=get_v(s, X0, E, t),
        x0_from_eps=predict_x0_from_eps(s, XT, t, E),
        eps_from_x0=predict_eps_from_x0(s, XT, t, X0),
        x0_from_v=predict_x0_from_v(s, XT, t, V),
        eps_from_v=predict_eps_from_v(s, XT, t, V),
        score=score_from_eps(s, E, t),
        eps_from_score=eps_from_score(s, S, t),
        # Round trips through the implementation itself.
        rt_eps=predict_eps_from_x0(s, XT, t, predict_x0_from_eps(s, XT, t, E)),
        rt_x0=predict_x0_from_v(s, XT, t, get_v(s, X0, E, t)),
        rt_score=eps_from_score(s, score_from_eps(s, E, t), t))
    # model_output_to_x0_eps: each prediction type gives the same pair.
    for pred, o in (("eps", E), ("x0", X0), ("v", V)):
      out["pair_" + pred] = model_output_to_x0_eps(s, o, XT, t, pred)
    return out

  o = run(X0, E, XT, V, f32(score), t)
  close(o["v"], v, rtol=1e-5, atol=1e-6)
  # x0 from eps multiplies errors by up to 1/√ᾱ ≈ 156 at t = T-1.
  tol_x0 = 5e-5 * (1 + np.abs(xt) / a)
  tol_eps = 2e-5 * (1 + np.abs(xt) / b)
  close(o["x0_from_eps"], x0, rtol=0, atol=tol_x0)
  close(o["eps_from_x0"], eps, rtol=0, atol=tol_eps)
  close(o["x0_from_v"], x0, rtol=0, atol=5e-6)
  close(o["eps_from_v"], eps, rtol=0, atol=5e-6)
  close(o["score"], score, rtol=1e-5, atol=1e-6)
  close(o["eps_from_score"], eps, rtol=1e-5, atol=1e-6)
  close(o["rt_eps"], eps, rtol=0, atol=1e-4)
  close(o["rt_x0"], x0, rtol=0, atol=5e-6)
  close(o["rt_score"], eps, rtol=1e-6, atol=1e-6)
  for pred in ("eps", "x0", "v"):
    xh, eh = o["pair_" + pred]
    close(xh, x0, rtol=0, atol=tol_x0, msg=pred)
    close(eh, eps, rtol=0, atol=tol_eps, msg=pred)


def test_zero_terminal_snr_v_and_x0_predictions():
  s = sched("linear", 1000, True)
  t = np.array([999, 998, 0], np.int32)
  rng = np.random.default_rng(6)
  x0, eps = f32(rng.normal(size=(3, 4))), f32(rng.normal(size=(3, 4)))
  @jax.jit
  def run(x0, eps):
    xt = q_sample(s, x0, t, eps)
    v = get_v(s, x0, eps, t)
    return (xt, v, model_output_to_x0_eps(s, v, xt, t, "v"),
            model_output_to_x0_eps(s, x0, xt, t, "x0"))

  xt, v, (xh, eh), (xh2, eh2) = run(x0, eps)
  close(xt[0], eps[0], rtol=0, atol=1e-6)  # pure noise at ᾱ = 0
  close(v[0], -x0[0], rtol=0, atol=1e-6)
  assert np.all(np.isfinite(xh)) and np.all(np.isfinite(eh))
  close(xh, x0, rtol=0, atol=2e-5)
  close(eh, eps, rtol=0, atol=2e-5)
  close(eh2, eps, rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------
# Gaussian data: the exact denoiser reproduces the true reverse conditional.
# ----------------------------------------------------------------------------


def gaussian_data_case(r, t, shape, seed, mu_scale=0.5, s_lo=0.1, s_hi=1.5):
  """x0 ~ N(μ, diag s²): returns x_t, the exact E[ε|x_t], E[x0|x_t], v, and the
  true q(x_{t-1}|x_t) mean and variance (from the joint Gaussian of
  (x_{t-1}, x_t), no posterior formula involved)."""
  rng = np.random.default_rng(seed)
  D = shape[1:]
  mu = rng.uniform(-mu_scale, mu_scale, size=D)
  sd = rng.uniform(s_lo, s_hi, size=D)
  ab = r["alphas_cumprod"][t]
  abp = r["alphas_cumprod_prev"][t]
  alpha = 1.0 - r["betas"][t]
  a, a_p = bc(np.sqrt(ab), np.zeros(shape)), bc(np.sqrt(abp), np.zeros(shape))
  V = a ** 2 * sd ** 2 + bc(1 - ab, a)            # Var x_t
  Vp = a_p ** 2 * sd ** 2 + bc(1 - abp, a)        # Var x_{t-1}
  xt = a * mu + np.sqrt(V) * rng.normal(size=shape)
  eps = np.sqrt(bc(1 - ab, a)) * (xt - a * mu) / V
  x0 = mu + a * sd ** 2 * (xt - a * mu) / V
  v = a * eps - np.sqrt(bc(1 - ab, a)) * x0
  cov = bc(np.sqrt(alpha), a) * Vp                # Cov(x_{t-1}, x_t)
  true_mean = a_p * mu + cov / V * (xt - a * mu)
  true_var = Vp - cov ** 2 / V
  return dict(xt=xt, eps=eps, x0=x0, v=v, mean=true_mean, var=true_var)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("prediction", ("eps", "x0", "v"))
def test_exact_denoiser_gives_true_reverse_mean(prediction, shape):
  for name in ("linear", "cosine"):
    s, r = sched(name), npsched(name)
    t = t_grid(shape[0], 1000)
    c = gaussian_data_case(r, t, shape, seed=7)
    pmv = jp_mean_variance(s, f32(c[prediction]), f32(c["xt"]), t, prediction=prediction)
    scale = 1 + np.abs(c["xt"])
    close(pmv.mean, c["mean"], rtol=0, atol=3e-5 * scale, msg=f"{name} {prediction}")
    close(pmv.x0_hat, c["x0"], rtol=0,
          atol=3e-5 * scale / bc(np.sqrt(r["alphas_cumprod"][t]), scale))
    # The ancestral step with zero noise is the mean; with noise it adds σ z.
    z = np.random.default_rng(8).normal(size=shape)
    smp = functools.partial(jp_sample, s, prediction=prediction, variance="fixed_large")
    x0_, _ = smp(f32(c[prediction]), f32(c["xt"]), t, np.zeros(shape, np.float32))
    close(x0_, c["mean"], rtol=0, atol=3e-5 * scale)
    x1_, _ = smp(f32(c[prediction]), f32(c["xt"]), t, f32(z))
    b = r["betas"]
    sig = np.sqrt(np.append(r["posterior_variance"][1], b[1:]))[t]
    want = c["mean"] + np.where(bc(t, z) > 0, bc(sig, z), 0.0) * z
    close(x1_, want, rtol=0, atol=3e-5 * (scale + np.abs(z)))


@pytest.mark.parametrize("data_sd,variance", [(1.0, "fixed_large"), (0.0, "fixed_small")])
def test_fixed_variances_are_exact_for_extreme_data(data_sd, variance):
  """DDPM §3.2: σ² = β_t is optimal for x0 ~ N(0, I), σ² = β̃_t for a point mass."""
  s, r = sched("cosine"), npsched("cosine")
  t = np.array([1, 2, 10, 300, 998, 999], np.int32)
  c = gaussian_data_case(r, t, (6, 3), seed=9, mu_scale=0.0 if data_sd else 0.5,
                         s_lo=data_sd, s_hi=data_sd)
  pmv = jp_mean_variance(s, f32(c["eps"]), f32(c["xt"]), t, variance=variance)
  close(np.broadcast_to(pmv.variance, (6, 3)), c["var"], rtol=2e-5, atol=0)
  close(pmv.mean, c["mean"], rtol=0, atol=3e-5 * (1 + np.abs(c["xt"])))


# ----------------------------------------------------------------------------
# Variances of p_θ.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,T", [("cosine", 1000), ("linear", 37)])
def test_p_variance_types(name, T):
  s, r = sched(name, T), npsched(name, T)
  t = np.arange(T, dtype=np.int32)
  xt = np.zeros((T, 2, 3), np.float32)
  rng = np.random.default_rng(10)
  b, pv = r["betas"], r["posterior_variance"]
  log_small = np.log(np.append(pv[1], pv[1:]))
  log_large = np.log(np.append(pv[1], b[1:]))
  want = {"fixed_small": log_small, "fixed_large": log_large}
  for variance, lv in want.items():
    var, log_var = jp_variance(s, None, t, xt, variance=variance)
    close(np.broadcast_to(log_var, xt.shape), bc(lv, xt) + 0 * xt, rtol=1e-6, atol=1e-7)
    close(np.broadcast_to(var, xt.shape), bc(np.exp(lv), xt) + 0 * xt, rtol=2e-6, atol=0)
  out = rng.normal(size=xt.shape) - 3.0
  var, log_var = jp_variance(s, f32(out), t, xt, variance="learned")
  close(log_var, out, rtol=1e-6, atol=1e-7)
  close(var, np.exp(out), rtol=1e-6)
  # IDDPM Eq. (15): Σ = exp(v log β + (1-v) log β̃) with v = (out + 1)/2.
  out = rng.uniform(-1, 1, size=xt.shape)
  var, log_var = jp_variance(s, f32(out), t, xt, variance="learned_range")
  frac = (out + 1) / 2
  lv = frac * bc(np.log(b), out) + (1 - frac) * bc(log_small, out)
  close(log_var, lv, rtol=2e-6, atol=2e-6)
  close(var, np.exp(lv), rtol=5e-6)
  # Its ends are the two fixed choices (up to β_0 vs β̃_1 at t = 0).
  pv_range = functools.partial(jp_variance, s, variance="learned_range")
  _, lo = pv_range(-np.ones_like(xt), t, xt)
  close(lo, bc(log_small, xt) + 0 * xt, rtol=1e-6, atol=1e-6)
  _, hi = pv_range(np.ones_like(xt), t, xt)
  close(hi[1:], bc(log_large, xt)[1:] + 0 * xt[1:], rtol=1e-6, atol=1e-6)


def test_p_mean_variance_splits_learned_output():
  s = sched("cosine")
  rng = np.random.default_rng(11)
  shape = (4, 3, 3, 2)
  t = np.array([0, 5, 500, 999], np.int32)
  xt = f32(rng.normal(size=shape))
  eps, vv = f32(rng.normal(size=shape)), f32(rng.uniform(-1, 1, size=shape))
  out = np.concatenate([eps, vv], -1)
  a, b_ = split_model_output(jnp.asarray(out), "learned_range")
  np.testing.assert_array_equal(a, eps)
  np.testing.assert_array_equal(b_, vv)
  assert split_model_output(jnp.asarray(eps), "fixed_small")[1] is None
  for variance in ("learned", "learned_range"):
    @jax.jit
    def run(out, eps, vv):
      return (p_mean_variance(s, out, xt, t, variance=variance),
              p_mean_variance(s, eps, xt, t).mean, p_variance(s, vv, t, xt, variance)[1])
    pmv, ref_mean, lv = run(out, eps, vv)
    close(pmv.mean, np.asarray(ref_mean), rtol=1e-6, atol=1e-7)
    close(pmv.log_variance, np.asarray(lv), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("variance", ("fixed_small", "fixed_large", "learned", "learned_range"))
def test_ddpm_step_no_noise_at_t0(variance):
  s = sched("linear")
  rng = np.random.default_rng(12)
  shape = (5, 2, 2, 3)
  C2 = 2 if variance.startswith("learned") else 1
  out = f32(rng.uniform(-1, 1, size=shape[:-1] + (3 * C2,)))
  xt = f32(rng.normal(size=shape))
  t = np.array([0, 0, 7, 999, 1], np.int32)
  noise = f32(1e3 * rng.normal(size=shape))

  def run(out, xt, noise, draws):
    x_prev, x0_hat = jp_sample(s, out, xt, t, noise, variance=variance)
    x_quiet, _ = jp_sample(s, out, xt, t, jnp.zeros_like(noise), variance=variance)
    vm = [jp_sample(s, out, xt, t, z, variance=variance)[0] for z in draws]
    return x_prev, x0_hat, x_quiet, vm, p_mean_variance(s, out, xt, t, variance=variance)

  draws = f32(rng.normal(size=(3,) + shape))
  x_prev, x0_hat, x_quiet, vm, pmv = run(out, xt, noise, draws)
  # t = 0: exactly the mean, whatever the noise.
  np.testing.assert_array_equal(np.asarray(x_prev)[:2], np.asarray(x_quiet)[:2])
  close(x_prev[:2], np.asarray(pmv.mean)[:2], rtol=1e-6, atol=1e-6)
  std = np.broadcast_to(np.exp(0.5 * np.asarray(pmv.log_variance, np.float64)), shape)
  close(x_prev[2:], np.asarray(pmv.mean)[2:] + std[2:] * noise[2:], rtol=1e-5, atol=1e-4)
  close(x0_hat, np.asarray(pmv.x0_hat), rtol=1e-6, atol=1e-6)
  # vmap over several noise draws.
  for k in range(3):
    close(vm[k], np.asarray(pmv.mean) + std * draws[k] * (t > 0)[:, None, None, None],
          rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(vm[k])[:2], np.asarray(x_quiet)[:2])


# ----------------------------------------------------------------------------
# Clipping and dynamic thresholding.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode,prediction,shape", [
    (m, p, SHAPES[k]) for m in ("static", "dynamic") for p, k in
    (("eps", "vector"), ("eps", "image"), ("x0", "image"), ("v", "vector"))])
def test_clipping_recomputes_eps(mode, prediction, shape):
  s, r = sched("cosine"), npsched("cosine")
  rng = np.random.default_rng(13)
  t = t_grid(shape[0], 1000)
  xt = 2.0 * rng.normal(size=shape)
  out = 3.0 * rng.normal(size=shape)  # implies |x0| well beyond 1 somewhere
  kw = dict(clip_x0=1.0) if mode == "static" else dict(dynamic_threshold=0.9)

  @jax.jit
  def run(out, xt):
    return (denoise(s, out, xt, t, prediction=prediction, **kw),
            model_output_to_x0_eps(s, out, xt, t, prediction)[0],
            p_mean_variance(s, out, xt, t, prediction=prediction, **kw))

  (x0_hat, eps_hat), raw_x0, pmv = run(f32(out), f32(xt))
  assert np.abs(np.asarray(raw_x0)).max() > 1.0
  assert np.abs(np.asarray(x0_hat)).max() <= 1.0 + 1e-6
  if mode == "static":
    close(x0_hat, np.clip(np.asarray(raw_x0, np.float64), -1, 1), rtol=1e-6, atol=1e-7)
  # The pair stays consistent with x_t.
  ab = r["alphas_cumprod"][t]
  recon = bc(np.sqrt(ab), xt) * np.asarray(x0_hat, np.float64) \
      + bc(np.sqrt(1 - ab), xt) * np.asarray(eps_hat, np.float64)
  close(recon, xt, rtol=0, atol=1e-5 * (1 + np.abs(xt)))
  # And the mean of p is the posterior mean at the clipped x0.
  c1 = r["posterior_mean_coef1"][t]
  c2 = r["posterior_mean_coef2"][t]
  close(pmv.mean, bc(c1, xt) * np.asarray(x0_hat, np.float64) + bc(c2, xt) * xt,
        rtol=0, atol=2e-6 * (1 + np.abs(xt)))


@pytest.mark.parametrize("shape,p,bound", [
    (SHAPES["image"], 0.995, None), (SHAPES["vector"], 0.5, None),
    (SHAPES["image"], 0.9, 2.0), (SHAPES["vector"], 0.7, 0.5)])
def test_dynamic_threshold_formula(shape, p, bound):
  """Imagen §2.3: s = max(percentile_p |x0|, bound); x0 ← clip(x0, -s, s) bound/s."""
  rng = np.random.default_rng(14)
  x0 = rng.normal(size=shape) * np.linspace(0.2, 3.0, shape[0]).reshape(
      (-1,) + (1,) * (len(shape) - 1))
  got = jthreshold(f32(x0), clip_x0=bound, dynamic_threshold=p)
  bnd = 1.0 if bound is None else bound
  flat = np.abs(f32(x0).astype(np.float64).reshape(shape[0], -1))
  sq = np.maximum(np.percentile(flat, 100 * p, axis=1), bnd)
  sq = sq.reshape((-1,) + (1,) * (len(shape) - 1))
  want = np.clip(f32(x0), -sq, sq) * bnd / sq
  close(got, want, rtol=1e-5, atol=1e-6)
  # Both branches occur: some samples are rescaled (s > bound) ...
  assert np.any(np.percentile(flat, 100 * p, axis=1) > bnd)
  # ... and a sample whose |x0| stays within the bound is left unchanged (s = bound).
  small = flat.max(1) <= bnd
  if small.any():
    close(np.asarray(got)[small], f32(x0)[small], rtol=1e-6, atol=0)


def test_threshold_none_is_identity():
  x = f32(np.random.default_rng(15).normal(size=(3, 4)) * 5)
  assert threshold_x0(x) is x
  close(jthreshold(x, clip_x0=2.0), np.clip(x, -2, 2), rtol=0, atol=0)


def test_bf16_model_output_keeps_float32_state():
  s = sched("cosine")
  xt = jnp.ones((2, 3), jnp.float32)
  out = jnp.ones((2, 3), jnp.bfloat16)
  pmv = jp_mean_variance(s, out, xt, jnp.array([3, 400], jnp.int32))
  assert pmv.mean.dtype == jnp.float32 and pmv.x0_hat.dtype == jnp.float32
