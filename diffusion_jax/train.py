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
import time
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
from etils import epath
from flax import struct

from diffusion_jax import configuration, generate, interrupts, models, runs, tasks, writers
from diffusion_jax import workdir as workdir_lib
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.conditioning import DataSpec
from diffusion_jax.data import pipeline, sources
from diffusion_jax.errors import ConfigError, NonFiniteError
from diffusion_jax.mesh import batch_sharded, is_primary, logical_shardings, replicated
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


def create_train_state(params, optimizer, rng, frozen=None, *, param_dtype=None) -> TrainState:
  """A step-0 state; a `TrainStateWithFrozen` when `frozen` params are given.

  With `param_dtype` (e.g. bfloat16) the trained params and the optimizer
  state are stored in it, while the EMA params stay float32."""
  zero = jnp.zeros((), jnp.int32)
  ema = params
  if param_dtype is not None:
    cast = lambda dtype: lambda x: (x.astype(dtype)
                                    if jnp.issubdtype(x.dtype, jnp.floating) else x)
    params = jax.tree_util.tree_map(cast(param_dtype), params)
    ema = jax.tree_util.tree_map(cast(jnp.float32), ema)
  fields = dict(step=zero, params=params, ema_params=ema,
                opt_state=optimizer.init(params),
                rng=jax.random.key_data(rng) if jax.dtypes.issubdtype(
                    rng.dtype, jax.dtypes.prng_key) else rng,
                nonfinite_streak=zero, nonfinite_total=zero)
  return TrainState(**fields) if frozen is None else TrainStateWithFrozen(**fields, frozen=frozen)


def _micro_batches(batch, k: int):
  """[B, ...] -> [k, B/k, ...]: micro-batch j holds examples j, j + k, ..., so
  each one is spread over every device like the whole batch."""
  return jax.tree_util.tree_map(
      lambda x: x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1), batch)


def loss_and_grads(loss_fn, params, state, batch, rng, *, accum_steps: int = 1):
  """(loss, metrics), grads of the mean loss over the global batch, computed in
  `accum_steps` micro-batches inside one `lax.scan` (gradient accumulation:
  the same result as one pass, with the activations of one micro-batch).

  Every example carries its position in the global batch (`batch["index"]`),
  from which the tasks derive its random numbers, so the micro-batches draw
  exactly what the whole batch would."""
  batch = batch | {"index": jnp.arange(jax.tree_util.tree_leaves(batch)[0].shape[0],
                                       dtype=jnp.int32)}
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    return grad_fn(params, state, batch, rng)

  def body(total, micro):
    out = grad_fn(params, state, micro, rng)
    return jax.tree_util.tree_map(jnp.add, total, out), None

  zeros = jax.tree_util.tree_map(
      jnp.zeros_like, jax.eval_shape(grad_fn, params, state,
                                     jax.tree_util.tree_map(lambda x: x[0],
                                                            _micro_batches(batch, accum_steps)),
                                     rng))
  total, _ = jax.lax.scan(body, zeros, _micro_batches(batch, accum_steps))
  return jax.tree_util.tree_map(lambda x: x / accum_steps, total)


