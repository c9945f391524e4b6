"""Independent float64 NumPy references for the foundation tests.

Written from the published formulas only; nothing here imports diffusion_jax.
  * Ho et al. 2020 (DDPM): linear betas, Eq. (4), (6), (7), (15).
  * Nichol & Dhariwal 2021 (IDDPM): Eq. (17) cosine, §4 respacing, Eq. (15).
  * Chen 2023, "On the importance of noise scheduling", Algorithm 1 (sigmoid).
  * Lin et al. 2024, Algorithm 1 (zero terminal SNR).
  * Salimans & Ho 2022 (v), Hang et al. 2023 (min-SNR-γ).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize, special

LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------
# Schedules.
# ----------------------------------------------------------------------------


def betas(name: str, T: int) -> np.ndarray:
  t = np.arange(T, dtype=np.float64)
  if name == "linear":  # DDPM, scaled by 1000/T as in IDDPM.
    return np.linspace(1e-4 * 1000.0 / T, 0.02 * 1000.0 / T, T)
  if name == "scaled_linear":
    return np.linspace(math.sqrt(0.00085), math.sqrt(0.012), T) ** 2
  if name == "cosine":  # IDDPM Eq. (17) with s = 0.008, β ≤ 0.999.
    f = lambda u: np.cos((u / T + 0.008) / 1.008 * np.pi / 2) ** 2
    abar = lambda u: f(u) / f(0.0)
    return np.minimum(1.0 - abar(t + 1) / abar(t), 0.999)
  if name == "sigmoid":  # Chen 2023, Alg. 1 (start -3, end 3, τ 1), β ≤ 0.999.
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))

    def gamma(u, start=-3.0, end=3.0, tau=1.0, clip_min=1e-9):
      v_start, v_end = sig(start / tau), sig(end / tau)
      out = sig((u * (end - start) + start) / tau)
      return np.clip((v_end - out) / (v_end - v_start), clip_min, 1.0)

    return np.minimum(1.0 - gamma((t + 1) / T) / gamma(t / T), 0.999)
  raise KeyError(name)


def zero_snr_betas(b: np.ndarray) -> np.ndarray:
  """Lin et al. 2024, Algorithm 1, transcribed."""
  alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - b))
  a0, aT = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
  alphas_bar_sqrt = (alphas_bar_sqrt - aT) * (a0 / (a0 - aT))
  alphas_bar = alphas_bar_sqrt ** 2
  alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
  return 1.0 - alphas


def derived(b: np.ndarray) -> dict:
  """All per-timestep quantities of DDPM/IDDPM from betas, float64."""
  b = np.asarray(b, np.float64)
  a = 1.0 - b
  ab = np.cumprod(a)
  ab_prev = np.append(1.0, ab[:-1])
  post_var = b * (1.0 - ab_prev) / (1.0 - ab)
  with np.errstate(divide="ignore"):
    return dict(
        betas=b,
        alphas=a,
        alphas_cumprod=ab,
        alphas_cumprod_prev=ab_prev,
        sqrt_alphas_cumprod=np.sqrt(ab),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ab),
        log_one_minus_alphas_cumprod=np.log(1.0 - ab),
        sqrt_recip_alphas_cumprod=1.0 / np.sqrt(ab),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ab - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(
            np.append(post_var[1] if b.size > 1 else b[0], post_var[1:])),
        posterior_mean_coef1=np.sqrt(ab_prev) * b / (1.0 - ab),
        posterior_mean_coef2=np.sqrt(a) * (1.0 - ab_prev) / (1.0 - ab),
        snr=ab / (1.0 - ab),
        logsnr=np.log(ab / (1.0 - ab)) / 2.0,   # λ = log(α/σ)
    )


def named(name: str, T: int, zero_snr: bool = False) -> dict:
  b = betas(name, T)
  return derived(zero_snr_betas(b) if zero_snr else b)


# ----------------------------------------------------------------------------
# Gaussians.
# ----------------------------------------------------------------------------


def normal_kl(m1, lv1, m2, lv2):
  """KL(N(m1, σ1²) || N(m2, σ2²)) = log(σ2/σ1) + (σ1² + (m1-m2)²)/(2σ2²) - 1/2."""
  s1, s2 = np.exp(0.5 * np.asarray(lv1)), np.exp(0.5 * np.asarray(lv2))
  return np.log(s2 / s1) + (s1 ** 2 + (np.asarray(m1) - m2) ** 2) / (2 * s2 ** 2) - 0.5


def _log_bin_prob(lo: float, hi: float) -> float:
  """log ∫_lo^hi φ(z) dz by adaptive quadrature.

  The density is integrated relative to its largest value on [lo, hi], at zc,
  on each side of zc in the offset u = |z - zc|: φ(z)/φ(zc) = exp(-|zc| u - u²/2)
  there (zc is 0 or the endpoint nearer 0), so huge |z| lose no precision.
  Beyond U, where the exponent reaches -700, nothing is left to integrate.
  """
  zc = min(max(0.0, lo), hi)
  a = abs(zc)
  U = 1400.0 / (a + math.sqrt(a * a + 1400.0))
  g = lambda u: math.exp(-a * u - 0.5 * u * u)
  total = 0.0
  for width in (hi - zc, zc - lo):
    if width > 0:
      total += integrate.quad(g, 0.0, min(width, U), epsabs=0, epsrel=1e-12, limit=400)[0]
  return math.log(total) - 0.5 * zc * zc - 0.5 * math.log(2 * math.pi)


def discretized_gaussian_log_prob_quad(x: float, mean: float, log_scale: float) -> float:
  """log P(bin of x) for 8-bit data under N(mean, e^{2 log_scale}), by quadrature.

  Bin of x: [x - 1/255, x + 1/255], the edge bins x = ∓1 extended to ∓∞.
  """
  s = math.exp(log_scale)
  lo = -math.inf if x < -0.999 else (x - 1 / 255 - mean) / s
  hi = math.inf if x > 0.999 else (x + 1 / 255 - mean) / s
  return _log_bin_prob(lo, hi)


def discretized_gaussian_log_prob(x, mean, log_scale):
  """Same quantity, vectorized float64 with scipy's log_ndtr (moderate inputs)."""
  x, mean, log_scale = np.broadcast_arrays(np.asarray(x, np.float64),
                                           np.asarray(mean, np.float64),
                                           np.asarray(log_scale, np.float64))
  s = np.exp(log_scale)
  lo = (x - 1 / 255 - mean) / s
  hi = (x + 1 / 255 - mean) / s
  # log(Φ(hi) - Φ(lo)) computed on the side of the smaller tail.
  flip = (lo + hi) > 0
  a, b = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
  mid = special.log_ndtr(b) + np.log1p(-np.exp(special.log_ndtr(a) - special.log_ndtr(b)))
  return np.where(x < -0.999, special.log_ndtr(hi),
                  np.where(x > 0.999, special.log_ndtr(-lo), mid))


