"""Command line: python -m diffusion_jax.main --config configs/digits.py --workdir DIR

Modes: train (default; resumes from the latest checkpoint in --workdir),
sample, eval, describe. Any config field can be overridden, e.g.
--config.train.num_steps=500. A config error ends with one message naming
the setting and a non-zero exit, before anything in --workdir is written.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax.errors import UserError

MODES = ("train", "sample", "eval", "describe")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (a Python file with get_config()).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", MODES, "What to run.")
FLAGS = flags.FLAGS


class UsageError(UserError):
  """A command-line mistake (a missing flag, an unloadable config file)."""


def _fail(message: str) -> None:
  print(f"diffusion_jax: error: {message}", file=sys.stderr)
  sys.exit(2)


def _flag_value(argv, name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return None


def _preflight(argv) -> None:
  """Loads --config once before absl does, so that a missing or broken file,
  or an override of an unknown field, is one clear message and not a traceback."""
  spec = _flag_value(argv, "config")
  if spec is None:
    raise UsageError("--config is required, e.g. --config configs/digits.py.")
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config: no such file {path!r}.")
  try:
    module_spec = importlib.util.spec_from_file_location("_dj_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # Any error in user code is reported, not raised.
    raise UsageError(f"--config: cannot load {path!r}: {type(e).__name__}: {e}") from e
  for a in argv:
    if a.startswith("--config."):
      key = a[len("--config."):].split("=", 1)[0]
      node = config
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
          raise UsageError(f"--config.{key}: {path!r} has no setting {key!r}.")
        node = node[part]


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  dist = config.distributed
  if dist.initialize or any(dist[k] is not None for k in (
      "coordinator_address", "num_processes", "process_id")):
    from diffusion_jax import mesh
    mesh.initialize_distributed(
        coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
        process_id=dist.process_id, heartbeat_timeout=dist.heartbeat_timeout)
  logging.set_verbosity(logging.ERROR)  # tfds warns about optional OpenCV on every read.
  from diffusion_jax import modes, train
  if FLAGS.mode == "describe":
    modes.describe(config)
    return
  if not FLAGS.workdir:
    raise UsageError(f"--workdir is required for --mode={FLAGS.mode}.")
  if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    raise UsageError(f"--workdir={FLAGS.workdir!r} is a file; give a directory (it is "
                     "created if missing).")
  if FLAGS.mode == "train":
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    modes.sample(config, FLAGS.workdir)
  else:
    modes.evaluate(config, FLAGS.workdir)


def run() -> None:
  try:
    _preflight(sys.argv)
    app.run(main)
  except UserError as e:  # Config and input errors: one message, exit 2. Bugs keep
    _fail(str(e))         # their traceback.


if __name__ == "__main__":
  run()
