"""Building blocks shared by the data sources (`sources.py` is the public API).

* ``DataSettings``: the validated ``config.data`` fields a source reads.
* ``DataInfo``: what ``sources.dataset_info`` returns.
* ``ArraySource`` / ``LazySource``: grain random-access sources. A source
  whose records still need decoding or fitting has a ``transform`` attribute
  (a picklable ``grain.transforms.Map``) that ``pipeline.make_loader`` applies
  first, in the grain workers; ``to_arrays`` applies it to a whole split.
* ``split_by_hash``: the deterministic train/test rule of folder and npz.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
from typing import Any, Sequence

import grain
import numpy as np

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The ``config.data`` fields the sources read, validated (`sources.py`)."""

  dataset: str
  path: str | None
  data_dir: str | None
  image_size: int
  channels: int
  test_fraction: float
  in_memory: bool | None


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a data source holds and what the model will see.

  Attributes:
    height: image height the model sees (``data.image_size``).
    width: image width the model sees (``data.image_size``).
    channels: channels the model sees (``data.channels``).
    num_classes: number of classes, ``None`` for unlabelled data.
    class_names: the class names (``num_classes`` of them) or ``None``.
    split_sizes: examples per split, e.g. ``{"train": 50000, "test": 10000}``.
    dataset: ``data.dataset``.
    location: where the data are read from (a path or a tfds directory).
    stored_shape: (H, W, C) of the stored images; ``None`` entries (or
      ``None``) for sizes that vary from image to image.
    notes: extra lines for ``describe`` (labels rule, split rule, skipped
      files).
  """

  height: int
  width: int
  channels: int
  num_classes: int | None
  class_names: tuple[str, ...] | None
  split_sizes: dict[str, int]
  dataset: str = ""
  location: str = ""
  stored_shape: tuple[int | None, int | None, int | None] | None = None
  notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------
# Random-access sources.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class ArraySource:
  """In-memory random-access source over decoded arrays.

  Attributes:
    images: uint8 [N, H, W, C].
    labels: int32 [N].
  """

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}

  def __repr__(self) -> str:  # Part of grain's iterator state: keep it short.
    return f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"


@dataclasses.dataclass(frozen=True, repr=False)
class LazySource:
  """A random-access source whose records ``transform`` turns into examples.

  Attributes:
    base: random-access source of raw records.
    transform: picklable ``grain.transforms.Map``: record ->
      ``{"image": uint8 [S, S, C], "label": int32 []}``.
  """

  base: Sequence[Any]
  transform: grain.transforms.Map

  def __len__(self) -> int:
    return len(self.base)

  def __getitem__(self, index: int):
    return self.base[index]

  def __repr__(self) -> str:  # Part of grain's iterator state.
    return f"LazySource({self.base!r}, {self.transform!r})"


@dataclasses.dataclass(frozen=True)
class SelectFeatures(grain.transforms.Map):
  """Example -> ``{"image": uint8 [H, W, C], "label": int32 []}``.

  Datasets without a ``label`` feature get label 0.
  """

  def map(self, element):
    image = np.asarray(element["image"], dtype=np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    label = np.int32(element.get("label", 0))
    return {"image": image, "label": label}


def example(source: Sequence[Any], index: int) -> dict[str, np.ndarray]:
  """Decoded example ``index``: ``{"image": uint8 [H, W, C], "label": int32}``."""
  record = source[index]
  transform = getattr(source, "transform", None)
  if transform is not None:
    record = transform.map(record)
  return SelectFeatures().map(record)


def to_arrays(
    source: Sequence[Any], threads: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a whole source (e.g. a split for evaluation).

  Args:
    source: any source of this package (``ArraySource``, ``LazySource``,
      ``folder.FolderSource``, a tfds data source).
    threads: decode with a pool of this many threads (0, 1: in the calling
      thread). Threads pay off only for large images: for 32x32 PNGs they
      halve the throughput (GIL contention), for 256x320 JPEGs they add ~15%
      on two cores.

  Returns:
    images: uint8 [N, H, W, C]; labels: int32 [N] (0 without a label feature).

  Raises:
    DataError: a record cannot be decoded (names the file).
  """
  if isinstance(source, ArraySource):
    return source.images, source.labels
  n = len(source)
  if threads <= 1 or n < 64:
    records = [example(source, i) for i in range(n)]
  else:
    chunks = [range(s, min(s + 256, n)) for s in range(0, n, 256)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      parts = pool.map(lambda chunk: [example(source, i) for i in chunk], chunks)
      records = [r for part in parts for r in part]
  if not records:
    raise ValueError(f"{source!r} is empty.")
  images = np.stack([r["image"] for r in records])
  labels = np.asarray([r["label"] for r in records], dtype=np.int32)
  return images, labels


# ----------------------------------------------------------------------------
# The deterministic split of folder and npz.
# ----------------------------------------------------------------------------


def num_test(n: int, test_fraction: float) -> int:
  """Test examples out of ``n``: ``round(n * f)``, but at least 1 and at most
  ``n - 1`` when ``f > 0`` and ``n >= 2`` (none when ``n < 2``)."""
  if test_fraction <= 0 or n < 2:
    return 0
  return min(n - 1, max(1, round(n * test_fraction)))


def split_by_hash(keys: Sequence[str], test_fraction: float) -> dict[str, np.ndarray]:
  """Deterministic train/test split of ``keys`` by a stable hash.

  The test split is the ``num_test(len(keys), test_fraction)`` keys with the
  smallest SHA-256 digest of their UTF-8 bytes; the rest is train. It depends
  only on the keys (no seed, no file order), and adding or removing a few
  keys moves only a few others across the boundary.

  Args:
    keys: distinct strings (relative paths, or record indices as decimals).
    test_fraction: fraction of keys in the test split, in [0, 1).

  Returns:
    ``{"train": int64 [n - m], "test": int64 [m]}`` sorted indices into
    ``keys``.
  """
  n = len(keys)
  m = num_test(n, test_fraction)
  digests = [hashlib.sha256(k.encode("utf-8", "surrogateescape")).digest() for k in keys]
  order = sorted(range(n), key=digests.__getitem__)
  test = np.sort(np.asarray(order[:m], dtype=np.int64))
  is_test = np.zeros(n, bool)
  is_test[test] = True
  return {"train": np.flatnonzero(~is_test), "test": test}


def fingerprint(*parts: Any) -> str:
  """Short stable hex digest of ``parts`` (their ``repr``s / array bytes)."""
  h = hashlib.sha256()
  for part in parts:
    h.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
  return h.hexdigest()[:12]
