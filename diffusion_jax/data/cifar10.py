"""`cifar10` from the official python tarball, offline and without TensorFlow.

``data.dataset="cifar10"`` with ``data.path=cifar-10-python.tar.gz`` (from
https://www.cs.toronto.edu/~kriz/cifar.html). Without ``data.path`` the name
means the tfds ``cifar10`` (``tfds_source.py``).

The tarball holds ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``
(train) and ``test_batch`` (test): pickled dicts with ``b"data"`` uint8
[n, 3072] (the 1024 red, then green, then blue values of each 32x32 image,
rows top to bottom) and ``b"labels"`` (n ints in 0..9); and ``batches.meta``
with ``b"label_names"`` (optional here: the usual names are the default).
The official file has 50,000 train and 10,000 test images.

The pickles are read with an unpickler that only admits the few NumPy
globals an array needs (never arbitrary code), in one streaming pass over the
tarball (~2 s for the real one), once per process (cached by path, size and
mtime; the 184 MB of images stay in memory).
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

try:  # NumPy 2.
  from numpy._core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top
  from numpy._core import numeric as _numeric  # pylint: disable=g-import-not-at-top
except ImportError:  # NumPy 1.
  from numpy.core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top
  from numpy.core import numeric as _numeric  # pylint: disable=g-import-not-at-top

from diffusion_jax.errors import DataError

NAME = "cifar10"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
PREFIX = "cifar-10-batches-py/"
MEMBERS = {
    "train": tuple(f"{PREFIX}data_batch_{i}" for i in range(1, 6)),
    "test": (f"{PREFIX}test_batch",),
}
META = f"{PREFIX}batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
               "horse", "ship", "truck")
SPLIT_SIZES = {"train": 50_000, "test": 10_000}  # Of the official tarball.
IMAGE_SHAPE = (32, 32, 3)

# pylint: disable=protected-access
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
}
# pylint: enable=protected-access


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, numbers, bytes and NumPy arrays only."""

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"it refers to {module}.{name}") from None


@dataclasses.dataclass(frozen=True)
class Cifar10:
  """The decoded tarball.

  Attributes:
    path: absolute path of the tarball.
    images: ``{"train": uint8 [n, 32, 32, 3], "test": uint8 [m, 32, 32, 3]}``.
    labels: ``{"train": int32 [n], "test": int32 [m]}``.
    class_names: the 10 class names.
  """

  path: str
  images: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  class_names: tuple[str, ...]


def _not_cifar(root: str, why: str) -> DataError:
  return DataError(f"{root} is not the CIFAR-10 python tarball "
                   f"(cifar-10-python.tar.gz from {URL}): {why}.")


def _get(d: dict, key: str):
  return d[key.encode()] if key.encode() in d else d[key]


def _unpickle(root: str, name: str, data: bytes) -> dict:
  try:
    d = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError) as e:
    raise _not_cifar(root, f"{name} is not a CIFAR-10 batch ({e})") from None
  if not isinstance(d, dict):
    raise _not_cifar(root, f"{name} holds a {type(d).__name__}, not a dict")
  return d


def _batch(root: str, name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
  d = _unpickle(root, name, data)
  try:
    pixels, labels = _get(d, "data"), _get(d, "labels")
  except KeyError:
    raise _not_cifar(root, f"{name} has no b'data' and b'labels' "
                     f"(keys: {sorted(map(repr, d))})") from None
  pixels = np.asarray(pixels)
  labels = np.asarray(labels)
  if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
    raise _not_cifar(root, f"{name}: b'data' is {pixels.dtype} {list(pixels.shape)}, "
                     "not uint8 [n, 3072]")
  if labels.shape != (len(pixels),) or not np.issubdtype(labels.dtype, np.integer):
    raise _not_cifar(root, f"{name}: b'labels' has shape {list(labels.shape)} for "
                     f"{len(pixels)} images")
  if len(labels) and not (labels.min() >= 0 and labels.max() <= 9):
    raise _not_cifar(root, f"{name}: labels outside 0..9")
  images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


@functools.lru_cache(maxsize=1)
def _read(root: str, size: int, mtime_ns: int) -> Cifar10:
  del size, mtime_ns  # Cache keys only.
  wanted = {m for members in MEMBERS.values() for m in members} | {META}
  found = {}
  try:
    with tarfile.open(root, "r|*") as tar:  # One streaming pass.
      for member in tar:
        if member.name in wanted and member.isfile():
          found[member.name] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise _not_cifar(root, f"not a readable tar archive ({type(e).__name__}: "
                     f"{e})") from None
  missing = sorted(wanted - {META} - set(found))
  if missing:
    raise _not_cifar(root, f"it lacks {', '.join(missing)}")
  images, labels = {}, {}
  for split, members in MEMBERS.items():
    batches = [_batch(root, m, found[m]) for m in members]
    images[split] = np.concatenate([b[0] for b in batches])
    labels[split] = np.concatenate([b[1] for b in batches])
  class_names = CLASS_NAMES
  if META in found:
    try:
      names = _get(_unpickle(root, META, found[META]), "label_names")
    except KeyError:
      raise _not_cifar(root, f"{META} has no b'label_names'") from None
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(class_names) != 10:
      raise _not_cifar(root, f"{META} names {len(class_names)} classes, not 10")
  return Cifar10(root, images, labels, class_names)


def read(path: str) -> Cifar10:
  """Reads (once per process) and checks the tarball at ``data.path``.

  Raises:
    DataError: a missing file, or a file that is not the CIFAR-10 tarball.
  """
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(root):
    what = "is a directory" if os.path.isdir(root) else "does not exist"
    raise DataError(f"data.path={path!r} {what}; data.dataset='cifar10' with "
                    f"data.path reads the CIFAR-10 python tarball "
                    f"cifar-10-python.tar.gz (from {URL}).")
  st = os.stat(root)
  return _read(root, st.st_size, st.st_mtime_ns)
