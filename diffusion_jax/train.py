"""Training: `TrainState`, the optimizer, the sharded `train_step` and the loop.

`train_step` is one jitted function over a 1-D data-parallel `Mesh` of all
devices: the state is replicated, the batch is split along "data", and the
same code runs on 1 CPU, 8 GPUs or a TPU slice. Per-step randomness is
fold_in(rng, step), so a resumed run replays exactly the same random numbers.

Tasks (`config.task`, one loss each in `LOSSES`):
  * "diffusion": L_simple / hybrid / VLB of `losses.training_losses`;
  * "classifier": the noise-aware classifier of classifier guidance;
  * "distill": progressive distillation (`distillation.py`) of a trained
    diffusion model (`distill.teacher_workdir`), one round every
    `distill.steps_per_round` steps;
  * "consistency": consistency distillation from `consistency.teacher_workdir`,
    or consistency training without one (`consistency.py`), with the target
    network θ⁻ updated inside the jitted step.
The teachers and the target network ride in `TrainStateWithFrozen.frozen`, so a run
resumes from its checkpoint alone.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from diffusion_jax import consistency, distillation, experiment, generate, losses, process, writers
from diffusion_jax.checkpoint import Checkpointer, abstract_like
from diffusion_jax.data import pipeline


class TrainState(struct.PyTreeNode):
  step: jnp.ndarray              # int32 [], number of batches consumed
  params: Any                    # model parameters (float32 pytree)
  ema_params: Any                # exponential moving average of params
  opt_state: Any                 # optax state
  rng: jnp.ndarray               # uint32 [2], raw base key (fold_in with step)
  nonfinite_streak: jnp.ndarray  # int32 [], consecutive skipped updates
  nonfinite_total: jnp.ndarray   # int32 [], all skipped updates


class TrainStateWithFrozen(TrainState):
  """A TrainState with params the optimizer does not touch (`initial_frozen`):
  {"teacher": ..., "round": int32 []} (the round that teacher serves) for
  progressive distillation, {"target": θ⁻} plus the "teacher" (if any) for
  consistency models. The other tasks keep the plain TrainState, so their
  checkpoints keep their layout."""
  frozen: Any


def make_optimizer(tc) -> optax.GradientTransformation:
  """Adam/AdamW with linear warm-up (none if warmup_steps=0) and optional
  global-norm clipping."""
  lr = (optax.linear_schedule(0.0, tc.learning_rate, tc.warmup_steps)
        if tc.warmup_steps > 0 else tc.learning_rate)
  opt = (optax.adamw(lr, weight_decay=tc.weight_decay) if tc.optimizer == "adamw"
         else optax.adam(lr))
  return optax.chain(optax.clip_by_global_norm(tc.grad_clip), opt) \
      if tc.grad_clip > 0 else opt


def create_train_state(params, optimizer, rng, frozen=None) -> TrainState:
  """A step-0 state; a `TrainStateWithFrozen` when `frozen` params are given."""
  zero = jnp.zeros((), jnp.int32)
  fields = dict(step=zero, params=params, ema_params=params,
                opt_state=optimizer.init(params),
                rng=jax.random.key_data(rng) if jax.dtypes.issubdtype(
                    rng.dtype, jax.dtypes.prng_key) else rng,
                nonfinite_streak=zero, nonfinite_total=zero)
  return TrainState(**fields) if frozen is None else TrainStateWithFrozen(**fields, frozen=frozen)


def ema_decay_at(step, decay: float):
  """EMA decay with warm-up: min(decay, (1 + n)/(10 + n)) at update n."""
  n = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def _training_model(model, params, cond, rng):
  """The model in training mode as `denoiser(x_t, t) -> output` (dropout from rng)."""
  return lambda x_t, t: model.apply({"params": params}, x_t, t,
                                    **experiment.model_inputs(cond), train=True,
                                    rngs={"dropout": rng})


def _frozen_model(model, params, cond):
  """A frozen network (teacher or target) as `denoiser(x_t, t)`: no dropout."""
  return lambda x_t, t: model.apply({"params": params}, x_t, t,
                                    **experiment.model_inputs(cond), train=False)


def diffusion_loss(params, state, batch, rng, *, model, schedule, config, spec):
  """L_simple / hybrid / VLB (config.diffusion) on a batch, with label dropout.

  batch: {"image": f32 [B, H, W, C], "label": i32 [B]}. With a conditional
  model, each example's cond is replaced by the null cond with probability
  train.label_dropout (classifier-free guidance training). `state` (the
  TrainState before the update) is not used. Returns (mean loss, metrics).
  """
  del state
  d = config.diffusion
  k_t, k_noise, k_drop, k_label = jax.random.split(rng, 4)
  x0 = batch["image"]
  t = losses.sample_timesteps(k_t, x0.shape[0], schedule.num_timesteps)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  cond = experiment.make_cond(spec, batch["label"])
  if cond is not None and config.train.label_dropout > 0:
    drop = jax.random.bernoulli(k_label, config.train.label_dropout, t.shape)
    null = experiment.null_cond_fn(spec)(cond)
    cond = jax.tree_util.tree_map(
        lambda n, c: jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), n, c),
        null, cond)
  terms = losses.training_losses(
      schedule, _training_model(model, params, cond, k_drop), x0, t, noise,
      prediction=d.prediction, variance=d.variance, loss_type=d.loss_type, weighting=d.weighting,
      min_snr_gamma=d.min_snr_gamma, vlb_weight=d.vlb_weight)
  metrics = {k: jnp.mean(v) for k, v in terms.items() if k != "loss"}
  return jnp.mean(terms["loss"]), metrics


def classifier_loss(params, state, batch, rng, *, model, schedule, config, spec):
  """Cross-entropy of a noise-aware classifier on x_t ~ q(x_t|x_0), t uniform
  (Dhariwal & Nichol 2021, §4). Returns (mean loss, metrics)."""
  del state, config, spec
  k_t, k_noise, k_drop = jax.random.split(rng, 3)
  x0, labels = batch["image"], batch["label"]
  t = losses.sample_timesteps(k_t, x0.shape[0], schedule.num_timesteps)
  x_t = process.q_sample(schedule, x0, t, jax.random.normal(k_noise, x0.shape, x0.dtype))
  logits = model.apply({"params": params}, x_t, t, train=True, rngs={"dropout": k_drop})
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce), {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def distill_loss(params, state, batch, rng, *, model, schedule, config, spec):
  """Progressive distillation (Salimans & Ho 2022, Alg. 2) of round
  `state.step // distill.steps_per_round` from the teacher in
  `state.frozen["teacher"]` (the same network; no dropout in the teacher).
  Labels of a conditional model are passed to both. Returns (mean loss, metrics)."""
  d, pc = config.diffusion, config.distill
  k_j, k_noise, k_drop = jax.random.split(rng, 3)
  x0 = batch["image"]
  base = experiment.distill_base_timesteps(config)
  round_ = state.step // pc.steps_per_round
  j = distillation.sample_student_indices(k_j, x0.shape[0], base.size, round_)
  cond = experiment.make_cond(spec, batch["label"])
  out = distillation.progressive_distillation_loss(
      _training_model(model, params, cond, k_drop),
      _frozen_model(model, state.frozen["teacher"], cond), schedule, base, round_, x0, j,
      jax.random.normal(k_noise, x0.shape, x0.dtype), prediction=d.prediction,
      variance=d.variance, teacher_clip_x0=pc.teacher_clip_x0)
  return jnp.mean(out["loss"]), {"mse": jnp.mean(out["mse"]), "round": round_}


def ct_num_points(step, config):
  """N(k) of the consistency-training curriculum at training step k."""
  cm = config.consistency
  return consistency.ct_num_points(step, config.train.num_steps, cm.ct_s0, cm.ct_s1)


def consistency_loss(params, state, batch, rng, *, model, schedule, config, spec):
  """Consistency distillation (Song et al. 2023, Alg. 2) from
  `state.frozen["teacher"]`, or consistency training (Alg. 3, with the
  curriculum N(step)) without one; θ⁻ = `state.frozen["target"]`.
  Returns (mean loss, metrics)."""
  d, cm = config.diffusion, config.consistency
  k_n, k_noise, k_drop = jax.random.split(rng, 3)
  x0 = batch["image"]
  cond = experiment.make_cond(spec, batch["label"])
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  student = _training_model(model, params, cond, k_drop)
  target = _frozen_model(model, state.frozen["target"], cond)
  common = dict(prediction=d.prediction, metric=cm.metric, weighting=cm.weighting)
  if "teacher" in state.frozen:
    grid = experiment.consistency_grid(config)
    n = consistency.sample_grid_indices(k_n, x0.shape[0], grid.size)
    out = consistency.consistency_distillation_loss(
        student, target, _frozen_model(model, state.frozen["teacher"], cond), schedule,
        grid, x0, n, noise, solver=cm.solver, teacher_clip_x0=cm.teacher_clip_x0,
        teacher_variance=d.variance, **common)
    num_points = grid.size
  else:
    num_points = ct_num_points(state.step, config)
    n = consistency.sample_grid_indices(k_n, x0.shape[0], num_points)
    out = consistency.consistency_training_loss(student, target, schedule, num_points,
                                                x0, n, noise, **common)
  return jnp.mean(out["loss"]), {"distance": jnp.mean(out["distance"]),
                                 "num_points": num_points}


def update_consistency_target(frozen, params, step, *, config):
  """θ⁻ ← μ θ⁻ + (1 - μ) θ after an update: μ = consistency.target_ema for
  distillation, μ(N(step)) of the curriculum for training."""
  cm = config.consistency
  mu = (cm.target_ema if "teacher" in frozen else
        consistency.ct_ema_decay(ct_num_points(step, config), cm.ct_s0, cm.ct_mu0))
  return frozen | {"target": consistency.update_target(frozen["target"], params, mu)}


LOSSES = {"diffusion": diffusion_loss, "classifier": classifier_loss,
          "distill": distill_loss, "consistency": consistency_loss}


def initial_frozen(config, params) -> dict | None:
  """The frozen params of a new run that starts from `params` (None: none)."""
  if config.task == "distill":  # The teacher of round 0.
    return {"teacher": params, "round": jnp.zeros((), jnp.int32)}
  if config.task == "consistency":
    teacher = {"teacher": params} if config.consistency.teacher_workdir else {}
    return teacher | {"target": params}
  return None


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
  decay = ema_decay_at(state.step, ema_decay)
  ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                               state.ema_params, params)

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


def begin_round(state: TrainState, *, optimizer, steps_per_round: int) -> TrainState:
  """Progressive distillation, at the first step of a round: the student's EMA
  params become the round's teacher and the student's initialization, with a
  fresh optimizer state (so the learning-rate warm-up restarts)."""
  p = state.ema_params
  return state.replace(params=p, opt_state=optimizer.init(p), frozen={
      "teacher": p, "round": (state.step // steps_per_round).astype(jnp.int32)})


class Trainer:
  """Holds the compiled pieces of one training run (built from a config)."""

  def __init__(self, config, spec: experiment.DataSpec):
    self.config, self.spec = config, spec
    self.mesh = experiment.make_mesh()
    self.schedule = experiment.build_schedule(config)
    self.model = experiment.build_model(config, spec)
    self.model_fn = (experiment.make_model_fn(self.model)
                     if config.task in experiment.GENERATIVE_TASKS else None)
    self.optimizer = make_optimizer(config.train)
    repl = experiment.replicated(self.mesh)
    self.repl, self.data_sharding = repl, experiment.batch_sharded(self.mesh)
    loss_fn = functools.partial(LOSSES[config.task], model=self.model,
                                schedule=self.schedule, config=config, spec=spec)
    update_frozen = (functools.partial(update_consistency_target, config=config)
                     if config.task == "consistency" else None)
    step = functools.partial(train_step, loss_fn=loss_fn, optimizer=self.optimizer,
                             ema_decay=config.train.ema_decay, update_frozen=update_frozen)
    self.train_step = jax.jit(step, in_shardings=(repl, self.data_sharding),
                              out_shardings=(repl, repl), donate_argnums=0)
    self.begin_round = (jax.jit(functools.partial(
        begin_round, optimizer=self.optimizer,
        steps_per_round=config.distill.steps_per_round), out_shardings=repl,
        donate_argnums=0) if config.task == "distill" else None)

  def init_state(self, params=None) -> TrainState:
    """A fresh state from a random init, or from `params` (a teacher's) when
    given, with the task's frozen params (`initial_frozen`)."""
    key = jax.random.key(self.config.seed)

    def init(params):
      if params is None:
        params = experiment.init_params(self.model, self.spec, jax.random.fold_in(key, 0))
      return create_train_state(params, self.optimizer, jax.random.fold_in(key, 1),
                                initial_frozen(self.config, params))
    return jax.jit(init, out_shardings=self.repl)(params)

  def abstract_state(self) -> TrainState:
    return abstract_like(jax.eval_shape(self.init_state), self.repl)

  def global_batch(self, local_batch) -> dict:
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in local_batch.items()}


