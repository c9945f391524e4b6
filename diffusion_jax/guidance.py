"""Guidance as transformations of a model function: model_fn -> guided model_fn.

Both transforms return a function with the same signature,
`guided(params, x_t, t, cond) -> output`, so they compose with each other and
with every sampler, and `sample_fn(params, rng, cond=...)` does not change.
Their scales are read from `cond` as traced arrays, so changing a scale never
recompiles.

* Classifier-free guidance (Ho & Salimans 2022, Eq. (6)):
    ε̃ = ε(x_t, ∅) + w (ε(x_t, y) - ε(x_t, ∅)),
  with w = cond["guidance_scale"]. w = 1 is plain conditional sampling and
  w = 0 unconditional. The conditional and unconditional predictions come from
  ONE batched forward pass of 2B examples. Because ε, x0 and v are affine in
  one another for a fixed (x_t, t), guiding the model output in its own
  parameterization is the same as guiding ε.
* Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2), with
  g = ∇_x log p_φ(y | x_t, t) from `jax.grad` and s = cond["classifier_scale"]:
    mode="eps"  (DDIM-type samplers): ε̂ ← ε̂ - s √(1-ᾱ_t) g;
    mode="mean" (ancestral samplers): μ ← μ + s Σ g, realised as the ε shift
      that moves μ_θ = c1 x̂0 + c2 x_t by exactly s Σ g.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffusion_jax import process
from diffusion_jax._checks import check_choice
from diffusion_jax.schedules import Schedule

__all__ = ["classifier_free_guidance", "classifier_guidance", "null_label",
           "null_context", "GUIDANCE_KEYS"]

ModelFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
ClassifierFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
GUIDANCE_KEYS = ("guidance_scale", "classifier_scale")
_MODES = ("eps", "mean")


def _model_cond(cond: dict) -> dict:
  """`cond` without the guidance scales (what the wrapped model_fn sees)."""
  return {k: v for k, v in cond.items() if k not in GUIDANCE_KEYS}


def _per_example(scale, x):
  """A scalar or [B] scale as [B, 1, ..., 1] (float32) to broadcast over x."""
  s = jnp.asarray(scale, jnp.float32)
  return jnp.broadcast_to(s, (x.shape[0],)).reshape((-1,) + (1,) * (x.ndim - 1))


def _mix(cond_out, uncond_out, w):
  """u + w (c - u), written as w c + (1 - w) u so that w = 0 and w = 1 give
  the unconditional and conditional outputs bit for bit."""
  return w * cond_out + (1.0 - w) * uncond_out


def null_label(num_classes: int) -> Callable[[dict], dict]:
  """The unconditional cond for class labels: every label -> `num_classes`
  (the UNet's extra "null" embedding row, the target of label dropout)."""
  return lambda cond: cond | {"label": jnp.full_like(cond["label"], num_classes)}


def null_context(cond: dict) -> dict:
  """The unconditional cond for embedding sequences: the all-zero context."""
  return cond | {"context": jnp.zeros_like(cond["context"])}


def classifier_free_guidance(model_fn: ModelFn, *,
                             null_cond: Callable[[dict], dict],
                             variance: str = "fixed_small") -> ModelFn:
  """Wraps `model_fn` with classifier-free guidance.

  Args:
    model_fn: `model_fn(params, x_t [B, ...], t [B], cond) -> output`.
    null_cond: maps a cond dict to its unconditional version (`null_label(C)`
      or `null_context`).
    variance: the model's variance type; for learned variances only the first
      half of the output channels is guided and the variance channels are the
      conditional ones.
  Returns `guided(params, x_t, t, cond)`; `cond["guidance_scale"]` (scalar or
  [B], default 1) is w.
  """
  learned = process.is_learned_variance(variance)

  def guided(params, x_t, t, cond):
    w = _per_example(cond.get("guidance_scale", 1.0), x_t)
    c = _model_cond(cond)
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), c, null_cond(c))
    out = model_fn(params, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
    out_c, out_u = jnp.split(out.astype(jnp.float32), 2)
    if not learned:
      return _mix(out_c, out_u, w)
    (mc, vc), (mu, _) = (process.split_model_output(o, variance) for o in (out_c, out_u))
    return jnp.concatenate([_mix(mc, mu, w), vc], axis=-1)

  return guided


def classifier_guidance(model_fn: ModelFn, classifier_fn: ClassifierFn,
                        schedule: Schedule, *, prediction: str = "eps",
                        variance: str = "fixed_small", mode: str = "eps") -> ModelFn:
  """Wraps `model_fn` with the gradient of a noise-aware classifier.

  Args:
    model_fn: `model_fn(params, x_t, t, cond) -> output`.
    classifier_fn: `classifier_fn(params, x_t [B, ...], t [B]) -> logits [B, C]`.
    schedule: the schedule the sampler steps on (for a respaced sampler, the
      respaced one, e.g. `sampling.sampling_schedule(...)`; for a continuous
      process its VP-form grid); `t` is mapped to its entry through
      `schedule.timesteps`. The classifier sees the model's x_t.
    mode: "eps" (DDIM-type samplers) or "mean" (ancestral samplers).
  Returns `guided(params, x_t, t, cond)` with params = {"model": ...,
  "classifier": ...}; `cond["label"]` is y and `cond["classifier_scale"]`
  (scalar or [B], default 1) is s.
  """
  process.check_prediction(prediction)
  process.check_variance(variance)
  check_choice("mode", mode, _MODES)
  parameterization = process.PREDICTIONS[prediction]

  def guided(params, x_t, t, cond):
    s = _per_example(cond.get("classifier_scale", 1.0), x_t)
    out = model_fn(params["model"], x_t, t, cond).astype(jnp.float32)
    i = jnp.searchsorted(schedule.timesteps, t).astype(jnp.int32)
    grad = grad_log_prob(classifier_fn, params["classifier"], x_t, t, cond["label"])
    if schedule.scale is not None:  # A non-VP process: ∇ in the sampler's VP-form x/scale.
      grad = grad * process.extract(schedule.scale, i, x_t)
    main, var_out = process.split_model_output(out, variance)
    c = process.coefficients(schedule, i, x_t)
    if mode == "eps":
      d_eps = -s * c.sigma * grad
    else:
      sigma2, _ = process.p_variance(schedule, var_out, i, x_t, variance)
      coef1 = process.extract(schedule.posterior_mean_coef1, i, x_t)
      dx0_deps = -c.sigma / c.alpha                # ∂x̂_0/∂ε̂ at fixed x_t
      d_eps = s * sigma2 * grad / (coef1 * dx0_deps)
    main = main + d_eps / parameterization.eps_per_output(c.alpha, c.sigma)
    return main if var_out is None else jnp.concatenate([main, var_out], axis=-1)

  return guided


def grad_log_prob(classifier_fn: ClassifierFn, params, x_t, t, labels):
  """∇_x log p_φ(y | x_t, t) for each example, [B, ...] (float32)."""
  def total_log_prob(x):
    logits = classifier_fn(params, x, t).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, labels[:, None], axis=-1).sum()
  return jax.grad(total_log_prob)(x_t.astype(jnp.float32))
