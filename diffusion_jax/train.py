"""Training: `TrainState`, the sharded `train_step`, the `Trainer` and the loop.

`train_step` is one jitted function over the device mesh of `mesh.py`: the
state is replicated, the batch is split over the mesh axes, and the same code
runs on 1 CPU, 8 GPUs or a TPU slice. Per-step randomness is fold_in(rng,
step), so a resumed run replays exactly the same random numbers.

What is trained comes from the task (`tasks.get_task(config.task)`): its
network, its loss, its frozen params and their update, and its step hook.
This module never branches on a task's name. The frozen params (a teacher, a
target network) ride in `TrainStateWithFrozen.frozen`, so a run resumes from
its checkpoint alone.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffusion_jax import configuration, generate, models, runs, tasks, writers
from diffusion_jax import workdir as workdir_lib
from diffusion_jax.checkpoint import Checkpointer, abstract_like
from diffusion_jax.conditioning import DataSpec
from diffusion_jax.data import pipeline, sources
from diffusion_jax.errors import NonFiniteError
from diffusion_jax.mesh import batch_sharded, is_primary, make_mesh, replicated
from diffusion_jax.optim import ema_decay_at

__all__ = ["TrainState", "TrainStateWithFrozen", "create_train_state", "train_step",
           "Trainer", "make_train_loader", "train_and_evaluate", "NonFiniteError"]


class TrainState(struct.PyTreeNode):
  step: jnp.ndarray              # int32 [], number of batches consumed
  params: Any                    # model parameters (float32 pytree)
  ema_params: Any                # exponential moving average of params
  opt_state: Any                 # optax state
  rng: jnp.ndarray               # uint32 [2], raw base key (fold_in with step)
  nonfinite_streak: jnp.ndarray  # int32 [], consecutive skipped updates
  nonfinite_total: jnp.ndarray   # int32 [], all skipped updates


class TrainStateWithFrozen(TrainState):
  """A TrainState with params the optimizer does not touch (the task's
  `init_frozen`: a teacher, a target network). The tasks without any keep
  the plain TrainState, so their checkpoints keep their layout."""
  frozen: Any


def create_train_state(params, optimizer, rng, frozen=None) -> TrainState:
  """A step-0 state; a `TrainStateWithFrozen` when `frozen` params are given."""
  zero = jnp.zeros((), jnp.int32)
  fields = dict(step=zero, params=params, ema_params=params,
                opt_state=optimizer.init(params),
                rng=jax.random.key_data(rng) if jax.dtypes.issubdtype(
                    rng.dtype, jax.dtypes.prng_key) else rng,
                nonfinite_streak=zero, nonfinite_total=zero)
  return TrainState(**fields) if frozen is None else TrainStateWithFrozen(**fields, frozen=frozen)


def train_step(state: TrainState, batch, *, loss_fn, optimizer, ema_decay: float,
               update_frozen=None):
  """One update on a global batch with
  `loss_fn(params, state, batch, rng) -> (loss, metrics)`; then
  `update_frozen(frozen, new params, step)` (if given) updates the frozen params.

  The step's randomness is fold_in(rng, step). A non-finite loss or gradient
  leaves params, EMA and optimizer state as they were and increments the
  non-finite counters. Returns (state, metrics).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state, batch, rng)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params,
                                 1.0 - ema_decay_at(state.step, ema_decay))

  # One scalar test: the global norm is non-finite iff some gradient is (or it
  # overflows). A per-leaf jnp.all(isfinite) reduction gets re-fused by XLA
  # into every select below, which doubled the step's compile time.
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree_util.tree_map(
      lambda a, b: jnp.where(ok, a, b), new, old)
  bad = (~ok).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      ema_params=keep(ema, state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_streak=(state.nonfinite_streak + 1) * bad,
      nonfinite_total=state.nonfinite_total + bad)
  if update_frozen is not None:
    new_state = new_state.replace(
        frozen=keep(update_frozen(state.frozen, params, state.step), state.frozen))
  metrics = aux | {"loss": loss, "grad_norm": grad_norm, "skipped": bad,
                   "nonfinite_streak": new_state.nonfinite_streak}
  return new_state, metrics