def numeric_posterior(prior_mean: float, prior_var: float, lik_coef: float,
                      x_t: float, lik_var: float, n: int = 200001):
  """Mean and variance of p(x | x_t) ∝ N(x; prior) N(x_t; lik_coef x, lik_var).

  Bayes' rule evaluated by brute force: the unnormalized density is tabulated on
  a grid (refined twice around the bulk), normalized and integrated by the
  trapezoid rule. No Gaussian-product formula is used.
  """
  def log_dens(x):
    return (-0.5 * (x - prior_mean) ** 2 / prior_var
            - 0.5 * (x_t - lik_coef * x) ** 2 / lik_var)

  # Locate the bulk: the mode by a scalar search, its width from the curvature
  # of the log density (a second difference; exact for a quadratic up to rounding).
  mode = optimize.minimize_scalar(lambda x: -log_dens(x),
                                  bracket=(prior_mean, x_t / lik_coef), tol=1e-12).x
  h = min(math.sqrt(prior_var), math.sqrt(lik_var) / lik_coef)  # ≥ posterior sd
  curv = -(log_dens(mode + h) - 2 * log_dens(mode) + log_dens(mode - h)) / h ** 2
  width = 30 / math.sqrt(curv)
  lo, hi = mode - width, mode + width
  for _ in range(3):
    x = np.linspace(lo, hi, n)
    ld = log_dens(x)
    w = np.exp(ld - ld.max())
    z = np.trapezoid(w, x)
    mean = np.trapezoid(w * x, x) / z
    var = np.trapezoid(w * (x - mean) ** 2, x) / z
    lo, hi = mean - 14 * math.sqrt(var), mean + 14 * math.sqrt(var)
  return mean, var


