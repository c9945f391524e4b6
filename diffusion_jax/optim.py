"""The optimizer: Adam/AdamW, learning-rate schedules, clipping and the EMA decay.

Built from optax; `make_optimizer` owns the rules of its settings (each
violation an ArgumentError naming the argument), so config validation builds
it instead of restating them.

Learning-rate schedules (linear warm-up from 0 over `warmup_steps`, then):
  * "constant": the peak rate (the default);
  * "cosine":   cosine decay to `end_factor` × peak at `total_steps`
                (Loshchilov & Hutter 2017; `optax.warmup_cosine_decay_schedule`);
  * "linear":   linear decay to `end_factor` × peak at `total_steps`;
  * "rsqrt":    peak × √(w / (w + n - w)) = peak × √(w/n) after the warm-up
                (w = max(warmup_steps, 1), n the step; Vaswani et al. 2017).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from diffusion_jax._checks import check_choice, check_int, check_number

__all__ = ["OPTIMIZERS", "LR_SCHEDULES", "learning_rate_schedule", "make_optimizer",
           "ema_decay_at"]

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


def learning_rate_schedule(name: str = "constant", *, learning_rate: float,
                           warmup_steps: int = 0, total_steps: int | None = None,
                           end_factor: float = 0.0):
  """The learning rate as a function of the update count (or a float when it
  is constant without warm-up, which keeps optax's state layout of earlier
  checkpoints)."""
  check_choice("lr_schedule", name, LR_SCHEDULES, kind="learning-rate schedules")
  peak = check_number("learning_rate", learning_rate, 0.0, low_open=True)
  warmup = check_int("warmup_steps", warmup_steps, 0)
  check_number("end_factor", end_factor, 0.0, 1.0)
  if name == "constant":
    return optax.linear_schedule(0.0, peak, warmup) if warmup else peak
  if name == "rsqrt":
    w = max(warmup, 1)
    decay = lambda n: peak * jnp.sqrt(w / jnp.maximum(n + w, w).astype(jnp.float32))
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])
  total = check_int("total_steps", total_steps, warmup + 1)
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_factor * peak)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.linear_schedule(peak, end_factor * peak, total - warmup)], [warmup])


def make_optimizer(*, optimizer: str = "adam", learning_rate: float, warmup_steps: int = 0,
                   lr_schedule: str = "constant", total_steps: int | None = None,
                   end_factor: float = 0.0, weight_decay: float = 0.0,
                   grad_clip: float = 0.0) -> optax.GradientTransformation:
  """Adam or AdamW with a learning-rate schedule and optional global-norm
  clipping (`grad_clip` > 0)."""
  check_choice("optimizer", optimizer, OPTIMIZERS)
  check_number("weight_decay", weight_decay, 0.0)
  clip = check_number("grad_clip", grad_clip, 0.0)
  lr = learning_rate_schedule(lr_schedule, learning_rate=learning_rate,
                              warmup_steps=warmup_steps, total_steps=total_steps,
                              end_factor=end_factor)
  opt = (optax.adamw(lr, weight_decay=weight_decay) if optimizer == "adamw"
         else optax.adam(lr))
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def ema_decay_at(step, decay: float):
  """EMA decay with warm-up: min(decay, (1 + n)/(10 + n)) at update n."""
  n = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))
