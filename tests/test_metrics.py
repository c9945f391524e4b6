"""FID, KID and precision/recall against independent float64 NumPy/SciPy references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from diffusion_jax.errors import ConfigError
from diffusion_jax.metrics import fid, kid
from diffusion_jax.metrics import (compute_statistics, frechet_distance,
                                   kernel_inception_distance, load_statistics,
                                   precision_recall, save_statistics)


def gaussian_features(n, d, seed, shift=0.0, scale=1.0):
  """n samples of shift + scale · N(0, (I + M)ᵀ(I + M)), M random (from seed)."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return shift + scale * rng.normal(size=(n, d)) @ (np.eye(d) + mix)


# ----------------------------------------------------------------------------
# FID.
# ----------------------------------------------------------------------------


def ref_frechet(mu1, s1, mu2, s2):
  """d² with Tr((Σ₁Σ₂)^½) = Σ √λ(Σ₁^½ Σ₂ Σ₁^½) (a symmetric PSD matrix, eigh only)."""
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  lam = np.linalg.eigvalsh(root1 @ s2 @ root1)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.sum(np.sqrt(np.clip(lam, 0, None))))


def test_compute_statistics_matches_definition():
  x = gaussian_features(50, 6, 0).astype(np.float32)
  mu, sigma = compute_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  x64 = x.astype(np.float64)
  mean = x64.sum(0) / len(x64)
  cov = sum(np.outer(r - mean, r - mean) for r in x64) / (len(x64) - 1)
  np.testing.assert_allclose(mu, mean, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(sigma, cov, rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match="features"):
    compute_statistics(x[:1])
  with pytest.raises(ValueError, match="features"):
    compute_statistics(x[0])


@pytest.mark.parametrize("n", [200, 10])  # Full-rank and singular (N < D) covariances.
def test_frechet_distance_matches_references(n):
  from pytorch_fid.fid_score import calculate_frechet_distance
  d = 32
  s1 = compute_statistics(gaussian_features(n, d, 1))
  s2 = compute_statistics(gaussian_features(n, d, 2, shift=0.3, scale=1.5))
  got = frechet_distance(*s1, *s2)
  assert isinstance(got, float) and got > 1.0
  np.testing.assert_allclose(got, ref_frechet(*s1, *s2), rtol=1e-7)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scipy's deprecated `disp` in pytorch-fid.
    want = calculate_frechet_distance(*s1, *s2)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_frechet_distance_closed_forms():
  mu, sigma = compute_statistics(gaussian_features(300, 16, 3))
  assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)
  # Diagonal covariances: Σ (μ1 - μ2)² + Σ (σ1 + σ2 - 2 √(σ1 σ2)), σ the variances.
  rng = np.random.default_rng(4)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  v1, v2 = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  np.testing.assert_allclose(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want,
                             rtol=1e-12)
  # One dimension (scalars are promoted as in pytorch-fid).
  np.testing.assert_allclose(frechet_distance(1.0, 4.0, 3.0, 1.0), 4.0 + 1.0, rtol=1e-12)


def test_frechet_distance_singular_product_offset(monkeypatch):
  """A non-finite square root is retried with eps on both diagonals (with a warning)."""
  rng = np.random.default_rng(5)
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  s1, s2 = np.diag(rng.uniform(0.5, 2, 4)), np.diag(rng.uniform(0.5, 2, 4))
  real_sqrtm, calls = fid.linalg.sqrtm, []

  def first_call_fails(a):
    calls.append(a)
    return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(fid.linalg, "sqrtm", first_call_fails)
  with pytest.warns(RuntimeWarning, match="singular"):
    got = frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
  np.testing.assert_allclose(calls[1], (s1 + 1e-3 * np.eye(4)) @ (s2 + 1e-3 * np.eye(4)))
  v1, v2 = np.diag(s1), np.diag(s2)
  want = (np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2)
          - 2 * np.sum(np.sqrt((v1 + 1e-3) * (v2 + 1e-3))))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_frechet_distance_bad_inputs():
  mu, sigma = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match="same dimension"):
    frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="sigma2"):
    frechet_distance(mu, sigma, mu, np.eye(4))
  with pytest.raises(ValueError, match="sigma1"):
    frechet_distance(mu, np.ones((3, 2)), mu, sigma)
  with pytest.raises(ValueError, match="imaginary"):  # Not positive semi-definite.
    frechet_distance(mu, np.diag([-1.0, 1.0, 1.0]), mu, sigma)


