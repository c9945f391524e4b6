"""Schedules against independent float64 NumPy references (tests/np_reference.py)."""

import dataclasses
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import np_reference as ref
from diffusion_jax import schedules
from diffusion_jax.schedules import (SCHEDULES, SPACINGS, Schedule, get_schedule,
                                     make_timesteps, rescale_zero_terminal_snr, respace,
                                     schedule_from_betas)

NAMES = ("linear", "cosine", "sigmoid", "scaled_linear")
TS = (1000, 250, 37)

ARRAY_FIELDS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logsnr")

# Each stored float32 array is a rounding of a float64 value: a few ulps at most.
RTOL = 4e-7


def assert_schedule_matches(sched: Schedule, r: dict, rtol=RTOL):
  for f in ARRAY_FIELDS:
    got = np.asarray(getattr(sched, f))
    assert got.dtype == np.float32, f
    assert got.shape == (sched.num_timesteps,), f
    np.testing.assert_allclose(got.astype(np.float64), r[f], rtol=rtol, atol=0,
                               err_msg=f)


def test_known_schedules():
  assert sorted(SCHEDULES) == sorted(NAMES)
  assert tuple(SPACINGS) == ("linspace", "leading", "trailing", "quadratic")


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("name", NAMES)
def test_schedule_arrays_match_float64(name, T):
  s = get_schedule(name, T)
  assert s.num_timesteps == T and s.zero_terminal_snr is False
  assert_schedule_matches(s, ref.named(name, T))
  np.testing.assert_array_equal(np.asarray(s.timesteps), np.arange(T))
  assert s.timesteps.dtype == jnp.int32
  # The t = 0 entry of the clipped log variance is the t = 1 value (IDDPM).
  assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
  assert float(s.posterior_variance[0]) == 0.0
  assert float(s.alphas_cumprod_prev[0]) == 1.0


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("name", NAMES)
def test_snr_matches_float64(name, T):
  s = get_schedule(name, T)
  snr = np.asarray(s.snr)
  assert snr.dtype == np.float32 and snr.shape == (T,)
  np.testing.assert_allclose(snr, ref.named(name, T)["snr"], rtol=1e-6)
  assert np.all(np.diff(snr) < 0)


@pytest.mark.parametrize("T", TS)
def test_linear_endpoints_scale_with_T(T):
  b = np.asarray(get_schedule("linear", T).betas, np.float64)
  np.testing.assert_allclose([b[0], b[-1]], [1e-4 * 1000 / T, 0.02 * 1000 / T], rtol=1e-7)
  np.testing.assert_allclose(np.diff(b), (b[-1] - b[0]) / (T - 1), rtol=1e-4)


@pytest.mark.parametrize("T", TS)
def test_cosine_alpha_bar_is_eq17(T):
  """ᾱ_t = f(t)/f(0) with f(t) = cos²((t/T + s)/(1 + s) π/2), s = 0.008."""
  s = get_schedule("cosine", T)
  f = lambda u: np.cos((u / T + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(1, T + 1, dtype=np.float64)
  b = ref.betas("cosine", T)
  unclipped = np.cumsum(b >= 0.999) == 0  # before the first clipped β
  assert unclipped.sum() >= T - 1
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped],
                             (f(t) / f(0.0))[unclipped], rtol=2e-6, atol=1e-9)
  assert np.asarray(s.betas).max() <= np.float32(0.999)


@pytest.mark.parametrize("name", NAMES)
def test_schedules_are_monotone(name):
  s = get_schedule(name, 1000)
  ab = np.asarray(s.alphas_cumprod)
  assert np.all(np.diff(ab) < 0) and 0 < ab[-1] < ab[0] < 1
  assert np.all(np.asarray(s.betas) > 0) and np.all(np.asarray(s.betas) < 1)


def test_schedule_from_betas_arbitrary():
  rng = np.random.default_rng(0)
  b = np.sort(rng.uniform(1e-3, 0.3, size=23))
  s = schedule_from_betas(b.astype(np.float32))  # any float dtype is accepted
  assert_schedule_matches(s, ref.derived(b.astype(np.float32).astype(np.float64)))
  s2 = schedule_from_betas(b, timesteps=np.arange(0, 46, 2))
  np.testing.assert_array_equal(np.asarray(s2.timesteps), np.arange(0, 46, 2))
  assert s2.timesteps.dtype == jnp.int32


def test_single_step_schedule():
  s = schedule_from_betas([0.3])
  assert s.num_timesteps == 1
  np.testing.assert_allclose(np.asarray(s.posterior_log_variance_clipped), [np.log(0.3)],
                             rtol=1e-7)
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod), [0.7], rtol=1e-7)


# ----------------------------------------------------------------------------
# The Schedule pytree.
# ----------------------------------------------------------------------------


