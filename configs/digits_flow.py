"""Flow matching / rectified flow on the embedded digits, in the main job's budget.

The main job's network, optimizer and 2,000 steps (`configs/digits.py`, about
12 minutes on the 2-core CPU), trained as flow matching (Lipman et al. 2023;
Liu et al. 2023): x_t = (1 - t) x_0 + t ε, the network predicts the velocity
u = ε - x_0 (unweighted regression), with SD3's logit-normal training times
(Esser et al. 2024). Samples with Euler steps uniform in t, the usual
flow-matching sampler; `--mode=eval` gives bits/dim from the ODE.

  python -m diffusion_jax.main --config configs/digits_flow.py --workdir runs/digits_flow
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  d = config.diffusion
  d.process = "flow"                 # α = 1 - t, σ = t; t = 1 is pure noise
  d.prediction = "flow"              # the velocity u = ε - x_0 (the conditional flow target)
  d.weighting = "none"               # plain ‖u - û‖² (Lipman et al. Eq. (23))
  d.t_sampling = "log_normal"        # ln(t/(1-t)) ~ N(t_mean, t_std²): SD3's logit-normal t
  d.t_mean = 0.0                     # SD3's lognorm(0, 1), its best-ranked sampler of t (§5.1)
  d.t_std = 1.0
  d.shift = 1.0                      # SD3's shift is for high resolutions; none at 8x8
  d.t_eps = 1e-3                     # the least noisy time of the "linspace"/λ grids
  config.sample.sampler = "euler"    # Euler in t (= deterministic DDIM), as SD3 and Liu et al.
  config.sample.num_steps = 100      # 100 model calls, as the main job
  config.sample.spacing = "trailing"  # t = 1, 0.99, ..., 0.01, then the data
  config.sample.clip_x0 = 1.0        # as the main job: x̂_0 clipped to [-1, 1]
  config.eval.method = "ode"         # exact likelihood of the probability-flow ODE
  return config
