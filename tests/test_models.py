"""Tests of the UNet, the noisy classifier and the evaluation classifier."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.metrics import classifier as evaluation
from diffusion_jax.data import sources
from diffusion_jax.models import classifier
from diffusion_jax.models import layers
from diffusion_jax.models import partitioning
from diffusion_jax.models import unet

SMALL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
B = 2


def _inputs(channels=1, size=8):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, size, size, channels)), jnp.float32)
  return x, jnp.array([3, 700], jnp.int32)


def _boxed_shapes(model, *args, **kwargs):
  """Boxed variable shapes via eval_shape (no compilation of the initialisers)."""
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, *args, train=False, **kwargs)
  )


def _param_shapes(model, *args, **kwargs):
  """Plain (unboxed) variable shapes."""
  return partitioning.unbox(_boxed_shapes(model, *args, **kwargs))


def _path_shapes(tree):
  """Sorted "a/b/c: (shape)" strings of an unboxed tree's leaves."""
  return sorted(
      "/".join(p.key for p in path) + f": {tuple(leaf.shape)}"
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
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
  variables = partitioning.unbox(variables)
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


def _einsum_attention(q, k, v, num_heads):
  """The pre-``dot_product_attention`` implementation of ``layers._attention``."""
  b, lq, c = q.shape
  split = lambda a: a.reshape(a.shape[0], a.shape[1], num_heads, c // num_heads)
  q, k, v = split(q), split(k), split(v)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  weights = jax.nn.softmax(logits * (c // num_heads) ** -0.5, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return out.reshape(b, lq, c)


@pytest.mark.parametrize("num_heads", [1, 2, 4, 8])
@pytest.mark.parametrize("lk", [None, 5])  # Self-attention; cross-attention to 5 tokens.
def test_attention_matches_einsum_reference(num_heads, lk):
  rng = np.random.default_rng(num_heads)
  q = jnp.asarray(rng.normal(size=(B, 16, 32)), jnp.float32)
  kv = q if lk is None else jnp.asarray(rng.normal(size=(B, lk, 32)), jnp.float32)
  k, v = 1.5 * kv, kv - 0.3  # Logits of size ~10: a peaked softmax.
  out = jax.jit(layers._attention, static_argnums=3)(q, k, v, num_heads)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _einsum_attention(q, k, v, num_heads), rtol=0, atol=1e-5)


def test_attention_bfloat16_close_to_float32():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(B, 16, 32)), jnp.float32) for _ in range(3))
  ref = _einsum_attention(q, k, v, 2)
  new16 = layers._attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), 2)
  old16 = _einsum_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), 2)
  assert new16.dtype == jnp.bfloat16
  err = lambda a: float(jnp.linalg.norm(a.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
  # float32 logits accumulation: no worse than the old bf16 einsum (~1e-2).
  assert err(new16) < 1.5e-2 and err(new16) <= 1.1 * err(old16), (err(new16), err(old16))


COND = dict(**SMALL, num_classes=10, context_dim=6, learn_sigma=True, num_heads=2)


def _cond_inputs():
  x, t = _inputs()
  y = jnp.array([1, 2], jnp.int32)
  ctx = jnp.asarray(np.random.default_rng(2).normal(size=(B, 3, 6)), jnp.float32)
  return x, t, y, ctx


@functools.partial(jax.jit, static_argnames=("model",))
def _grads(model, params, x, t, y, ctx):
  def loss(p):
    out = model.apply({"params": p}, x, t, y, ctx, train=True,
                      rngs={"dropout": jax.random.key(3)})
    return jnp.sum(out**2)
  return jax.grad(loss)(params)


def test_remat_keeps_param_tree_and_gradients():
  x, t, y, ctx = _cond_inputs()
  for policy in layers.REMAT_POLICIES:
    model = unet.UNet(**COND, remat_policy=policy)
    assert _path_shapes(_param_shapes(model, x, t, y, ctx)) == sorted(UNET_PATHS)
    assert (partitioning.logical_specs(_boxed_shapes(model, x, t, y, ctx))
            == partitioning.logical_specs(_boxed_shapes(unet.UNet(**COND), x, t, y, ctx)))
  # Gradients of a one-level model: 3 ResBlocks and 2 AttnBlocks (self- and
  # cross-attention), few to compile.
  tiny = dict(COND, ch_mult=(1,), num_res_blocks=0, attn_resolutions=(8,), dropout=0.2)
  plain = unet.UNet(**tiny)
  params = _random_params(plain, x, t, y, ctx)["params"]
  g_plain = _grads(plain, params, x, t, y, ctx)
  g_remat = _grads(unet.UNet(**tiny, remat_policy="nothing_saveable"), params, x, t, y, ctx)
  assert jax.tree.structure(g_plain) == jax.tree.structure(g_remat)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):  # Same dropout too.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_attention_impl_keeps_outputs_and_rejects_unknown():
  """attention_impl="xla" is the default's computation; "cudnn" (GPU only) is
  accepted by validation; anything else is rejected naming the field."""
  x, t = _inputs()
  plain = unet.UNet(**SMALL)
  variables = _random_params(plain, x, t)
  np.testing.assert_array_equal(
      _apply(unet.UNet(**SMALL, attention_impl="xla"), variables, x, t),
      _apply(plain, variables, x, t))
  unet.UNet(**SMALL, attention_impl="cudnn").validate()
  with pytest.raises(ValueError, match="attention_impl"):
    unet.UNet(**SMALL, attention_impl="flash").validate()


def test_remat_classifier_keeps_param_tree_and_rejects_unknown_policy():
  x, t = _inputs()
  for policy in layers.REMAT_POLICIES:
    model = classifier.NoisyClassifier(**SMALL, remat_policy=policy)
    assert _path_shapes(_param_shapes(model, x, t)) == sorted(CLASSIFIER_PATHS)
  with pytest.raises(ValueError, match="remat_policy.*nothing_saveable.*everything_saveable"):
    _param_shapes(unet.UNet(**SMALL, remat_policy="dots"), x, t)
  with pytest.raises(ValueError, match="remat_policy"):
    _param_shapes(classifier.NoisyClassifier(**SMALL, remat_policy="checkpoint_dots"), x, t)


def _check_names(boxed):
  """Every leaf boxed, with one known logical name (or None) per dimension."""
  flat = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))[0]
  for path, leaf in flat:
    name = "/".join(p.key for p in path)
    assert isinstance(leaf, nn.LogicallyPartitioned), name
    assert len(leaf.names) == leaf.value.ndim, (name, leaf.names, leaf.value.shape)
    assert all(n is None or n in partitioning.LOGICAL_AXES for n in leaf.names), name
  return {"/".join(p.key for p in path): leaf.names for path, leaf in flat}


