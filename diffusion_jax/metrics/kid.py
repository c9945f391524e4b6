"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

KID is the squared maximum mean discrepancy between two feature sets under
the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ (d the feature
dimension), estimated without bias (Gretton et al. 2012, Eq. (3)) on m-sample
subsets X, Y:

  MMD²_u = 1/(m(m-1)) Σ_{i≠j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m² Σ_{i,j} k(x_i, y_j),

averaged over `num_subsets` random subsets drawn without replacement, as
Bińkowski et al.'s code, torch-fidelity (``kid_features_to_metric``) and
clean-fid do. The subsets are drawn like torch-fidelity's:
``rng = np.random.RandomState(seed)``, then per subset
``rng.choice(len(feats_a), m, replace=False)`` and the same for feats_b, so with
feats_a = generated, feats_b = reference and torch-fidelity's seed (2020) the
subsets are the same. Computed in float64 NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["KID", "polynomial_kernel", "mmd2_unbiased", "kernel_inception_distance"]


class KID(NamedTuple):
  """Mean and standard deviation (np.std, ddof 0) of MMD² over the subsets."""
  mean: float
  std: float


def polynomial_kernel(x, y) -> np.ndarray:
  """k(x_i, y_j) = (x_i·y_j / d + 1)³ for x [n, d], y [m, d] -> [n, m]."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
  """Unbiased MMD² (cubic polynomial kernel) of two equal-size sets x, y [m, d], m >= 2."""
  m = x.shape[0]
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(feats_a, feats_b, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> KID:
  """KID between two feature sets: mean and std of unbiased MMD² over subsets.

  Args:
    feats_a: [N_a, D] features (e.g. of generated images).
    feats_b: [N_b, D] features (e.g. of reference images).
    num_subsets: how many subset pairs, >= 1.
    subset_size: m, the samples per subset; clipped to min(N_a, N_b) (at
      m = N_a = N_b every subset is the whole set and std is 0).
    seed: of `np.random.RandomState` drawing the subsets.

  Returns:
    `KID(mean, std)`; multiply by 1000 for the "KID x 10³" commonly reported.

  Raises:
    ValueError: features are not [N, D] with the same D and N >= 2, or
      num_subsets / subset_size < 1 (subset_size must be >= 2).
  """
  a = np.asarray(feats_a, np.float64)
  b = np.asarray(feats_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"feats_a and feats_b must be [N, D] with the same D, got shapes "
                     f"{a.shape} and {b.shape}.")
  if min(len(a), len(b)) < 2:
    raise ValueError(f"feats_a and feats_b need at least 2 samples each, got "
                     f"{len(a)} and {len(b)}.")
  if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 1:
    raise ValueError(f"num_subsets must be an int >= 1, got {num_subsets!r}.")
  if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
    raise ValueError(f"subset_size must be an int >= 2, got {subset_size!r}.")
  m = min(subset_size, len(a), len(b))
  rng = np.random.RandomState(seed)
  mmds = np.empty(num_subsets)
  for i in range(num_subsets):
    x = a[rng.choice(len(a), m, replace=False)]
    y = b[rng.choice(len(b), m, replace=False)]
    mmds[i] = mmd2_unbiased(x, y)
  return KID(float(np.mean(mmds)), float(np.std(mmds)))