def test_schedule_is_frozen():
  s = get_schedule("cosine", 37)
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.betas = s.betas * 2  # type: ignore[misc]
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.num_timesteps = 3  # type: ignore[misc]
  s2 = s.replace(betas=s.betas * 0.5)
  assert s2 is not s and float(s.betas[3]) == 2 * float(s2.betas[3])


def test_schedule_is_a_pytree():
  s = get_schedule("linear", 37, rescale_to_zero_terminal_snr=True)
  leaves, treedef = jax.tree_util.tree_flatten(s)
  assert len(leaves) == len(ARRAY_FIELDS) + 1  # + timesteps
  assert all(isinstance(l, jax.Array) for l in leaves)
  back = jax.tree_util.tree_unflatten(treedef, leaves)
  assert back.num_timesteps == 37 and back.zero_terminal_snr is True

  @jax.jit
  def f(sched, t):
    return sched.betas[t] * sched.num_timesteps, sched.replace(betas=sched.betas + 1.0)

  val, out = f(s, 5)
  np.testing.assert_allclose(float(val), float(s.betas[5]) * 37, rtol=1e-6)
  assert isinstance(out, Schedule)
  assert out.num_timesteps == 37 and out.zero_terminal_snr is True  # static fields
  np.testing.assert_allclose(np.asarray(out.betas), np.asarray(s.betas) + 1.0)

  # vmap over a stack of schedules with the same static metadata.
  s_b = get_schedule("cosine", 37)
  s_c = get_schedule("sigmoid", 37)
  stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), s_b, s_c)
  snr = jax.jit(jax.vmap(lambda sc: sc.snr))(stacked)
  np.testing.assert_allclose(np.asarray(snr), np.stack([s_b.snr, s_c.snr]), rtol=1e-6)


# ----------------------------------------------------------------------------
# Zero terminal SNR (Lin et al. 2024, Algorithm 1).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("T", (1000, 37))
@pytest.mark.parametrize("name", NAMES)
def test_zero_terminal_snr(name, T):
  s = get_schedule(name, T, rescale_to_zero_terminal_snr=True)
  assert s.zero_terminal_snr is True and s.num_timesteps == T
  r = ref.named(name, T, zero_snr=True)
  orig = np.sqrt(np.cumprod(1.0 - ref.betas(name, T)))
  # ᾱ_{T-1} = 0 exactly and β_{T-1} = 1 exactly.
  assert float(s.alphas_cumprod[-1]) == 0.0
  assert float(s.betas[-1]) == 1.0
  assert float(s.sqrt_alphas_cumprod[-1]) == 0.0
  assert float(s.snr[-1]) == 0.0
  assert float(s.log_one_minus_alphas_cumprod[-1]) == 0.0
  assert np.isinf(float(s.sqrt_recip_alphas_cumprod[-1]))
  # √ᾱ_0 is preserved.
  np.testing.assert_allclose(float(s.sqrt_alphas_cumprod[0]), orig[0], rtol=2e-7)
  # √ᾱ is an affine function of the original √ᾱ (shifted and scaled).
  new = np.asarray(s.sqrt_alphas_cumprod, np.float64)
  A = np.stack([orig, np.ones_like(orig)], 1)
  coef = np.linalg.lstsq(A, new, rcond=None)[0]
  np.testing.assert_allclose(A @ coef, new, atol=2e-7)
  np.testing.assert_allclose(coef, [orig[0] / (orig[0] - orig[-1]),
                                    -orig[-1] * orig[0] / (orig[0] - orig[-1])],
                             rtol=1e-6, atol=1e-8)  # the intercept is ~1e-5
  # Every stored array against the transcribed Algorithm 1 (finite entries).
  for f in ARRAY_FIELDS:
    got = np.asarray(getattr(s, f), np.float64)
    want = r[f]
    assert np.array_equal(np.isinf(got), np.isinf(want)), f
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=2e-6, atol=1e-12, err_msg=f)


def test_rescale_function_directly():
  b = ref.betas("scaled_linear", 50)
  nb = rescale_zero_terminal_snr(b)
  assert nb.dtype == np.float64 and nb.shape == (50,)
  np.testing.assert_allclose(nb, ref.zero_snr_betas(b), rtol=1e-12)
  assert nb[-1] == 1.0


# ----------------------------------------------------------------------------
# make_timesteps: the grids of its docstring, in exact arithmetic.
# ----------------------------------------------------------------------------