def test_every_parameter_has_logical_names_and_unchanged_paths():
  x, t, y, ctx = _cond_inputs()
  boxed = _boxed_shapes(unet.UNet(**COND), x, t, y, ctx)
  names = _check_names(boxed)
  assert _path_shapes(partitioning.unbox(boxed)) == sorted(UNET_PATHS)  # Pre-change tree.
  attn = "params/encoder/down_1_attn_0/"
  assert names[attn + "q/kernel"] == ("embed", "heads") and names[attn + "q/bias"] == ("heads",)
  assert names[attn + "cross_k/kernel"] == ("embed", "heads")
  assert names[attn + "proj_out/kernel"] == ("heads", "embed")
  assert names[attn + "proj_out/bias"] == ("embed",)
  assert names[attn + "norm/scale"] == ("norm",) and names[attn + "norm/bias"] == ("norm",)
  block = "params/encoder/down_1_block_0/"
  assert names[block + "conv1/kernel"] == (None, None, "conv_in", "conv_out")
  assert names[block + "conv1/bias"] == ("conv_out",)
  assert names[block + "temb_proj/kernel"] == ("embed", "mlp")
  assert names[block + "nin_shortcut/kernel"] == ("embed", "mlp")
  assert names[block + "nin_shortcut/bias"] == ("mlp",)
  assert names["params/temb/dense1/kernel"] == ("embed", "mlp")
  assert names["params/temb/label_emb/embedding"] == ("vocab", "embed")
  specs = partitioning.logical_specs(boxed)
  assert specs["params"]["conv_out"]["kernel"] == jax.sharding.PartitionSpec(
      None, None, "conv_in", "conv_out")
  assert specs["params"]["temb"]["dense0"]["bias"] == jax.sharding.PartitionSpec("mlp")

  boxed_clf = _boxed_shapes(classifier.NoisyClassifier(num_classes=10, **SMALL), x, t)
  names_clf = _check_names(boxed_clf)
  assert names_clf["params/head/kernel"] == ("embed", "mlp")
  assert _path_shapes(partitioning.unbox(boxed_clf)) == sorted(CLASSIFIER_PATHS)


