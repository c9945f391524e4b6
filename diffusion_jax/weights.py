"""Weights in and out: export a run's EMA params, and load any trained model.

    import diffusion_jax as dj
    model = dj.load("runs/digits")                  # a training workdir (latest EMA params)
    model = dj.load("runs/digits/export/params.safetensors")   # an exported file
    model = dj.load("ddpm-cifar10-32")              # a diffusers UNet2DModel folder
    sample_fn = dj.make_sample_fn(model.model_fn, model.schedule, shape=(16, *model.shape),
                                  sampler="ddim", num_steps=50,
                                  prediction=model.prediction, clip_x0=1.0)
    x0 = sample_fn(model.params, jax.random.key(0))

An export (`--mode=export`, or `save`) is the params as `.safetensors` or
`.npz` (keys: the parameter paths joined with "/"), with `<name>.json` beside
it holding the run's config and the settings that shape the params, so it
loads without the training workdir or its data.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
from etils import epath

from diffusion_jax import configuration, models, tasks, workdir as workdir_lib
from diffusion_jax.conditioning import DataSpec
from diffusion_jax.errors import ConfigError
from diffusion_jax.schedules import Schedule, get_schedule

__all__ = ["Loaded", "load", "save", "config_path", "flatten", "unflatten"]

FORMATS = (".safetensors", ".npz")


class Loaded(NamedTuple):
  """A trained model, ready for `make_sample_fn(model_fn, schedule, ...)`."""
  model_fn: Callable          # model_fn(params, x_t, t, cond) -> output
  params: Any                 # plain pytree of arrays
  schedule: Schedule          # the training schedule
  prediction: str             # what model_fn predicts ("eps" | "x0" | "v" | ...)
  shape: tuple[int, int, int]  # (H, W, C) of one sample
  config: Any                 # the run's ConfigDict (None for a diffusers folder)


def flatten(params) -> dict[str, np.ndarray]:
  """{"a/b/c": array} of a nested dict of arrays."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    out["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def config_path(path) -> epath.Path:
  """The config file beside an export: `<name>.json`."""
  path = epath.Path(path)
  return path.parent / (path.stem + ".json")


def save(path, params, config, spec: Optional[DataSpec] = None) -> str:
  """Writes `params` to `path` (.safetensors or .npz) and the run's config beside it."""
  path = epath.Path(path)
  if path.suffix not in FORMATS:
    raise ConfigError(f"export.output={str(path)!r} must end in one of {list(FORMATS)}.")
  flat = flatten(params)
  buf = io.BytesIO()
  if path.suffix == ".npz":
    np.savez(buf, **flat)
    data = buf.getvalue()
  else:
    from safetensors.numpy import save as st_save
    data = st_save({k: np.ascontiguousarray(v) for k, v in flat.items()})
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  payload = {"config": json.loads(workdir_lib.config_to_json(config))}
  if spec is not None:
    payload["shape_signature"] = workdir_lib.shape_signature(config, spec)
  config_path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))
  return str(path)


def _read(path: epath.Path) -> dict[str, np.ndarray]:
  data = path.read_bytes()
  if path.suffix == ".npz":
    with np.load(io.BytesIO(data)) as f:
      return {k: f[k] for k in f.files}
  from safetensors.numpy import load as st_load
  return st_load(data)


def load(path, *, step: Optional[int] = None) -> Loaded:
  """A trained model from a training workdir (its step-`step` EMA params,
  default the latest), an exported file (`save`, `--mode=export`), or a
  diffusers `UNet2DModel` folder (google/ddpm-*; `models/convert_diffusers.py`)."""
  p = epath.Path(path)
  if p.is_dir() and (p / "checkpoints").exists():
    from diffusion_jax import runs
    run = runs.load_run(str(p), step=step)
    return _loaded(run.config, run.spec, run.model_fn, run.params, run.schedule)
  if p.is_dir():
    return _load_diffusers(p)
  if p.suffix in FORMATS and p.exists():
    return _load_export(p)
  raise ConfigError(f"{str(path)!r} is neither a training workdir (with checkpoints/), an "
                    f"exported {'/'.join(FORMATS)} file nor a diffusers UNet2DModel folder.")


def _load_export(path: epath.Path) -> Loaded:
  meta = config_path(path)
  if not meta.exists():
    raise ConfigError(f"{str(path)!r} has no {meta.name} beside it (written by --mode=export).")
  from diffusion_jax import runs
  payload = json.loads(meta.read_text())
  config = runs.merged_config(payload["config"])
  spec = workdir_lib.spec_from_signature(config, payload.get("shape_signature"))
  if spec is None:
    spec = configuration.validate_config(config)
  task = tasks.get_task(config.task)
  net = task.model(config, spec)
  flat = _read(path)
  params = jax.tree_util.tree_map(np.asarray, unflatten(flat))
  want = models.init_params  # shapes are checked against the network's
  shapes = jax.eval_shape(lambda: want(net, spec, jax.random.key(0)))
  if jax.tree_util.tree_structure(shapes) != jax.tree_util.tree_structure(params) or any(
      a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes),
                                         jax.tree_util.tree_leaves(params))):
    raise ConfigError(f"{str(path)!r} does not hold the parameters of the network its "
                      f"{meta.name} describes.")
  return _loaded(config, spec, models.make_model_fn(net), params,
                 configuration.build_schedule(config))


def _loaded(config, spec, model_fn, params, schedule) -> Loaded:
  """The network wrapped as its task samples it (`Sampling.model_fn`: EDM's
  preconditioning, a consistency model's f), without guidance."""
  sampling = tasks.get_task(config.task).sampling
  return Loaded(sampling.model_fn(config, model_fn, schedule), params, schedule,
                sampling.prediction(config), (spec.image_size, spec.image_size, spec.channels),
                config)


def _load_diffusers(folder: epath.Path) -> Loaded:
  from diffusion_jax.models import convert_diffusers, unet
  try:
    kwargs, params = convert_diffusers.load_diffusers_unet(str(folder))
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"{str(folder)!r}: {e}") from None
  net = unet.UNet(**kwargs)
  schedule = get_schedule("linear", 1000)
  scheduler = folder / "scheduler" / "scheduler_config.json"
  if scheduler.exists():  # DDPMScheduler: linear betas, T steps (google/ddpm-*).
    cfg = json.loads(scheduler.read_text())
    if cfg.get("beta_schedule", "linear") != "linear" or (
        cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)) != (1e-4, 0.02):
      raise ConfigError(f"{str(scheduler)!r}: only the linear 1e-4..0.02 beta schedule of "
                        "the google/ddpm models is supported.")
    schedule = get_schedule("linear", int(cfg.get("num_train_timesteps", 1000)))
  model_fn = lambda params, x_t, t, cond=None: net.apply({"params": params}, x_t, t, train=False)
  unet_dir = folder if (folder / "config.json").exists() else folder / "unet"
  size = json.loads((unet_dir / "config.json").read_text()).get("sample_size", 32)
  size = size[0] if isinstance(size, (list, tuple)) else size
  channels = kwargs.get("out_channels") or 3
  return Loaded(model_fn, params, schedule, "eps", (size, size, channels), None)
