"""Conditioning end to end: class labels, embedding sequences, the noise-aware
classifier, and guided sampling from the CLI modes (tiny models, 1 step)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _tiny
from diffusion_jax import configuration, conditioning, models, tasks, workdir as workdir_lib, modes, train

CONFIGS = _tiny.ROOT / "configs"
ONE_STEP = {"train.num_steps": 1, "train.log_every": 1, "train.checkpoint_every": 1}


def _config(data_dir, name, **overrides):
  return _tiny.make_config(data_dir, ONE_STEP | overrides, path=CONFIGS / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cond.py", "digits_embed.py"])
def test_conditional_configs_train_and_sample_guided(name, data_dir, tmp_path):
  config = _config(data_dir, name, **{"sample.labels": "3,7",
                                      "sample.guidance_scale": 2.5})
  train.train_and_evaluate(config, str(tmp_path))
  # The grid has one row per class.
  assert list(tmp_path.glob("samples_step0000001.png"))
  path = modes.sample(config, str(tmp_path))
  with np.load(path) as f:
    assert f["images"].shape == (8, 8, 8, 1) and f["images"].dtype == np.uint8
    np.testing.assert_array_equal(f["labels"], [3, 7] * 4)


@pytest.mark.slow
def test_classifier_trains_evaluates_and_guides_the_unconditional_model(data_dir, tmp_path):
  clf_dir, gen_dir = tmp_path / "clf", tmp_path / "gen"
  clf_config = _config(data_dir, "digits_classifier.py",
                       **{"eval.max_examples": 16, "eval.batch_size": 16})
  train.train_and_evaluate(clf_config, str(clf_dir))
  result = modes.evaluate(clf_config, str(clf_dir))
  T = clf_config.diffusion.num_timesteps
  assert {"0", str(T - 1)} <= set(result["accuracy_by_t"])
  assert all(0.0 <= a <= 1.0 for a in result["accuracy_by_t"].values())

  gen_config = _config(data_dir, "digits.py", **{
      "sample.classifier_workdir": str(clf_dir), "sample.classifier_scale": 3.0})
  train.train_and_evaluate(gen_config, str(gen_dir))
  path = modes.sample(gen_config, str(gen_dir))
  with np.load(path) as f:
    assert np.all(np.isfinite(f["images"]))
    np.testing.assert_array_equal(f["labels"], np.arange(8) % 10)


def test_label_dropout_replaces_the_condition_with_the_null_one(data_dir):
  """With label_dropout p, about p of the labels the model sees are the null class."""
  config = _config(data_dir, "digits_cond.py", **{"train.label_dropout": 0.5})
  spec = configuration.validate_config(config)
  schedule = configuration.build_schedule(config)
  batch = {"image": jnp.zeros((256, 8, 8, 1)), "label": jnp.full((256,), 4, jnp.int32)}
  labels = np.asarray(jax.jit(lambda b, r: _labels_seen(config, spec, schedule, b, r))(
      batch, jax.random.key(0)))
  assert set(np.unique(labels)) == {4, 10}
  assert 0.4 < np.mean(labels == 10) < 0.6


def _labels_seen(config, spec, schedule, batch, rng):
  out = {}

  class Recorder:
    def apply(self, variables, x_t, t, *, y=None, context=None, train, rngs):
      out["y"] = y
      return jnp.zeros_like(x_t)

  tasks.diffusion.loss(None, None, batch, rng, model=Recorder(), schedule=schedule,
                       config=config, spec=spec)
  return out["y"]


def test_class_contexts_are_fixed_and_distinct(data_dir):
  spec = configuration.validate_config(_config(data_dir, "digits_embed.py"))
  a, b = conditioning.class_contexts(spec), conditioning.class_contexts(spec)
  assert a.shape == (10, 4, 32)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.min(jnp.linalg.norm((a[:, None] - a[None]).reshape(100, -1), axis=-1)
                       + jnp.eye(10).reshape(-1) * 1e9)) > 1.0


@pytest.mark.parametrize("setting,value,message", [
    ("model.conditioning", "text", "model.conditioning"),
    ("task", "segmentation", "task"),
    ("sample.labels", "3,12", "sample.labels"),
])
def test_bad_conditioning_settings(data_dir, tmp_path, setting, value, message):
  config = _config(data_dir, "digits_cond.py", **{setting: value})
  with pytest.raises(ValueError, match=message):
    if setting == "sample.labels":
      from diffusion_jax import generate
      generate.parse_labels(value, 8, 10)
    else:
      configuration.validate_config(config)


def test_generated_samples_do_not_depend_on_the_batch_size(data_dir):
  """Sample i of `Generator` (as in --mode=sample) comes from its global index,
  whatever sample.batch_size; conditional labels follow the samples."""
  from diffusion_jax import generate
  config = _config(data_dir, "digits_cond.py")
  spec = configuration.validate_config(config)
  schedule = configuration.build_schedule(config)
  net = tasks.get_task(config.task).model(config, spec)
  params = models.init_params(net, spec, jax.random.key(3))
  model_fn = models.make_model_fn(net)
  labels = generate.parse_labels("0,1,2", 7, 10)
  out = [generate.Generator(config, spec, model_fn, schedule, batch_size=bs)(
      params, 7, labels, seed=5) for bs in (7, 3)]
  # Equal up to XLA's batch-size-dependent kernels (float rounding only).
  np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-5)
