"""The command line as a user lives with it: interrupts, help, progress and
summaries, outputs and checkpoint choice, weights in and out.

Subprocess runs of `python -m diffusion_jax.main` with the tiny config of
tests/_tiny.py (see there for their environment).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import _tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return _tiny.session_dirs(tmp_path_factory)


def _wait_for(proc, predicate, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.1)
  return False


def _line_reader(proc):
  """Collects the process's stdout lines in a background thread."""
  import threading
  lines = []
  def read():
    for line in proc.stdout:
      lines.append(line)
  threading.Thread(target=read, daemon=True).start()
  return lines


@pytest.mark.parametrize("signum,when", [(signal.SIGINT, "compiling"),
                                         (signal.SIGINT, "training"),
                                         (signal.SIGTERM, "training")])
def test_a_signal_stops_after_a_step_with_a_checkpoint(dirs, tmp_path, signum, when):
  """Ctrl-C / SIGTERM: the current step finishes, a checkpoint is written, one
  line says how to resume, status 128 + signal; no segfault or traceback,
  even during XLA's compilation (a fresh cache, so the step really compiles).
  Re-running resumes, and metrics.jsonl holds every step once."""
  data_dir, _ = dirs
  workdir = tmp_path / "run"
  env = _tiny.env(str(tmp_path / "fresh_cache"))
  overrides = {"train.num_steps": 100000, "train.log_every": 1, "train.checkpoint_every": 1000}
  proc = subprocess.Popen(_tiny.cli_args(str(workdir), data_dir, overrides), cwd=_tiny.ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = _line_reader(proc)
  try:
    if when == "compiling":
      assert _wait_for(proc, lambda: any("Compiling the train step" in l for l in lines)), lines
    else:
      assert _wait_for(proc, lambda: (workdir / "metrics.jsonl").exists()
                       and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 3)
    proc.send_signal(signum)
    proc.wait(timeout=240)
  finally:
    if proc.poll() is None:
      proc.kill()
  err = proc.stderr.read()
  assert proc.returncode == 128 + signum, err[-3000:]
  assert "Traceback" not in err and "Segmentation fault" not in err, err[-3000:]
  stops = [l for l in err.splitlines() if l.startswith("diffusion_jax: interrupted at step")]
  assert len(stops) == 1 and "re-run the same command to resume" in stops[0], err[-3000:]
  step = int(stops[0].split("at step ")[1].split(";")[0])
  assert _tiny.checkpoint_steps(workdir) == [step]
  if when == "compiling":
    assert step == 1
  # Resume to step + 2: each step appears once in metrics.jsonl.
  resumed = _tiny.run(_tiny.cli_args(str(workdir), data_dir,
                                     overrides | {"train.num_steps": step + 2}), env)
  _tiny.check_ok(resumed)
  rows = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows == list(range(1, step + 3)), rows


def test_help_without_and_with_a_config(dirs):
  plain = _tiny.run([sys.executable, "-m", "diffusion_jax.main", "--help"], _tiny.env(dirs[1]))
  assert plain.returncode == 0, plain.stderr[-2000:]
  assert "--config" in plain.stdout + plain.stderr
  listed = _tiny.run([sys.executable, "-m", "diffusion_jax.main", "--help", "--config=digits"],
                     _tiny.env(dirs[1]))
  assert listed.returncode == 0, listed.stderr[-2000:]
  assert "train.num_steps = 2000" in listed.stdout
  assert "sample.sampler = 'ddim'    # a name in `samplers.SAMPLERS`" in listed.stdout


def test_progress_summaries_outputs_and_weights(dirs, tmp_path):
  """Compile message, per-step bar, end summaries; sample.checkpoint_step and
  sample.output; eval.checkpoint_step; export, and `diffusion_jax.load` of the
  workdir and of the exported file sample like the workdir; a run whose
  checkpoint is at train.num_steps has nothing to do and touches nothing."""
  data_dir, cache_dir = dirs
  env = _tiny.env(cache_dir)
  wd = tmp_path / "run"
  base = {"train.num_steps": 3, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}
  train = _tiny.run(_tiny.cli_args(str(wd), data_dir, base), env)
  _tiny.check_ok(train)
  assert "Compiling the train step...\nCompiled the train step in" in train.stdout
  assert "Trained steps 1..3" in train.stdout and "checkpoints/3" in train.stdout
  assert "3/3" in train.stderr  # the bar reached the last step

  before = _tiny.snapshot(wd)
  again = _tiny.run(_tiny.cli_args(str(wd), data_dir, base), env)
  _tiny.check_ok(again)
  assert "Nothing to do" in again.stdout and _tiny.snapshot(wd) == before

  sample = _tiny.run(_tiny.cli_args(str(wd), data_dir, base | {
      "sample.checkpoint_step": 2, "sample.output": "out/at2.npz"}, mode="sample"), env)
  _tiny.check_ok(sample)
  assert (wd / "out" / "at2.npz").exists() and (wd / "out" / "at2.png").exists()
  assert "from the step-2 EMA params" in sample.stdout
  latest = _tiny.run(_tiny.cli_args(str(wd), data_dir, base, mode="sample"), env)
  _tiny.check_ok(latest)
  with np.load(wd / "out" / "at2.npz") as a, np.load(wd / "samples.npz") as b:
    assert a["images"].shape == b["images"].shape and not np.array_equal(a["images"],
                                                                         b["images"])

  evaluate = _tiny.run(_tiny.cli_args(str(wd), data_dir, base | {"eval.checkpoint_step": 2},
                                      mode="eval"), env)
  _tiny.check_ok(evaluate)
  assert json.loads((wd / "eval.json").read_text())["step"] == 2
  assert "wrote" in evaluate.stdout and "eval.json" in evaluate.stdout

  for output in ("export/params.safetensors", "export/params.npz"):
    export = _tiny.run(_tiny.cli_args(str(wd), data_dir, base | {"export.output": output},
                                      mode="export"), env)
    _tiny.check_ok(export)
    assert (wd / output).exists() and (wd / output).with_suffix(".json").exists()

  import jax
  import diffusion_jax as dj
  want = np.asarray(dj.load(str(wd)).params["conv_out"]["kernel"])
  for output in ("export/params.safetensors", "export/params.npz"):
    model = dj.load(str(wd / output))
    np.testing.assert_array_equal(np.asarray(model.params["conv_out"]["kernel"]), want)
    assert model.shape == (8, 8, 1) and model.prediction == "eps"
    f = dj.make_sample_fn(model.model_fn, model.schedule, shape=(2, 8, 8, 1), num_steps=3)
    g = dj.make_sample_fn(dj.load(str(wd)).model_fn, model.schedule, shape=(2, 8, 8, 1),
                          num_steps=3)
    np.testing.assert_allclose(f(model.params, jax.random.key(0)),
                               g(dj.load(str(wd)).params, jax.random.key(0)), atol=1e-6)


def test_nonfinite_stop_without_a_checkpoint_says_so(dirs, tmp_path):
  """NaN data from the first batch: the run stops saying no checkpoint was
  written, and metrics.jsonl holds the failing step's row."""
  data_dir, cache_dir = dirs
  workdir = tmp_path / "run"
  settings = {"train.num_steps": 10, "train.max_nonfinite_steps": 2, "train.log_every": 5,
              "train.checkpoint_every": 5}
  proc = _tiny.run([sys.executable, str(_tiny.ROOT / "tests" / "_tiny.py"), "nan-cli", "1",
                    *_tiny.main_flags(str(workdir), data_dir, settings)], _tiny.env(cache_dir))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "no checkpoint was written" in proc.stderr, proc.stderr[-2000:]
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  assert rows and json.loads(rows[-1])["nonfinite_streak"] >= 2
  assert _tiny.checkpoint_steps(workdir) == []