# ----------------------------------------------------------------------------
# Continuous-time processes (Song et al. 2021; Karras et al. 2022; Lipman et
# al. 2023; Esser et al. 2024), float64.
# ----------------------------------------------------------------------------


def vp_linear_mean_coef(t, beta_0=0.1, beta_1=20.0):
  """Score SDE Eq. (33): the mean of p_0t(x(t)|x(0)) is x(0) times
  exp(-¼ t² (β_1 - β_0) - ½ t β_0); the variance is 1 - that squared."""
  t = np.asarray(t, np.float64)
  return np.exp(-0.25 * t ** 2 * (beta_1 - beta_0) - 0.5 * t * beta_0)


def karras_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """EDM Eq. (5): σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ,
  i = 0..N-1 (decreasing)."""
  i = np.arange(n, dtype=np.float64)
  return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho)
                                                   - sigma_max ** (1 / rho))) ** rho


def sd3_shift(t, shift):
  """SD3 §5.3.2 (Eq. (23)): t_m = √(m/n) t_n / (1 + (√(m/n) - 1) t_n), α := √(m/n)."""
  t = np.asarray(t, np.float64)
  return shift * t / (1.0 + (shift - 1.0) * t)


def edm_precond(sigma, sigma_data=0.5):
  """EDM Table 1, "Ours": (c_skip, c_out, c_in, c_noise) and the loss weight λ(σ)."""
  sigma = np.asarray(sigma, np.float64)
  c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
  c_out = sigma * sigma_data / np.sqrt(sigma ** 2 + sigma_data ** 2)
  c_in = 1.0 / np.sqrt(sigma ** 2 + sigma_data ** 2)
  c_noise = 0.25 * np.log(sigma)
  weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
  return c_skip, c_out, c_in, c_noise, weight


def edm_loss(net, x0, sigma, noise, sigma_data=0.5):
  """EDM Eq. (2) with Eq. (7)-(8): λ(σ) ‖D(x0 + σ n; σ) - x0‖² (mean over
  dimensions), D = c_skip y + c_out F(c_in y; c_noise). x0, noise [B, D];
  sigma [B]; net(x_in, c_noise [B]) -> F."""
  c_skip, c_out, c_in, c_noise, weight = edm_precond(sigma, sigma_data)
  y = x0 + sigma[:, None] * noise
  d = c_skip[:, None] * y + c_out[:, None] * net(c_in[:, None] * y, c_noise)
  return weight * np.mean((d - x0) ** 2, axis=1)


def flow_loss(net, x0, t, noise):
  """Conditional flow matching (Lipman et al. 2023, Eq. (23) with σ_min = 0;
  rectified flow, Liu et al. 2023): x_t = (1-t) x0 + t n, target u = n - x0,
  ‖net(x_t, t) - u‖² (mean over dimensions). x0, noise [B, D]; t [B]."""
  xt = (1 - t[:, None]) * x0 + t[:, None] * noise
  return np.mean((net(xt, t) - (noise - x0)) ** 2, axis=1)


def gaussian_flow_logp(x, mu, s, alpha, sigma, t_min, t_max):
  """log p(x) of the probability-flow model for Gaussian data N(μ, diag s²)
  and the process x_t = α(t) x0 + σ(t) ε, x placed at t_min, with the prior
  N(0, (α² + σ²)(t_max) I) at t_max (the VP-form N(0, I)). The flow is the
  monotone affine map between the Gaussian marginals N(α μ, α² s² + σ²), so
  log p(x) = log N(T(x); 0, v_T) + Σ log T'(x). x [B, D]; alpha, sigma: callables."""
  a0, s0, a1, s1 = alpha(t_min), sigma(t_min), alpha(t_max), sigma(t_max)
  slope = np.sqrt(a1 ** 2 * s ** 2 + s1 ** 2) / np.sqrt(a0 ** 2 * s ** 2 + s0 ** 2)
  y = a1 * mu + slope * (x - a0 * mu)
  v = a1 ** 2 + s1 ** 2
  return np.sum(-0.5 * y ** 2 / v - 0.5 * np.log(2 * np.pi * v) + np.log(slope), axis=-1)