class Trainer:
  """Holds the compiled pieces of one training run (built from a config)."""

  def __init__(self, config, spec: DataSpec):
    self.config, self.spec = config, spec
    self.task = tasks.get_task(config.task)
    self.mesh = make_mesh()
    self.schedule = configuration.build_schedule(config)
    self.model = self.task.model(config, spec)
    self.model_fn = (models.make_model_fn(self.model) if self.task.sampling is not None
                     else None)
    self.optimizer = configuration.build_optimizer(config)
    repl = replicated(self.mesh)
    self.repl, self.data_sharding = repl, batch_sharded(self.mesh)
    loss_fn = functools.partial(self.task.loss, model=self.model, schedule=self.schedule,
                                config=config, spec=spec)
    update_frozen = (functools.partial(self.task.update_frozen, config)
                     if self.task.update_frozen is not None else None)
    step = functools.partial(train_step, loss_fn=loss_fn, optimizer=self.optimizer,
                             ema_decay=config.train.ema_decay, update_frozen=update_frozen)
    self.train_step = jax.jit(step, in_shardings=(repl, self.data_sharding),
                              out_shardings=(repl, repl), donate_argnums=0)
    hook = (self.task.step_hook(config, self.optimizer) if self.task.step_hook is not None
            else None)
    self.hook_every = hook.every if hook is not None else None
    self.step_hook = (jax.jit(hook.fn, out_shardings=repl, donate_argnums=0)
                      if hook is not None else None)

  def init_state(self, params=None) -> TrainState:
    """A fresh state from a random init, or from `params` (a teacher's) when
    given, with the task's frozen params."""
    key = jax.random.key(self.config.seed)
    init_frozen = self.task.init_frozen

    def init(params):
      if params is None:
        params = models.init_params(self.model, self.spec, jax.random.fold_in(key, 0))
      frozen = init_frozen(self.config, params) if init_frozen is not None else None
      return create_train_state(params, self.optimizer, jax.random.fold_in(key, 1), frozen)
    return jax.jit(init, out_shardings=self.repl)(params)

  def abstract_state(self) -> TrainState:
    return abstract_like(jax.eval_shape(self.init_state), self.repl)

  def global_batch(self, local_batch) -> dict:
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in local_batch.items()}


def make_train_loader(config, seed_offset: int = 0):
  source = sources.get_source(config.data, "train", in_memory=config.data.in_memory)
  return pipeline.make_loader(
      source, batch_size=config.train.batch_size, seed=config.seed + seed_offset,
      image_size=config.data.image_size, random_flip=config.data.random_flip,
      dequantize=config.data.dequantize, worker_count=config.data.worker_count)


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains (or resumes) the config in `workdir`; returns the final state."""
  spec = configuration.validate_config(config)
  workdir_lib.check_workdir_compatible(workdir, config, spec)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  task = tasks.get_task(config.task)
  # A new run with a teacher checks and loads it before the workdir is made.
  setting = task.teacher_setting(config)
  teacher = (runs.load_teacher(config, setting) if setting
             and not Checkpointer.has_checkpoint(ckpt_dir) else None)
  trainer = Trainer(config, spec)
  ckpt = Checkpointer(ckpt_dir, max_to_keep=config.train.keep_checkpoints)
  iterator = iter(make_train_loader(config))
  if ckpt.latest_step() is not None:
    state, data_state, step = ckpt.restore(trainer.abstract_state())
    pipeline.set_iterator_state(iterator, data_state)
    print(f"Resumed from the step-{step} checkpoint in {workdir}.", flush=True)
  else:
    state = trainer.init_state(teacher)
  if is_primary():  # Every file of the run is written once, by process 0.
    workdir_lib.write_config(workdir, config, spec)
  tc = config.train
  start = int(state.step)
  writer = (writers.MetricWriter(workdir, total_steps=tc.num_steps, initial=start)
            if is_primary() else writers.NullWriter())
  grids = GridWriter(config, trainer, workdir) if task.sampling is not None else None
  previous_streak = None
  try:
    for step in range(start + 1, tc.num_steps + 1):
      # The task's hook runs before steps 1, 1 + every, ... (e.g. a round of
      # progressive distillation begins; also after a resume at a boundary).
      if trainer.step_hook is not None and (step - 1) % trainer.hook_every == 0:
        state = trainer.step_hook(state)
      state, metrics = trainer.train_step(state, trainer.global_batch(next(iterator)))
      is_last = step == tc.num_steps
      # The previous step's streak is read after this step is dispatched, so the
      # check every step does not stall the device.
      if previous_streak is not None:
        _check_nonfinite(int(previous_streak), tc.max_nonfinite_steps)
      previous_streak = metrics["nonfinite_streak"]
      if step % tc.log_every == 0 or is_last:
        writer.write(step, jax.device_get(metrics) | {
            "nonfinite_total": int(state.nonfinite_total)})
        _check_nonfinite(int(state.nonfinite_streak), tc.max_nonfinite_steps)
      if step % tc.checkpoint_every == 0 or is_last:
        _check_nonfinite(int(state.nonfinite_streak), tc.max_nonfinite_steps)
        ckpt.save(step, state, pipeline.get_iterator_state(iterator))
      if grids and ((tc.sample_every and step % tc.sample_every == 0) or is_last):
        grids.write(state.ema_params, step)
  finally:
    writer.close()
    ckpt.close()
  return state


def _check_nonfinite(streak: int, limit: int) -> None:
  if streak >= limit:
    raise NonFiniteError(
        f"{streak} consecutive training steps had a non-finite loss or gradient "
        f"(train.max_nonfinite_steps={limit}); stopping. The last good checkpoint "
        "is kept unchanged. Lower train.learning_rate or check the data.")


class GridWriter:
  """Writes a PNG grid of EMA samples during training (compiled on first use)."""

  def __init__(self, config, trainer: Trainer, workdir: str):
    self.config, self.trainer, self.workdir = config, trainer, workdir
    self._generator = None

  def write(self, params, step: int) -> str:
    if self._generator is None:
      self._generator = generate.Generator(
          self.config, self.trainer.spec, self.trainer.model_fn, self.trainer.schedule,
          batch_size=self.config.sample.grid_size)
    path = os.path.join(self.workdir, f"samples_step{step:07d}.png")
    return generate.write_grid(self._generator, params, path, seed=self.config.seed + 12345)
