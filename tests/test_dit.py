"""Tests of the DiT backbone (Peebles & Xie 2023) in diffusion_jax/models/dit.py."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import dit

SMALL = dict(depth=2, hidden_size=32, num_heads=4, patch_size=2)
B = 2
VOCAB = {None, "embed", "mlp", "heads", "conv_in", "conv_out", "norm", "vocab"}


def _inputs(channels=3, height=8, width=8):
  x = np.random.default_rng(0).normal(size=(B, height, width, channels))
  return jnp.asarray(x, jnp.float32), jnp.array([3, 700], jnp.int32)


def _variable_shapes(model, *args, **kwargs):
  """Boxed variable shapes via eval_shape (nothing is materialised)."""
  return jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, *args, train=False, **kwargs)
  )


def _random_params(model, *args, **kwargs):
  """Plain non-trivial parameters (the real init zeroes adaLN and the output)."""
  rng = np.random.default_rng(1)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype),
      nn.meta.unbox(_variable_shapes(model, *args, **kwargs)),
  )


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnames=("model",))
def _apply(model, variables, x, t, y=None):
  return model.apply(variables, x, t, y, train=False)


# ----------------------------------------------------------------------------
# NumPy float64 references, written from the official facebookresearch/DiT
# models.py (nothing below imports the code under test).
# ----------------------------------------------------------------------------


def _official_get_2d_sincos_pos_embed(embed_dim, grid_size):
  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.meshgrid(grid_w, grid_h)  # here w goes first
  grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])

  def embed_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb_h = embed_1d(embed_dim // 2, grid[0])
  emb_w = embed_1d(embed_dim // 2, grid[1])
  return np.concatenate([emb_h, emb_w], axis=1)


def _np_layer_norm(x, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps)


def _np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _np_dense(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _np_dit_block(p, x, c, num_heads):
  """DiTBlock.forward with timm's Attention (qkv -> [B, N, 3, heads, hd]) and Mlp."""
  b, n, d = x.shape
  silu = c / (1.0 + np.exp(-c))
  shift1, scale1, gate1, shift2, scale2, gate2 = np.split(
      _np_dense(p["adaLN_modulation"], silu), 6, axis=-1
  )
  modulate = lambda h, shift, scale: h * (1 + scale[:, None]) + shift[:, None]
  h = modulate(_np_layer_norm(x), shift1, scale1)
  qkv = _np_dense(p["qkv"], h).reshape(b, n, 3, num_heads, d // num_heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # [B, heads, N, hd] each
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // num_heads)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attn = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  x = x + gate1[:, None] * _np_dense(p["proj"], attn)
  h = modulate(_np_layer_norm(x), shift2, scale2)
  h = _np_dense(p["fc2"], _np_gelu_tanh(_np_dense(p["fc1"], h)))
  return x + gate2[:, None] * h


# ----------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------


def test_dit_xl2_has_official_parameter_count():
  model = dit.get_dit("DiT-XL/2", num_classes=1000, learn_sigma=True)
  x, t = jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,), jnp.int32)
  shapes = _variable_shapes(model, x, t, t)
  assert set(shapes) == {"params"}
  trainable = _count(shapes)
  pos_embed = dit.get_2d_sincos_pos_embed(1152, 16, 16).size  # The frozen buffer.
  assert trainable == 674_834_720
  assert trainable + pos_embed == 675_129_632  # Official models.py count ("675M").
  out = jax.eval_shape(lambda v: model.apply(v, x, t, t, train=False), shapes)
  assert out.shape == (1, 32, 32, 8) and out.dtype == jnp.float32


def test_presets_are_table1():
  table1 = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
  expected = {
      f"DiT-{s}/{p}": (*table1[s], p) for s in ("S", "B", "L", "XL") for p in (2, 4, 8)
  }
  assert {k: tuple(v) for k, v in dit.DIT_CONFIGS.items()} == expected
  model = dit.get_dit("DiT-B/4", learn_sigma=True)
  assert (model.depth, model.hidden_size, model.num_heads, model.patch_size) == (12, 768, 12, 4)
  with pytest.raises(ValueError, match="DiT-S/2"):
    dit.get_dit("DiT-M/2")


def test_timestep_embedding_is_official_cos_sin():
  t = np.array([0.0, 1.0, 17.5, 999.0])
  dim, half = 256, 128
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
  ref = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=-1)
  emb = jax.jit(dit.timestep_embedding, static_argnums=1)(jnp.asarray(t), dim)
  assert emb.shape == (4, 256) and emb.dtype == jnp.float32
  np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-4)
  assert dit.timestep_embedding(jnp.array([2.0]), 7).shape == (1, 7)


