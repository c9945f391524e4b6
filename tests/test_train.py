"""Training end to end (issue "Training end to end"): configs, parameter count,
resume after SIGKILL (bitwise), 8 host devices vs 1, checkpoints moving between
device counts, and non-finite steps.

The runs are CLI subprocesses with the tiny config of tests/_tiny.py (whose
docstring describes their environment); checkpoints are read back in this
process with `Checkpointer.restore(Trainer.abstract_state())`, which compiles
nothing.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

import _tiny
from diffusion_jax import configuration, conditioning, models, tasks, workdir as workdir_lib, train


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return _tiny.session_dirs(tmp_path_factory)


# ----------------------------------------------------------------------------
# Configs (no compilation, no subprocess).
# ----------------------------------------------------------------------------


def test_configs_build_without_absl(dirs):
  """The config files are plain Python: get_config() needs no flag parsing,
  and a changed field is what validation and the model see."""
  data_dir, _ = dirs
  config = _tiny.load_config_file(_tiny.ROOT / "configs" / "digits.py")
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.data.dataset == "digits" and config.sample.num_steps == 100
  config.data.data_dir = data_dir
  config.train.num_steps = 7
  config.model.ch_mult = (1,)
  spec = configuration.validate_config(config)
  assert spec == conditioning.DataSpec(image_size=8, channels=1, num_classes=None)
  assert tasks.get_task(config.task).model(config, spec).ch_mult == (1,)

  cifar = _tiny.load_config_file(_tiny.ROOT / "configs" / "cifar10_ddpm.py")
  assert (cifar.data.image_size, cifar.model.ch, cifar.train.num_steps) == (32, 128, 800_000)
  # The tiny test config is the digits config plus overrides.
  tiny = _tiny.make_config(data_dir, {"train.num_steps": 3})
  assert tiny.train.num_steps == 3 and tiny.model.ch == 8
  configuration.validate_config(tiny)


def test_cifar10_ddpm_parameter_count():
  """Ho et al.'s CIFAR-10 UNet: 35,746,307 parameters (shapes only)."""
  config = _tiny.load_config_file(_tiny.ROOT / "configs" / "cifar10_ddpm.py")
  spec = conditioning.DataSpec(image_size=config.data.image_size,
                             channels=config.data.channels, num_classes=None)
  model = tasks.get_task(config.task).model(config, spec)
  shapes = jax.eval_shape(functools.partial(models.init_params, model, spec),
                          jax.random.key(0))
  assert models.count_params(shapes) == 35_746_307


def test_shape_signature_names_settings(dirs):
  """A changed architecture is reported by setting name; dropout and the
  compute dtype do not change parameter shapes and are not part of it."""
  data_dir, _ = dirs
  base = _tiny.make_config(data_dir)
  spec = configuration.validate_config(base)
  sig = workdir_lib.shape_signature(base, spec)
  assert sig["model.ch"] == 8 and "model.dropout" not in sig and "model.dtype" not in sig
  other = _tiny.make_config(data_dir, {"model.dropout": 0.3, "model.dtype": "bfloat16"})
  assert workdir_lib.shape_signature(other, spec) == sig


@pytest.mark.parametrize("overrides, message", [
    ({"model.num_groups": 3}, r"model\.num_groups=3 must divide"),
    ({"model.dropout": 1.5}, r"model\.dropout"),
    ({"train.warmup_steps": -1}, r"train\.warmup_steps"),
    ({"train.learning_rate": 0.0}, r"train\.learning_rate"),
], ids=["num_groups", "dropout", "warmup_steps", "learning_rate"])
def test_invalid_setting_fails_before_the_workdir_is_touched(dirs, tmp_path, overrides,
                                                             message):
  data_dir, _ = dirs
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_tiny.make_config(data_dir, overrides), str(workdir))
  assert not workdir.exists()


