"""The CLI task "consistency": consistency distillation and training end to end
(tiny UNet, T = 10), the target network's update, sampling, and bad settings."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

import _tiny
from diffusion_jax import consistency, configuration, conditioning, models, tasks, workdir as workdir_lib, generate, modes, train

CONFIGS = _tiny.ROOT / "configs"


def _config(data_dir, name, **overrides):
  settings = {"train.num_steps": 3, "train.log_every": 1, "train.checkpoint_every": 1,
              "train.keep_checkpoints": 3, "consistency.num_points": 5,
              "consistency.ct_s1": 8, "consistency.sample_timesteps": "4,9"}
  return _tiny.make_config(data_dir, settings | overrides, path=CONFIGS / name)


def _target_after(target, params, mu):
  return jax.tree.map(lambda a, b: mu * a + (1.0 - mu) * b, target, params)


@pytest.mark.slow
def test_consistency_distillation_trains_and_samples(data_dir, v_teacher_dir, tmp_path):
  config = _config(data_dir, "digits_cd.py",
                   **{"consistency.teacher_workdir": str(v_teacher_dir)})
  train.train_and_evaluate(config, str(tmp_path))
  teacher = _tiny.restore(_tiny.make_config(data_dir, path=CONFIGS / "digits_v.py"),
                          v_teacher_dir)[0].ema_params
  ckpt = {s: _tiny.restore(config, tmp_path, s)[0] for s in (1, 2)}
  # The student, its target network and the teacher all start from the
  # teacher's EMA params; θ⁻ then follows μ θ⁻ + (1 - μ) θ after each update.
  _tiny.assert_trees_equal(ckpt[1].frozen["teacher"], teacher)
  _tiny.assert_trees_equal(ckpt[2].frozen["teacher"], teacher)
  mu = config.consistency.target_ema
  _tiny.assert_trees_close(ckpt[1].frozen["target"], _target_after(teacher, ckpt[1].params, mu),
                           rtol=1e-5, atol=1e-6)
  _tiny.assert_trees_close(ckpt[2].frozen["target"],
                           _target_after(ckpt[1].frozen["target"], ckpt[2].params, mu),
                           rtol=1e-5, atol=1e-6)
  metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [m["num_points"] for m in metrics] == [5, 5, 5]
  assert all(np.isfinite(m["loss"]) for m in metrics)

  np.testing.assert_array_equal(tasks.get_task(config.task).sampling.grid(config)["timesteps"], [4, 9])
  with np.load(modes.sample(config, str(tmp_path))) as f:
    assert f["images"].shape == (8, 8, 8, 1)
  with pytest.raises(ValueError, match="eval.metrics .bpd. needs"):
    modes.evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_consistency_training_follows_the_curriculum(data_dir, tmp_path):
  config = _config(data_dir, "digits_ct.py")
  train.train_and_evaluate(config, str(tmp_path))
  ckpt = {s: _tiny.restore(config, tmp_path, s)[0] for s in (1, 2)}
  assert set(ckpt[1].frozen) == {"target"}
  cm, K = config.consistency, config.train.num_steps
  # The update after step k (0-based) uses μ(N(k)).
  mu = float(consistency.ct_ema_decay(consistency.ct_num_points(1, K, cm.ct_s0, cm.ct_s1),
                                      cm.ct_s0, cm.ct_mu0))
  _tiny.assert_trees_close(ckpt[2].frozen["target"],
                           _target_after(ckpt[1].frozen["target"], ckpt[2].params, mu),
                           rtol=1e-5, atol=1e-6)
  metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  want = [int(consistency.ct_num_points(k, K, cm.ct_s0, cm.ct_s1)) for k in range(K)]
  assert [m["num_points"] for m in metrics] == want and want[0] == 2
  with np.load(modes.sample(config, str(tmp_path))) as f:
    assert f["images"].shape == (8, 8, 8, 1)


@pytest.mark.parametrize("overrides,message", [
    ({"consistency.solver": "rk4"}, "consistency.solver"),
    ({"consistency.metric": "lpips"}, "consistency.metric"),
    ({"consistency.weighting": "snr"}, "consistency.weighting"),
    ({"diffusion.variance": "learned_range"}, "diffusion.variance"),
    ({"consistency.num_points": 11}, "consistency.num_points"),
    ({"consistency.target_ema": 1.0}, "consistency.target_ema"),
    ({"consistency.teacher_clip_x0": 0.0}, "consistency.teacher_clip_x0"),
    ({"sample.sampler": "ddim"}, "sample.sampler='consistency'"),
    ({"consistency.sample_timesteps": "9,12"}, "consistency.sample_timesteps"),
    ({"consistency.sample_timesteps": "0,9"}, "consistency.sample_timesteps"),
    ({"sample.classifier_workdir": "runs/clf"}, "sample.classifier_workdir"),
])
def test_bad_distillation_settings(data_dir, tmp_path, overrides, message):
  config = _config(data_dir, "digits_cd.py",
                   **({"consistency.teacher_workdir": str(tmp_path)} | overrides))
  with pytest.raises(ValueError, match=re.escape(message)):
    configuration.validate_config(config)


@pytest.mark.parametrize("overrides,message", [
    ({"consistency.ct_s0": 1}, "ct_s0"),
    ({"consistency.ct_s0": 9}, "ct_s0=9 and ct_s1=8"),
    ({"consistency.ct_s1": 10}, "< 10 (diffusion.num_timesteps)"),
    ({"consistency.ct_mu0": 1.0}, "consistency.ct_mu0"),
])
def test_bad_training_settings(data_dir, overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    configuration.validate_config(_config(data_dir, "digits_ct.py", **overrides))


def test_default_sample_grid_is_one_step_from_the_end(data_dir):
  config = _config(data_dir, "digits_ct.py", **{"consistency.sample_timesteps": None})
  np.testing.assert_array_equal(tasks.consistency.sample_timesteps(config), [9])
