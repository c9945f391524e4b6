"""The device mesh, built in one place for training and sampling, and multi-process start-up.

The mesh has the named axes `MESH_AXES` = ("data", "fsdp") (MaxText /
maxdiffusion style; a "tensor" axis can be appended later). The batch is
sharded over all of them (`BATCH_AXES`), so the same program runs on 1 CPU,
8 GPUs or a pod slice.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax._checks import ArgumentError, is_int

__all__ = ["MESH_AXES", "BATCH_AXES", "make_mesh", "replicated", "batch_sharded",
           "initialize_distributed", "is_primary", "to_host"]

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # The batch dimension is split over every mesh axis.


def make_mesh(devices: Sequence[Any] | None = None, *, data: int = -1,
              fsdp: int = 1) -> Mesh:
  """A `data × fsdp` mesh over `devices` (None: every device of every process).

  One of `data`, `fsdp` may be -1, meaning all remaining devices; their
  product must equal the number of devices.
  """
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ArgumentError("devices", "devices must be None or a non-empty sequence of devices.")
  sizes = {"data": data, "fsdp": fsdp}
  for name, size in sizes.items():
    if not is_int(size) or (size < 1 and size != -1):
      raise ArgumentError(name, f"mesh axis {name} must be a positive integer or -1 (all "
                                f"remaining devices), got {size!r}.")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ArgumentError(free[1], f"only one mesh axis may be -1, got {sizes}.")
  fixed = int(np.prod([size for size in sizes.values() if size != -1]))
  if free:
    if len(devs) % fixed:
      raise ArgumentError(free[0], f"the mesh axes {sizes} do not divide the {len(devs)} "
                                   "devices.")
    sizes[free[0]] = len(devs) // fixed
  if sizes["data"] * sizes["fsdp"] != len(devs):
    raise ArgumentError("data", f"the mesh axes {sizes} must multiply to the number of "
                                f"devices, {len(devs)}.")
  grid = np.asarray(devs, dtype=object).reshape(sizes["data"], sizes["fsdp"])
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


# ----------------------------------------------------------------------------
# Several processes (jax.distributed).
# ----------------------------------------------------------------------------


def initialize_distributed(*, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout: int = 100) -> None:
  """Starts JAX's distributed runtime (`jax.distributed.initialize`).

  Arguments left None are detected from the environment as JAX does (TPU pod
  slices, SLURM, Open MPI, Kubernetes). On CPU the collectives go through
  gloo. A process whose peers stop sending heartbeats for `heartbeat_timeout`
  seconds is stopped by the runtime, so a dead process never leaves the
  others hanging.
  """
  # Used by the CPU backend only (before any backend is initialized).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout)


def is_primary() -> bool:
  """Whether this process writes the run's files (metrics, config, images)."""
  return jax.process_index() == 0


def to_host(x) -> np.ndarray:
  """A global array as one NumPy array on every process (gathered across
  processes when it is not fully addressable here)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# ----------------------------------------------------------------------------
# Parameter sharding: Flax logical axis names -> mesh axes.
# ----------------------------------------------------------------------------

# FSDP (MaxText / maxdiffusion style): every large parameter is split over
# "fsdp" along its output dimension; norms, biases of small layers and
# anything not divisible stay replicated. `config.mesh.logical_axis_rules`.
DEFAULT_RULES = (("mlp", "fsdp"), ("heads", "fsdp"), ("conv_out", "fsdp"), ("vocab", "fsdp"),
                 ("embed", None), ("conv_in", None), ("norm", None))


def logical_shardings(specs, shapes, mesh: Mesh, rules):
  """NamedShardings of a pytree from its logical PartitionSpecs.

  Args:
    specs: pytree of `PartitionSpec`s of logical axis names (e.g.
      `nn.get_partition_spec` of boxed params; P() for unnamed leaves).
    shapes: the matching pytree of arrays or ShapeDtypeStructs.
    mesh: the device mesh; rules: (logical name, mesh axis or None) pairs.
  A dimension whose size the mesh axis does not divide stays unsplit (e.g. a
  3-channel output conv on 8 devices).
  """
  import flax.linen as nn
  mapped = nn.logical_to_mesh(specs, rules)

  def fit(spec, leaf):
    if not isinstance(spec, P):
      spec = P()
    dims = list(spec) + [None] * (len(leaf.shape) - len(spec))
    for i, axes in enumerate(dims[:len(leaf.shape)]):
      if axes is None:
        continue
      names = axes if isinstance(axes, tuple) else (axes,)
      if leaf.shape[i] % int(np.prod([mesh.shape[a] for a in names])):
        dims[i] = None
    return NamedSharding(mesh, P(*dims[:len(leaf.shape)]))
  return jax.tree_util.tree_map(fit, mapped, shapes,
                                is_leaf=lambda x: isinstance(x, P) or x is None)
