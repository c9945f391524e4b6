"""What the model is conditioned on: the data spec and the model's `cond`.

`DataSpec` says what a model needs to know about the data (image size,
channels, classes, the conditioning kind). `make_cond` turns labels into the
`cond` pytree that `model_fn(params, x_t, t, cond)` receives, and
`null_cond_fn` gives its unconditional version for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from diffusion_jax import guidance

__all__ = ["CONDITIONINGS", "DataSpec", "class_contexts", "make_cond", "null_cond_fn",
           "model_inputs"]

# none: unconditional; class: a label embedding added to the timestep embedding;
# embedding: a fixed per-class sequence [L, D] read by cross-attention.
CONDITIONINGS = ("none", "class", "embedding")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the model needs to know about the data."""
  image_size: int
  channels: int
  num_classes: int | None          # set when the model uses labels
  conditioning: str = "none"       # one of CONDITIONINGS
  context_shape: tuple[int, int] | None = None  # (L, D) for "embedding"


def class_contexts(spec: DataSpec) -> jnp.ndarray:
  """The fixed embedding sequence of each class, float32 [C, L, D].

  A stand-in for a frozen text encoder's output: N(0, 1/D) entries drawn once
  from a fixed seed, so every run and checkpoint agree on them.
  """
  return jnp.asarray(_class_contexts(spec.num_classes, *spec.context_shape))


@functools.lru_cache(maxsize=8)
def _class_contexts(num_classes: int, L: int, D: int) -> np.ndarray:
  """Drawn once per shape (make_cond runs for every sampled batch)."""
  rs = np.random.RandomState(20221205)
  return (rs.normal(size=(num_classes, L, D)) / np.sqrt(D)).astype(np.float32)


def make_cond(spec: DataSpec, labels):
  """The model's `cond` for int32 labels [B]: None, {"label"} or {"context"}."""
  if spec.conditioning == "none":
    return None
  if spec.conditioning == "class":
    return {"label": jnp.asarray(labels, jnp.int32)}
  return {"context": class_contexts(spec)[labels]}


def null_cond_fn(spec: DataSpec) -> Callable[[dict], dict]:
  """cond -> its unconditional version (null label, or all-zero context)."""
  if spec.conditioning == "class":
    return guidance.null_label(spec.num_classes)
  return guidance.null_context


def model_inputs(cond) -> dict[str, Any]:
  """Splits a `cond` pytree (None, or a dict with "label" / "context") into
  the networks' keyword arguments."""
  cond = cond or {}
  return {"y": cond.get("label"), "context": cond.get("context")}
