"""Task "classifier": the noise-aware classifier p(y | x_t, t) of classifier guidance.

Cross-entropy on x_t ~ q(x_t | x_0) with t uniform (Dhariwal & Nichol 2021,
§4); `--mode=eval` gives its test accuracy at 11 noise levels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import models, process
from diffusion_jax.mesh import to_host
from diffusion_jax.tasks.base import Task, example_keys, normal, randint, require_discrete

__all__ = ["TASK"]


def loss(params, state, batch, rng, *, model, schedule, config, spec):
  """Cross-entropy of the classifier on noisy images. Returns (mean loss, metrics)."""
  del state, config, spec
  rng, k_drop = jax.random.split(rng)
  k_t, k_noise = example_keys(rng, batch, 2)
  x0, labels = batch["image"], batch["label"]
  t = randint(k_t, schedule.num_timesteps)
  x_t = process.q_sample(schedule, x0, t, normal(k_noise, x0))
  logits = model.apply({"params": params}, x_t, t, train=True, rngs={"dropout": k_drop})
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce), {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def evaluate(config, spec, net, schedule, params, batches, rng):
  """Test accuracy at 11 noise levels t = 0, T/10, ..., T-1 on x_t ~ q(x_t|x_0);
  batches: {"image", "label", "mask"} global arrays (mask 0: padding).
  Returns (result dict, one-line summary)."""
  T = schedule.num_timesteps
  levels = sorted(set(np.linspace(0, T - 1, 11).round().astype(int).tolist()))
  classifier_fn = models.make_classifier_fn(net)

  @jax.jit
  def correct(params, x0, labels, mask, t_scalar, rng):
    t = jnp.full(labels.shape, t_scalar, jnp.int32)
    x_t = process.q_sample(schedule, x0, t, jax.random.normal(rng, x0.shape))
    return jnp.sum((jnp.argmax(classifier_fn(params, x_t, t), -1) == labels) * mask)

  hits, total = np.zeros(len(levels)), 0
  for i, batch in enumerate(batches):
    total += int(to_host(batch["mask"]).sum())
    for j, t in enumerate(levels):
      hits[j] += float(to_host(correct(params, batch["image"], batch["label"], batch["mask"],
                                       t, jax.random.fold_in(rng, i * 1000 + j))))
  result = {"num_examples": total,
            "accuracy_by_t": {str(t): hits[j] / total for j, t in enumerate(levels)}}
  summary = "noise-aware classifier test accuracy by timestep t: " + ", ".join(
      f"t={t}: {hits[j] / total:.1%}" for j, t in enumerate(levels))
  return result, summary


def validate(config, spec) -> None:
  require_discrete(config, "trains p(y | x_t, t) on the discrete schedule's indices")


TASK = Task(name="classifier", validate=validate,
            model=lambda config, spec: models.build_classifier(config.model, spec),
            loss=loss, needs_labels=True, evaluate=evaluate)
