"""Gaussian data with a non-diagonal covariance: exact denoisers, the exact
conditional of masked coordinates, and float64 moments of inpainting chains.

Data x0 ~ N(μ, Σ), Σ = V diag(λ) Vᵀ. With α = √ᾱ and σ² = 1 - ᾱ,
  x_t ~ N(α μ, ᾱ Σ + σ² I),  E[x0 | x_t] = μ + α Σ (ᾱ Σ + σ² I)⁻¹ (x_t - α μ)
                                       = μ + α V diag(λ/(ᾱ λ + σ²)) Vᵀ (x_t - α μ),
and ε̂ = (x_t - α E[x0|x_t])/σ is the exact ε-prediction. The probability-flow
ODE maps x at ᾱ_a to ᾱ_b by
  x_b = α_b μ + V diag(√((ᾱ_b λ + 1-ᾱ_b)/(ᾱ_a λ + 1-ᾱ_a))) Vᵀ (x_a - α_a μ).
The masked coordinates u given the known ones k = x_k are Gaussian:
  N(μ_u + Σ_uk Σ_kk⁻¹ (x_k - μ_k), Σ_uu - Σ_uk Σ_kk⁻¹ Σ_ku).

With the exact denoiser every step of DDPM (ancestral) and deterministic
DDIM is affine in x plus Gaussian noise, and so are the replacements and
RePaint's jumps, so the mean and covariance of a whole inpainting chain follow
exactly in float64 (`chain_moments`): the reference for the Monte-Carlo tests
and the measurement of each method's bias against the exact conditional.
Used by tests/test_editing.py and benchmarks/inpaint_gaussian.py.
"""

from __future__ import annotations

import numpy as np

D = 4
KNOWN, UNKNOWN = np.array([0, 1]), np.array([2, 3])
_L = np.array([[1.0, 0.0, 0.0, 0.0],
               [0.8, 0.6, 0.0, 0.0],
               [0.3, 0.18, 0.5, 0.0],
               [0.12, -0.36, 0.3, 0.4]])
SIGMA = 0.5 * _L @ _L.T                      # non-diagonal, eigenvalues 0.04 .. 0.9
MU = np.array([0.3, -0.2, 0.1, 0.4])
X_KNOWN = MU[KNOWN] + np.sqrt(np.diag(SIGMA)[KNOWN]) * np.array([1.0, -1.0])  # 1 sd off


def conditional(x_known=X_KNOWN, mu=MU, sigma=SIGMA):
  """(mean [2], covariance [2, 2]) of the unknown coordinates given the known ones."""
  k, u = KNOWN, UNKNOWN
  skk, suk, suu = sigma[np.ix_(k, k)], sigma[np.ix_(u, k)], sigma[np.ix_(u, u)]
  mean = mu[u] + suk @ np.linalg.solve(skk, x_known - mu[k])
  return mean, suu - suk @ np.linalg.solve(skk, suk.T)


def denoiser_matrix(ab: float, mu=MU, sigma=SIGMA):
  """(A, c) with E[x0 | x_t] = A x_t + c at ᾱ = ab (float64)."""
  a = np.sqrt(ab)
  A = a * sigma @ np.linalg.inv(ab * sigma + (1.0 - ab) * np.eye(len(mu)))
  return A, mu - A @ (a * mu)


def jax_model(schedule, mu=MU, sigma=SIGMA, prediction: str = "eps"):
  """model_fn(params, x [B, D], t [B], cond) of the exact denoiser (float32)."""
  import jax.numpy as jnp
  lam, V = np.linalg.eigh(sigma)
  lam, V, mu_ = (jnp.asarray(a, jnp.float32) for a in (lam, V, mu))

  def model_fn(params, x, t, cond):
    ab = schedule.alphas_cumprod[t][:, None]
    a = jnp.sqrt(ab)
    x0 = mu_ + a * ((lam / (ab * lam + 1.0 - ab)) * ((x - a * mu_) @ V)) @ V.T
    if prediction == "x0":
      return x0
    return (x - a * x0) / jnp.sqrt(1.0 - ab)
  return model_fn


