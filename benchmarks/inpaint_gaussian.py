"""Inpainting against the exact conditional: replacement and RePaint on Gaussian data.

Data x0 ~ N(μ, Σ) in 4 dimensions with a non-diagonal Σ (tests/_gaussian.py),
coordinates 0 and 1 known (one standard deviation off their means), 2 and 3
generated, the exact denoiser, the cosine schedule (T = 1000) on a linspace
grid of K points. For each setting it prints the error of the output's mean
and covariance on the generated coordinates against the exact conditional
N(μ_u + Σ_uk Σ_kk⁻¹ (x_k - μ_k), Σ_uu - Σ_uk Σ_kk⁻¹ Σ_ku), in units of the
conditional standard deviations:

  * "exact": the float64 moments of the whole chain (every step is affine
    plus Gaussian noise, so they follow in closed form; no Monte-Carlo error);
  * "MC": `make_inpaint_fn` itself, N samples (the Monte-Carlo standard error
    of the mean error is 1/√N in these units).

  python benchmarks/inpaint_gaussian.py [--num_samples 20000] [--mc]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import _gaussian as G  # noqa: E402

SETTINGS = [  # (sampler, K, jump_length, jump_n_sample); jump_n_sample = 1: replacement.
    ("ddpm", 50, 1, 1), ("ddpm", 250, 1, 1), ("ddpm", 1000, 1, 1),
    ("ddpm", 50, 10, 10), ("ddpm", 50, 10, 40), ("ddpm", 100, 10, 10), ("ddpm", 250, 10, 10),
    ("ddpm", 50, 1, 20), ("ddpm", 250, 5, 20), ("ddpm", 250, 1, 50),
    ("ddim", 50, 1, 1), ("ddim", 50, 10, 10), ("ddim", 250, 5, 20),
]
MC_SETTINGS = [("ddpm", 50, 1, 1), ("ddpm", 50, 10, 10), ("ddpm", 250, 5, 20)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_samples", type=int, default=20000)
  parser.add_argument("--mc", action="store_true", help="also run make_inpaint_fn (Monte Carlo)")
  args = parser.parse_args()

  import jax
  import diffusion_jax as dj
  from diffusion_jax.editing import repaint_schedule

  schedule = dj.get_schedule("cosine", 1000)
  mean_c, cov_c = G.conditional()
  print(f"exact conditional: mean {mean_c.round(4).tolist()}, covariance "
        f"{cov_c.round(4).tolist()}; prior mean {G.MU[G.UNKNOWN].tolist()}, "
        f"variances {np.diag(G.SIGMA)[G.UNKNOWN].round(4).tolist()}")
  print(f"{'method':9s} {'sampler':7s} {'K':>5s} {'j':>3s} {'r':>3s} {'denoise steps':>13s}   "
        f"{'mean error (sd)':>15s} {'cov error (var)':>15s}   source")
  rows = [(s, K, j, r, "exact") for s, K, j, r in SETTINGS]
  if args.mc:
    rows += [(s, K, j, r, "MC") for s, K, j, r in MC_SETTINGS]
  for sampler, K, j, r, source in rows:
    positions = repaint_schedule(K, j, r)
    steps = int(np.sum(np.diff(positions) == -1))
    method = "replace" if r == 1 else "repaint"
    ab = np.asarray(dj.sampling_schedule(schedule, K, spacing="linspace").alphas_cumprod,
                    np.float64)
    start = time.perf_counter()
    if source == "exact":
      mean, cov = G.chain_moments(ab, positions, sampler=sampler)
    else:
      n = args.num_samples
      fn = dj.make_inpaint_fn(G.jax_model(schedule), schedule, shape=(n, G.D),
                              sampler=sampler, num_steps=K, spacing="linspace", method=method,
                              jump_length=j, jump_n_sample=r)
      known = np.zeros((n, G.D), np.float32)
      known[:, G.KNOWN] = G.X_KNOWN
      mask = np.isin(np.arange(G.D), G.KNOWN).astype(np.float32)
      x = np.asarray(fn(None, jax.random.key(0), known, mask), np.float64)
      mean, cov = x.mean(0), np.cov(x.T)
      source = f"MC, N={n}, {time.perf_counter() - start:.1f} s"
    e_mean, e_cov = G.errors(mean, cov)
    print(f"{method:9s} {sampler:7s} {K:5d} {j:3d} {r:3d} {steps:13d}   {e_mean:15.3f} "
          f"{e_cov:15.3f}   {source}")


if __name__ == "__main__":
  main()