def restore_ema_params(config, workdir: str):
  """Validates the config against `workdir` and restores the latest EMA params.
  Returns (trainer, ema_params, step)."""
  spec = experiment.validate_config(config)
  experiment.check_workdir_compatible(workdir, config, spec)
  trainer = Trainer(config, spec)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  if ckpt.latest_step() is None:
    raise ValueError(f"--workdir={workdir!r} holds no checkpoint; train first "
                     "(--mode=train).")
  state, _, step = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  return trainer, state.ema_params, step


def load_teacher(config, setting: str):
  """The EMA params of the trained diffusion model in the workdir that
  `setting` names, after checking that it has this config's network and
  diffusion settings."""
  workdir = functools.reduce(lambda node, k: node[k], setting.split("."), config)
  teacher_config = experiment.load_run_config(workdir, setting)
  experiment.check_teacher_compatible(teacher_config, config, setting)
  _, params, step = restore_ema_params(teacher_config, workdir)
  print(f"Teacher: the step-{step} EMA params in {workdir}.", flush=True)
  return params


def make_train_loader(config, seed_offset: int = 0):
  source = pipeline.get_data_source(config.data.dataset, "train", config.data.data_dir,
                                    in_memory=config.data.in_memory)
  return pipeline.make_loader(
      source, batch_size=config.train.batch_size, seed=config.seed + seed_offset,
      image_size=config.data.image_size, random_flip=config.data.random_flip,
      dequantize=config.data.dequantize, worker_count=config.data.worker_count)


