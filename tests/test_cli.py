"""The command line end to end (issue "Training end to end"): train -> sample ->
eval -> describe on the embedded digits with a tiny UNet, config overrides,
and bad inputs (one clear message, non-zero exit, nothing in --workdir touched).

Every test here runs `python -m diffusion_jax.main` in subprocesses (see
tests/_tiny.py for their environment).
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return _tiny.session_dirs(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(dirs, tmp_path_factory):
  """A workdir trained for 2 steps by the CLI."""
  data_dir, cache_dir = dirs
  workdir = str(tmp_path_factory.mktemp("cli") / "run")
  proc = _tiny.run(_tiny.cli_args(workdir, data_dir, {"train.num_steps": 2}),
                   _tiny.env(cache_dir))
  _tiny.check_ok(proc)
  return workdir


def test_train_sample_eval_describe(trained, dirs):
  data_dir, cache_dir = dirs
  env = _tiny.env(cache_dir)
  describe = _tiny.popen(_tiny.cli_args(None, data_dir, mode="describe"), env)
  try:
    _check_train_sample_eval(trained, data_dir, env)
  except BaseException:
    describe.kill()
    describe.wait()
    raise
  [done] = _tiny.wait_all([describe])
  # Describe (no workdir needed): the parameter count of the tiny UNet.
  _tiny.check_ok(done)
  counts = re.findall(r"^parameters: (\d+)$", done.stdout, re.MULTILINE)
  assert counts == [str(_expected_params(data_dir))], done.stdout[-2000:]
  # ... and the compiled train step's FLOPs and memory per device (XLA's AOT analyses).
  flops = re.search(r"^flops per train step \(global batch \d+\): ([0-9.e+]+)$", done.stdout,
                    re.MULTILINE)
  memory = re.search(r"^memory per device: state and batch ([0-9.]+) [MG]iB, temporaries "
                     r"([0-9.]+) [MG]iB", done.stdout, re.MULTILINE)
  assert flops and float(flops.group(1)) > 0, done.stdout[-2000:]
  assert memory and float(memory.group(1)) > 0, done.stdout[-2000:]
  assert re.search(r"^flops per example \(forward\): [0-9.e+]+$", done.stdout, re.MULTILINE)


def _check_train_sample_eval(workdir, data_dir, env):
  wd = Path(workdir)

  # Train: the --config.train.num_steps=2 override decides where it stops.
  assert _tiny.checkpoint_steps(wd) == [2]
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2]
  assert math.isfinite(rows[-1]["loss"]) and rows[-1]["skipped"] == 0
  assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
  assert Image.open(wd / "samples_step0000002.png").size[0] > 0
  saved = json.loads((wd / "config.json").read_text())
  assert saved["config"]["train"]["num_steps"] == 2
  assert saved["config"]["model"]["ch_mult"] == [1]

  # Sample: the last stdout line is the .npz path.
  proc = _tiny.run(_tiny.cli_args(workdir, data_dir, mode="sample"), env)
  _tiny.check_ok(proc)
  npz = Path(proc.stdout.strip().splitlines()[-1])
  assert npz == wd / "samples.npz"
  with np.load(npz) as f:
    images = f["images"]
  assert images.dtype == np.uint8 and images.shape == (8, 8, 8, 1)
  assert Image.open(wd / "samples.png").size[0] > 0

  # Eval: a finite bound in bits/dim, printed and in eval.json.
  proc = _tiny.run(_tiny.cli_args(workdir, data_dir, mode="eval"), env)
  _tiny.check_ok(proc)
  match = re.search(r"bits/dim: ([-+0-9.eE]+|nan|inf)", proc.stdout)
  assert match, proc.stdout
  assert math.isfinite(float(match.group(1)))
  result = json.loads((wd / "eval.json").read_text())
  assert result["num_examples"] == 16 and result["step"] == 2
  assert math.isfinite(result["bits_per_dim"]) and result["bits_per_dim"] > 0


def _expected_params(data_dir) -> int:
  import jax
  from diffusion_jax import configuration, conditioning, models, tasks, workdir as workdir_lib
  config = _tiny.make_config(data_dir)
  spec = configuration.validate_config(config)
  model = tasks.get_task(config.task).model(config, spec)
  shapes = jax.eval_shape(functools.partial(models.init_params, model, spec),
                          jax.random.key(0))
  return models.count_params(shapes)


# ----------------------------------------------------------------------------
# Bad inputs: each one message naming the setting, exit 2, workdir untouched.
# ----------------------------------------------------------------------------

BROKEN_CONFIG = "def get_config(:\n  return None\n"

# id -> (overrides, CLI keyword arguments, substrings stderr must contain)
BAD_INPUTS = {
    "unknown_dataset": ({"data.dataset": "nope"}, {}, ["data.dataset", "'nope'"]),
    "unknown_sampler": ({"sample.sampler": "nope"}, {"mode": "sample"},
                        ["sample.sampler", "ddim"]),
    "unknown_schedule": ({"diffusion.schedule": "nope"}, {}, ["diffusion.schedule", "cosine"]),
    "bad_channels": ({"data.channels": 2}, {}, ["data.channels", "1 (grayscale) or 3 (RGB)"]),
    "missing_config_file": ({}, {"config": "configs/no_such_config.py"},
                            ["--config", "no_such_config.py"]),
    "broken_config_file": ({}, {"config": "BROKEN"}, ["--config", "SyntaxError"]),
    "zero_num_steps": ({"train.num_steps": 0}, {}, ["train.num_steps", "positive"]),
    "negative_num_steps": ({"train.num_steps": -5}, {}, ["train.num_steps", "-5"]),
    "incompatible_checkpoint": ({"model.ch": 16}, {}, ["model.ch", "--workdir"]),
    "distill_without_teacher": ({"task": "distill"}, {}, ["distill.teacher_workdir"]),
    "unknown_consistency_solver": ({"task": "consistency", "sample.sampler": "consistency",
                                    "consistency.solver": "rk4"}, {},
                                   ["consistency.solver", "heun"]),
    "labels_for_unconditional_model": ({"sample.labels": "3"}, {"mode": "sample"},
                                       ["sample.labels='3'", "unconditional"]),
    "workdir_is_a_file": ({}, {"workdir": "FILE"}, ["--workdir=", "is a file"]),
    "no_workdir": ({}, {"workdir": None}, ["--workdir is required"]),
    "no_config": ({}, {"config": None}, ["--config is required"]),
    "unknown_config_name": ({}, {"config": "nope"}, ["--config='nope'", "digits_cond"]),
    "unknown_mode": ({}, {"mode": "fly"}, ["--mode='fly'", "sample"]),
    "type_error_int": ({"train.num_steps": "abc"}, {},
                       ["--config.train.num_steps='abc'", "not a valid int"]),
    "type_error_float": ({"train.learning_rate": "fast"}, {},
                         ["--config.train.learning_rate='fast'", "not a valid float"]),
    "mistyped_key": ({"trian.num_steps": 5}, {},
                     ["trian.num_steps", "did you mean", "'train.num_steps'"]),
    "sample_empty_workdir": ({}, {"mode": "sample", "workdir": "EMPTY"},
                             ["--workdir=", "holds no checkpoint"]),
    "eval_empty_workdir": ({}, {"mode": "eval", "workdir": "EMPTY"},
                           ["--workdir=", "holds no checkpoint"]),
    "export_empty_workdir": ({}, {"mode": "export", "workdir": "EMPTY"},
                             ["--workdir=", "holds no checkpoint"]),
    "num_steps_below_checkpoint": ({"train.num_steps": 1}, {},
                                   ["train.num_steps=1", "below the step 2"]),
    "missing_checkpoint_step": ({"sample.checkpoint_step": 7}, {"mode": "sample"},
                                ["sample.checkpoint_step=7", "[2]"]),
    "sample_output_not_npz": ({"sample.output": "out.txt"}, {"mode": "sample"},
                              ["sample.output='out.txt'", ".npz"]),
    "export_output_format": ({"export.output": "w.bin"}, {"mode": "export"},
                             ["export.output", ".safetensors"]),
    "folder_without_path": ({"data.dataset": "folder"}, {}, ["data.dataset='folder'",
                                                            "data.path"]),
    "missing_folder": ({"data.dataset": "folder", "data.path": "/no/such/dir"}, {},
                       ["/no/such/dir"]),
    "missing_npz": ({"data.dataset": "npz", "data.path": "/no/such.npz"}, {},
                    ["/no/such.npz"]),
    "bad_test_fraction": ({"data.test_fraction": 1.5}, {}, ["data.test_fraction"]),
    "unknown_prediction": ({"diffusion.prediction": "score"}, {},
                           ["diffusion.prediction='score'", "'eps'"]),
    "unknown_variance": ({"diffusion.variance": "big"}, {},
                         ["diffusion.variance='big'", "fixed_small"]),
    "hybrid_without_learned_variance": ({"diffusion.loss_type": "hybrid"}, {},
                                        ["diffusion.loss_type='hybrid'", "learned"]),
    "zero_snr_with_eps": ({"diffusion.rescale_to_zero_terminal_snr": True}, {},
                          ["diffusion.prediction='eps'", "zero-terminal-SNR"]),
    "eta_out_of_range": ({"sample.eta": 2.0}, {"mode": "sample"},
                         ["sample.eta=2.0", "[0, 1]"]),
    "sample_steps_zero": ({"sample.num_steps": 0}, {"mode": "sample"},
                          ["sample.num_steps=0", "[1, 10]"]),
    "unknown_spacing": ({"sample.spacing": "cubic"}, {}, ["sample.spacing='cubic'",
                                                          "trailing"]),
    "clip_zero": ({"sample.clip_x0": 0.0}, {}, ["sample.clip_x0=0.0", "> 0"]),
    "learning_rate_zero": ({"train.learning_rate": 0.0}, {},
                           ["train.learning_rate=0.0", "> 0"]),
    "negative_warmup": ({"train.warmup_steps": -1}, {}, ["train.warmup_steps=-1", ">= 0"]),
    "unknown_lr_schedule": ({"train.lr_schedule": "step"}, {},
                            ["train.lr_schedule='step'", "cosine"]),
    "unknown_optimizer": ({"train.optimizer": "sgd"}, {}, ["train.optimizer='sgd'", "adamw"]),
    "zero_batch_size": ({"train.batch_size": 0}, {}, ["train.batch_size", "positive"]),
    "num_groups_not_dividing": ({"model.num_groups": 3}, {}, ["model.", "num_groups=3"]),
    "unknown_conditioning": ({"model.conditioning": "text"}, {},
                             ["model.conditioning='text'", "class"]),
    "label_dropout_out_of_range": ({"train.label_dropout": 1.5}, {},
                                   ["train.label_dropout=1.5", "[0, 1)"]),
    "unknown_network": ({"model.name": "resnet"}, {}, ["model.name='resnet'", "unet"]),
    "unknown_task": ({"task": "gan"}, {}, ["task='gan'", "diffusion"]),
}


@pytest.fixture(scope="module")
def bad_runs(trained, dirs, tmp_path_factory):
  """Runs every BAD_INPUTS case (8 at a time) against the trained workdir.
  Returns ({id: (returncode, stdout, stderr)}, snapshot before, snapshot after,
  the empty workdir's contents after)."""
  data_dir, cache_dir = dirs
  workdir = trained
  broken = tmp_path_factory.mktemp("configs") / "broken.py"
  broken.write_text(BROKEN_CONFIG)
  before = _tiny.snapshot(workdir)
  a_file = tmp_path_factory.mktemp("files") / "not_a_dir"
  a_file.write_text("")
  empty = tmp_path_factory.mktemp("empty")
  jobs = {}
  for name, (overrides, kwargs, _) in BAD_INPUTS.items():
    kwargs = dict(kwargs)
    if kwargs.get("config") == "BROKEN":
      kwargs["config"] = str(broken)
    where = kwargs.pop("workdir", workdir)
    where = {"FILE": str(a_file), "EMPTY": str(empty)}.get(where, where)
    args = _tiny.cli_args(where, data_dir, overrides, **kwargs)
    jobs[name] = [a for a in args if a != "--config=None"]
  results = {}
  names = list(jobs)
  for i in range(0, len(names), 8):
    batch = names[i:i + 8]
    done = _tiny.wait_all([_tiny.popen(jobs[n], _tiny.env(cache_dir)) for n in batch],
                          timeout=300)
    results.update({n: (d.returncode, d.stdout, d.stderr) for n, d in zip(batch, done)})
  return results, before, _tiny.snapshot(workdir), sorted(p.name for p in empty.iterdir())


def test_there_are_many_bad_input_cases():
  assert len(BAD_INPUTS) >= 35


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input(bad_runs, name):
  results, before, after, empty_after = bad_runs
  returncode, out, err = results[name]
  assert returncode == 2, f"exit {returncode}\n{out[-2000:]}\n{err[-4000:]}"
  assert "Traceback" not in err, err[-4000:]
  errors = [line for line in err.splitlines() if line.startswith("diffusion_jax: error:")]
  assert len(errors) == 1, err[-4000:]
  for expected in BAD_INPUTS[name][2]:
    assert expected in errors[0], errors[0]
  # Nothing in the workdir (checkpoints, config.json, metrics) was written, and
  # nothing was created in the empty one.
  assert after == before
  assert empty_after == []


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "consistency"])
def test_sample_eta_is_only_for_samplers_with_an_eta(dirs, sampler):
  """The default sample.eta = 1 (DDIM) does not stop a sampler without η."""
  from diffusion_jax import configuration, conditioning, models, tasks, workdir as workdir_lib, generate
  config = _tiny.make_config(dirs[0], {"sample.sampler": sampler})
  assert config.sample.eta == 1.0
  spec = configuration.validate_config(config)
  schedule = configuration.build_schedule(config)
  model_fn = models.make_model_fn(tasks.get_task(config.task).model(config, spec))
  generate.Generator(config, spec, model_fn, schedule, batch_size=2)