def test_pos_embed_matches_official():
  for dim, grid in [(64, 4), (1152, 16), (384, 8)]:
    np.testing.assert_allclose(
        dit.get_2d_sincos_pos_embed(dim, grid, grid),
        _official_get_2d_sincos_pos_embed(dim, grid),
        rtol=0, atol=1e-15,
    )
  # Non-square grids: token (i, j) embeds like token (i, j) of a square grid.
  rect = dit.get_2d_sincos_pos_embed(64, 2, 3).reshape(2, 3, 64)
  square = _official_get_2d_sincos_pos_embed(64, 3).reshape(3, 3, 64)
  np.testing.assert_allclose(rect, square[:2], rtol=0, atol=1e-15)
  assert dit.get_2d_sincos_pos_embed(64, 4, 4).dtype == np.float64


def test_patchify_unpatchify_round_trip_is_exact():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 12, 3)), jnp.float32)
  tokens = jax.jit(dit.patchify, static_argnums=1)(x, 4)
  assert tokens.shape == (2, 6, 48)
  np.testing.assert_array_equal(tokens[0, 1], np.asarray(x[0, 0:4, 4:8]).reshape(-1))
  back = jax.jit(dit.unpatchify, static_argnums=(1, 2, 3))(tokens, 4, 8, 12)
  np.testing.assert_array_equal(back, x)


def test_patch_embedding_is_linear_on_patchify_plus_pos_embed():
  model = dit.DiT(**SMALL)
  x, t = _inputs()
  params = _random_params(model, x, t)
  _, state = jax.jit(
      lambda p: model.apply(p, x, t, train=False, capture_intermediates=True)
  )(params)
  conv_out = state["intermediates"]["x_embedder"]["__call__"][0]
  k = np.asarray(params["params"]["x_embedder"]["kernel"], np.float64)
  b = np.asarray(params["params"]["x_embedder"]["bias"], np.float64)
  ref = np.asarray(dit.patchify(x, 2), np.float64) @ k.reshape(-1, 32) + b
  np.testing.assert_allclose(np.asarray(conv_out).reshape(B, 16, 32), ref, rtol=1e-5, atol=1e-5)
  # The positional embedding makes patches of a constant image differ.
  out = _apply(model, params, jnp.ones_like(x), t)
  patches = np.asarray(dit.patchify(out, 2))
  assert np.abs(patches - patches[:, :1]).max() > 1e-3


def test_real_init_outputs_zero_and_shapes():
  x, t = _inputs()
  y = jnp.array([1, 2])
  for kwargs, out_ch in [({}, 3), ({"learn_sigma": True}, 6), ({"out_channels": 5}, 5)]:
    model = dit.DiT(**SMALL, num_classes=10, **kwargs)
    shapes = _variable_shapes(model, x, t)
    out = jax.eval_shape(lambda v: model.apply(v, x, t, y, train=False), shapes)
    assert out.shape == (B, 8, 8, out_ch) and out.dtype == jnp.float32
  model = dit.DiT(**SMALL, num_classes=10, out_channels=2, learn_sigma=True)
  variables = jax.jit(lambda k: model.init({"params": k}, x, t, train=False))(jax.random.key(0))
  out = _apply(model, variables, x, t, y)
  assert out.shape == (B, 8, 8, 4) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero + zero final layer.
  params = nn.meta.unbox(variables)["params"]
  for i in range(SMALL["depth"]):
    assert not np.any(params[f"blocks_{i}"]["adaLN_modulation"]["kernel"])
    assert np.any(params[f"blocks_{i}"]["qkv"]["kernel"])
  assert not np.any(params["final_layer"]["adaLN_modulation"]["kernel"])
  assert not np.any(params["final_layer"]["linear"]["kernel"])
  # Patch embedding initialised as a Linear: xavier bound with fan_in = p * p * C.
  kernel = np.abs(params["x_embedder"]["kernel"])
  bound = math.sqrt(6.0 / (2 * 2 * 3 + 32))
  assert 0.8 * bound < kernel.max() <= bound
  assert params["y_embedder"]["embedding"].shape == (11, 32)


def test_labels_condition_the_output():
  model = dit.DiT(**SMALL, num_classes=10, learn_sigma=True)
  x, t = _inputs()
  params = _random_params(model, x, t)
  out = lambda y: np.asarray(_apply(model, params, x, t, y))
  a, b, null = out(jnp.array([1, 1])), out(jnp.array([2, 2])), out(jnp.array([10, 10]))
  assert np.abs(a - b).max() > 1e-3 and np.abs(a - null).max() > 1e-3
  np.testing.assert_array_equal(out(None), null)
  with pytest.raises(ValueError, match="num_classes"):
    dit.DiT(**SMALL).init({"params": jax.random.key(0)}, x, t, jnp.array([1, 2]), train=False)


