"""The task protocol: what a training task contributes, as a small object.

A task (big_vision's task modules, in the style of an optax NamedTuple) is
chosen by `config.task` from the one registry in `tasks/__init__.py`. The
trainer, the sampler and the CLI modes call its fields and never branch on
its name:

  * `validate(config, spec)`: the task's own settings (ConfigError);
  * `model(config, spec)`: the network it trains;
  * `loss(params, state, batch, rng, *, model, schedule, config, spec)`:
    `(mean loss, metrics)` on a global batch;
  * `init_frozen(config, params)` / `update_frozen(config, frozen, params,
    step)`: parameters the optimizer does not touch (a teacher, a target
    network) and how they follow the trained ones after each update;
  * `step_hook(config, optimizer)`: a `StepHook` run before some steps (a
    round of progressive distillation), or None;
  * `sampling`: how it samples (`Sampling`), None if it does not generate;
  * `evaluate(config, spec, net, schedule, params, batches, rng)`: its
    `--mode=eval` result and a one-line summary, or None;
  * `teacher_setting(config)`: the config path of its teacher workdir, or None.

A task module imports only lower layers (the data spec, the models, the
library); adding a task is one module plus one registry line.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax import sampling, schedules
from diffusion_jax._checks import config_errors
from diffusion_jax.conditioning import CONDITIONINGS, DataSpec, model_inputs
from diffusion_jax.errors import ConfigError
from diffusion_jax.samplers import SAMPLERS

__all__ = ["Task", "Sampling", "StepHook", "example_keys", "normal", "randint",
           "training_model", "frozen_model",
           "default_grid", "diffusion_prediction", "sampler_eta", "sampler_options",
           "SAMPLER_SETTINGS", "validate_sampling", "require_discrete"]


class StepHook(NamedTuple):
  """A pure state -> state function run before steps 1, 1 + every, 1 + 2 every, ...
  (the trainer jits it, donating the state)."""
  every: int
  fn: Callable[[Any], Any]


class Sampling(NamedTuple):
  """How a generative task samples with `make_sample_fn`."""
  # (config, model_fn, schedule) -> the model_fn the sampler calls.
  model_fn: Callable
  # config -> the time-grid keywords of make_sample_fn (num_steps/spacing or timesteps).
  grid: Callable
  # config -> what the wrapped model_fn predicts ("eps" | "x0" | "v").
  prediction: Callable


class Task(NamedTuple):
  name: str
  validate: Callable[[Any, DataSpec], None]
  model: Callable[[Any, DataSpec], nn.Module]
  loss: Callable
  needs_labels: bool = False
  init_frozen: Optional[Callable] = None
  update_frozen: Optional[Callable] = None
  step_hook: Optional[Callable] = None
  sampling: Optional[Sampling] = None
  evaluate: Optional[Callable] = None
  teacher_setting: Callable[[Any], Optional[str]] = lambda config: None


def example_keys(rng, batch, num: int):
  """`num` keys per example, [B] each, from the example's position in the
  global batch (`batch["index"]`, added by the train step; default 0..B-1):
  an example draws the same numbers whether it is trained in the whole batch
  or in a micro-batch (gradient accumulation)."""
  size = jax.tree_util.tree_leaves(batch)[0].shape[0]
  index = batch["index"] if "index" in batch else jnp.arange(size, dtype=jnp.int32)
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i), num))(index)
  return [keys[:, j] for j in range(num)]


def normal(keys, like):
  """ε ~ N(0, I) of `like`'s shape [B, ...], one draw per example key."""
  return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(keys)


def randint(keys, high):
  """int32 [B], example b uniform in {0, ..., high - 1} (`high` may be traced)."""
  return jax.vmap(lambda k: jax.random.randint(k, (), 0, high, dtype=jnp.int32))(keys)


def training_model(model: nn.Module, params, cond, rng):
  """The network in training mode as `denoiser(x_t, t) -> output` (dropout from rng)."""
  return lambda x_t, t: model.apply({"params": params}, x_t, t, **model_inputs(cond),
                                    train=True, rngs={"dropout": rng})


def frozen_model(model: nn.Module, params, cond):
  """A frozen network (teacher or target) as `denoiser(x_t, t)`: no dropout."""
  return lambda x_t, t: model.apply({"params": params}, x_t, t, **model_inputs(cond),
                                    train=False)


def default_grid(config) -> dict:
  """The sampler's time grid of `config.sample` (num_steps, spacing)."""
  return {"num_steps": config.sample.num_steps, "spacing": config.sample.spacing}


def diffusion_prediction(config) -> str:
  return config.diffusion.prediction


def validate_sampling(config, spec: DataSpec, schedule, task_sampling: Sampling) -> None:
  """Builds the config's sampler (`sampling.build_sampler`) on the task's grid,
  re-raising its errors as ConfigErrors naming the `sample.*` setting."""
  s, d = config.sample, config.diffusion
  if s.labels is not None and spec.conditioning == "none" and not s.classifier_workdir:
    raise ConfigError(f"sample.labels={s.labels!r} needs a class-conditional model "
                      f"(model.conditioning in {[c for c in CONDITIONINGS if c != 'none']}) "
                      "or classifier guidance (sample.classifier_workdir); this model is "
                      "unconditional.")
  if sampler_options(config).get("s_churn", 0.0) > 0.0 and d.process == "discrete":
    raise ConfigError(f"sample.s_churn={s.s_churn!r} evaluates the model off the sampling grid, "
                      "which needs a continuous-time diffusion.process (one of "
                      f"{sorted(schedules.PROCESSES)}); diffusion.process='discrete' allows "
                      "only sample.s_churn=0.")
  grid = task_sampling.grid(config)
  with config_errors(config, variance="diffusion.variance",
                     prediction="diffusion.prediction", **SAMPLER_SETTINGS):
    sampling.build_sampler(
        schedule, sampler=s.sampler, eta=sampler_eta(config),
        prediction=task_sampling.prediction(config), variance=d.variance,
        clip_x0=s.clip_x0, sampler_options=sampler_options(config), **grid)


def require_discrete(config, why: str) -> None:
  """Refuses a continuous diffusion.process for a task built on the discrete
  schedule (one ConfigError naming the settings)."""
  d = config.diffusion
  if d.process != "discrete" or d.preconditioning != "none":
    raise ConfigError(f"task={config.task!r} {why}, so it needs diffusion.process='discrete' "
                      f"and diffusion.preconditioning='none' (got diffusion.process="
                      f"{d.process!r}, diffusion.preconditioning={d.preconditioning!r}).")


def sampler_options(config) -> dict:
  """The sampler's keyword options set in `config.sample` besides η (EDM's
  churn: s_churn, s_min, s_max, s_noise); unset (None) ones keep the
  sampler's defaults, and samplers without them get none."""
  info = SAMPLERS.get(config.sample.sampler)
  if info is None:
    return {}
  return {o: config.sample[o] for o in info.options
          if o != "eta" and o in config.sample and config.sample[o] is not None}


# Config paths of the sampler's arguments, for ConfigErrors.
SAMPLER_SETTINGS = dict(sampler="sample.sampler", num_steps="sample.num_steps",
                        spacing="sample.spacing", eta="sample.eta", clip_x0="sample.clip_x0",
                        timesteps="sample.num_steps", s_churn="sample.s_churn",
                        s_min="sample.s_min", s_max="sample.s_max", s_noise="sample.s_noise")


def sampler_eta(config) -> float:
  """`sample.eta` is DDIM's η: the samplers without an η option ignore it."""
  info = SAMPLERS.get(config.sample.sampler)
  return config.sample.eta if info is not None and info.takes_eta else 0.0