def test_warmup_zero_means_constant_learning_rate(dirs):
  data_dir, _ = dirs
  config = _tiny.make_config(data_dir, {"train.warmup_steps": 0, "train.grad_clip": 0.0})
  params = {"w": jax.numpy.ones((3,))}
  opt = configuration.build_optimizer(config)
  updates, _ = opt.update({"w": jax.numpy.ones((3,))}, opt.init(params), params)
  # Adam's first update is -lr * g / (|g| + eps) ~ -lr: the step is not wasted.
  np.testing.assert_allclose(updates["w"], -config.train.learning_rate, rtol=1e-4)


# ----------------------------------------------------------------------------
# Resume after SIGKILL.
# ----------------------------------------------------------------------------

RESUME = {"train.num_steps": 12, "train.checkpoint_every": 3, "train.log_every": 1}


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(dirs, tmp_path):
  data_dir, cache_dir = dirs
  env = _tiny.env(cache_dir)
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")

  proc = _tiny.popen(_tiny.cli_args(killed, data_dir, RESUME), env)
  deadline = time.monotonic() + 300
  while (proc.poll() is None and not _tiny.checkpoint_steps(killed)
         and time.monotonic() < deadline):
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)  # As soon as the first checkpoint is complete.
  [done] = _tiny.wait_all([proc], timeout=60)
  assert done.returncode == -signal.SIGKILL, (
      f"the run ended (exit {done.returncode}) before it could be killed\n"
      f"{done.stderr[-3000:]}")
  steps_at_kill = _tiny.checkpoint_steps(killed)
  assert steps_at_kill and steps_at_kill[-1] < 12, steps_at_kill

  # The uninterrupted run and the resumed one, side by side.
  _tiny.run_all_ok([(_tiny.cli_args(w, data_dir, RESUME), env) for w in (ref, killed)])

  config = _tiny.make_config(data_dir, RESUME)
  want, want_data, step = _tiny.restore(config, ref)
  got, got_data, got_step = _tiny.restore(config, killed)
  assert step == got_step == 12 and int(got.step) == 12
  _tiny.assert_trees_equal(got, want)  # params, EMA, opt state, rng, counters
  assert got_data == want_data         # and the data iterator's position.
  assert int(want.nonfinite_total) == 0
  # The killed run logged its steps after the checkpoint twice; the last rows agree.
  last = lambda w: [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl"))][-1]
  assert last(killed)["loss"] == last(ref)["loss"] and last(ref)["step"] == 12

  # Re-running a finished run changes nothing (and compiles nothing).
  before = _tiny.snapshot(os.path.join(ref, "checkpoints"))
  rows = open(os.path.join(ref, "metrics.jsonl")).read()
  state = train.train_and_evaluate(config, ref)
  _tiny.assert_trees_equal(jax.tree_util.tree_map(np.asarray, state), want)
  assert _tiny.snapshot(os.path.join(ref, "checkpoints")) == before
  assert open(os.path.join(ref, "metrics.jsonl")).read() == rows


# ----------------------------------------------------------------------------
# 8 host devices vs 1, and checkpoints moving between them.
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_devices_match_one_and_checkpoints_move_between_them(dirs, tmp_path):
  """The batch of 16 split over 8 host devices gives the 1-device state up to
  float rounding: the gradient's batch reduction adds 8 partial sums in
  another order, so the two are allclose, not bitwise equal (measured: max
  |difference| ~1e-8 after 2 steps and ~7e-8 after 4, in params, EMA and Adam
  moments; the tolerance is atol=1e-6). Step, RNG, counters and the data
  position are equal. Then each workdir is resumed on the other device count
  (8 -> 1 and 1 -> 8)."""
  data_dir, cache_dir = dirs
  w8, w1 = str(tmp_path / "w8"), str(tmp_path / "w1")
  two, four = {"train.num_steps": 2}, {"train.num_steps": 4}
  _tiny.run_all_ok([(_tiny.cli_args(w8, data_dir, two), _tiny.env(cache_dir, devices=8)),
             (_tiny.cli_args(w1, data_dir, two), _tiny.env(cache_dir, devices=1))])
  assert _tiny.mesh_sizes(w8, 2) == {8} and _tiny.mesh_sizes(w1, 2) == {1}

  config = _tiny.make_config(data_dir, four)
  _compare(_tiny.restore(config, w8, 2), _tiny.restore(config, w1, 2))

  _tiny.run_all_ok([(_tiny.cli_args(w8, data_dir, four), _tiny.env(cache_dir, devices=1)),
             (_tiny.cli_args(w1, data_dir, four), _tiny.env(cache_dir, devices=8))])
  assert _tiny.checkpoint_steps(w8) == _tiny.checkpoint_steps(w1) == [2, 4]
  assert _tiny.mesh_sizes(w8, 4) == {1} and _tiny.mesh_sizes(w1, 4) == {8}
  _compare(_tiny.restore(config, w8, 4), _tiny.restore(config, w1, 4))


def _compare(a, b):
  (sa, da, step_a), (sb, db, step_b) = a, b
  assert step_a == step_b and da == db
  _tiny.assert_trees_equal((sa.step, sa.rng, sa.nonfinite_total), (sb.step, sb.rng, sb.nonfinite_total))
  _tiny.assert_trees_close((sa.params, sa.ema_params, sa.opt_state),
                           (sb.params, sb.ema_params, sb.opt_state), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------
# Non-finite steps.
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_nonfinite_batch_skips_the_update(dirs):
  """A NaN pixel: params, EMA and optimizer state unchanged, counted; the
  next finite batch updates again and resets the streak (tests/_tiny.py)."""
  data_dir, cache_dir = dirs
  proc = _tiny.run([sys.executable, str(_tiny.ROOT / "tests" / "_tiny.py"), "nan-step",
                    data_dir], _tiny.env(cache_dir))
  _tiny.check_ok(proc)
  assert "nan-step OK" in proc.stdout


NONFINITE = {"train.max_nonfinite_steps": 3, "train.num_steps": 20,
             "train.checkpoint_every": 3, "train.log_every": 100, "train.keep_checkpoints": 20}


@pytest.mark.slow
def test_nonfinite_streak_stops_training(dirs, tmp_path):
  """The CLI with data that turns to NaN at batch 2: steps 2, 3, 4 are skipped
  and training stops right after the third in a row, although it is neither
  a logging nor a checkpoint step, with one message; the checkpoint of step 3
  keeps the parameters of step 1 and nothing is saved after the streak."""
  data_dir, cache_dir = dirs
  workdir = str(tmp_path / "run")
  proc = _tiny.run([sys.executable, str(_tiny.ROOT / "tests" / "_tiny.py"), "nan-cli", "2",
                    *_tiny.main_flags(workdir, data_dir, NONFINITE)], _tiny.env(cache_dir))
  assert proc.returncode == 2, proc.stderr[-4000:]
  assert "Traceback" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("diffusion_jax: error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert "3 consecutive" in errors[0] and "train.max_nonfinite_steps=3" in errors[0]
  # Step 4 completes the streak; its check is read while step 5 runs.
  assert "batches drawn: 5" in proc.stdout

  assert _tiny.checkpoint_steps(workdir) == [3]
  config = _tiny.make_config(data_dir, NONFINITE)
  state, _, step = _tiny.restore(config, workdir)
  assert step == 3 and int(state.step) == 3
  assert int(state.nonfinite_streak) == int(state.nonfinite_total) == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state))
  # Adam's step count (in the kept optimizer state) shows a single update.
  counts = [int(x) for x in jax.tree_util.tree_leaves(state.opt_state)
            if np.asarray(x).dtype == np.int32]
  assert counts and set(counts) == {1}, counts


def test_a_bug_keeps_its_traceback(dirs, tmp_path):
  """A ValueError raised by the code (here a deliberate bug in the loss), not a
  user error, is not turned into a one-line "error:" message: the CLI exits
  non-zero with the traceback."""
  data_dir, cache_dir = dirs
  proc = _tiny.run([sys.executable, str(_tiny.ROOT / "tests" / "_tiny.py"), "bug-cli",
                    *_tiny.main_flags(str(tmp_path / "run"), data_dir)], _tiny.env(cache_dir))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" in proc.stderr and "deliberate bug in the loss" in proc.stderr
  assert "diffusion_jax: error:" not in proc.stderr
