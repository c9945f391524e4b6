"""Fréchet Inception Distance: feature statistics and the Fréchet distance.

FID (Heusel et al. 2017) fits a Gaussian N(μ, Σ) to the pool3 Inception
features of each image set and measures

  d² = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^{1/2}),

the squared 2-Wasserstein (Fréchet) distance between the Gaussians
(Dowson & Landau 1982). `frechet_distance` computes it exactly as pytorch-fid's
``calculate_frechet_distance`` (D. J. Sutherland's stable version) in float64;
`compute_statistics` gives pytorch-fid's (μ, Σ) (mean and the unbiased
covariance, ``np.cov(rowvar=False)``), and `save_statistics` /
`load_statistics` use the ``.npz`` layout of pytorch-fid and TTUR (keys
``mu``, ``sigma``), so published reference statistics load directly.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy import linalg

from diffusion_jax.errors import ConfigError

__all__ = ["frechet_distance", "compute_statistics", "save_statistics", "load_statistics"]


def _check_stats(mu, sigma, name: str):
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"mu{name} must be [D] and sigma{name} [D, D], got shapes "
                     f"{mu.shape} and {sigma.shape}.")
  return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  ‖μ₁ - μ₂‖² + Tr(Σ₁) + Tr(Σ₂) - 2 Tr((Σ₁ Σ₂)^{1/2}) (Heusel et al. 2017,
  Eq. (6)) with ``scipy.linalg.sqrtm``, as pytorch-fid: when the square root
  of the product is not finite (singular product), eps is added to both
  diagonals and it is recomputed (with a warning); a complex result whose
  diagonal's imaginary parts are all within 1e-3 of 0 keeps its real part.

  Args:
    mu1, mu2: means [D].
    sigma1, sigma2: covariances [D, D].
    eps: the diagonal offset for a singular product.

  Returns:
    d² as a Python float.

  Raises:
    ValueError: shapes are not [D] / [D, D] or differ between the two
      Gaussians, or the square root has a large imaginary component.
  """
  mu1, sigma1 = _check_stats(mu1, sigma1, "1")
  mu2, sigma2 = _check_stats(mu2, sigma2, "2")
  if mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must have the same dimension, got {mu1.shape} "
                     f"and {mu2.shape}.")
  diff = mu1 - mu2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(f"frechet_distance: singular product; adding {eps} to the diagonal "
                  "of both covariances.", RuntimeWarning, stacklevel=2)
    offset = np.eye(sigma1.shape[0]) * eps
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", linalg.LinAlgWarning)
      covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"frechet_distance: the square root of sigma1 @ sigma2 has an "
                       f"imaginary component {np.max(np.abs(covmean.imag))}; the "
                       "covariances are not valid (positive semi-definite).")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * np.trace(covmean))


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features, float64, as pytorch-fid.

  Args:
    features: [N, D], N >= 2.

  Returns:
    mu [D] (the mean) and sigma [D, D] (``np.cov(features, rowvar=False)``,
    normalised by N - 1). Both are computed in float64 (pytorch-fid averages
    float32 features in float32 for mu; the two differ at float32 rounding).

  Raises:
    ValueError: features is not [N, D] with N >= 2.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}.")
  return np.mean(x, axis=0), np.cov(x, rowvar=False)


def save_statistics(path: str | os.PathLike, mu, sigma) -> None:
  """Writes ``np.savez_compressed(path, mu=mu, sigma=sigma)`` (pytorch-fid's format).

  The file is written at path exactly (no ".npz" is appended).

  Raises:
    ValueError: mu is not [D] or sigma not [D, D].
  """
  mu, sigma = _check_stats(mu, sigma, "")
  with open(path, "wb") as f:
    np.savez_compressed(f, mu=mu, sigma=sigma)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu, sigma), float64, from a pytorch-fid / TTUR statistics `.npz`.

  Raises:
    ConfigError: the file is missing, unreadable, lacks the ``mu`` / ``sigma``
      keys, or they are not [D] / [D, D].
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"FID statistics file {path!r} not found; write one with "
                      "save_statistics or use a pytorch-fid / TTUR .npz.")
  try:
    with np.load(path, allow_pickle=False) as data:
      if "mu" not in data.files or "sigma" not in data.files:
        raise ConfigError(f"FID statistics file {path!r} must hold arrays 'mu' and "
                          f"'sigma', has {sorted(data.files)}.")
      mu, sigma = data["mu"], data["sigma"]
  except ConfigError:
    raise
  except Exception as e:
    raise ConfigError(f"FID statistics file {path!r} cannot be read as .npz "
                      f"({type(e).__name__}: {e}).") from e
  try:
    return _check_stats(mu, sigma, "")
  except ValueError as e:
    raise ConfigError(f"FID statistics file {path!r}: {e}") from e
