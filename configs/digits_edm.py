"""EDM (Karras et al. 2022) on the embedded digits, in the main job's budget.

The main job's network, optimizer and 2,000 steps (`configs/digits.py`, about
12 minutes on the 2-core CPU), trained as EDM: the variance-exploding process
σ(t) = t, the network preconditioned as D = c_skip x + c_out F(c_in x; ¼ ln σ),
ln σ ~ N(P_mean, P_std²) and the loss weight λ(σ) = (σ² + σ_d²)/(σ σ_d)².
Samples with EDM's deterministic Heun sampler on the ρ = 7 grid; `--mode=eval`
gives bits/dim from the probability-flow ODE.

  python -m diffusion_jax.main --config configs/digits_edm.py --workdir runs/digits_edm
"""

from diffusion_jax.default_config import get_default_config


def get_config():
  config = get_default_config()
  d = config.diffusion
  d.process = "edm"                  # α = 1, σ(t) = t (EDM Table 1, "Ours")
  d.sigma_min = 0.002                # EDM's σ range of the sampling grid
  d.sigma_max = 80.0
  d.rho = 7.0                        # EDM Eq. (5)
  d.preconditioning = "edm"          # c_skip, c_out, c_in, c_noise = ¼ ln σ (EDM Table 1)
  d.prediction = "x0"                # D, the preconditioned network's output, estimates x_0
  d.sigma_data = 0.75                # σ_d: the per-pixel std of the digits training split
                                     # (0.752; EDM's 0.5 is CIFAR-10's)
  d.weighting = "edm"                # λ(σ) = (σ² + σ_d²)/(σ σ_d)² (EDM Eq. (8))
  d.t_sampling = "log_normal"        # ln σ ~ N(P_mean, P_std²) (EDM §5)
  d.t_mean = -1.2                    # P_mean (EDM's CIFAR-10 value)
  d.t_std = 1.2                      # P_std
  config.sample.sampler = "edm_heun"  # EDM Alg. 1 (deterministic; second order)
  config.sample.num_steps = 25       # 49 model calls (the main job: 100 DDIM steps)
  config.sample.spacing = "karras"   # EDM's ρ-grid from σ_max to σ_min
  config.sample.clip_x0 = 1.0        # as the main job: D clipped to the data range [-1, 1]
  config.eval.method = "ode"         # exact likelihood of the probability-flow ODE (no VLB here)
  return config
