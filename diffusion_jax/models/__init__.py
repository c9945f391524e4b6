"""The networks, chosen by name in one registry, and their model functions.

`NETWORKS` maps `config.model.name` to a builder of the denoising network
(`builder(model_config, spec, *, learn_sigma) -> flax module`); the
noise-aware classifier of classifier guidance is built by `build_classifier`.
Every network is called as `net.apply({"params": params}, x_t, t, y=...,
context=..., train=...)` and initialised by `init_params` to a plain pytree
of arrays (the Flax logical axis boxes are stripped; `param_specs` keeps
their names for sharding).

Adding a network family is one builder plus one line in `NETWORKS`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import ArgumentError, check_choice
from diffusion_jax.conditioning import DataSpec, make_cond, model_inputs
from diffusion_jax.models import dit as dit_lib
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.dit import DiT
from diffusion_jax.models.unet import UNet

__all__ = ["DTYPES", "NETWORKS", "build_network", "build_classifier", "make_model_fn",
           "make_classifier_fn", "init_variables", "init_params", "param_specs",
           "count_params"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _unet_fields(m) -> dict[str, Any]:
  """The UNet-family architecture fields of `config.model` (shared with the classifier)."""
  check_choice("dtype", m.dtype, DTYPES)
  return dict(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
              num_heads=m.num_heads, num_groups=m.num_groups, dtype=DTYPES[m.dtype],
              remat_policy=m.remat)


def _unet(m, spec: DataSpec, *, learn_sigma: bool) -> UNet:
  return UNet(**_unet_fields(m), attention_impl=m.attention_impl,
              out_channels=spec.channels, learn_sigma=learn_sigma,
              num_classes=spec.num_classes if spec.conditioning == "class" else None,
              context_dim=spec.context_shape[1] if spec.context_shape else None)


def _dit(m, spec: DataSpec, *, learn_sigma: bool) -> DiT:
  check_choice("dtype", m.dtype, DTYPES)
  if spec.conditioning == "embedding":
    raise ArgumentError("conditioning", "model.name='dit' is class-conditional or "
                        "unconditional; it takes no embedding sequence (model.conditioning).")
  size = (dit_lib.DIT_CONFIGS[check_choice("variant", m.variant, dit_lib.DIT_CONFIGS)]._asdict()
          if m.variant is not None else dict(depth=m.depth, hidden_size=m.hidden_size,
                                             num_heads=m.num_heads, patch_size=m.patch_size))
  return DiT(**size, mlp_ratio=m.mlp_ratio, out_channels=spec.channels,
             learn_sigma=learn_sigma,
             num_classes=spec.num_classes if spec.conditioning == "class" else None,
             dtype=DTYPES[m.dtype], remat_policy=m.remat)


# name -> builder(model_config, spec, *, learn_sigma) -> nn.Module
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "dit": _dit,
}


def build_network(model_config, spec: DataSpec, *, learn_sigma: bool) -> nn.Module:
  """The denoising network `model_config.name` for the data `spec`.

  Raises ValueError (naming the field) for an unknown name or a bad
  architecture setting, before anything is traced.
  """
  check_choice("name", model_config.name, NETWORKS, kind="networks")
  net = NETWORKS[model_config.name](model_config, spec, learn_sigma=learn_sigma)
  net.validate()
  return net


def build_classifier(model_config, spec: DataSpec) -> NoisyClassifier:
  """The noise-aware classifier p(y | x_t, t) with the UNet encoder's fields."""
  net = NoisyClassifier(num_classes=spec.num_classes, **_unet_fields(model_config))
  net.validate()
  return net


def make_model_fn(net: nn.Module) -> Callable:
  """`model_fn(params, x_t, t, cond) -> output` in inference mode (no dropout).

  Only the parts of `cond` the network was built for are used, so an
  unconditional model ignores e.g. the labels meant for classifier guidance.
  """
  keep = {"y": getattr(net, "num_classes", None) is not None,
          "context": getattr(net, "context_dim", None) is not None}

  def model_fn(params, x_t, t, cond=None):
    inputs = {k: v for k, v in model_inputs(cond).items() if keep[k]}
    return net.apply({"params": params}, x_t, t, **inputs, train=False)
  return model_fn


def make_classifier_fn(net: NoisyClassifier) -> Callable:
  """`classifier_fn(params, x_t, t) -> logits [B, C]` in inference mode."""
  return lambda params, x_t, t: net.apply({"params": params}, x_t, t, train=False)


def init_variables(net: nn.Module, spec: DataSpec, rng):
  """The network's initial variables, parameters boxed with their logical axis names."""
  x = jnp.zeros((1, spec.image_size, spec.image_size, spec.channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  if isinstance(net, NoisyClassifier):
    return net.init({"params": rng}, x, t, train=False)
  cond = make_cond(spec, jnp.zeros((1,), jnp.int32))
  return net.init({"params": rng}, x, t, **model_inputs(cond), train=False)


def init_params(net: nn.Module, spec: DataSpec, rng):
  """The network's initial parameters, a plain pytree of arrays."""
  return nn.meta.unbox(init_variables(net, spec, rng))["params"]


def param_specs(net: nn.Module, spec: DataSpec):
  """The logical axis names of every parameter (a pytree of PartitionSpec)."""
  boxed = jax.eval_shape(functools.partial(init_variables, net, spec), jax.random.key(0))
  return nn.get_partition_spec(boxed)["params"]


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
