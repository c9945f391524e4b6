"""Helpers for tests/test_train.py and tests/test_cli.py: a tiny digits config,
CLI runs in subprocesses, and reading the orbax checkpoints back.

Subprocesses get a fixed environment (`env`):
  * JAX_PLATFORMS=cpu and an explicit host device count (1 or 8);
  * XLA_FLAGS=--xla_backend_optimization_level=0: on a busy 2-core CPU the
    tiny UNet's init and train step take ~25 s to compile at the default
    level and ~12 s at 0 (the arithmetic is IEEE either way, and every
    comparison in these tests is between runs with the same flags);
  * a persistent compilation cache shared by the whole test session, so that
    each program (train step, init, sampler, ...) is compiled once and the
    later runs of the same config only load it.
In-process helpers (`make_config`, `restore`) compile nothing: they build the
config, trace shapes with `jax.eval_shape` and read checkpoints.

Run as a script, in a subprocess with the environment above (so that the
train step's compilation is shared with the other runs):
  python tests/_tiny.py nan-step DATA_DIR   one train step on a batch with a NaN;
  python tests/_tiny.py nan-cli K FLAGS...  the CLI, with NaN images from batch K on
                                            (prints the number of batches drawn);
  python tests/_tiny.py bug-cli FLAGS...    the CLI, with a deliberate bug in the loss.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.py"

# A UNet of 10,593 parameters, T = 10, 5 sampling steps, 16 test images for eval.
TINY = {
    "model.ch": 8,
    "model.ch_mult": (1,),
    "model.num_res_blocks": 1,
    "model.attn_resolutions": (),
    "model.num_groups": 4,
    "diffusion.num_timesteps": 10,
    "train.batch_size": 16,
    "train.warmup_steps": 0,  # Full learning rate from the first step.
    "train.eval_every": 0,    # No sample metrics during training.
    "sample.num_steps": 5,
    "sample.num_samples": 8,
    "sample.batch_size": 8,
    "sample.grid_size": 8,
    "eval.max_examples": 16,
    "eval.batch_size": 16,
}


# ----------------------------------------------------------------------------
# Session directories.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _session_dirs(basetemp: str) -> tuple[str, str]:
  data_dir = os.path.join(basetemp, "tfds")
  cache_dir = os.path.join(basetemp, "jax_cache")
  os.makedirs(cache_dir, exist_ok=True)
  from diffusion_jax.data import sources  # Builds digits offline (~2 s).
  for split in ("train", "test"):
    sources.get_source(dict(dataset="digits", data_dir=data_dir, image_size=8, channels=1), split)
  return data_dir, cache_dir


def session_dirs(tmp_path_factory) -> tuple[str, str]:
  """(tfds data dir with digits prepared, persistent compilation cache dir),
  the same for every test of the session."""
  return _session_dirs(str(tmp_path_factory.getbasetemp()))


# ----------------------------------------------------------------------------
# Configs and command lines.
# ----------------------------------------------------------------------------


def settings(data_dir: str, overrides: dict | None = None) -> dict:
  return {**TINY, "data.data_dir": data_dir, **(overrides or {})}


def load_config_file(path=DIGITS):
  """`get_config()` of a config file, imported by path (no absl involved)."""
  spec = importlib.util.spec_from_file_location(f"_cfg_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def make_config(data_dir: str, overrides: dict | None = None, path=DIGITS):
  """The config a CLI run with `cli_args(..., overrides)` uses."""
  config = load_config_file(path)
  for key, value in settings(data_dir, overrides).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _flag_value(value) -> str:
  return value if isinstance(value, str) else repr(value)


def main_flags(workdir: str | None, data_dir: str, overrides: dict | None = None, *,
               mode: str = "train", config: str = "configs/digits.py") -> list[str]:
  """The flags of diffusion_jax.main for the tiny config plus `overrides`."""
  flags = [f"--config={config}", f"--mode={mode}"]
  if workdir is not None:
    flags.append(f"--workdir={workdir}")
  return flags + [f"--config.{k}={_flag_value(v)}"
                  for k, v in settings(data_dir, overrides).items()]


def cli_args(*args, **kwargs) -> list[str]:
  """`python -m diffusion_jax.main` with `main_flags(*args, **kwargs)`."""
  return [sys.executable, "-m", "diffusion_jax.main", *main_flags(*args, **kwargs)]


def env(cache_dir: str, devices: int = 1) -> dict:
  out = dict(os.environ)
  out.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": ("--xla_backend_optimization_level=0 "
                    f"--xla_force_host_platform_device_count={devices}"),
      "JAX_COMPILATION_CACHE_DIR": cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "PYTHONUNBUFFERED": "1",
  })
  return out


def popen(args, environ, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(args, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def run(args, environ, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(args, cwd=ROOT, env=environ, capture_output=True,
                        text=True, timeout=timeout)


def wait_all(procs, timeout: float = 600) -> list[subprocess.CompletedProcess]:
  """Waits for every `popen` process (killing the rest if one times out)."""
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out)
            for p, out in zip(procs, outputs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def run_all_ok(jobs) -> list[subprocess.CompletedProcess]:
  """Runs (args, env) jobs side by side; checks that each succeeded."""
  done = wait_all([popen(args, environ) for args, environ in jobs])
  for d in done:
    check_ok(d)
  return done


def check_ok(proc) -> None:
  assert proc.returncode == 0, (
      f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
      f"--- stderr\n{proc.stderr[-6000:]}")


# ----------------------------------------------------------------------------
# Checkpoints and files.
# ----------------------------------------------------------------------------


def checkpoint_steps(workdir) -> list[int]:
  """Finished checkpoint steps (orbax renames a step's temporary directory to
  the bare step number when the save is complete)."""
  path = Path(workdir) / "checkpoints"
  if not path.is_dir():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def restore(config, workdir, step: int | None = None):
  """(TrainState as numpy arrays, data iterator state bytes, step) of a
  checkpoint, restored onto this process' devices."""
  import jax
  from diffusion_jax import configuration, conditioning, models, tasks, workdir as workdir_lib, train
  from diffusion_jax.checkpoint import Checkpointer
  spec = configuration.validate_config(config)
  trainer = train.Trainer(config, spec)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    state, data_state, step = ckpt.restore(trainer.abstract_state(), step)
  finally:
    ckpt.close()
  return jax.tree_util.tree_map(np.asarray, state), data_state, step