def test_block_matches_numpy_reference():
  block = dit.DiTBlock(num_heads=4, mlp_ratio=2.5)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 32))
  c = rng.normal(size=(2, 32))
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(c, jnp.float32))
  shapes = nn.meta.unbox(jax.eval_shape(lambda: block.init(jax.random.key(0), *args)))
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), jnp.float32), shapes
  )
  assert params["params"]["fc1"]["kernel"].shape == (32, 80)
  out = jax.jit(block.apply)(params, *args)
  ref = _np_dit_block(params["params"], x, c, num_heads=4)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _grads(model, params, x, t, y):
  return jax.grad(lambda p: jnp.mean(model.apply(p, x, t, y, train=False) ** 2))(params)


@pytest.mark.parametrize("policy", sorted(dit.REMAT_POLICIES))
def test_remat_gradients_match(policy):
  x, t = _inputs()
  y = jnp.array([1, 2])
  small = {**SMALL, "depth": 1}
  plain = dit.DiT(**small, num_classes=10, learn_sigma=True)
  remat = dit.DiT(**small, num_classes=10, learn_sigma=True, remat_policy=policy)
  params = _random_params(plain, x, t)
  assert jax.tree.structure(nn.meta.unbox(_variable_shapes(remat, x, t))) == (
      jax.tree.structure(params)
  )
  expected = _grads(plain, params, x, t, y)  # Compiled once, cached across policies.
  for g, h in zip(jax.tree.leaves(expected), jax.tree.leaves(_grads(remat, params, x, t, y))):
    np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-7)
  assert np.abs(expected["params"]["blocks_0"]["qkv"]["kernel"]).max() > 0


def test_bad_remat_policy_raises():
  x, t = _inputs()
  with pytest.raises(ValueError, match="remat_policy.*dots_saveable"):
    _variable_shapes(dit.DiT(**SMALL, remat_policy="save_all"), x, t)
  assert dit.get_remat_policy("nothing_saveable") is jax.checkpoint_policies.nothing_saveable


def test_every_param_has_logical_names():
  model = dit.DiT(**SMALL, num_classes=10, learn_sigma=True)
  x, t = _inputs()
  variables = _variable_shapes(model, x, t)
  leaves = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) == len(jax.tree.leaves(nn.meta.unbox(variables)))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= VOCAB, leaf
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["x_embedder"]["kernel"]) == (None, None, "conv_in", "conv_out")
  assert tuple(specs["y_embedder"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["blocks_0"]["qkv"]["kernel"]) == ("embed", "heads")
  assert tuple(specs["blocks_0"]["proj"]["kernel"]) == ("heads", "embed")
  assert tuple(specs["blocks_0"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["blocks_0"]["fc2"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["blocks_0"]["fc2"]["bias"]) == ("embed",)


def test_bfloat16_compute_returns_float32():
  x, t = _inputs()
  model32 = dit.DiT(**SMALL, num_classes=10)
  model16 = dit.DiT(**SMALL, num_classes=10, dtype=jnp.bfloat16)
  params = _random_params(model32, x, t)
  out16 = np.asarray(_apply(model16, params, x, t, jnp.array([1, 2])))
  out32 = np.asarray(_apply(model32, params, x, t, jnp.array([1, 2])))
  assert out16.dtype == np.float32 and np.isfinite(out16).all()
  assert np.linalg.norm(out16 - out32) < 0.05 * np.linalg.norm(out32)


@pytest.mark.parametrize(
    "kwargs, shape, call, match",
    [
        ({"patch_size": 3}, (1, 8, 8, 3), {}, "patch_size"),
        ({"num_heads": 5}, (1, 8, 8, 3), {}, "num_heads"),
        ({"hidden_size": 30, "num_heads": 3}, (1, 8, 8, 3), {}, "hidden_size"),
        ({"dtype": jnp.float16}, (1, 8, 8, 3), {}, "dtype"),
        ({"param_dtype": "int8"}, (1, 8, 8, 3), {}, "param_dtype"),
        ({"depth": 0}, (1, 8, 8, 3), {}, "depth"),
        ({"out_channels": 0}, (1, 8, 8, 3), {}, "out_channels"),
        ({"mlp_ratio": 0.0}, (1, 8, 8, 3), {}, "mlp_ratio"),
        ({"num_classes": 0}, (1, 8, 8, 3), {}, "num_classes"),
        ({}, (1, 8, 8, 3), {"context": jnp.zeros((1, 4, 8))}, "context"),
        ({}, (8, 8, 3), {}, "NHWC"),
    ],
)
def test_validation(kwargs, shape, call, match):
  model = dit.DiT(**{**SMALL, **kwargs})
  with pytest.raises(ValueError, match=match):
    _variable_shapes(model, jnp.zeros(shape), jnp.zeros((1,), jnp.int32), **call)