def train_step(state: TrainState, batch, *, loss_fn, optimizer, ema_decay: float,
               update_frozen=None, accum_steps: int = 1):
  """One update on a global batch with
  `loss_fn(params, state, batch, rng) -> (loss, metrics)` (in `accum_steps`
  micro-batches: `loss_and_grads`); then `update_frozen(frozen, new params,
  step)` (if given) updates the frozen params.

  The step's randomness is fold_in(rng, step). A non-finite loss or gradient
  leaves params, EMA and optimizer state as they were and increments the
  non-finite counters. Returns (state, metrics).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  (loss, aux), grads = loss_and_grads(loss_fn, state.params, state, batch, rng,
                                      accum_steps=accum_steps)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params,
                                 1.0 - ema_decay_at(state.step, ema_decay))
  ema = jax.tree_util.tree_map(lambda e, old: e.astype(old.dtype), ema, state.ema_params)

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
  """Holds the compiled pieces of one training run (built from a config).

  The state lives on the `mesh.data × mesh.fsdp` mesh: the parameters, their
  EMA, the optimizer state and the frozen params are split over "fsdp" by
  their Flax logical axis names (`mesh.logical_axis_rules`), the rest is
  replicated; the batch is split over every axis. XLA inserts the
  collectives (FSDP).
  """

  def __init__(self, config, spec: DataSpec):
    self.config, self.spec = config, spec
    self.task = tasks.get_task(config.task)
    self.mesh = configuration.build_mesh(config)
    self.schedule = configuration.build_schedule(config)
    self.model = self.task.model(config, spec)
    self.model_fn = (models.make_model_fn(self.model) if self.task.sampling is not None
                     else None)
    self.optimizer = configuration.build_optimizer(config)
    self.param_dtype = models.DTYPES[config.train.param_dtype]
    self.repl, self.data_sharding = replicated(self.mesh), batch_sharded(self.mesh)
    self.state_sharding = self._state_shardings()
    loss_fn = functools.partial(self.task.loss, model=self.model, schedule=self.schedule,
                                config=config, spec=spec)
    update_frozen = (functools.partial(self.task.update_frozen, config)
                     if self.task.update_frozen is not None else None)
    step = functools.partial(train_step, loss_fn=loss_fn, optimizer=self.optimizer,
                             ema_decay=config.train.ema_decay, update_frozen=update_frozen,
                             accum_steps=config.train.grad_accum_steps)
    self.train_step = jax.jit(step, in_shardings=(self.state_sharding, self.data_sharding),
                              out_shardings=(self.state_sharding, self.repl),
                              donate_argnums=0)
    hook = (self.task.step_hook(config, self.optimizer) if self.task.step_hook is not None
            else None)
    self.hook_every = hook.every if hook is not None else None
    self.step_hook = (jax.jit(hook.fn, out_shardings=self.state_sharding, donate_argnums=0)
                      if hook is not None else None)

  def _new_state(self, params, key):
    frozen = (self.task.init_frozen(self.config, params)
              if self.task.init_frozen is not None else None)
    dtype = None if self.param_dtype == jnp.float32 else self.param_dtype
    return create_train_state(params, self.optimizer, jax.random.fold_in(key, 1), frozen,
                              param_dtype=dtype)

  def _state_shardings(self):
    """The state's shardings, from the logical names of a boxed abstract state."""
    boxed = jax.eval_shape(lambda: self._new_state(
        models.init_variables(self.model, self.spec, jax.random.key(0))["params"],
        jax.random.key(0)))
    rules = tuple(tuple(r) for r in self.config.mesh.logical_axis_rules)
    return logical_shardings(nn.get_partition_spec(boxed), nn.meta.unbox(boxed), self.mesh,
                             rules)

  def init_state(self, params=None) -> TrainState:
    """A fresh state from a random init, or from `params` (a teacher's) when
    given, with the task's frozen params, placed on the state's shardings."""
    key = jax.random.key(self.config.seed)

    def init(params):
      if params is None:
        params = models.init_params(self.model, self.spec, jax.random.fold_in(key, 0))
      return self._new_state(params, key)
    return jax.jit(init, out_shardings=self.state_sharding)(params)

  def abstract_state(self) -> TrainState:
    shapes = jax.eval_shape(self.init_state)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
        self.state_sharding)

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
  """Trains (or resumes) the config in `workdir`; returns the final state.

  Checks everything before writing anything. Prints a line while the train
  step compiles (with its duration), advances a progress bar every step, and
  ends with a summary of what it wrote. A stop request (`interrupts`) ends
  the run after the current step, with a checkpoint.
  """
  spec = configuration.validate_config(config)
  workdir_lib.check_workdir_compatible(workdir, config, spec)
  tc = config.train
  ckpt_dir = str(epath.Path(workdir) / "checkpoints")
  saved = Checkpointer.steps(ckpt_dir)
  if saved and saved[-1] > tc.num_steps:
    raise ConfigError(f"train.num_steps={tc.num_steps} is below the step {saved[-1]} of the "
                      f"latest checkpoint in --workdir={workdir!r}; raise it to train on, or "
                      "use a new --workdir.")
  task = tasks.get_task(config.task)
  # A new run with a teacher checks and loads it before the workdir is made.
  setting = task.teacher_setting(config)
  teacher = runs.load_teacher(config, setting) if setting and not saved else None
  trainer = Trainer(config, spec)
  if saved and saved[-1] == tc.num_steps:
    ckpt = Checkpointer(ckpt_dir, create=False)
    try:
      state, _, _ = ckpt.restore(trainer.abstract_state())
    finally:
      ckpt.close()
    print(f"Nothing to do: the latest checkpoint in {workdir} is at train.num_steps="
          f"{tc.num_steps}; raise train.num_steps to train on.", flush=True)
    return state
  iterator = iter(make_train_loader(config))
  ckpt = Checkpointer(ckpt_dir, max_to_keep=tc.keep_checkpoints)
  writer, grids = writers.NullWriter(), None
  try:
    if saved:
      state, data_state, step = ckpt.restore(trainer.abstract_state())
      pipeline.set_iterator_state(iterator, data_state)
      print(f"Resumed from the step-{step} checkpoint in {workdir}.", flush=True)
    else:
      state = trainer.init_state(teacher)
    if is_primary():  # Every file of the run is written once, by process 0.
      workdir_lib.write_config(workdir, config, spec)
    start = int(state.step)
    if is_primary():
      writer = writers.MetricWriter(workdir, total_steps=tc.num_steps, initial=start)
    grids = GridWriter(config, trainer, workdir) if task.sampling is not None else None
    state = _loop(config, trainer, state, iterator, ckpt, writer, grids, start)
  finally:
    writer.close()
    ckpt.close()
  return state


