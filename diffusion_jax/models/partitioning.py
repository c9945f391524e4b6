"""Logical axis names of the models' parameters, and helpers for boxed trees.

Every parameter of ``UNet`` and ``NoisyClassifier`` is created through
``flax.linen.with_logical_partitioning``, so ``model.init`` returns each leaf
boxed in a ``flax.linen.LogicallyPartitioned`` that carries one logical axis
name (or None) per array dimension. The tree's paths and the boxed arrays'
shapes are unchanged; ``unbox`` strips the boxes. Vocabulary (shared with the
other models of the project):

  * ``EMBED`` "embed": the input side of a dense kernel [in, out];
  * ``MLP`` "mlp": the output side of a dense kernel: dense kernels are
    ("embed", "mlp") and their biases ("mlp",);
  * ``HEADS`` "heads": attention projections: q / k / v kernels are
    ("embed", "heads") with biases ("heads",), the output projection is
    ("heads", "embed") with bias ("embed",);
  * ``CONV_IN`` / ``CONV_OUT`` "conv_in" / "conv_out": conv kernels
    [kh, kw, in, out] are (None, None, "conv_in", "conv_out"), biases
    ("conv_out",);
  * ``NORM`` "norm": GroupNorm scale and bias, ("norm",);
  * ``VOCAB`` "vocab": rows of an embedding table, ("vocab", "embed").

Usage::

    variables = model.init(rngs, x, t, train=False)   # boxed leaves
    params = unbox(variables)["params"]                # plain arrays
    specs = logical_specs(variables)["params"]         # PartitionSpec("embed", "mlp"), ...
    # Logical names -> mesh axes, e.g. tensor parallelism over a "model" axis:
    shardings = nn.logical_to_mesh_sharding(
        specs, mesh, rules=[("mlp", "model"), ("heads", "model")])

The specs need no computation: take them from
``jax.eval_shape(lambda: model.init(...))``. ``model.apply`` accepts boxed and
plain parameters alike.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn

EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
NORM = "norm"
VOCAB = "vocab"

LOGICAL_AXES = (EMBED, MLP, HEADS, CONV_IN, CONV_OUT, NORM, VOCAB)

# Kernel names of the layer kinds (biases take the last name).
DENSE = (EMBED, MLP)
ATTN_IN = (EMBED, HEADS)
ATTN_OUT = (HEADS, EMBED)
CONV = (None, None, CONV_IN, CONV_OUT)
EMBEDDING = (VOCAB, EMBED)


def with_names(init: Callable[..., Any], names: Sequence[str | None]) -> Callable[..., Any]:
  """``init`` returning its array boxed with the logical axis ``names``.

  Raises:
    ValueError: a name outside ``LOGICAL_AXES`` (and not None).
  """
  bad = [n for n in names if n is not None and n not in LOGICAL_AXES]
  if bad:
    raise ValueError(
        f"names must be None or in {LOGICAL_AXES}, got {tuple(names)!r}."
    )
  return nn.with_logical_partitioning(init, tuple(names))


def unbox(variables: Any) -> Any:
  """The same pytree with every ``LogicallyPartitioned`` box replaced by its array.

  Args:
    variables: e.g. ``model.init(...)`` or its ``["params"]`` (boxed or not;
      ``jax.eval_shape`` trees of ``ShapeDtypeStruct`` work too).

  Returns:
    The tree of plain leaves (same paths, same shapes).
  """
  return nn.meta.unbox(variables)


def logical_specs(variables: Any) -> Any:
  """``PartitionSpec`` of logical axis names for every leaf of a boxed tree.

  Args:
    variables: a boxed tree from ``model.init`` (or its ``jax.eval_shape``).

  Returns:
    The tree with each leaf replaced by ``PartitionSpec(*names)``, e.g.
    ``PartitionSpec("embed", "mlp")`` for a dense kernel; an unboxed array
    leaf gets ``PartitionSpec()`` (replicated).
  """
  return nn.get_partition_spec(variables)
