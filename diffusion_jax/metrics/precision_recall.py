"""Improved precision and recall (Kynkäänniemi et al. 2019).

Each feature set spans a manifold: the union of balls around its samples whose
radius is the distance to the sample's k-th nearest neighbour within the set
(the sample itself excluded). Sec. 3 of the paper:

  precision = (1/|Φ_g|) Σ_{φ ∈ Φ_g} f(φ, Φ_r),   recall = (1/|Φ_r|) Σ_{φ ∈ Φ_r} f(φ, Φ_g),

with f(φ, Φ) = 1 iff ‖φ - φ'‖ ≤ ‖φ' - NN_k(φ', Φ)‖ for some φ' ∈ Φ (Eq. (1)):
precision is the share of generated samples inside the real manifold, recall
the share of real samples inside the generated one. As the authors' code
(NVlabs ``precision_recall.py``), distances are squared Euclidean ones in
float32, and a sample on a ball's boundary counts as inside.

Pairwise distances are computed `chunk_size` rows at a time against the whole
other set, so memory is O(chunk_size · N) rather than O(N²): 50k x 50k with
chunk_size 1000 needs ~200 MB per chunk. The features are centred on the real
mean first (distances are unchanged; float32 cancellation is smaller).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PrecisionRecall", "precision_recall"]


class PrecisionRecall(NamedTuple):
  precision: float
  recall: float


def _sq_dists(a, b):
  """Squared distances [n, m] between rows of a [n, d] and b [m, d], float32."""
  ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  aa = jnp.sum(a * a, axis=1)[:, None]
  bb = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(aa - 2.0 * ab + bb, 0.0)


def _kth_nn_chunk(rows, points, k: int):
  """Squared distance of each of rows [c, d] to its k-th nearest neighbour in points
  [n, d] (rows are points themselves, so index k skips the zero self-distance)."""
  neg_smallest, _ = jax.lax.top_k(-_sq_dists(rows, points), k + 1)
  return -neg_smallest[:, k]


def _inside_chunk(rows, points, radii):
  """Whether each of rows [c, d] lies in some ball (points [n, d], radii² [n])."""
  return jnp.any(_sq_dists(rows, points) <= radii[None, :], axis=1)


_kth_nn_chunk_jit = jax.jit(_kth_nn_chunk, static_argnames="k")
_inside_chunk_jit = jax.jit(_inside_chunk)


def _map_chunks(fn, rows: np.ndarray, chunk_size: int, *args) -> np.ndarray:
  """fn(chunk, *args) over fixed-size row chunks (the last one zero-padded)."""
  n = len(rows)
  c = min(chunk_size, n)
  out = []
  for start in range(0, n, c):
    chunk = rows[start:start + c]
    m = len(chunk)
    if m < c:
      chunk = np.concatenate([chunk, np.zeros((c - m, rows.shape[1]), rows.dtype)])
    out.append(np.asarray(fn(chunk, *args))[:m])
  return np.concatenate(out)


def precision_recall(real_feats, fake_feats, *, k: int = 3,
                     chunk_size: int = 1000) -> PrecisionRecall:
  """Kynkäänniemi et al. (2019) precision and recall of fake vs real features.

  Args:
    real_feats: [N_r, D] features of reference images, N_r > k.
    fake_feats: [N_g, D] features of generated images, N_g > k.
    k: the neighbourhood size (the paper uses 3).
    chunk_size: rows per pairwise-distance block (memory chunk_size x N x 4 bytes).

  Returns:
    `PrecisionRecall(precision, recall)`, floats in [0, 1].

  Raises:
    ValueError: features not [N, D] with the same D, N <= k, or k / chunk_size < 1.
  """
  real = np.asarray(real_feats, np.float64)
  fake = np.asarray(fake_feats, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"real_feats and fake_feats must be [N, D] with the same D, got "
                     f"shapes {real.shape} and {fake.shape}.")
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}.")
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"real_feats and fake_feats need more than k={k} samples each, got "
                     f"{len(real)} and {len(fake)}.")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
  center = real.mean(axis=0)
  real = (real - center).astype(np.float32)
  fake = (fake - center).astype(np.float32)
  real_d, fake_d = jnp.asarray(real), jnp.asarray(fake)
  kth = lambda rows, pts: _kth_nn_chunk_jit(rows, pts, k=k)
  real_radii = jnp.asarray(_map_chunks(kth, real, chunk_size, real_d))
  fake_radii = jnp.asarray(_map_chunks(kth, fake, chunk_size, fake_d))
  precision = _map_chunks(_inside_chunk_jit, fake, chunk_size, real_d, real_radii)
  recall = _map_chunks(_inside_chunk_jit, real, chunk_size, fake_d, fake_radii)
  return PrecisionRecall(float(np.mean(precision)), float(np.mean(recall)))