def _loop(config, trainer: Trainer, state, iterator, ckpt, writer, grids, start: int):
  tc = config.train
  batch = trainer.global_batch(next(iterator))
  print("Compiling the train step...", flush=True)
  t0 = time.perf_counter()
  step_fn = trainer.train_step.lower(state, batch).compile()
  print(f"Compiled the train step in {time.perf_counter() - t0:.1f} s.", flush=True)
  t0, saved_step, pngs, evals = time.perf_counter(), None, [], []
  previous = None  # (step, metrics) of the previous step

  def nonfinite(streak, step, metrics):
    if int(streak) < tc.max_nonfinite_steps:
      return
    writer.write(step, jax.device_get(metrics) | {
        "nonfinite_total": int(state.nonfinite_total)})
    last = Checkpointer.steps(ckpt.directory)
    kept = (f"the last checkpoint (step {last[-1]}) is kept unchanged" if last else
            "no checkpoint was written")
    raise NonFiniteError(
        f"{int(streak)} consecutive training steps had a non-finite loss or gradient "
        f"(train.max_nonfinite_steps={tc.max_nonfinite_steps}); stopping at step {step}: "
        f"{kept}. Lower train.learning_rate or check the data.")

  for step in range(start + 1, tc.num_steps + 1):
    # The task's hook runs before steps 1, 1 + every, ... (e.g. a round of
    # progressive distillation begins; also after a resume at a boundary).
    if trainer.step_hook is not None and (step - 1) % trainer.hook_every == 0:
      state = trainer.step_hook(state)
    if batch is None:
      batch = trainer.global_batch(next(iterator))
    state, metrics = step_fn(state, batch)
    batch = None
    is_last = step == tc.num_steps
    # The previous step's streak is read after this step is dispatched, so the
    # check every step does not stall the device.
    if previous is not None:
      nonfinite(previous[1]["nonfinite_streak"], *previous)
    previous = (step, metrics)
    # Read once: a signal arriving later in this step is handled after the next one.
    stop = interrupts.requested() is not None
    if step % tc.log_every == 0 or is_last or stop:
      writer.write(step, jax.device_get(metrics) | {
          "nonfinite_total": int(state.nonfinite_total)})
      nonfinite(state.nonfinite_streak, step, metrics)
    else:
      writer.step(step)
    if step % tc.checkpoint_every == 0 or is_last or stop:
      nonfinite(state.nonfinite_streak, step, metrics)
      ckpt.save(step, state, pipeline.get_iterator_state(iterator))
      saved_step = step
    if grids and ((tc.sample_every and step % tc.sample_every == 0) or is_last):
      pngs.append(grids.write(state.ema_params, step))
    if grids and tc.eval_every and (step % tc.eval_every == 0 or is_last):
      evals = grids.evaluate(state.ema_params, step, writer)
    if stop and not is_last:
      interrupts.check(f"at step {step}; re-run the same command to resume (the "
                       "checkpoint is written)")
  seconds = time.perf_counter() - t0
  done = tc.num_steps - start
  last = writer.last.get("loss")
  print(f"Trained steps {start + 1}..{tc.num_steps} in {seconds:.0f} s "
        f"({done / max(seconds, 1e-9):.2f} steps/s)"
        + (f", final loss {last:.4f}" if last is not None else "") + ". Wrote: checkpoint "
        f"{epath.Path(ckpt.directory) / str(saved_step)}, metrics {writer.path or '-'}"
        + (f", samples {pngs[-1]}" if pngs else "") + ".", flush=True)
  for line in evals:
    print(line, flush=True)
  return state


class GridWriter:
  """Writes PNG grids of EMA samples during training, and measures their
  `eval.metrics` (the samplers compile on first use)."""

  def __init__(self, config, trainer: Trainer, workdir: str):
    self.config, self.trainer, self.workdir = config, trainer, workdir
    self._generator = self._eval_generator = None

  def evaluate(self, params, step: int, writer) -> list[str]:
    """The sample metrics of eval.num_samples EMA samples, logged as "eval/..."
    rows of metrics.jsonl and TensorBoard. Returns the summary lines."""
    from diffusion_jax.metrics import suite
    c = self.config
    if self._eval_generator is None:
      self._eval_generator = generate.Generator(
          c, self.trainer.spec, self.trainer.model_fn, self.trainer.schedule,
          batch_size=c.sample.batch_size)
      print(f"\nSampling {c.eval.num_samples} images for {c.eval.metrics}...", flush=True)
    spec = self.trainer.spec
    labels = (generate.balanced_labels(c.eval.num_samples, spec.num_classes)
              if spec.conditioning != "none" else None)
    images = writers.to_uint8(self._eval_generator(params, c.eval.num_samples, labels,
                                                   seed=c.seed + 2))
    results, lines = suite.sample_metrics(c, images)
    writer.write_eval(step, suite.scalars(results))
    return [f"step {step}: {line}" for line in lines]

  def write(self, params, step: int) -> str:
    if self._generator is None:
      self._generator = generate.Generator(
          self.config, self.trainer.spec, self.trainer.model_fn, self.trainer.schedule,
          batch_size=self.config.sample.grid_size)
      print("\nSampling a grid (the sampler compiles once)...", flush=True)
    path = str(epath.Path(self.workdir) / f"samples_step{step:07d}.png")
    return generate.write_grid(self._generator, params, path, seed=self.config.seed + 12345)