class NonFiniteError(RuntimeError):
  pass


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains (or resumes) the config in `workdir`; returns the final state."""
  spec = experiment.validate_config(config)
  experiment.check_workdir_compatible(workdir, config, spec)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # A new distillation checks and loads its teacher before the workdir is made.
  setting = experiment.teacher_workdir_setting(config)
  teacher = (load_teacher(config, setting) if setting
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
  experiment.write_config(workdir, config, spec)
  tc = config.train
  start = int(state.step)
  writer = writers.MetricWriter(workdir, total_steps=tc.num_steps, initial=start)
  sampler = (GridSampler(config, trainer, workdir)
             if config.task in experiment.GENERATIVE_TASKS else None)
  previous_streak = None
  teacher_round = int(state.frozen["round"]) if config.task == "distill" else None
  steps_per_round = config.distill.steps_per_round
  try:
    for step in range(start + 1, tc.num_steps + 1):
      # Progressive distillation: the first step of a round (also after a
      # resume, or when train.num_steps grew) first makes the student the teacher.
      if teacher_round is not None and teacher_round != (step - 1) // steps_per_round:
        state = trainer.begin_round(state)
        teacher_round = (step - 1) // steps_per_round
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
      if sampler and ((tc.sample_every and step % tc.sample_every == 0) or is_last):
        sampler.write(state.ema_params, step)
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


class GridSampler:
  """Writes a PNG grid of EMA samples (balanced labels if conditional)."""

  def __init__(self, config, trainer: Trainer, workdir: str):
    self.config, self.trainer, self.workdir = config, trainer, workdir
    self._generator = None

  def write(self, params, step: int) -> str:
    spec, n = self.trainer.spec, self.config.sample.grid_size
    if self._generator is None:  # Compiled on first use only.
      self._generator = generate.Generator(
          self.config, spec, self.trainer.model_fn, self.trainer.schedule, batch_size=n)
    labels, ncols = None, None
    if spec.conditioning != "none":  # One row per class.
      ncols = -(-n // spec.num_classes)
      labels = np.repeat(np.arange(spec.num_classes, dtype=np.int32), ncols)[:n]
    images = self._generator(params, n, labels, seed=self.config.seed + 12345)
    path = os.path.join(self.workdir, f"samples_step{step:07d}.png")
    writers.save_image_grid(path, images, ncols=ncols)
    return path