def test_boxed_and_unboxed_params_apply_alike():
  x, t, y, ctx = _cond_inputs()
  model = unet.UNet(**COND)
  rng = np.random.default_rng(1)
  boxed = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype),
                       _boxed_shapes(model, x, t, y, ctx))
  assert all(isinstance(a, nn.LogicallyPartitioned) for a in jax.tree.leaves(
      boxed, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned)))
  plain = partitioning.unbox(boxed)
  assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(plain))
  np.testing.assert_array_equal(
      _apply(model, boxed, x, t, y, ctx), _apply(model, plain, x, t, y, ctx))


@pytest.fixture(scope="module")
def digits_arrays(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  train = sources.load_split(dict(dataset="digits", data_dir=data_dir, image_size=8, channels=1), "train")
  test = sources.load_split(dict(dataset="digits", data_dir=data_dir, image_size=8, channels=1), "test")
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


# The parameter trees of `unet.UNet(**COND)` and `NoisyClassifier(num_classes=10,
# **SMALL)` generated from the code before logical names, remat and
# dot_product_attention were added: checkpoints of these configurations load.
UNET_PATHS = (
    "params/conv_out/bias: (2,)",
    "params/conv_out/kernel: (3, 3, 16, 2)",
    "params/encoder/conv_in/bias: (16,)",
    "params/encoder/conv_in/kernel: (3, 3, 1, 16)",
    "params/encoder/down_0_block_0/conv1/bias: (16,)",
    "params/encoder/down_0_block_0/conv1/kernel: (3, 3, 16, 16)",
    "params/encoder/down_0_block_0/conv2/bias: (16,)",
    "params/encoder/down_0_block_0/conv2/kernel: (3, 3, 16, 16)",
    "params/encoder/down_0_block_0/norm1/bias: (16,)",
    "params/encoder/down_0_block_0/norm1/scale: (16,)",
    "params/encoder/down_0_block_0/norm2/bias: (16,)",
    "params/encoder/down_0_block_0/norm2/scale: (16,)",
    "params/encoder/down_0_block_0/temb_proj/bias: (16,)",
    "params/encoder/down_0_block_0/temb_proj/kernel: (64, 16)",
    "params/encoder/down_0_downsample/conv/bias: (16,)",
    "params/encoder/down_0_downsample/conv/kernel: (3, 3, 16, 16)",
    "params/encoder/down_1_attn_0/cross_k/bias: (32,)",
    "params/encoder/down_1_attn_0/cross_k/kernel: (6, 32)",
    "params/encoder/down_1_attn_0/cross_norm/bias: (32,)",
    "params/encoder/down_1_attn_0/cross_norm/scale: (32,)",
    "params/encoder/down_1_attn_0/cross_proj_out/bias: (32,)",
    "params/encoder/down_1_attn_0/cross_proj_out/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/cross_q/bias: (32,)",
    "params/encoder/down_1_attn_0/cross_q/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/cross_v/bias: (32,)",
    "params/encoder/down_1_attn_0/cross_v/kernel: (6, 32)",
    "params/encoder/down_1_attn_0/k/bias: (32,)",
    "params/encoder/down_1_attn_0/k/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/norm/bias: (32,)",
    "params/encoder/down_1_attn_0/norm/scale: (32,)",
    "params/encoder/down_1_attn_0/proj_out/bias: (32,)",
    "params/encoder/down_1_attn_0/proj_out/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/q/bias: (32,)",
    "params/encoder/down_1_attn_0/q/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/v/bias: (32,)",
    "params/encoder/down_1_attn_0/v/kernel: (32, 32)",
    "params/encoder/down_1_block_0/conv1/bias: (32,)",
    "params/encoder/down_1_block_0/conv1/kernel: (3, 3, 16, 32)",
    "params/encoder/down_1_block_0/conv2/bias: (32,)",
    "params/encoder/down_1_block_0/conv2/kernel: (3, 3, 32, 32)",
    "params/encoder/down_1_block_0/nin_shortcut/bias: (32,)",
    "params/encoder/down_1_block_0/nin_shortcut/kernel: (16, 32)",
    "params/encoder/down_1_block_0/norm1/bias: (16,)",
    "params/encoder/down_1_block_0/norm1/scale: (16,)",
    "params/encoder/down_1_block_0/norm2/bias: (32,)",
    "params/encoder/down_1_block_0/norm2/scale: (32,)",
    "params/encoder/down_1_block_0/temb_proj/bias: (32,)",
    "params/encoder/down_1_block_0/temb_proj/kernel: (64, 32)",
    "params/encoder/mid_attn_1/cross_k/bias: (32,)",
    "params/encoder/mid_attn_1/cross_k/kernel: (6, 32)",
    "params/encoder/mid_attn_1/cross_norm/bias: (32,)",
    "params/encoder/mid_attn_1/cross_norm/scale: (32,)",
    "params/encoder/mid_attn_1/cross_proj_out/bias: (32,)",
    "params/encoder/mid_attn_1/cross_proj_out/kernel: (32, 32)",
    "params/encoder/mid_attn_1/cross_q/bias: (32,)",
    "params/encoder/mid_attn_1/cross_q/kernel: (32, 32)",
    "params/encoder/mid_attn_1/cross_v/bias: (32,)",
    "params/encoder/mid_attn_1/cross_v/kernel: (6, 32)",
    "params/encoder/mid_attn_1/k/bias: (32,)",
    "params/encoder/mid_attn_1/k/kernel: (32, 32)",
    "params/encoder/mid_attn_1/norm/bias: (32,)",
    "params/encoder/mid_attn_1/norm/scale: (32,)",
    "params/encoder/mid_attn_1/proj_out/bias: (32,)",
    "params/encoder/mid_attn_1/proj_out/kernel: (32, 32)",
    "params/encoder/mid_attn_1/q/bias: (32,)",
    "params/encoder/mid_attn_1/q/kernel: (32, 32)",
    "params/encoder/mid_attn_1/v/bias: (32,)",
    "params/encoder/mid_attn_1/v/kernel: (32, 32)",
    "params/encoder/mid_block_1/conv1/bias: (32,)",
    "params/encoder/mid_block_1/conv1/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_1/conv2/bias: (32,)",
    "params/encoder/mid_block_1/conv2/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_1/norm1/bias: (32,)",
    "params/encoder/mid_block_1/norm1/scale: (32,)",
    "params/encoder/mid_block_1/norm2/bias: (32,)",
    "params/encoder/mid_block_1/norm2/scale: (32,)",
    "params/encoder/mid_block_1/temb_proj/bias: (32,)",
    "params/encoder/mid_block_1/temb_proj/kernel: (64, 32)",
    "params/encoder/mid_block_2/conv1/bias: (32,)",
    "params/encoder/mid_block_2/conv1/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_2/conv2/bias: (32,)",
    "params/encoder/mid_block_2/conv2/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_2/norm1/bias: (32,)",
    "params/encoder/mid_block_2/norm1/scale: (32,)",
    "params/encoder/mid_block_2/norm2/bias: (32,)",
    "params/encoder/mid_block_2/norm2/scale: (32,)",
    "params/encoder/mid_block_2/temb_proj/bias: (32,)",
    "params/encoder/mid_block_2/temb_proj/kernel: (64, 32)",
    "params/norm_out/bias: (16,)",
    "params/norm_out/scale: (16,)",
    "params/temb/dense0/bias: (64,)",
    "params/temb/dense0/kernel: (16, 64)",
    "params/temb/dense1/bias: (64,)",
    "params/temb/dense1/kernel: (64, 64)",
    "params/temb/label_emb/embedding: (11, 64)",
    "params/up_0_block_0/conv1/bias: (16,)",
    "params/up_0_block_0/conv1/kernel: (3, 3, 48, 16)",
    "params/up_0_block_0/conv2/bias: (16,)",
    "params/up_0_block_0/conv2/kernel: (3, 3, 16, 16)",
    "params/up_0_block_0/nin_shortcut/bias: (16,)",
    "params/up_0_block_0/nin_shortcut/kernel: (48, 16)",
    "params/up_0_block_0/norm1/bias: (48,)",
    "params/up_0_block_0/norm1/scale: (48,)",
    "params/up_0_block_0/norm2/bias: (16,)",
    "params/up_0_block_0/norm2/scale: (16,)",
    "params/up_0_block_0/temb_proj/bias: (16,)",
    "params/up_0_block_0/temb_proj/kernel: (64, 16)",
    "params/up_0_block_1/conv1/bias: (16,)",
    "params/up_0_block_1/conv1/kernel: (3, 3, 32, 16)",
    "params/up_0_block_1/conv2/bias: (16,)",
    "params/up_0_block_1/conv2/kernel: (3, 3, 16, 16)",
    "params/up_0_block_1/nin_shortcut/bias: (16,)",
    "params/up_0_block_1/nin_shortcut/kernel: (32, 16)",
    "params/up_0_block_1/norm1/bias: (32,)",
    "params/up_0_block_1/norm1/scale: (32,)",
    "params/up_0_block_1/norm2/bias: (16,)",
    "params/up_0_block_1/norm2/scale: (16,)",
    "params/up_0_block_1/temb_proj/bias: (16,)",
    "params/up_0_block_1/temb_proj/kernel: (64, 16)",
    "params/up_1_attn_0/cross_k/bias: (32,)",
    "params/up_1_attn_0/cross_k/kernel: (6, 32)",
    "params/up_1_attn_0/cross_norm/bias: (32,)",
    "params/up_1_attn_0/cross_norm/scale: (32,)",
    "params/up_1_attn_0/cross_proj_out/bias: (32,)",
    "params/up_1_attn_0/cross_proj_out/kernel: (32, 32)",
    "params/up_1_attn_0/cross_q/bias: (32,)",
    "params/up_1_attn_0/cross_q/kernel: (32, 32)",
    "params/up_1_attn_0/cross_v/bias: (32,)",
    "params/up_1_attn_0/cross_v/kernel: (6, 32)",
    "params/up_1_attn_0/k/bias: (32,)",
    "params/up_1_attn_0/k/kernel: (32, 32)",
    "params/up_1_attn_0/norm/bias: (32,)",
    "params/up_1_attn_0/norm/scale: (32,)",
    "params/up_1_attn_0/proj_out/bias: (32,)",
    "params/up_1_attn_0/proj_out/kernel: (32, 32)",
    "params/up_1_attn_0/q/bias: (32,)",
    "params/up_1_attn_0/q/kernel: (32, 32)",
    "params/up_1_attn_0/v/bias: (32,)",
    "params/up_1_attn_0/v/kernel: (32, 32)",
    "params/up_1_attn_1/cross_k/bias: (32,)",
    "params/up_1_attn_1/cross_k/kernel: (6, 32)",
    "params/up_1_attn_1/cross_norm/bias: (32,)",
    "params/up_1_attn_1/cross_norm/scale: (32,)",
    "params/up_1_attn_1/cross_proj_out/bias: (32,)",
    "params/up_1_attn_1/cross_proj_out/kernel: (32, 32)",
    "params/up_1_attn_1/cross_q/bias: (32,)",
    "params/up_1_attn_1/cross_q/kernel: (32, 32)",
    "params/up_1_attn_1/cross_v/bias: (32,)",
    "params/up_1_attn_1/cross_v/kernel: (6, 32)",
    "params/up_1_attn_1/k/bias: (32,)",
    "params/up_1_attn_1/k/kernel: (32, 32)",
    "params/up_1_attn_1/norm/bias: (32,)",
    "params/up_1_attn_1/norm/scale: (32,)",
    "params/up_1_attn_1/proj_out/bias: (32,)",
    "params/up_1_attn_1/proj_out/kernel: (32, 32)",
    "params/up_1_attn_1/q/bias: (32,)",
    "params/up_1_attn_1/q/kernel: (32, 32)",
    "params/up_1_attn_1/v/bias: (32,)",
    "params/up_1_attn_1/v/kernel: (32, 32)",
    "params/up_1_block_0/conv1/bias: (32,)",
    "params/up_1_block_0/conv1/kernel: (3, 3, 64, 32)",
    "params/up_1_block_0/conv2/bias: (32,)",
    "params/up_1_block_0/conv2/kernel: (3, 3, 32, 32)",
    "params/up_1_block_0/nin_shortcut/bias: (32,)",
    "params/up_1_block_0/nin_shortcut/kernel: (64, 32)",
    "params/up_1_block_0/norm1/bias: (64,)",
    "params/up_1_block_0/norm1/scale: (64,)",
    "params/up_1_block_0/norm2/bias: (32,)",
    "params/up_1_block_0/norm2/scale: (32,)",
    "params/up_1_block_0/temb_proj/bias: (32,)",
    "params/up_1_block_0/temb_proj/kernel: (64, 32)",
    "params/up_1_block_1/conv1/bias: (32,)",
    "params/up_1_block_1/conv1/kernel: (3, 3, 48, 32)",
    "params/up_1_block_1/conv2/bias: (32,)",
    "params/up_1_block_1/conv2/kernel: (3, 3, 32, 32)",
    "params/up_1_block_1/nin_shortcut/bias: (32,)",
    "params/up_1_block_1/nin_shortcut/kernel: (48, 32)",
    "params/up_1_block_1/norm1/bias: (48,)",
    "params/up_1_block_1/norm1/scale: (48,)",
    "params/up_1_block_1/norm2/bias: (32,)",
    "params/up_1_block_1/norm2/scale: (32,)",
    "params/up_1_block_1/temb_proj/bias: (32,)",
    "params/up_1_block_1/temb_proj/kernel: (64, 32)",
    "params/up_1_upsample/conv/bias: (32,)",
    "params/up_1_upsample/conv/kernel: (3, 3, 32, 32)",
)
CLASSIFIER_PATHS = (
    "params/encoder/conv_in/bias: (16,)",
    "params/encoder/conv_in/kernel: (3, 3, 1, 16)",
    "params/encoder/down_0_block_0/conv1/bias: (16,)",
    "params/encoder/down_0_block_0/conv1/kernel: (3, 3, 16, 16)",
    "params/encoder/down_0_block_0/conv2/bias: (16,)",
    "params/encoder/down_0_block_0/conv2/kernel: (3, 3, 16, 16)",
    "params/encoder/down_0_block_0/norm1/bias: (16,)",
    "params/encoder/down_0_block_0/norm1/scale: (16,)",
    "params/encoder/down_0_block_0/norm2/bias: (16,)",
    "params/encoder/down_0_block_0/norm2/scale: (16,)",
    "params/encoder/down_0_block_0/temb_proj/bias: (16,)",
    "params/encoder/down_0_block_0/temb_proj/kernel: (64, 16)",
    "params/encoder/down_0_downsample/conv/bias: (16,)",
    "params/encoder/down_0_downsample/conv/kernel: (3, 3, 16, 16)",
    "params/encoder/down_1_attn_0/k/bias: (32,)",
    "params/encoder/down_1_attn_0/k/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/norm/bias: (32,)",
    "params/encoder/down_1_attn_0/norm/scale: (32,)",
    "params/encoder/down_1_attn_0/proj_out/bias: (32,)",
    "params/encoder/down_1_attn_0/proj_out/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/q/bias: (32,)",
    "params/encoder/down_1_attn_0/q/kernel: (32, 32)",
    "params/encoder/down_1_attn_0/v/bias: (32,)",
    "params/encoder/down_1_attn_0/v/kernel: (32, 32)",
    "params/encoder/down_1_block_0/conv1/bias: (32,)",
    "params/encoder/down_1_block_0/conv1/kernel: (3, 3, 16, 32)",
    "params/encoder/down_1_block_0/conv2/bias: (32,)",
    "params/encoder/down_1_block_0/conv2/kernel: (3, 3, 32, 32)",
    "params/encoder/down_1_block_0/nin_shortcut/bias: (32,)",
    "params/encoder/down_1_block_0/nin_shortcut/kernel: (16, 32)",
    "params/encoder/down_1_block_0/norm1/bias: (16,)",
    "params/encoder/down_1_block_0/norm1/scale: (16,)",
    "params/encoder/down_1_block_0/norm2/bias: (32,)",
    "params/encoder/down_1_block_0/norm2/scale: (32,)",
    "params/encoder/down_1_block_0/temb_proj/bias: (32,)",
    "params/encoder/down_1_block_0/temb_proj/kernel: (64, 32)",
    "params/encoder/mid_attn_1/k/bias: (32,)",
    "params/encoder/mid_attn_1/k/kernel: (32, 32)",
    "params/encoder/mid_attn_1/norm/bias: (32,)",
    "params/encoder/mid_attn_1/norm/scale: (32,)",
    "params/encoder/mid_attn_1/proj_out/bias: (32,)",
    "params/encoder/mid_attn_1/proj_out/kernel: (32, 32)",
    "params/encoder/mid_attn_1/q/bias: (32,)",
    "params/encoder/mid_attn_1/q/kernel: (32, 32)",
    "params/encoder/mid_attn_1/v/bias: (32,)",
    "params/encoder/mid_attn_1/v/kernel: (32, 32)",
    "params/encoder/mid_block_1/conv1/bias: (32,)",
    "params/encoder/mid_block_1/conv1/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_1/conv2/bias: (32,)",
    "params/encoder/mid_block_1/conv2/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_1/norm1/bias: (32,)",
    "params/encoder/mid_block_1/norm1/scale: (32,)",
    "params/encoder/mid_block_1/norm2/bias: (32,)",
    "params/encoder/mid_block_1/norm2/scale: (32,)",
    "params/encoder/mid_block_1/temb_proj/bias: (32,)",
    "params/encoder/mid_block_1/temb_proj/kernel: (64, 32)",
    "params/encoder/mid_block_2/conv1/bias: (32,)",
    "params/encoder/mid_block_2/conv1/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_2/conv2/bias: (32,)",
    "params/encoder/mid_block_2/conv2/kernel: (3, 3, 32, 32)",
    "params/encoder/mid_block_2/norm1/bias: (32,)",
    "params/encoder/mid_block_2/norm1/scale: (32,)",
    "params/encoder/mid_block_2/norm2/bias: (32,)",
    "params/encoder/mid_block_2/norm2/scale: (32,)",
    "params/encoder/mid_block_2/temb_proj/bias: (32,)",
    "params/encoder/mid_block_2/temb_proj/kernel: (64, 32)",
    "params/head/bias: (10,)",
    "params/head/kernel: (32, 10)",
    "params/norm_out/bias: (32,)",
    "params/norm_out/scale: (32,)",
    "params/temb/dense0/bias: (64,)",
    "params/temb/dense0/kernel: (16, 64)",
    "params/temb/dense1/bias: (64,)",
    "params/temb/dense1/kernel: (64, 64)",
)
