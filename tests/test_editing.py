"""Inpainting, SDEdit and inversion edits against closed forms (tests/_gaussian.py).

Gaussian data x0 ~ N(μ, Σ) with a non-diagonal Σ has an exact denoiser, an
exact conditional of masked coordinates and an exact probability-flow map,
and every inpainting chain over it is linear-Gaussian, so its output moments
are known exactly in float64 (`_gaussian.chain_moments`):

  * the implementation: Monte-Carlo moments of `make_inpaint_fn` equal the
    float64 moments of the same chain within Monte-Carlo error;
  * the methods: those exact moments against the exact conditional measure
    the bias of replacement and of RePaint (benchmarks/inpaint_gaussian.py
    prints the table);
  * SDEdit and inversion edits against the exact probability-flow map.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import _gaussian as G
import diffusion_jax as dj
from diffusion_jax import editing
from diffusion_jax.editing import repaint_schedule

COS = dj.get_schedule("cosine", 1000)
MASK = np.array([1.0, 1.0, 0.0, 0.0], np.float32)   # coordinates 0, 1 known


def _x_known(n):
  x = np.zeros((n, G.D), np.float32)
  x[:, G.KNOWN] = G.X_KNOWN
  return x


def _grid_alphas(K, spacing="linspace"):
  return np.asarray(dj.sampling_schedule(COS, K, spacing=spacing).alphas_cumprod, np.float64)


# ----------------------------------------------------------------------------
# The RePaint schedule.
# ----------------------------------------------------------------------------


def _authors_schedule(t_T, jump_length, jump_n_sample):
  """`get_schedule_jump` of Lugmayr et al.'s code (guided_diffusion/scheduler.py),
  the parts used by its configs."""
  jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
  t, ts = t_T, []
  while t >= 1:
    t = t - 1
    ts.append(t)
    if jumps.get(t, 0) > 0:
      jumps[t] = jumps[t] - 1
      for _ in range(jump_length):
        t = t + 1
        ts.append(t)
  ts.append(-1)
  return ts


@pytest.mark.parametrize("K,j,r", [(250, 10, 10), (20, 5, 3), (10, 9, 2), (7, 2, 1)])
def test_repaint_schedule_is_the_authors(K, j, r):
  # The authors go up one index at a time; a jump of j is j such moves.
  collapsed = []
  for t in _authors_schedule(K, j, r):
    if len(collapsed) >= 2 and t > collapsed[-1] > collapsed[-2]:
      collapsed[-1] = t
    else:
      collapsed.append(t)
  got = repaint_schedule(K, j, r)
  assert list(got) == collapsed and got[0] == K - 1 and got[-1] == -1
  num_jumps = (r - 1) * len(range(0, K - j, j))
  assert int(np.sum(np.diff(got) == j)) == num_jumps
  assert int(np.sum(np.diff(got) == -1)) == K + j * num_jumps


def test_repaint_schedule_checks():
  with pytest.raises(ValueError, match="jump_length"):
    repaint_schedule(10, 10, 2)
  with pytest.raises(ValueError, match="jump_n_sample"):
    repaint_schedule(10, 2, 0)
  assert list(repaint_schedule(4, 99, 1)) == [3, 2, 1, 0, -1]   # No resampling: no jumps.


# ----------------------------------------------------------------------------
# Inpainting: the implementation against the exact chain, the methods
# against the exact conditional.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,method,K,j,r", [
    ("ddpm", "replace", 50, 1, 1),
    ("ddpm", "repaint", 50, 10, 10),
    ("ddim", "repaint", 40, 5, 4),
])
def test_inpaint_moments_equal_the_exact_chain(sampler, method, K, j, r):
  n = 20000
  fn = dj.make_inpaint_fn(G.jax_model(COS), COS, shape=(n, G.D), sampler=sampler,
                          num_steps=K, spacing="linspace", method=method, jump_length=j,
                          jump_n_sample=r)
  x = np.asarray(fn(None, jax.random.key(1), _x_known(n), MASK), np.float64)
  np.testing.assert_array_equal(x[:, G.KNOWN], np.broadcast_to(G.X_KNOWN.astype(np.float32),
                                                               (n, 2)))
  positions = editing.INPAINT_METHODS[method](K, j, r)
  mean, cov = G.chain_moments(_grid_alphas(K), positions, sampler=sampler)
  u = x[:, G.UNKNOWN]
  m_u, c_u = mean[G.UNKNOWN], cov[np.ix_(G.UNKNOWN, G.UNKNOWN)]
  se_mean = np.sqrt(np.diag(c_u) / n)
  se_cov = np.sqrt((np.outer(np.diag(c_u), np.diag(c_u)) + c_u ** 2) / n)
  assert np.all(np.abs(u.mean(0) - m_u) < 5 * se_mean), (u.mean(0), m_u, se_mean)
  assert np.all(np.abs(np.cov(u.T) - c_u) < 5 * se_cov), (np.cov(u.T), c_u, se_cov)


def test_replacement_bias_and_repaint_against_the_exact_conditional():
  """Exact float64 moments of each method's output (no Monte-Carlo error) in
  units of the conditional standard deviations; the figures are the ones
  printed by benchmarks/inpaint_gaussian.py."""
  err = lambda K, j, r, sampler="ddpm": G.errors(*G.chain_moments(
      _grid_alphas(K), repaint_schedule(K, j, r), sampler=sampler))
  # Replacement keeps much of the prior: the conditional mean is missed by
  # 1.2 sd, and a finer grid does not help.
  replace_50, replace_1000 = err(50, 1, 1), err(1000, 1, 1)
  assert 1.2 < replace_50[0] < 1.35 and 1.15 < replace_1000[0] < 1.3
  # RePaint (the paper's j = r = 10) halves the mean error, and a finer grid
  # with more resampling lowers it further ...
  repaint = err(50, 10, 10)
  assert repaint[0] < 0.6 * replace_50[0]
  finer = err(250, 5, 20)
  assert finer[0] < 0.25 * replace_50[0] and finer[1] < replace_1000[1]
  # ... but it is not exact: at a fixed grid, more resampling stops helping
  # (the chain conditions on the noisy known pixels only).
  assert abs(err(50, 10, 40)[0] - repaint[0]) < 0.02
  assert err(250, 1, 50)[1] > 0.15


def test_inpaint_every_registered_sampler():
  """Known pixels exact and the rest finite for every sampler of the registry
  (RePaint: "replace" is its jump_n_sample = 1 case); samples independent of
  the batch split."""
  x0_model = G.jax_model(COS, prediction="x0")
  known, key = _x_known(4), jax.random.key(3)
  build = lambda name, method, n: dj.make_inpaint_fn(
      x0_model, COS, shape=(n, G.D), sampler=name, num_steps=8, method=method,
      jump_length=3, jump_n_sample=2, prediction="x0")
  for name in dj.SAMPLERS:
    x = np.asarray(build(name, "repaint", 4)(None, key, known, MASK))
    assert np.all(np.isfinite(x)), name
    np.testing.assert_array_equal(x[:, G.KNOWN], known[:, G.KNOWN], err_msg=name)
  for name, method in (("ddpm", "replace"), ("dpmpp_2m", "repaint")):
    x = build(name, method, 4)(None, key, known, MASK)
    half = build(name, method, 2)
    parts = [half(None, key, known[:2], MASK, first_index=k) for k in (0, 2)]
    np.testing.assert_allclose(np.concatenate(parts), x, rtol=1e-6, atol=1e-6,
                               err_msg=f"{name} {method}")


def test_multistep_history_restarts_after_a_jump():
  """DPM-Solver++(2M): the step right after a jump is first order (DDIM), the
  next one uses its new history again."""
  K, j, r = 12, 4, 2
  model = G.jax_model(COS)
  fn = dj.make_inpaint_fn(model, COS, shape=(3, G.D), sampler="dpmpp_2m", num_steps=K,
                          spacing="linspace", method="repaint", jump_length=j, jump_n_sample=r,
                          return_trajectory=True)
  traj = np.asarray(fn(None, jax.random.key(0), _x_known(3), MASK).trajectory, np.float64)
  prog = editing.inpaint_program(repaint_schedule(K, j, r))
  sched = dj.sampling_schedule(COS, K, spacing="linspace")
  ab = np.asarray(sched.alphas_cumprod, np.float64)
  abar = lambda i: 1.0 if i < 0 else ab[i]

  def ddim(x, i):
    A, c = G.denoiser_matrix(ab[i])
    x0 = x @ A.T + c
    eps = (x - np.sqrt(ab[i]) * x0) / np.sqrt(1 - ab[i])
    return np.sqrt(abar(i - 1)) * x0 + np.sqrt(1 - abar(i - 1)) * eps

  jumps = np.flatnonzero(prog.kinds == editing.JUMP)
  assert jumps.size == (r - 1) * len(range(0, K - j, j)) == 2
  for e in jumps:  # Elements e (jump), e+1 (denoise), e+2 (replace), e+3 (denoise).
    assert prog.kinds[e + 1] == editing.DENOISE and prog.kinds[e + 3] == editing.DENOISE
    i = prog.frm[e + 1]
    np.testing.assert_allclose(traj[e + 2], ddim(traj[e + 1], i), rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(traj[e + 4] - ddim(traj[e + 3], i - 1))) > 1e-4  # Second order again.


def test_inpaint_checks_its_inputs():
  fn = dj.make_inpaint_fn(G.jax_model(COS), COS, shape=(2, G.D), num_steps=5,
                          method="replace")
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="x_known"):
    fn(None, key, np.zeros((3, G.D)), MASK)
  with pytest.raises(ValueError, match="mask"):
    fn(None, key, np.zeros((2, G.D)), np.ones((3,)))
  with pytest.raises(ValueError, match=r"mask must hold values in \[0, 1\]"):
    fn(None, key, np.zeros((2, G.D)), 2 * MASK)
  with pytest.raises(ValueError, match="inpainting methods"):
    dj.make_inpaint_fn(G.jax_model(COS), COS, shape=(2, G.D), method="blend")
  with pytest.raises(ValueError, match="jump_length"):
    dj.make_inpaint_fn(G.jax_model(COS), COS, shape=(2, G.D), num_steps=5, jump_length=5)
  # Per-sample masks and any mask that broadcasts are accepted.
  per_sample = np.stack([MASK, 1.0 - MASK])
  x = np.asarray(fn(None, key, np.ones((2, G.D), np.float32), per_sample))
  np.testing.assert_array_equal(x[per_sample == 1.0], 1.0)


# ----------------------------------------------------------------------------
# SDEdit.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sdedit_at_strength_one_is_sampling(sampler):
  """With zero terminal SNR, q(x_{T-1} | x) is N(0, I) exactly: bit for bit
  `make_sample_fn`, same keys. On the cosine schedule the two starts differ by
  √ᾱ_{T-1} x, and so (slightly) do the samples."""
  zt = dj.get_schedule("cosine", 1000, rescale_to_zero_terminal_snr=True)
  x_in = np.full((6, G.D), 0.7, np.float32)
  key = jax.random.key(5)
  for schedule, exact in ((zt, True), (COS, False)):
    model = G.jax_model(schedule, prediction="x0")
    kw = dict(shape=(6, G.D), sampler=sampler, num_steps=20, prediction="x0",
              eta=1.0 if sampler == "ddim" else 0.0)
    edited = dj.make_sdedit_fn(model, schedule, strength=1.0, **kw)(None, key, x_in)
    sampled = dj.make_sample_fn(model, schedule, **kw)(None, key)
    if exact:
      np.testing.assert_array_equal(edited, sampled)
    else:
      diff = np.max(np.abs(np.asarray(edited) - np.asarray(sampled)))
      assert diff < 1e-3, diff


def test_sdedit_follows_the_probability_flow_from_the_noised_input():
  """x_t = α_t x + σ_t z at the grid's first point, then the sampler on the
  truncated grid: exactly `make_sample_fn` from that x_t, and (DPM-Solver++(3M),
  60 steps) within 3e-3 of the exact PF map from x_t to t = 0."""
  n, strength = 64, 0.6
  rng = np.random.default_rng(0)
  x_in = rng.normal(size=(n, G.D)).astype(np.float32)
  z = rng.normal(size=(n, G.D)).astype(np.float32)
  fn = dj.make_sdedit_fn(G.jax_model(COS), COS, shape=(n, G.D), strength=strength,
                         sampler="dpmpp_3m", num_steps=100, spacing="logsnr")
  t = int(fn.timesteps[-1])
  assert t == round(strength * 1000) - 1 and len(fn.timesteps) == 60
  got = np.asarray(fn(None, jax.random.key(0), x_in, noise=z), np.float64)
  c = dj.point(COS, jnp.int32(t))
  same = dj.make_sample_fn(G.jax_model(COS), COS, shape=(n, G.D), sampler="dpmpp_3m",
                           timesteps=fn.timesteps)(None, jax.random.key(0),
                                                   x_T=c.alpha * x_in + c.sigma * z)
  np.testing.assert_allclose(got, same, rtol=1e-6, atol=1e-6)
  ab = np.asarray(COS.alphas_cumprod, np.float64)
  want = G.pf_map(np.sqrt(ab[t]) * x_in + np.sqrt(1 - ab[t]) * z, ab[t], 1.0)
  np.testing.assert_allclose(got, want, atol=3e-3)


def test_sdedit_small_strength_returns_the_input():
  n = 256
  x_in = np.asarray(jax.random.multivariate_normal(jax.random.key(2), G.MU, G.SIGMA, (n,)),
                    np.float32)
  errs = []
  for strength in (0.3, 0.05, 1e-3):
    fn = dj.make_sdedit_fn(G.jax_model(COS), COS, shape=(n, G.D), strength=strength,
                           num_steps=50)
    errs.append(float(np.sqrt(np.mean((np.asarray(fn(None, jax.random.key(0), x_in))
                                       - x_in) ** 2))))
  sigma_0 = float(COS.sqrt_one_minus_alphas_cumprod[0])   # 0.0064: the noise left at t = 0
  assert errs[0] > errs[1] > errs[2] and errs[2] < 1.5 * sigma_0, errs
  assert list(dj.editing.sdedit_timesteps(COS, 1e-3, num_steps=50)) == [0]
  with pytest.raises(ValueError, match="strength"):
    dj.make_sdedit_fn(G.jax_model(COS), COS, shape=(n, G.D), strength=0.0)
  with pytest.raises(ValueError, match="strength"):
    dj.editing.sdedit_timesteps(COS, 0.1, timesteps=[200, 999])


# ----------------------------------------------------------------------------
# Edits through DDIM inversion.
# ----------------------------------------------------------------------------


MUS = np.array([[0.3, -0.2, 0.1, 0.4], [-0.5, 0.6, 0.2, -0.3], [0.0, 0.0, 0.0, 0.0]])
NULL = 2  # The unconditional ("null") label of the analytic conditional model.


def conditional_model(schedule):
  """x0 | y ~ N(MUS[y], Σ); label NULL is the null class N(0, Σ)."""
  lam, V = np.linalg.eigh(G.SIGMA)
  lam, V, mus = (jnp.asarray(a, jnp.float32) for a in (lam, V, MUS))

  def model_fn(params, x, t, cond):
    ab = schedule.alphas_cumprod[t][:, None]
    a, mu = jnp.sqrt(ab), mus[cond["label"]]
    x0 = mu + a * ((lam / (ab * lam + 1.0 - ab)) * ((x - a * mu) @ V)) @ V.T
    return (x - a * x0) / jnp.sqrt(1.0 - ab)
  return model_fn


def test_relabel_with_guidance_is_the_exact_composition_of_flows():
  """Invert under y = 0 (w = 1), regenerate under y' with guidance w: the
  guided ε is that of N(μ_∅ + w (μ_y' - μ_∅), Σ) (ε is affine in μ), so the
  exact result is the PF map of N(μ_0, Σ) to ᾱ_T followed by that of
  N(μ_w, Σ) back. DDIM is first order: the error halves with twice the steps."""
  n = 32
  guided = dj.classifier_free_guidance(conditional_model(COS),
                                       null_cond=dj.guidance.null_label(NULL))
  x = np.asarray(jax.random.multivariate_normal(jax.random.key(1), MUS[0], G.SIGMA, (n,)),
                 np.float32)
  label = lambda y, w: {"label": jnp.full((n,), y, jnp.int32), "guidance_scale": jnp.float32(w)}
  errors = {}
  for K in (200, 400):
    fn = dj.make_relabel_fn(guided, COS, shape=(n, G.D), num_steps=K)
    ab_T = float(dj.sampling_schedule(COS, K).alphas_cumprod[-1])
    for target, w in ((0, 1.0), (1, 1.0), (1, 2.5)):
      mu_w = MUS[NULL] + w * (MUS[target] - MUS[NULL])
      want = G.pf_map(G.pf_map(x, 1.0, ab_T, mu=MUS[0]), ab_T, 1.0, mu=mu_w)
      got = np.asarray(fn(None, x, source_cond=label(0, 1.0), target_cond=label(target, w)))
      errors[K, target, w] = np.max(np.abs(got - want))
  for target, w in ((0, 1.0), (1, 1.0), (1, 2.5)):   # (0, 1.0) is the round trip.
    assert errors[400, target, w] < 0.025, errors
    assert errors[400, target, w] < 0.65 * errors[200, target, w], errors


def test_interpolation_ends_at_the_inputs_and_follows_slerp():
  K, N = 400, 5
  model = G.jax_model(COS)
  fn = dj.make_interpolate_fn(model, COS, num_points=N, event_shape=(G.D,), num_steps=K)
  pair = np.array([[0.9, 0.1, -0.4, 0.6], [0.1, -0.6, 0.5, 0.1]], np.float32)  # θ ≈ 147° between the latents
  out = np.asarray(fn(None, pair), np.float64)
  assert out.shape == (N, G.D)
  np.testing.assert_allclose(out[[0, -1]], pair, atol=0.025)
  ab_T = float(dj.sampling_schedule(COS, K).alphas_cumprod[-1])
  z = G.pf_map(pair, 1.0, ab_T)
  path = np.asarray(dj.slerp(z[0], z[1], np.linspace(0, 1, N)), np.float64)
  np.testing.assert_allclose(out, G.pf_map(path, ab_T, 1.0), atol=0.025)
