"""A thin wrapper over orbax's `CheckpointManager` for training state + data state.

A checkpoint holds two items:
  * "state": the `TrainState` pytree (params, EMA params, optimizer state, step,
    RNG, non-finite counters), restored onto whatever shardings the caller asks
    for — so a checkpoint written on 8 devices (or a GPU/TPU) restores on 1 CPU
    and the reverse;
  * "data": the grain iterator position of process 0, as JSON; with several
    processes also "data_per_process": every process's position, as one uint8
    array [num_processes, DATA_BYTES] with one row per process (each process
    writes and reads its own row), so each restores its own data shard.
Saves are synchronous and atomic (orbax writes to a temporary directory and
renames it), so a process killed at any moment leaves the last finished
checkpoint intact.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax.errors import ConfigError

DATA_BYTES = 1 << 16  # room for one process's serialized iterator position


def _process_mesh() -> Mesh:
  """One device per process, in process order (for per-process rows)."""
  first = {}
  for d in jax.devices():
    first.setdefault(d.process_index, d)
  return Mesh(np.asarray([first[p] for p in sorted(first)]), ("process",))


def _per_process(data_state: bytes) -> jax.Array:
  """This process's bytes as its row of a global uint8 [num_processes, DATA_BYTES]."""
  if len(data_state) > DATA_BYTES:
    raise ValueError(f"The data iterator state has {len(data_state)} bytes, more than "
                     f"checkpoint.DATA_BYTES = {DATA_BYTES}.")
  row = np.zeros((1, DATA_BYTES), np.uint8)
  row[0, :len(data_state)] = np.frombuffer(data_state, np.uint8)
  mesh = _process_mesh()
  sharding = NamedSharding(mesh, P("process"))
  local = mesh.devices[jax.process_index()]
  return jax.make_array_from_single_device_arrays(
      (mesh.size, DATA_BYTES), sharding, [jax.device_put(row, local)])


class Checkpointer:
  """Saves and restores (train state, data iterator state) at integer steps."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, create: bool = True):
    self.directory = directory if "://" in str(directory) else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False,
        cleanup_tmp_directories=create)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "data_per_process"))

  @staticmethod
  def steps(directory: str) -> list[int]:
    """The steps of the finished checkpoints in `directory` (creating nothing)."""
    path = epath.Path(directory)
    if not path.is_dir():
      return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())

  @staticmethod
  def has_checkpoint(directory: str) -> bool:
    """Whether `directory` holds a finished checkpoint (without creating it)."""
    return bool(Checkpointer.steps(directory))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: bytes) -> None:
    """Saves the state and this process's data-iterator position (every
    process calls it with its own)."""
    items = dict(state=ocp.args.StandardSave(state),
                 data=ocp.args.JsonSave({"iterator": data_state.decode()}))
    if jax.process_count() > 1:
      items["data_per_process"] = ocp.args.StandardSave(
          {"iterator": _per_process(data_state)})
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with
    shardings). Returns (state, data_state bytes, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    per_process = jax.process_count() > 1
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    if per_process:
      mesh = _process_mesh()
      items["data_per_process"] = ocp.args.StandardRestore({"iterator": jax.ShapeDtypeStruct(
          (mesh.size, DATA_BYTES), np.uint8, sharding=NamedSharding(mesh, P("process")))})
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
      raise ConfigError(
          f"The checkpoint at step {step} in {self.directory} does not match the "
          f"model/optimizer of this config or the number of processes "
          f"({type(e).__name__}: {str(e)[:300]}). Use a new --workdir or the config it "
          "was written with.") from None
    if per_process:
      row = np.asarray(restored.data_per_process["iterator"].addressable_shards[0].data)[0]
      return restored.state, row.tobytes().rstrip(b"\0"), step
    return restored.state, restored.data["iterator"].encode(), step

  def restore_params(self, abstract_params, step: int | None = None, *,
                     field: str = "ema_params"):
    """Restores only `state.<field>` (e.g. the EMA params) onto the shardings of
    `abstract_params`, without reading the optimizer state. Returns (params, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    try:
      item = {field: abstract_params}
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=item, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(item))))
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(
          f"The checkpoint at step {step} in {self.directory} does not match the "
          f"model of this config ({type(e).__name__}: {str(e)[:300]}). "
          "Use the config it was written with.") from None
    return restored.state[field], step

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` placed on `sharding` (e.g. replicated)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
