"""Converts pytorch-fid's FID Inception weights (.pth) to this project's .npz.

  python -m diffusion_jax.metrics.convert_inception \
      pt_inception-2015-12-05-6726825d.pth fid_inception_v3.npz

The input is the state dict of ``pytorch_fid.inception.fid_inception_v3()``
as published at `inception.FID_WEIGHTS_URL`. Every ``BasicConv2d`` gives five
torch entries that map onto one Flax module path ``<module>/<conv|bn>``:

  ``<m>.conv.weight`` [O, I, kh, kw] -> ``params/<m>/conv/kernel`` [kh, kw, I, O]
  ``<m>.bn.weight`` / ``<m>.bn.bias`` -> ``params/<m>/bn/scale`` / ``bias``
  ``<m>.bn.running_mean`` / ``running_var`` -> ``batch_stats/<m>/bn/mean`` / ``var``

(``<m>`` with "." replaced by "/"). ``<m>.bn.num_batches_tracked`` and the
1008-way classifier ``fc.*``, which the pool3 features do not use, are
dropped. Torch is imported only by `load_torch_state_dict` (i.e. when run).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping

import numpy as np

from diffusion_jax.errors import ConfigError
from diffusion_jax.metrics import inception

__all__ = ["convert_state_dict", "load_torch_state_dict", "convert_inception", "main"]

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """pytorch-fid state dict (arrays by torch key) -> flattened Flax variables.

  Args:
    state_dict: {torch key: array}, e.g. ``{"Conv2d_1a_3x3.conv.weight":
      [32, 3, 3, 3], ...}``; NumPy arrays or anything `np.asarray` accepts.

  Returns:
    {"params/.../kernel": float32 array, ...}: exactly `inception.variable_shapes()`'s keys.

  Raises:
    ValueError: a key is neither a conv nor a BatchNorm entry of the network,
      an entry is missing, or a shape does not match.
  """
  flat: dict[str, np.ndarray] = {}
  source: dict[str, str] = {}  # Flax key -> torch key, for the messages.
  unknown = []
  for key, value in state_dict.items():
    if key.startswith(_IGNORED_PREFIXES) or key.endswith(".num_batches_tracked"):
      continue
    module, _, leaf = key.rpartition(".")
    base, _, kind = module.rpartition(".")
    path = base.replace(".", "/")
    value = np.asarray(value, np.float32)
    if kind == "conv" and leaf == "weight" and value.ndim == 4:
      name = f"params/{path}/conv/kernel"
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    elif kind == "bn" and leaf in _BN:
      collection, var = _BN[leaf]
      name = f"{collection}/{path}/bn/{var}"
    else:
      unknown.append(key)
      continue
    flat[name], source[name] = value, key
  expected = inception.variable_shapes()
  unknown += sorted(source[k] for k in set(flat) - set(expected))
  missing = sorted(set(expected) - set(flat))
  wrong = sorted((source[k], flat[k].shape, expected[k])
                 for k in set(expected) & set(flat) if flat[k].shape != expected[k])
  if unknown or missing or wrong:
    raise ValueError(
        f"state_dict is not pytorch-fid's fid_inception_v3(): unknown keys "
        f"{unknown[:5]}, missing Flax variables {missing[:5]}, wrong shapes "
        f"(torch key, converted shape, expected) {wrong[:5]} (first 5 each).")
  return flat


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.pth` state dict (on CPU, tensors only) into NumPy arrays.

  Raises:
    ConfigError: the file does not exist or is not a state dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"Inception .pth file {path!r} not found; download it from "
                      f"{inception.FID_WEIGHTS_URL}.")
  import torch  # Only needed to convert.
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConfigError(f"{path!r} cannot be read as a PyTorch state dict "
                      f"({type(e).__name__}: {e}).") from e
  if not isinstance(state, Mapping):
    raise ConfigError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert_inception(in_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
  """Converts pytorch-fid's `.pth` at in_path into the `.npz` at out_path.

  Raises:
    ConfigError: in_path is missing, unreadable or not the FID Inception's weights.
  """
  try:
    flat = convert_state_dict(load_torch_state_dict(in_path))
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{os.fspath(in_path)!r}: {e}") from e
  inception.save_inception_params(out_path, inception.unflatten_variables(flat))


def main(argv=None) -> int:
  """Command-line entry point; returns the exit status (2 on a user error)."""
  parser = argparse.ArgumentParser(
      prog="python -m diffusion_jax.metrics.convert_inception",
      description="Convert pytorch-fid's FID Inception weights "
                  "(pt_inception-2015-12-05-6726825d.pth) to diffusion_jax's .npz.")
  parser.add_argument("in_path", help="the .pth state dict (download: "
                      f"{inception.FID_WEIGHTS_URL})")
  parser.add_argument("out_path", help="the .npz to write")
  args = parser.parse_args(argv)
  try:
    convert_inception(args.in_path, args.out_path)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
