"""Tests of the UNet, the noisy classifier and the evaluation classifier."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import evaluation
from diffusion_jax.data import pipeline
from diffusion_jax.models import classifier
from diffusion_jax.models import layers
from diffusion_jax.models import unet

SMALL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
B = 2


def _inputs(channels=1, size=8):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, size, size, channels)), jnp.float32)
  return x, jnp.array([3, 700], jnp.int32)


def _param_shapes(model, *args, **kwargs):
  """Variable shapes via eval_shape (no compilation of the initialisers)."""
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, *args, train=False, **kwargs)
  )


def _random_params(model, *args, **kwargs):
  """Non-trivial parameters (real init zeroes the output layers)."""
  rng = np.random.default_rng(1)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype),
      _param_shapes(model, *args, **kwargs),
  )


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _apply(model, variables, x, t, y=None, context=None, *, train=False, key=None):
  rngs = {"dropout": key} if key is not None else None
  return model.apply(variables, x, t, y, context, train=train, rngs=rngs)


def test_timestep_embedding():
  emb = layers.timestep_embedding(jnp.array([0, 1, 999]), 16)
  assert emb.shape == (3, 16) and emb.dtype == jnp.float32
  np.testing.assert_allclose(emb[0], np.r_[np.zeros(8), np.ones(8)])
  np.testing.assert_allclose(emb[1, 0], np.sin(1.0), rtol=1e-6)  # Highest frequency 1.
  odd = layers.timestep_embedding(jnp.array([5.5]), 17)
  assert odd.shape == (1, 17) and odd[0, -1] == 0.0


def test_cifar10_config_has_ddpm_parameter_count():
  model = unet.UNet(
      ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1
  )
  shapes = _param_shapes(model, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32))
  assert _count(shapes) == 35_746_307  # hojonathanho/diffusion CIFAR-10 model.


def test_unet_output_shape_digits():
  model = unet.UNet(**SMALL)
  x, t = _inputs()
  out = _apply(model, _random_params(model, x, t), x, t)
  assert out.shape == (B, 8, 8, 1) and out.dtype == jnp.float32
  assert np.isfinite(out).all() and np.abs(out).max() > 0


def test_real_init_zeroes_output_layers():
  model = unet.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), num_groups=4)
  x, t = _inputs()
  variables = jax.jit(lambda k: model.init({"params": k}, x, t, train=False))(jax.random.key(0))
  params = variables["params"]
  assert not np.any(params["conv_out"]["kernel"])
  assert not np.any(params["encoder"]["down_0_block_0"]["conv2"]["kernel"])
  assert not np.any(params["encoder"]["mid_attn_1"]["proj_out"]["kernel"])
  assert np.any(params["encoder"]["conv_in"]["kernel"])
  assert not np.any(_apply(model, variables, x, t))


def test_conditional_unet_with_learn_sigma_depends_on_labels_and_context():
  model = unet.UNet(**SMALL, num_classes=10, context_dim=6, learn_sigma=True, num_heads=2)
  x, t = _inputs()
  y = jnp.array([1, 2], jnp.int32)
  ctx = jnp.asarray(np.random.default_rng(2).normal(size=(B, 3, 6)), jnp.float32)
  variables = _random_params(model, x, t, y, ctx)
  assert variables["params"]["temb"]["label_emb"]["embedding"].shape == (11, 64)
  out = _apply(model, variables, x, t, y, ctx)
  assert out.shape == (B, 8, 8, 2) and out.dtype == jnp.float32
  assert not np.allclose(out, _apply(model, variables, x, t, y + 3, ctx))
  assert not np.allclose(out, _apply(model, variables, x, t, y, ctx + 1.0))
  null = jnp.full((B,), 10, jnp.int32)  # y=None means the null label.
  np.testing.assert_allclose(
      _apply(model, variables, x, t, None, ctx), _apply(model, variables, x, t, null, ctx)
  )
  with pytest.raises(ValueError, match="context"):
    _param_shapes(model, x, t, y)


def test_unconditional_unet_rejects_labels_and_context():
  model = unet.UNet(**SMALL)
  x, t = _inputs()
  with pytest.raises(ValueError, match="num_classes"):
    _param_shapes(model, x, t, jnp.zeros((B,), jnp.int32))
  with pytest.raises(ValueError, match="context_dim"):
    _param_shapes(model, x, t, None, jnp.zeros((B, 3, 6)))


def test_num_groups_must_divide_channels():
  x, t = _inputs()
  with pytest.raises(ValueError, match="num_groups=32"):
    _param_shapes(unet.UNet(ch=24, ch_mult=(1, 2), attn_resolutions=()), x, t)


def test_bfloat16_compute_keeps_float32_params_and_output():
  model16 = unet.UNet(**SMALL, dtype=jnp.bfloat16)
  model32 = unet.UNet(**SMALL)
  x, t = _inputs()
  variables = _random_params(model16, x, t)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out16 = _apply(model16, variables, x, t)
  out32 = _apply(model32, variables, x, t)
  assert out16.dtype == jnp.float32
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert rel < 0.05, rel


def test_dropout_only_in_train():
  model = unet.UNet(**{**SMALL, "num_res_blocks": 1}, dropout=0.5)
  x, t = _inputs()
  variables = _random_params(model, x, t)
  eval_a = _apply(model, variables, x, t)
  np.testing.assert_array_equal(eval_a, _apply(model, variables, x, t))
  train_1 = _apply(model, variables, x, t, train=True, key=jax.random.key(1))
  train_2 = _apply(model, variables, x, t, train=True, key=jax.random.key(2))
  assert not np.allclose(train_1, train_2)
  assert not np.allclose(train_1, eval_a)


def test_noisy_classifier_reuses_encoder():
  model = classifier.NoisyClassifier(num_classes=10, **SMALL)
  x, t = _inputs()
  variables = _random_params(model, x, t)
  logits = jax.jit(lambda v: model.apply(v, x, t, train=False))(variables)
  assert logits.shape == (B, 10) and logits.dtype == jnp.float32
  unet_encoder = _param_shapes(unet.UNet(**SMALL), x, t)["params"]["encoder"]
  assert jax.tree.structure(variables["params"]["encoder"]) == jax.tree.structure(unet_encoder)


@pytest.fixture(scope="module")
def digits_arrays(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  train = pipeline.load_images("digits", "train", data_dir)
  test = pipeline.load_images("digits", "test", data_dir)
  return train, test


@pytest.mark.slow
def test_eval_classifier_accuracy_and_report(digits_arrays):
  (train_x, train_y), (test_x, test_y) = digits_arrays
  assert train_x.dtype == np.float32 and train_x.min() == -1.0 and train_x.max() == 1.0
  apply_fn, params = evaluation.train_eval_classifier(train_x, train_y, seed=0)
  probs = evaluation.classify(apply_fn, params, test_x)
  assert probs.shape == (360, 10)
  accuracy = np.mean(probs.argmax(-1) == test_y)
  assert accuracy >= 0.95, accuracy

  report = evaluation.sample_quality_report(test_x, (apply_fn, params), train_x, test_x)
  assert report["num_samples"] == 360
  assert report["confident_fraction"] > 0.9
  assert len(report["class_fractions"]) == 10
  np.testing.assert_allclose(sum(report["class_fractions"]), 1.0)
  assert report["nn_train_distance"] == report["test_nn_train_distance"]
  assert report["nn_median_ratio"] == 1.0 and report["copy_fraction"] == 0.0
  # Copies of training images are flagged as memorized.
  copies = evaluation.sample_quality_report(train_x[:50], (apply_fn, params), train_x, test_x)
  assert copies["nn_train_distance"]["median"] == 0.0 and copies["copy_fraction"] == 1.0
