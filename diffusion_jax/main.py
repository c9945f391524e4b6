"""Command line: `diffusion-jax --config digits --workdir DIR [--mode=MODE]`
(or `python -m diffusion_jax.main ...`).

Modes (`modes.MODES`): train (the default; resumes from the latest checkpoint
in --workdir), sample, eval, describe, export. `--config` is the name of a
config shipped in the package (`diffusion_jax/configs/`, e.g. `digits`) or
the path of a Python file with `get_config()`; `NAME:arg` passes `arg` to
`get_config`. Any setting can be overridden, e.g. `--config.train.num_steps=500`.
`--help --config digits` lists every setting with its value and meaning.

Every mistake a user can make ends with one `diffusion_jax: error:` line and
exit status 2, before anything in --workdir is written; Ctrl-C / SIGTERM stop
after the current step (training writes a checkpoint first) with status
130 / 143. Bugs keep their traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from diffusion_jax import interrupts
from diffusion_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config name (e.g. digits; see diffusion_jax/configs) or the path "
    "of a Python file with get_config(). With --help, lists every setting.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples "
                    "(local or gs://...).")
flags.DEFINE_string("mode", "train", "What to run: train | sample | eval | describe | export "
                    "(and the other modes of diffusion_jax.modes.MODES).")
flags.DEFINE_string("compilation_cache", os.path.join("~", ".cache", "diffusion_jax", "xla"),
                    "Directory of JAX's persistent compilation cache, so that later runs "
                    "skip compiling; 'none' turns it off. $JAX_COMPILATION_CACHE_DIR, if "
                    "set, wins.")
FLAGS = flags.FLAGS
_HELP_FLAGS = ("--help", "-h", "--helpfull", "--helpshort", "-?")


class UsageError(UserError):
  """A command-line mistake (a missing flag, an unloadable config, a bad override)."""


def _fail(message: str, code: int = 2) -> None:
  print(f"diffusion_jax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _flag_value(argv, name: str) -> tuple[int, str] | None:
  """(position, value) of `--name=value` or `--name value` in argv."""
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      return i, argv[i + 1]
    if arg.startswith(f"--{name}="):
      return i, arg.split("=", 1)[1]
  return None


def config_path(spec: str) -> str:
  """The file of `--config`'s NAME or PATH (without its ":arg")."""
  if os.path.isfile(spec):
    return spec
  from importlib import resources
  name = spec[:-3] if spec.endswith(".py") else spec
  packaged = resources.files("diffusion_jax.configs") / f"{name}.py"
  if name.isidentifier() and packaged.is_file():
    return str(packaged)
  known = sorted(p.name[:-3] for p in resources.files("diffusion_jax.configs").iterdir()
                 if p.name.endswith(".py") and not p.name.startswith("_"))
  raise UsageError(f"--config={spec!r} is neither a file nor a config name; names: {known}.")


def _load(spec: str):
  path, _, arg = spec.partition(":")
  path = config_path(path)
  try:
    module_spec = importlib.util.spec_from_file_location("_dj_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # Any error in the user's config file is reported, not raised.
    raise UsageError(f"--config: cannot load {path!r}: {type(e).__name__}: {e}") from e
  return path, arg, config


def _flat_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for k in config.keys():
    v = config[k]
    keys += (_flat_keys(v, f"{prefix}{k}.") if isinstance(v, config_dict.ConfigDict)
             else [f"{prefix}{k}"])
  return keys


def _check_override(config, key: str, text: str | None) -> None:
  """An override names an existing setting (with a "did you mean") and parses
  as its type (what absl's config_flags would do), else UsageError."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, config_dict.ConfigDict) or part not in node:
      near = difflib.get_close_matches(key, _flat_keys(config), n=3, cutoff=0.6)
      hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else \
          "; --help --config ... lists the settings."
      raise UsageError(f"--config.{key}: there is no setting {key!r}{hint}")
    if i < len(parts) - 1:
      node = node[part]
  if text is None:  # A boolean given as --config.a.b (absl's form).
    return
  field = node.get_ref(parts[-1]) if hasattr(node, "get_ref") else None
  kind = field.get_type() if field is not None else type(node[parts[-1]])
  parser = {float: flags.FloatParser(), bool: flags.BooleanParser(),
            int: flags.IntegerParser()}.get(kind)
  if parser is None:
    return
  try:
    parser.parse(text)
  except (ValueError, TypeError):
    if text.lower() in ("none", "null") and node[parts[-1]] is None:
      return
    raise UsageError(f"--config.{key}={text!r} is not a valid {kind.__name__} (the setting "
                     f"is {node[parts[-1]]!r}).") from None


def _preflight(argv: list[str]) -> list[str]:
  """Loads --config once before absl does, so that a missing or broken file,
  a mistyped setting or a value of the wrong type is one clear message and
  not a traceback. Returns argv with a config name replaced by its path."""
  found = _flag_value(argv, "config")
  if found is None:
    raise UsageError("--config is required, e.g. --config digits (a name in "
                     "diffusion_jax/configs) or --config path/to/config.py.")
  i, spec = found
  path, arg, config = _load(spec)
  for a in argv:
    if a.startswith("--config."):
      key, eq, text = a[len("--config."):].partition("=")
      _check_override(config, key, text if eq else None)
  argv = list(argv)
  resolved = path + (f":{arg}" if arg else "")
  if argv[i].startswith("--config="):
    argv[i] = f"--config={resolved}"
  else:
    argv[i + 1] = resolved
  return argv


def settings_help(spec: str) -> str:
  """Every setting of a config with its value and its meaning (the comments of
  `default_config.py`)."""
  from diffusion_jax.default_config import setting_comments
  _, _, config = _load(spec)
  comments = setting_comments()
  lines = [f"Settings of --config={spec} (override with --config.SECTION.NAME=VALUE):"]
  for key in _flat_keys(config):
    value = config
    for part in key.split("."):
      value = value[part]
    comment = comments.get(key, "")
    lines.append(f"  {key} = {value!r}" + (f"    # {comment}" if comment else ""))
  return "\n".join(lines)


def _compilation_cache(argv: list[str]) -> None:
  """JAX's persistent compilation cache, before anything is compiled."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  found = _flag_value(argv, "compilation_cache")
  where = os.path.expanduser(found[1] if found else FLAGS["compilation_cache"].default)
  if where.lower() in ("", "none", "off"):
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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
  from diffusion_jax import modes
  mode = modes.get_mode(FLAGS.mode)
  if mode.needs_workdir:
    if not FLAGS.workdir:
      raise UsageError(f"--workdir is required for --mode={FLAGS.mode}.")
    from etils import epath
    path = epath.Path(FLAGS.workdir)
    if path.exists() and not path.is_dir():
      raise UsageError(f"--workdir={FLAGS.workdir!r} is a file; give a directory (it is "
                       "created if missing).")
  mode.run(config, FLAGS.workdir)


def run() -> None:
  """The console script."""
  argv = sys.argv
  try:
    interrupts.install()
    if any(a in _HELP_FLAGS for a in argv):
      found = _flag_value(argv, "config")
      if found is not None:
        print(settings_help(found[1]) + "\n")
      FLAGS.mark_as_parsed()
      app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
    argv = _preflight(argv)
    _compilation_cache(argv)
    app.run(main, argv=argv)
  except interrupts.Interrupted as e:  # Not an error: one line, status 128 + signal.
    print(f"diffusion_jax: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except UserError as e:  # Config and input errors: one message, exit 2. Bugs keep
    _fail(str(e))         # their traceback.


if __name__ == "__main__":
  run()