def _leaves(tree):
  import jax
  return jax.tree_util.tree_leaves_with_path(tree)


def assert_trees_equal(a, b) -> None:
  """Same structure and bitwise-equal leaves."""
  import jax
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), (_, y) in zip(_leaves(a), _leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), (
        f"{jax.tree_util.keystr(path)} differs: max |a-b| = "
        f"{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))}")


def assert_trees_close(a, b, *, rtol: float, atol: float) -> None:
  import jax
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), (_, y) in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def snapshot(path) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime_ns)} of every file and directory under path."""
  root = Path(path)
  return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in [root, *root.rglob("*")]}


def mesh_sizes(workdir, step: int) -> set[int]:
  """Device-mesh sizes recorded in a checkpoint's sharding metadata."""
  path = Path(workdir) / "checkpoints" / str(step) / "state" / "_sharding"
  return {int(np.prod(v["shape"])) for v in map(json.loads, json.load(open(path)).values())}


# ----------------------------------------------------------------------------
# Script: one train step on a batch with a NaN.
# ----------------------------------------------------------------------------


def _nan_step(data_dir: str) -> None:
  import jax
  from diffusion_jax import configuration, train

  config = make_config(data_dir)
  trainer = train.Trainer(config, configuration.validate_config(config))
  it = iter(train.make_train_loader(config))
  good = next(it)
  bad = {**good, "image": good["image"].copy()}
  bad["image"][3, 2, 1, 0] = np.nan
  host = lambda s: jax.tree_util.tree_map(np.asarray, s)

  state = trainer.init_state()
  before = host(state)
  state, metrics = trainer.train_step(state, trainer.global_batch(bad))  # Donates.
  after = host(state)
  assert not np.isfinite(float(metrics["loss"]))
  assert int(metrics["skipped"]) == 1
  assert_trees_equal((after.params, after.ema_params, after.opt_state, after.rng),
                     (before.params, before.ema_params, before.opt_state, before.rng))
  assert (int(after.step), int(after.nonfinite_streak), int(after.nonfinite_total)) == (1, 1, 1)

  state, metrics = trainer.train_step(state, trainer.global_batch(bad))
  assert (int(state.step), int(state.nonfinite_streak), int(state.nonfinite_total)) == (2, 2, 2)
  assert int(metrics["nonfinite_streak"]) == 2

  state, metrics = trainer.train_step(state, trainer.global_batch(good))
  final = host(state)
  assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
  assert (int(final.step), int(final.nonfinite_streak), int(final.nonfinite_total)) == (3, 0, 2)
  changed = [not np.array_equal(x, y) for x, y in zip(
      jax.tree_util.tree_leaves(final.params), jax.tree_util.tree_leaves(before.params))]
  assert any(changed), "a finite step after skipped ones must update the params"
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(final))
  print("nan-step OK")


class _NaNFrom:
  """A train loader whose batches are all-NaN images from batch `first` on
  (1-based); its iterators keep grain's get_state/set_state."""

  def __init__(self, loader, first: int):
    self.loader, self.first, self.iterators = loader, first, []

  def __iter__(self):
    self.iterators.append(_NaNIterator(iter(self.loader), self.first))
    return self.iterators[-1]


class _NaNIterator:

  def __init__(self, iterator, first: int):
    self.iterator, self.first, self.count = iterator, first, 0

  def __next__(self):
    batch = next(self.iterator)
    self.count += 1
    if self.count >= self.first:
      batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
    return batch

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def _nan_cli(first_bad: str, *argv: str) -> None:
  """`python -m diffusion_jax.main ARGV` with data that turns to NaN at batch
  `first_bad` (the same train step program as the other tiny runs, so nothing
  new is compiled)."""
  from diffusion_jax import main, train
  make = train.make_train_loader
  loaders = []
  def make_nan(*args, **kwargs):
    loaders.append(_NaNFrom(make(*args, **kwargs), int(first_bad)))
    return loaders[-1]
  train.make_train_loader = make_nan
  sys.argv = ["diffusion_jax.main", *argv]
  try:
    main.run()
  finally:
    print("batches drawn:", sum(it.count for loader in loaders for it in loader.iterators))


def _bug_cli(*argv: str) -> None:
  """`python -m diffusion_jax.main ARGV` with a deliberate bug in the diffusion
  task's loss: a ValueError that is not a user error must keep its traceback."""
  from diffusion_jax import main, tasks

  def buggy_loss(*args, **kwargs):
    raise ValueError("deliberate bug in the loss")
  tasks.TASKS["diffusion"] = tasks.TASKS["diffusion"]._replace(loss=buggy_loss)
  sys.argv = ["diffusion_jax.main", *argv]
  main.run()


if __name__ == "__main__":
  command, *rest = sys.argv[1:]
  {"nan-step": _nan_step, "nan-cli": _nan_cli, "bug-cli": _bug_cli}[command](*rest)