def exact_grid(T, K, spacing):
  """The docstring's formulas with rational arithmetic; round = half to even."""
  if K == T:
    return list(range(T))
  i = range(K)
  if spacing == "linspace":
    return [round(Fraction(j * (T - 1), max(K - 1, 1))) for j in i]
  if spacing == "leading":
    return [j * (T // K) for j in i]
  if spacing == "trailing":
    return sorted(round(T - Fraction(j * T, K)) - 1 for j in i)
  if spacing == "quadratic":
    return [int(Fraction(j * j * 4 * T, 5 * max(K - 1, 1) ** 2)) for j in i]
  raise KeyError(spacing)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_make_timesteps_exact_grids(spacing):
  cases = [(T, K) for T in range(1, 41) for K in range(1, T + 1)]
  cases += [(T, K) for T in (250, 1000, 4000)
            for K in (1, 2, 3, 7, 10, 20, 25, 50, 100, 249, T - 1, T) if K <= T]
  n_err = 0
  for T, K in cases:
    want = exact_grid(T, K, spacing)
    if any(b <= a for a, b in zip(want, want[1:])):
      with pytest.raises(ValueError, match="repeated timesteps"):
        make_timesteps(T, K, spacing)
      n_err += 1
      continue
    got = make_timesteps(T, K, spacing)
    assert got.dtype == np.int64 and got.shape == (K,)
    assert got.tolist() == want, (T, K, spacing)
    assert got[0] >= 0 and got[-1] <= T - 1
  assert len(cases) - n_err >= 100  # the loop did test many valid grids


def test_make_timesteps_known_values():
  np.testing.assert_array_equal(make_timesteps(1000, 50, "leading"), np.arange(0, 1000, 20))
  np.testing.assert_array_equal(make_timesteps(1000, 10, "trailing"), np.arange(99, 1000, 100))
  np.testing.assert_array_equal(make_timesteps(1000, 4, "linspace"), [0, 333, 666, 999])
  np.testing.assert_array_equal(make_timesteps(10, 3, "linspace"), [0, 4, 9])  # 4.5 → 4
  np.testing.assert_array_equal(make_timesteps(10, 4, "trailing"), [1, 4, 7, 9])
  np.testing.assert_array_equal(make_timesteps(15, 2, "quadratic"), [0, 12])  # ⌊12⌋ exactly
  np.testing.assert_array_equal(make_timesteps(1000, 5, "quadratic"), [0, 50, 200, 450, 800])
  for spacing in SPACINGS:
    np.testing.assert_array_equal(make_timesteps(37, 37, spacing), np.arange(37))
    assert make_timesteps(1000, 1, spacing).shape == (1,)
  assert make_timesteps(1000, 7, "linspace")[[0, -1]].tolist() == [0, 999]
  assert make_timesteps(1000, 7, "trailing")[-1] == 999


# ----------------------------------------------------------------------------
# Respacing (Improved DDPM §4).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", ("linear", "cosine"))
def test_respace(name, spacing):
  T, K = 1000, 20
  base = get_schedule(name, T)
  S = make_timesteps(T, K, spacing)
  r = respace(base, S)
  ab = np.cumprod(1.0 - ref.betas(name, T))
  ab_new = ab[S]
  b_new = 1.0 - ab_new / np.append(1.0, ab_new[:-1])
  assert r.num_timesteps == K and r.zero_terminal_snr is False
  np.testing.assert_array_equal(np.asarray(r.timesteps), S)
  assert r.timesteps.dtype == jnp.int32
  # New ᾱ are the subsequence; betas and everything else recomputed from them.
  np.testing.assert_allclose(np.asarray(r.alphas_cumprod), ab_new, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(r.betas, np.float64), b_new, rtol=2e-6)
  # The float32 betas carry ~1e-7 relative error into the derived arrays.
  assert_schedule_matches(r, ref.derived(b_new), rtol=3e-6)


def test_respace_identity_and_composition():
  base = get_schedule("cosine", 1000)
  assert respace(base, np.arange(1000)) is base
  S1 = make_timesteps(1000, 100, "leading")
  r1 = respace(base, S1)
  idx = make_timesteps(100, 10, "trailing")
  r2 = respace(r1, idx)
  np.testing.assert_array_equal(np.asarray(r2.timesteps), S1[idx])
  r_direct = respace(base, S1[idx])
  for f in ARRAY_FIELDS:
    np.testing.assert_allclose(np.asarray(getattr(r2, f)), np.asarray(getattr(r_direct, f)),
                               rtol=2e-6, err_msg=f)


def test_respace_zero_terminal():
  base = get_schedule("scaled_linear", 1000, rescale_to_zero_terminal_snr=True)
  tr = respace(base, make_timesteps(1000, 20, "trailing"))
  assert tr.zero_terminal_snr is True
  assert float(tr.alphas_cumprod[-1]) == 0.0 and float(tr.betas[-1]) == 1.0
  ld = respace(base, make_timesteps(1000, 20, "leading"))  # ends at 950
  assert ld.zero_terminal_snr is False and float(ld.alphas_cumprod[-1]) > 0
  ab = np.cumprod(1.0 - ref.zero_snr_betas(ref.betas("scaled_linear", 1000)))
  np.testing.assert_allclose(np.asarray(ld.alphas_cumprod), ab[np.arange(0, 1000, 50)],
                             rtol=2e-6)


def test_get_betas_is_float64():
  b = schedules.get_betas("cosine", 37)
  assert b.dtype == np.float64
  np.testing.assert_allclose(b, ref.betas("cosine", 37), rtol=1e-13)
