"""The run directory: its saved config and the checks against it.

A training workdir holds `config.json` (the run's config and the settings
that shape its parameters), `checkpoints/`, metrics and samples. This module
reads and writes `config.json` and refuses a config whose parameter shapes
differ from the saved run's, or a teacher whose settings differ from the
student's, before anything is written.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath

from diffusion_jax.conditioning import DataSpec
from diffusion_jax.errors import ConfigError

__all__ = ["config_to_json", "shape_signature", "spec_from_signature", "saved_spec",
           "load_run_config", "check_teacher_compatible", "check_workdir_compatible",
           "write_config", "TEACHER_SETTINGS"]

# Diffusion settings a student must share with its teacher (besides the network).
TEACHER_SETTINGS = ("process", "schedule", "num_timesteps", "rescale_to_zero_terminal_snr",
                    "prediction", "variance")


def config_to_json(config) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _model_signature(config) -> dict[str, Any]:
  """The model settings that shape the parameters, named as on the CLI."""
  model = json.loads(config_to_json(config.model))
  for name in ("dropout", "dtype", "remat", "attention_impl"):  # No effect on param shapes.
    model.pop(name, None)
  if model.get("name") == "unet":  # Runs saved before networks had names are UNets.
    model.pop("name")
  return {f"model.{k}": v for k, v in model.items()}


def shape_signature(config, spec: DataSpec) -> dict[str, Any]:
  """The config fields that determine parameter shapes (for resume checks)."""
  sig = _model_signature(config)
  sig.update({"task": config.task,
              "data.image_size": spec.image_size, "data.channels": spec.channels,
              "diffusion.variance": config.diffusion.variance,
              "num_classes": spec.num_classes})
  return sig


def spec_from_signature(config, signature) -> DataSpec | None:
  """The DataSpec a run was trained with, from its saved shape signature
  (None for runs saved before the signature held the image shape)."""
  if not signature or "data.image_size" not in signature:
    return None
  kind = config.model.conditioning
  context = ((config.model.context_len, config.model.context_dim)
             if kind == "embedding" else None)
  return DataSpec(signature["data.image_size"], signature["data.channels"],
                  signature.get("num_classes"), kind, context)


def saved_spec(workdir: str, config) -> DataSpec | None:
  """`spec_from_signature` of `workdir`'s config.json (None if there is none)."""
  path = epath.Path(workdir) / "config.json"
  try:
    signature = json.loads(path.read_text()).get("shape_signature")
  except (OSError, json.JSONDecodeError):
    return None
  return spec_from_signature(config, signature)


def load_run_config(workdir: str, setting: str) -> ml_collections.ConfigDict:
  """The config saved in a training workdir (`config.json`); `setting` names
  the option that pointed there, for the error message."""
  path = epath.Path(workdir) / "config.json"
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text())["config"])
  except (OSError, json.JSONDecodeError, KeyError) as e:
    raise ConfigError(f"{setting}={workdir!r} holds no readable training run "
                      f"({type(e).__name__}: {e}); train it first.") from None


def check_teacher_compatible(teacher_config, config, setting: str) -> None:
  """Refuses a teacher that is not a diffusion model with this config's network,
  image size and diffusion settings (the student starts from its weights)."""
  if teacher_config.get("task") != "diffusion":
    raise ConfigError(f"{setting} must hold a task='diffusion' run, got "
                      f"task={teacher_config.get('task')!r}.")

  def settings(c):
    d = json.loads(config_to_json(c.diffusion))
    return (_model_signature(c) | {f"diffusion.{k}": d.get(k) for k in TEACHER_SETTINGS}
            | {"data.image_size": c.data.image_size, "data.channels": c.data.channels})
  theirs, ours = settings(teacher_config), settings(config)
  diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
  if diff:
    raise ConfigError(f"{setting}: the teacher's settings differ from this config's "
                      f"(teacher vs student: {diff}); the student starts from the "
                      "teacher's weights, so they must agree.")


def check_workdir_compatible(workdir: str, config, spec: DataSpec) -> None:
  """Refuses a workdir whose saved config has different parameter shapes."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return
  try:
    saved = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"--workdir={workdir!r}: cannot read {path}: {e}") from None
  old = saved.get("shape_signature")
  new = shape_signature(config, spec)
  # Settings absent from an older signature are not compared.
  diff = {k: (old[k], new[k]) for k in sorted(set(old or {}) & set(new))
          if old[k] != new[k]}
  if diff:
    raise ConfigError(
        f"--workdir={workdir!r} holds a checkpoint of a different model shape "
        f"(saved vs requested: {diff}). Use a new --workdir, or the saved settings.")


def write_config(workdir: str, config, spec: DataSpec) -> None:
  payload = {"config": json.loads(config_to_json(config)),
             "shape_signature": shape_signature(config, spec)}
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  tmp = path / "config.json.tmp"
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
  tmp.replace(path / "config.json")