def pf_map(x, ab_a: float, ab_b: float, mu=MU, sigma=SIGMA):
  """The exact probability-flow map of rows of x [N, D] from ᾱ_a to ᾱ_b (float64)."""
  lam, V = np.linalg.eigh(sigma)
  scale = np.sqrt((ab_b * lam + 1.0 - ab_b) / (ab_a * lam + 1.0 - ab_a))
  x = np.asarray(x, np.float64)
  return np.sqrt(ab_b) * mu + ((x - np.sqrt(ab_a) * mu) @ V * scale) @ V.T


def chain_moments(alphas_cumprod, positions, *, sampler: str = "ddpm",
                  x_known=X_KNOWN, mu=MU, sigma=SIGMA):
  """Exact float64 (mean [D], covariance [D, D]) of an inpainting chain's output.

  alphas_cumprod: the sampling schedule's ᾱ at grid positions 0..K-1;
  positions: the walk over them (`editing.repaint_schedule`); sampler "ddpm"
  (fixed_small variance) or "ddim" (η = 0). The chain starts from
  q(x_T | x_known) on the known coordinates and N(0, I) elsewhere.
  """
  ab = np.asarray(alphas_cumprod, np.float64)
  abar = lambda i: 1.0 if i < 0 else ab[i]
  eye = np.eye(len(mu))

  def replace(m, C, i):
    m, C = m.copy(), C.copy()
    m[KNOWN] = np.sqrt(abar(i)) * x_known
    C[KNOWN, :] = 0.0
    C[:, KNOWN] = 0.0
    C[np.ix_(KNOWN, KNOWN)] = (1.0 - abar(i)) * np.eye(len(KNOWN))
    return m, C

  def denoise(m, C, i):
    a_t, a_s = abar(i), abar(i - 1)
    A, c = denoiser_matrix(a_t, mu, sigma)
    if sampler == "ddpm":
      beta = 1.0 - a_t / a_s
      c1 = np.sqrt(a_s) * beta / (1.0 - a_t)
      c2 = np.sqrt(a_t / a_s) * (1.0 - a_s) / (1.0 - a_t)
      M, b = c1 * A + c2 * eye, c1 * c
      var = (1.0 - a_s) / (1.0 - a_t) * beta if i > 0 else 0.0
    elif sampler == "ddim":
      r = np.sqrt((1.0 - a_s) / (1.0 - a_t))
      M = np.sqrt(a_s) * A + r * (eye - np.sqrt(a_t) * A)
      b, var = (np.sqrt(a_s) - r * np.sqrt(a_t)) * c, 0.0
    else:
      raise ValueError(sampler)
    return M @ m + b, M @ C @ M.T + var * eye

  m, C = replace(np.zeros(len(mu)), eye, positions[0])
  for a, b in zip(positions[:-1], positions[1:]):
    if b == a - 1:
      m, C = replace(*denoise(m, C, a), b)
    else:
      r = abar(b) / abar(a)
      m, C = np.sqrt(r) * m, r * C + (1.0 - r) * eye
  return m, C


def errors(mean, cov, x_known=X_KNOWN):
  """Errors of the unknown coordinates' (mean, covariance) against the exact
  conditional, in units of the conditional standard deviations: (max |Δmean_u|/sd_u,
  max |ΔC_uv|/(sd_u sd_v))."""
  m_c, c_c = conditional(x_known)
  sd = np.sqrt(np.diag(c_c))
  m_u, c_u = mean[UNKNOWN], cov[np.ix_(UNKNOWN, UNKNOWN)]
  return (float(np.max(np.abs(m_u - m_c) / sd)),
          float(np.max(np.abs(c_u - c_c) / np.outer(sd, sd))))