def test_statistics_files(tmp_path):
  mu, sigma = compute_statistics(gaussian_features(20, 5, 6))
  path = tmp_path / "stats.npz"
  save_statistics(path, mu, sigma)
  with np.load(path) as f:  # What pytorch-fid's loader reads: f['mu'][:], f['sigma'][:].
    assert sorted(f.files) == ["mu", "sigma"]
    np.testing.assert_array_equal(f["mu"][:], mu)
  got_mu, got_sigma = load_statistics(path)
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  # A TTUR-style file (float32, written by np.savez_compressed) loads as float64.
  ttur = tmp_path / "fid_stats_ttur.npz"
  np.savez_compressed(ttur, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
  m, s = load_statistics(ttur)
  assert m.dtype == s.dtype == np.float64 and s.shape == (5, 5)
  with pytest.raises(ConfigError, match="not found"):
    load_statistics(tmp_path / "missing.npz")
  np.savez(tmp_path / "other.npz", mean=mu)
  with pytest.raises(ConfigError, match="'mu' and 'sigma'"):
    load_statistics(tmp_path / "other.npz")
  with pytest.raises(ValueError, match="sigma"):
    save_statistics(tmp_path / "bad.npz", mu, sigma[:2])


# ----------------------------------------------------------------------------
# KID.
# ----------------------------------------------------------------------------


def ref_mmd2_unbiased(x, y):
  """Bińkowski et al. (2018) / Gretton et al. (2012) Eq. (3), explicit double sums."""
  m, d = x.shape
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (m * m)


def test_kid_full_set_matches_double_sum():
  """subset_size >= N = N_a = N_b: every subset is the whole set (std 0)."""
  a = gaussian_features(25, 6, 7)
  b = gaussian_features(25, 6, 8, shift=0.5)
  got = kernel_inception_distance(a, b, num_subsets=3, subset_size=1000)
  np.testing.assert_allclose(got.mean, ref_mmd2_unbiased(a, b), rtol=1e-10)
  assert got.std < 1e-12 * abs(got.mean)


def test_kid_subsets_match_reference():
  """Subsets drawn as torch-fidelity draws them; subset_size clipped to min(N_a, N_b)."""
  a = gaussian_features(30, 5, 9).astype(np.float32)
  b = gaussian_features(18, 5, 10, shift=0.3)
  for subset_size, m in ((12, 12), (100, 18)):
    got = kernel_inception_distance(a, b, num_subsets=4, subset_size=subset_size, seed=3)
    rng = np.random.RandomState(3)
    mmds = []
    for _ in range(4):
      x = a[rng.choice(len(a), m, replace=False)].astype(np.float64)
      y = b[rng.choice(len(b), m, replace=False)]
      mmds.append(ref_mmd2_unbiased(x, y))
    np.testing.assert_allclose(got.mean, np.mean(mmds), rtol=1e-10)
    np.testing.assert_allclose(got.std, np.std(mmds), rtol=1e-8)
    assert got.std > 0


def test_kid_orders_distributions():
  a, a2 = np.split(gaussian_features(400, 8, 11), 2)  # One distribution.
  b = gaussian_features(600, 8, 11, shift=0.5)[400:]  # Shifted, other samples.
  same = kernel_inception_distance(a, a2, num_subsets=10, subset_size=100)
  shifted = kernel_inception_distance(a, b, num_subsets=10, subset_size=100)
  assert abs(same.mean) < 3 * same.std + 1e-3 and shifted.mean > 10 * abs(same.mean)


def test_kid_bad_inputs():
  a = np.zeros((5, 3))
  with pytest.raises(ValueError, match="same D"):
    kernel_inception_distance(a, np.zeros((5, 4)))
  with pytest.raises(ValueError, match="at least 2"):
    kernel_inception_distance(a, np.zeros((1, 3)))
  with pytest.raises(ValueError, match="num_subsets"):
    kernel_inception_distance(a, a, num_subsets=0)
  with pytest.raises(ValueError, match="subset_size"):
    kernel_inception_distance(a, a, subset_size=1)
  assert kid.polynomial_kernel(np.ones((2, 4)), np.ones((3, 4))).shape == (2, 3)


# ----------------------------------------------------------------------------
# Precision and recall.
# ----------------------------------------------------------------------------


def ref_precision_recall(real, fake, k):
  """Kynkäänniemi et al. (2019) Eq. (1) with brute-force float64 distances."""
  def radii(x):  # Distance to the k-th nearest neighbour, the point itself excluded.
    d = cdist(x, x)
    return np.array([np.sort(np.delete(d[i], i))[k - 1] for i in range(len(x))])
  def inside(points, support):
    d, r = cdist(points, support), radii(support)
    return np.array([np.any(d[i] <= r) for i in range(len(points))])
  return inside(fake, real).mean(), inside(real, fake).mean()


@pytest.mark.parametrize("k,chunk_size", [(3, 7), (1, 1000), (5, 16)])
def test_precision_recall_matches_brute_force(k, chunk_size):
  real = gaussian_features(60, 12, 14)
  fake = gaussian_features(45, 12, 15, shift=0.4, scale=0.7)
  got = precision_recall(real, fake, k=k, chunk_size=chunk_size)
  want = ref_precision_recall(real, fake, k)
  assert 0 < want[0] < 1 and 0 < want[1] < 1
  assert got.precision == pytest.approx(want[0], abs=1e-12)
  assert got.recall == pytest.approx(want[1], abs=1e-12)


def test_precision_recall_identical_sets():
  x = gaussian_features(30, 4, 16)
  assert tuple(precision_recall(x, x.copy(), k=3)) == (1.0, 1.0)


def test_precision_recall_bad_inputs():
  x = np.zeros((10, 4))
  with pytest.raises(ValueError, match="same D"):
    precision_recall(x, np.zeros((10, 5)))
  with pytest.raises(ValueError, match="more than k"):
    precision_recall(x, np.zeros((3, 4)), k=3)
  with pytest.raises(ValueError, match="k must"):
    precision_recall(x, x, k=0)
  with pytest.raises(ValueError, match="chunk_size"):
    precision_recall(x, x, chunk_size=0)
