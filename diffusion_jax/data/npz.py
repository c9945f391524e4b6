"""`npz`: images in a NumPy ``.npz`` file (``data.dataset="npz"``, ``data.path=FILE``).

The format ``--mode=sample`` writes (``samples.npz``):

* ``images``: uint8 [N, H, W, C], C in 1..4 (2 and 4: with alpha, composited
  over white; ``images.py``);
* ``labels`` (optional): integer [N], values >= 0; without it the data are
  unlabelled;
* ``class_names`` (optional): str [K], with every label < K. The number of
  classes is K, or ``max(labels) + 1`` without it.

The file is read with ``allow_pickle=False``. ``dataset_info`` reads only the
``images`` header and the labels; the images themselves are loaded once per
process (cached by path, size and mtime) and kept in memory.

Split: ``base.split_by_hash`` of the record indices as decimal strings
(``"0"``, ``"1"``, ...) with ``data.test_fraction``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile

import numpy as np

from diffusion_jax.data import base
from diffusion_jax.errors import DataError

NAME = "npz"
_FORMAT = ("images uint8 [N, H, W, C] and optional labels int [N], "
           "as --mode=sample writes")
_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


@dataclasses.dataclass(frozen=True)
class NpzHeader:
  """What ``dataset_info`` needs, without loading the images.

  Attributes:
    path: absolute file path.
    shape: (N, H, W, C) of ``images``.
    labels: int32 [N] or ``None``.
    class_names: the class names or ``None``.
    num_classes: number of classes or ``None``.
    splits: ``{"train": int64 [n], "test": int64 [m]}`` record indices.
  """

  path: str
  shape: tuple[int, int, int, int]
  labels: np.ndarray | None
  class_names: tuple[str, ...] | None
  num_classes: int | None
  splits: dict[str, np.ndarray]


def _resolve(path: str) -> str:
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(root):
    raise DataError(f"data.path={path!r}: no such file (data.dataset='npz' reads a "
                    f".npz with {_FORMAT}).")
  if os.path.isdir(root):
    raise DataError(f"data.path={path!r} is a directory, but data.dataset='npz' "
                    "needs a .npz file. For a folder of images set "
                    "data.dataset='folder'.")
  return root


def _bad(root: str, what: str) -> DataError:
  return DataError(f"{root}: {what} (data.dataset='npz' needs {_FORMAT}).")


def _open(root: str):
  try:
    npz = np.load(root, allow_pickle=False)
  except _ERRORS as e:
    raise _bad(root, f"not a readable .npz file ({type(e).__name__}: {e})") from None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise _bad(root, "a .npy array, not a .npz archive of named arrays")
  return npz


def _images_header(npz, root: str) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of ``images`` from its .npy header, without loading it."""
  if "images" not in npz.files:
    raise _bad(root, f"no 'images' array (it has {sorted(npz.files)})")
  try:
    with npz.zip.open("images.npy") as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read_header(f)
  except _ERRORS as e:
    raise _bad(root, f"its 'images' array cannot be read ({e})") from None
  return shape, dtype


def _load(npz, root: str, key: str) -> np.ndarray:
  try:
    return npz[key]
  except _ERRORS as e:
    raise _bad(root, f"its {key!r} array cannot be read ({type(e).__name__}: {e})") from None


def read_header(path: str, test_fraction: float) -> NpzHeader:
  """Checks the file and reads everything but the images (module docstring).

  Raises:
    DataError: a missing file, not an npz, no ``images``, a wrong dtype or
      rank, labels of the wrong dtype, rank or length, or bad class names.
  """
  root = _resolve(path)
  with _open(root) as npz:
    shape, dtype = _images_header(npz, root)
    if dtype != np.uint8 or len(shape) != 4 or not 1 <= shape[-1] <= 4:
      raise _bad(root, f"'images' is {dtype} {list(shape)}, not uint8 [N, H, W, C] "
                 "with C in 1..4 (float images in [-1, 1]: "
                 "np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8))")
    n = shape[0]
    if n == 0 or 0 in shape[1:3]:
      raise _bad(root, f"'images' {list(shape)} holds no pixels")
    labels = class_names = num_classes = None
    if "labels" in npz.files:
      labels = _load(npz, root, "labels")
      if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _bad(root, f"'labels' is {labels.dtype} {list(labels.shape)}, "
                   "not integer [N]")
      if len(labels) != n:
        raise _bad(root, f"'labels' has {len(labels)} entries for {n} images")
      if labels.min() < 0:
        raise _bad(root, f"'labels' has a negative value {labels.min()}")
      num_classes = int(labels.max()) + 1
      labels = labels.astype(np.int32)
    if "class_names" in npz.files:
      names = _load(npz, root, "class_names")
      if labels is None or names.ndim != 1 or names.dtype.kind not in "US":
        raise _bad(root, "'class_names' must be str [K] next to 'labels'")
      class_names = tuple(str(x) for x in names.astype(str))
      if num_classes > len(class_names):
        raise _bad(root, f"'labels' go up to {num_classes - 1} but there are "
                   f"{len(class_names)} class_names")
      num_classes = len(class_names)
  splits = base.split_by_hash([str(i) for i in range(n)], test_fraction)
  return NpzHeader(root, tuple(shape), labels, class_names, num_classes, splits)


@functools.lru_cache(maxsize=2)
def _images(root: str, size: int, mtime_ns: int) -> np.ndarray:
  del size, mtime_ns  # Cache keys only: a changed file is read again.
  with _open(root) as npz:
    return _load(npz, root, "images")


def load_images(header: NpzHeader) -> np.ndarray:
  """The file's uint8 [N, H, W, C] images (cached per process)."""
  st = os.stat(header.path)
  images = _images(header.path, st.st_size, st.st_mtime_ns)
  if images.shape != header.shape:  # The file changed since `read_header`.
    raise _bad(header.path, "the file changed while it was read; try again")
  return images
