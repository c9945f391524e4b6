"""Evaluation from the CLI and during training: the digits classifier metrics,
the FID Inception metrics (with a stand-in weights file built here: random
weights, so the numbers mean nothing, but every path runs), --mode=fid_stats,
train.eval_every; and the metrics' behaviour on real held-out images."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _tiny
from diffusion_jax.metrics import classifier, inception, suite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return _tiny.session_dirs(tmp_path_factory)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A FID Inception weights file with random weights (a stand-in)."""
  variables = inception.FIDInceptionV3().init(
      jax.random.key(0), jnp.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3)))
  path = tmp_path_factory.mktemp("inception") / "stand_in.npz"
  inception.save_inception_params(path, variables)
  return str(path)


@pytest.fixture(scope="module")
def trained(dirs, tmp_path_factory):
  data_dir, cache_dir = dirs
  workdir = tmp_path_factory.mktemp("eval") / "run"
  _tiny.check_ok(_tiny.run(_tiny.cli_args(str(workdir), data_dir, {
      "train.num_steps": 2, "train.eval_every": 2, "eval.metrics": "classifier",
      "eval.num_samples": 40}), _tiny.env(cache_dir)))
  return workdir


def test_real_held_out_images_score_like_the_data(dirs):
  """The real test split scores as real data does: Fréchet ratio ~1 (its
  subsets vs its whole), almost all confident, balanced classes, NN ratio 1."""
  data_dir, _ = dirs
  config = _tiny.make_config(data_dir)
  clf, train_x, test_x = classifier.cached_classifier(config.data)
  assert classifier.cache_path(config.data).exists()
  again, _, _ = classifier.cached_classifier(config.data)      # loaded, the same
  np.testing.assert_array_equal(classifier.features(*clf, test_x[:5]),
                                classifier.features(*again, test_x[:5]))
  r = classifier.sample_quality_report(test_x, clf, train_x, test_x)
  assert r["frechet_ratio"] == pytest.approx(1.0, abs=1e-6)
  assert r["confident_fraction"] > 0.9 and r["nn_median_ratio"] == pytest.approx(1.0)
  assert 0.08 < r["class_share_min"] <= r["class_share_max"] < 0.12
  noise = np.random.default_rng(0).uniform(-1, 1, test_x.shape).astype(np.float32)
  assert classifier.sample_quality_report(noise, clf, train_x, test_x)["frechet_ratio"] > 5


def test_eval_every_logs_the_metrics_and_prints_them(trained):
  rows = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/frechet_ratio" in r]
  assert [r["step"] for r in evals] == [2]
  assert 0 <= evals[0]["eval/confident_fraction"] <= 1


def test_eval_mode_scores_an_npz_with_every_metric(trained, dirs, weights):
  data_dir, cache_dir = dirs
  env = _tiny.env(cache_dir)
  sample = _tiny.run(_tiny.cli_args(str(trained), data_dir, {"train.num_steps": 2},
                                    mode="sample"), env)
  _tiny.check_ok(sample)
  overrides = {"train.num_steps": 2, "eval.metrics": "classifier,fid,kid,precision_recall,bpd",
               "eval.samples": str(trained / "samples.npz"), "eval.inception_weights": weights,
               "eval.reference_examples": 8, "eval.kid_subsets": 3, "eval.kid_subset_size": 4,
               "eval.inception_batch_size": 8}
  proc = _tiny.run(_tiny.cli_args(str(trained), data_dir, overrides, mode="eval"), env,
                   timeout=900)
  _tiny.check_ok(proc)
  result = json.loads((trained / "eval.json").read_text())
  for key in ("bits_per_dim", "classifier", "fid", "kid", "precision_recall"):
    assert key in result, result.keys()
  assert np.isfinite(result["fid"]) and result["classifier"]["num_samples"] == 8
  assert re.search(r"FID \(8 samples\): [0-9.]+", proc.stdout), proc.stdout

  # Without weights: the Inception metrics are skipped in one line, the rest runs.
  without = {k: v for k, v in overrides.items() if k != "eval.inception_weights"}
  proc = _tiny.run(_tiny.cli_args(str(trained), data_dir, without | {
      "eval.metrics": "classifier,fid"}, mode="eval"), env)
  _tiny.check_ok(proc)
  assert sum("skipped fid: no eval.inception_weights" in l for l in proc.stdout.splitlines()) == 1
  assert "convert_inception" in proc.stdout and "Fréchet ratio" in proc.stdout


def test_fid_stats_mode_writes_pytorch_fid_statistics(dirs, weights, tmp_path):
  data_dir, cache_dir = dirs
  out = tmp_path / "digits_train.npz"
  proc = _tiny.run(_tiny.cli_args(None, data_dir, {
      "eval.fid_stats": str(out), "eval.inception_weights": weights,
      "eval.reference_examples": 6, "eval.inception_batch_size": 8}, mode="fid_stats"),
      _tiny.env(cache_dir), timeout=900)
  _tiny.check_ok(proc)
  with np.load(out) as f:
    assert set(f.files) == {"mu", "sigma"}
    assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)


def test_unknown_metric_is_one_error(dirs):
  config = _tiny.make_config(dirs[0], {"eval.metrics": "fid,inception_score"})
  with pytest.raises(ValueError, match=r"eval.metrics='fid,inception_score'.*inception_score"):
    suite.parse(config)
