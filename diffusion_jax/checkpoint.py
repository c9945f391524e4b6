"""A thin wrapper over orbax's `CheckpointManager` for training state + data state.

A checkpoint holds two items:
  * "state": the `TrainState` pytree (params, EMA params, optimizer state, step,
    RNG, non-finite counters), restored onto whatever shardings the caller asks
    for — so a checkpoint written on 8 devices (or a GPU/TPU) restores on 1 CPU
    and the reverse;
  * "data": the grain iterator position, as JSON.
Saves are synchronous and atomic (orbax writes to a temporary directory and
renames it), so a process killed at any moment leaves the last finished
checkpoint intact.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from diffusion_jax.errors import ConfigError


class Checkpointer:
  """Saves and restores (train state, data iterator state) at integer steps."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, create: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False,
        cleanup_tmp_directories=create)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data"))

  @staticmethod
  def has_checkpoint(directory: str) -> bool:
    """Whether `directory` holds a finished checkpoint (without creating it)."""
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: bytes) -> None:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": data_state.decode()}))
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with
    shardings). Returns (state, data_state bytes, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(
          f"The checkpoint at step {step} in {self.directory} does not match the "
          f"model/optimizer of this config ({type(e).__name__}: {str(e)[:300]}). "
          "Use a new --workdir or the config it was written with.") from None
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
