"""Loads diffusers' ``UNet2DModel`` weights (google/ddpm-*) into ``unet.UNet``.

The DDPM checkpoints that Google published in diffusers' format
(google/ddpm-cifar10-32, google/ddpm-celebahq-256, google/ddpm-church-256,
google/ddpm-bedroom-256, google/ddpm-cat-256 and their ddpm-ema-* variants)
are Ho et al.'s (2020) models; their ``UNet2DModel`` configuration is the
project's ``UNet`` layer for layer:

  * ``Timesteps(flip_sin_to_cos=False, freq_shift=1)`` is
    ``layers.timestep_embedding`` ([sin, cos], frequencies
    ``10000 ** (-i / (half - 1))``); ``TimestepEmbedding`` is ``temb``;
  * ``ResnetBlock2D`` (resnet_time_scale_shift "default") is ``ResBlock``
    with its 1x1 ``conv_shortcut`` as the ``nin_shortcut`` Dense;
  * the attention blocks (``attention_head_dim`` None: one head) are
    ``AttnBlock``; attention sits at the same levels going down and up, so
    it maps to ``attn_resolutions`` = the spatial sizes of those levels at
    ``sample_size``;
  * ``Downsample2D`` with ``downsample_padding=0`` pads (0, 1) before its
    stride-2 conv, i.e. TF's 'SAME'; ``Upsample2D`` is nearest + conv;
  * GroupNorm eps 1e-6, SiLU, ``mid_block_scale_factor`` 1.

google/ddpm-cifar10-32 converts to ``UNet(ch=128, ch_mult=(1, 2, 2, 2),
num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, num_heads=1,
num_groups=32, out_channels=3)``: 35,746,307 parameters, Ho et al.'s CIFAR-10
model (trained with dropout 0.1; the config stores 0.0, which only matters
for fine-tuning: pass ``dropout=0.1`` to ``UNet`` then).

Example: sampling google/ddpm-cifar10-32. Download the model folder yourself
(nothing here reaches the network), e.g.
``huggingface-cli download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32``;
the folder (or its ``unet/`` subfolder) holds ``config.json`` and
``diffusion_pytorch_model.safetensors`` (or ``.bin``)::

    import jax
    import jax.numpy as jnp
    import diffusion_jax as dj
    from diffusion_jax.models import convert_diffusers, unet

    kwargs, params = convert_diffusers.load_diffusers_unet("ddpm-cifar10-32")
    model = unet.UNet(**kwargs)
    # The model's DDPMScheduler: linear betas 1e-4 .. 0.02, T = 1000,
    # "fixed_small" variance, x0 clipped to [-1, 1]; eps prediction.
    schedule = dj.get_schedule("linear", num_timesteps=1000)

    def model_fn(params, x_t, t, cond):
      return model.apply({"params": params}, x_t, t, train=False)

    sample_fn = dj.make_sample_fn(model_fn, schedule, shape=(16, 32, 32, 3),
                                  sampler="ddim", num_steps=100, clip_x0=1.0)
    x0 = sample_fn(params, jax.random.key(0))        # [16, 32, 32, 3] in [-1, 1]
    images = jnp.round((jnp.clip(x0, -1, 1) + 1) * 127.5).astype(jnp.uint8)

(``sampler="ddpm", num_steps=None`` runs the 1000 ancestral steps of the
paper.) Images are NHWC in [-1, 1], as the project's data.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models import partitioning
from diffusion_jax.models import unet

__all__ = ["load_diffusers_unet", "unet_kwargs_from_config", "convert_state_dict"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
BIN_NAME = "diffusion_pytorch_model.bin"

# ``UNet2DModel.__init__``'s defaults (diffusers 0.42), used for the fields a
# config.json omits, as diffusers does (old configs omit e.g. dropout).
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": (
        "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"
    ),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# Fields whose value must be one of these (the project's UNet family).
_FIXED = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "freq_shift": (1,),
    "flip_sin_to_cos": (False,),
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,),
    "downsample_padding": (0,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default",),
    "add_attention": (True,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
}
_DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D")
_UP_TYPES = ("UpBlock2D", "AttnUpBlock2D")
_NORM_EPS = 1e-6


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _same(value: Any, allowed: Any) -> bool:
  """Equality keeping JSON booleans and null apart from numbers (True != 1)."""
  if isinstance(value, bool) or value is None or isinstance(allowed, bool) or allowed is None:
    return value is allowed
  return value == allowed


def unet_kwargs_from_config(config: dict[str, Any]) -> dict[str, Any]:
  """Maps a diffusers ``UNet2DModel`` config to ``unet.UNet`` keyword arguments.

  Missing fields take diffusers' defaults (``UNET2D_DEFAULTS``); keys starting
  with "_" (``_class_name``, ``_diffusers_version``, ...) are metadata.

  Args:
    config: the parsed ``config.json``.

  Returns:
    ``UNet`` keyword arguments: ch, ch_mult, num_res_blocks, attn_resolutions,
    dropout, num_heads, num_groups, resamp_with_conv, out_channels.

  Raises:
    ValueError: listing every unsupported field as ``field=value`` with the
      supported values (the configuration is not of the project's family).
  """
  class_name = config.get("_class_name", "UNet2DModel")
  errors = []
  if class_name != "UNet2DModel":
    errors.append(f"_class_name={class_name!r} (supported: 'UNet2DModel')")
  unknown = sorted(k for k in config if not k.startswith("_") and k not in UNET2D_DEFAULTS)
  for k in unknown:
    errors.append(f"{k}={config[k]!r} (supported: only UNet2DModel's fields "
                  f"{sorted(UNET2D_DEFAULTS)})")
  cfg = {**UNET2D_DEFAULTS, **{k: v for k, v in config.items() if k in UNET2D_DEFAULTS}}

  def bad(field: str, supported: str) -> None:
    errors.append(f"{field}={cfg[field]!r} (supported: {supported})")

  for field, allowed in _FIXED.items():
    if not any(_same(cfg[field], a) for a in allowed):
      bad(field, " or ".join(repr(a) for a in allowed))
  eps = cfg["norm_eps"]
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isclose(
      eps, _NORM_EPS, rel_tol=1e-6):
    bad("norm_eps", f"{_NORM_EPS!r}, the UNet's GroupNorm epsilon")
  for field in ("in_channels", "out_channels"):
    if not _is_int(cfg[field]) or cfg[field] <= 0:
      bad(field, "a positive int")
  lpb = cfg["layers_per_block"]
  if not _is_int(lpb) or lpb < 1:
    bad("layers_per_block", "an int >= 1")
  dropout = cfg["dropout"]
  if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    bad("dropout", "a float in [0, 1)")
  groups = cfg["norm_num_groups"]
  if not _is_int(groups) or groups <= 0:
    bad("norm_num_groups", "a positive int dividing every block's channels")
  if cfg["attn_norm_num_groups"] is not None and cfg["attn_norm_num_groups"] != groups:
    bad("attn_norm_num_groups", f"None or norm_num_groups={groups!r}")

  boc = cfg["block_out_channels"]
  if (not isinstance(boc, (list, tuple)) or not boc
      or not all(_is_int(c) and c > 0 for c in boc) or any(c % boc[0] for c in boc)):
    bad("block_out_channels", "positive ints, each a multiple of the first")
    boc = None
  n = len(boc) if boc else 0
  down, up = cfg["down_block_types"], cfg["up_block_types"]
  down_ok = (isinstance(down, (list, tuple)) and len(down) == n
             and all(b in _DOWN_TYPES for b in down))
  if not down_ok:
    bad("down_block_types", f"{n} entries (one per block_out_channels) from {_DOWN_TYPES}")
  attn_levels = [i for i, b in enumerate(down) if b == "AttnDownBlock2D"] if down_ok else []
  if down_ok:
    mirror = tuple("AttnUpBlock2D" if n - 1 - i in attn_levels else "UpBlock2D"
                   for i in range(n))
    if not isinstance(up, (list, tuple)) or tuple(up) != mirror:
      bad("up_block_types", f"attention at the levels of down_block_types: {mirror!r}")
  elif not isinstance(up, (list, tuple)) or not all(b in _UP_TYPES for b in up):
    bad("up_block_types", f"entries from {_UP_TYPES} mirroring down_block_types")

  temb_dim = cfg["time_embedding_dim"]
  if boc and temb_dim is not None and temb_dim != 4 * boc[0]:
    bad("time_embedding_dim", f"None or 4 * block_out_channels[0] = {4 * boc[0]}")

  num_heads = 1
  head_dim = cfg["attention_head_dim"]
  if boc and head_dim is not None:
    channels = sorted({boc[i] for i in attn_levels} | {boc[-1]})  # + the middle block.
    if not _is_int(head_dim) or head_dim <= 0 or any(c % head_dim for c in channels) or len(
        {c // head_dim for c in channels}) != 1:
      bad("attention_head_dim", "None (one head), or a head size giving every "
          f"attention block (channels {channels}) the same number of heads")
    else:
      num_heads = channels[0] // head_dim

  size = cfg["sample_size"]
  if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
    size = size[0]
  if not _is_int(size) or size <= 0 or (n and size % 2 ** (n - 1)):
    bad("sample_size", "a positive int (or [s, s]) divisible by "
        "2 ** (len(block_out_channels) - 1); it places the attention blocks")

  if errors:
    raise ValueError(
        "Unsupported diffusers UNet2DModel config for diffusion_jax's UNet: "
        + "; ".join(errors) + "."
    )
  return dict(
      ch=boc[0],
      ch_mult=tuple(c // boc[0] for c in boc),
      num_res_blocks=lpb,
      attn_resolutions=tuple(size // 2**i for i in attn_levels),
      dropout=float(dropout),
      num_heads=num_heads,
      num_groups=groups,
      resamp_with_conv=True,
      out_channels=cfg["out_channels"],
  )


# Project module names -> diffusers module names.
_RES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj",
        "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# diffusers' deprecated attention names (checkpoints saved before diffusers
# 0.14, such as google/ddpm-*), renamed as diffusers' loader does.
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _diffusers_key(path: tuple[str, ...], num_levels: int) -> str:
  """The diffusers state-dict key of the UNet parameter at ``path``."""
  *mods, leaf = path
  if mods[0] == "encoder":
    mods = mods[1:]
  top, sub = mods[0], mods[1:]
  if top == "temb":
    prefix = {"dense0": "time_embedding.linear_1", "dense1": "time_embedding.linear_2"}[sub[0]]
  elif top in ("conv_in", "conv_out"):
    prefix = top
  elif top == "norm_out":
    prefix = "conv_norm_out"
  elif top in ("mid_block_1", "mid_block_2"):
    prefix = f"mid_block.resnets.{int(top[-1]) - 1}.{_RES[sub[0]]}"
  elif top == "mid_attn_1":
    prefix = f"mid_block.attentions.0.{_ATTN[sub[0]]}"
  else:
    m = re.fullmatch(r"(down|up)_(\d+)_(block|attn|downsample|upsample)(?:_(\d+))?", top)
    direction, level, kind, index = m.groups()
    block = (f"down_blocks.{level}" if direction == "down"
             else f"up_blocks.{num_levels - 1 - int(level)}")
    if kind == "block":
      prefix = f"{block}.resnets.{index}.{_RES[sub[0]]}"
    elif kind == "attn":
      prefix = f"{block}.attentions.{index}.{_ATTN[sub[0]]}"
    else:
      prefix = f"{block}.{kind}rs.0.conv"
  return f"{prefix}.{_LEAF[leaf]}"


def _rename_deprecated(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  pattern = re.compile(r"(.*attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
  out = {}
  for k, v in state_dict.items():
    m = pattern.fullmatch(k)
    out[f"{m[1]}.{_OLD_ATTN[m[2]]}.{m[3]}" if m else k] = v
  return out


def _expected_shapes(unet_kwargs: dict[str, Any], in_channels: int, sample_size: int):
  """Plain ``{path: shape}`` of ``UNet(**unet_kwargs)``'s params (no compute)."""
  model = unet.UNet(**unet_kwargs)
  x = jnp.zeros((1, sample_size, sample_size, in_channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, x, t, train=False))
  return partitioning.unbox(shapes)["params"]


def convert_state_dict(
    state_dict: dict[str, Any],
    unet_kwargs: dict[str, Any],
    in_channels: int,
    sample_size: int,
) -> dict[str, Any]:
  """Converts a ``UNet2DModel`` state dict into ``UNet(**unet_kwargs)``'s params.

  Conv weights [out, in, kh, kw] become kernels [kh, kw, in, out], Linear
  weights [out, in] kernels [in, out], the 1x1 ``conv_shortcut`` the
  ``nin_shortcut`` Dense kernel, GroupNorm weight its scale.

  Args:
    state_dict: diffusers key -> array (numpy, jax or torch CPU tensor).
    unet_kwargs: from ``unet_kwargs_from_config``.
    in_channels: the model's input channels.
    sample_size: image size H = W at which the attention resolutions hold.

  Returns:
    The params tree (nested dicts) of plain float32 ``jax.Array``s.

  Raises:
    ValueError: a missing or unused key, or a shape mismatch.
  """
  state_dict = _rename_deprecated(dict(state_dict))
  expected = _expected_shapes(unet_kwargs, in_channels, sample_size)
  num_levels = len(unet_kwargs["ch_mult"])
  used, problems = set(), []

  def convert(path, leaf):
    names = tuple(p.key for p in path)
    key = _diffusers_key(names, num_levels)
    if key not in state_dict:
      problems.append(f"missing {key} (for {'/'.join(names)})")
      return None
    used.add(key)
    w = np.asarray(state_dict[key], np.float32)
    if names[-1] == "kernel":
      if w.ndim == 4 and leaf.ndim == 4:
        w = w.transpose(2, 3, 1, 0)
      elif w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w[:, :, 0, 0].T
      elif w.ndim == 2:
        w = w.T
    if w.shape != leaf.shape:
      problems.append(f"{key} has shape {w.shape} after conversion, expected {leaf.shape}")
      return None
    return jnp.asarray(w, jnp.float32)

  params = jax.tree_util.tree_map_with_path(convert, expected)
  unused = sorted(set(state_dict) - used)
  if unused:
    problems.append(f"unused keys {unused}")
  if problems:
    raise ValueError(
        "The diffusers state dict does not match the config's UNet: " + "; ".join(problems))
  return params


def _read_state_dict(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """The folder's weights: safetensors (single or sharded), else the torch .bin."""
  from safetensors import safe_open

  index = folder / SAFETENSORS_INDEX_NAME
  if (folder / SAFETENSORS_NAME).is_file():
    files = [folder / SAFETENSORS_NAME]
  elif index.is_file():
    files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
  elif (folder / BIN_NAME).is_file():
    import torch  # Only for a .bin checkpoint.

    state = torch.load(folder / BIN_NAME, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  else:
    raise FileNotFoundError(
        f"No weights in {folder}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} "
        f"or {BIN_NAME}."
    )
  out = {}
  for f in files:
    with safe_open(str(f), framework="flax") as fh:  # "flax": bfloat16 too.
      for k in fh.keys():
        out[k] = np.asarray(fh.get_tensor(k), np.float32)
  return out


def load_diffusers_unet(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a diffusers ``UNet2DModel`` folder as ``UNet`` kwargs and params.

  Args:
    path: a local folder in diffusers' format: ``config.json`` and
      ``diffusion_pytorch_model.safetensors`` (or a sharded safetensors index,
      or ``diffusion_pytorch_model.bin``, read with torch only then); a
      pipeline folder with these files in ``unet/`` works too.

  Returns:
    ``(unet_kwargs, params)``: ``unet.UNet(**unet_kwargs)`` applied with
    ``{"params": params}`` computes diffusers' forward pass on NHWC inputs
    (``model.apply({"params": params}, x, t, train=False)``); params are
    plain float32 arrays in the UNet's tree.

  Raises:
    FileNotFoundError: no config.json or weights.
    ValueError: an unsupported configuration (each field named with its
      value and the supported values) or weights not matching it.
  """
  folder = pathlib.Path(path)
  if not (folder / CONFIG_NAME).is_file() and (folder / "unet" / CONFIG_NAME).is_file():
    folder = folder / "unet"
  if not (folder / CONFIG_NAME).is_file():
    raise FileNotFoundError(f"No {CONFIG_NAME} in {path} (nor in {path}/unet).")
  config = json.loads((folder / CONFIG_NAME).read_text())
  unet_kwargs = unet_kwargs_from_config(config)
  size = config["sample_size"]
  size = size[0] if isinstance(size, (list, tuple)) else size
  in_channels = config.get("in_channels", UNET2D_DEFAULTS["in_channels"])
  params = convert_state_dict(_read_state_dict(folder), unet_kwargs, in_channels, size)
  return unet_kwargs, params
