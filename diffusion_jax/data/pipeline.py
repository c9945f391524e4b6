"""Grain input pipeline over tfds random-access data sources.

Typical use::

  source = get_data_source("digits", "train", data_dir=None)
  loader = make_loader(source, batch_size=128, seed=0, image_size=8)
  it = iter(loader)
  batch = next(it)  # {"image": f32 [b, H, W, C] in [-1, 1], "label": i32 [b]}
  state = get_iterator_state(it)  # bytes; restore with set_iterator_state.

Per-process sharding: every process gets a disjoint shard of the records
(``grain.sharding.ShardOptions``) and yields per-process batches of
``batch_size // shard_count`` examples.

Pixel scaling (``x`` is the uint8 pixel, ``u ~ U[0, 1)`` drawn per pixel):
  * ``dequantize=False``: ``x / 127.5 - 1``            (exactly in [-1, 1])
  * ``dequantize=True``:  ``(x + u) / 256 * 2 - 1``     (in [-1, 1))
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from diffusion_jax.data import digits as digits_lib

EMBEDDED_DATASETS = (digits_lib.NAME,)

_DATASET_HELP = (
    f"Set data.dataset to the embedded, offline dataset {EMBEDDED_DATASETS!r} "
    "or to the name of any tfds image dataset (e.g. 'mnist', 'cifar10', "
    "'celeb_a') that is prepared in data.data_dir or can be downloaded."
)


# ----------------------------------------------------------------------------
# Data sources.
# ----------------------------------------------------------------------------


def _unknown_dataset(name: str) -> ValueError:
  return ValueError(f"Unknown data.dataset={name!r}. {_DATASET_HELP}")


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


def to_arrays(source: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a whole source.

  Returns:
    images: uint8 [N, H, W, C]; labels: int32 [N] (0 without a label feature).
  """
  if isinstance(source, ArraySource):
    return source.images, source.labels
  records = [SelectFeatures().map(source[i]) for i in range(len(source))]
  images = np.stack([r["image"] for r in records])
  labels = np.asarray([r["label"] for r in records], dtype=np.int32)
  return images, labels


def load_images(
    name: str, split: str = "train", data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as float32 [N, H, W, C] images in [-1, 1] and int32 [N] labels.

  Convenience for evaluation (e.g. ``evaluation.sample_quality_report``).
  """
  images, labels = to_arrays(get_data_source(name, split, data_dir))
  return images.astype(np.float32) / np.float32(127.5) - 1.0, labels


def get_data_source(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    *,
    in_memory: bool = False,
) -> Sequence[dict[str, Any]]:
  """Random-access tfds data source, preparing the dataset on first use.

  Args:
    name: tfds dataset name (``data.dataset``): ``"digits"`` (embedded,
      prepared offline from scikit-learn) or any tfds image dataset.
    split: split name, e.g. ``"train"`` or ``"test"`` (tfds slicing such as
      ``"train[:90%]"`` also works).
    data_dir: tfds data dir; ``None`` means tfds' default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    in_memory: decode the whole split once into an ``ArraySource`` (much
      faster per record; meant for small datasets such as digits, mnist,
      cifar10).

  Returns:
    A sequence of examples ``{"image": uint8 [H, W, C], "label": int, ...}``
    supporting ``len`` and ``[i]``: the tfds ``ArrayRecordDataSource`` or,
    with ``in_memory``, an ``ArraySource``.

  Raises:
    ValueError: unknown dataset name or split.
    RuntimeError: preparing the dataset needs a missing package (TensorFlow
      for most tfds image builders; digits needs neither).
  """
  try:
    source = tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=True,
        builder_kwargs={"file_format": tfds.core.FileFormat.ARRAY_RECORD},
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(
                try_download_gcs=False
            )
        },
    )
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _unknown_dataset(name) from e
  except ModuleNotFoundError as e:
    if e.name == "importlib_resources":
      raise RuntimeError(
          f"Preparing tfds dataset {name!r} needs the `importlib_resources` "
          "package (a tfds import not declared for Python >= 3.9): "
          "`pip install importlib_resources`."
      ) from e
    if e.name != "tensorflow":
      raise
    raise RuntimeError(
        f"Preparing tfds dataset {name!r} needs TensorFlow, which this project "
        "does not use. Prepare it once elsewhere with `tfds build "
        f"{name} --file_format=array_record --data_dir=DIR` and set "
        f"data.data_dir=DIR, or use data.dataset={digits_lib.NAME!r}."
    ) from e
  return ArraySource(*to_arrays(source)) if in_memory else source


def dataset_info(
    name: str, data_dir: str | None = None
) -> tuple[int | None, int | None, int, int | None]:
  """Image shape and class count of a tfds dataset, without preparing it.

  Args:
    name: tfds dataset name (``data.dataset``).
    data_dir: tfds data dir or ``None`` for the default.

  Returns:
    ``(height, width, channels, num_classes)``; height/width are ``None`` for
    variable-size images, num_classes is ``None`` without a ``label``
    ClassLabel feature.
  """
  try:
    features = tfds.builder(name, data_dir=data_dir).info.features
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _unknown_dataset(name) from e
  if "image" not in features:
    raise ValueError(
        f"data.dataset={name!r} has no 'image' feature "
        f"(features: {sorted(features.keys())}). {_DATASET_HELP}"
    )
  height, width, channels = features["image"].shape
  label = features["label"] if "label" in features else None
  num_classes = (
      label.num_classes
      if isinstance(label, tfds.features.ClassLabel)
      else None
  )
  return height, width, channels, num_classes


# ----------------------------------------------------------------------------
# Per-record transforms (picklable, so they also work with worker_count > 0).
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SelectFeatures(grain.transforms.Map):
  """tfds example -> ``{"image": uint8 [H, W, C], "label": int32 []}``.

  Datasets without a ``label`` feature get label 0.
  """

  def map(self, element):
    image = np.asarray(element["image"], dtype=np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    label = np.int32(element.get("label", 0))
    return {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  """Horizontal flip of ``image`` [H, W, C] with probability 1/2."""

  def random_map(self, element, rng: np.random.Generator):
    if rng.random() < 0.5:
      element = {**element, "image": element["image"][:, ::-1]}
    return element


@dataclasses.dataclass(frozen=True)
class ScalePixels(grain.transforms.Map):
  """uint8 ``image`` -> float32 ``x / 127.5 - 1`` in [-1, 1]."""

  def map(self, element):
    image = element["image"].astype(np.float32) / np.float32(127.5) - 1.0
    return {**element, "image": image}


@dataclasses.dataclass(frozen=True)
class Dequantize(grain.transforms.RandomMap):
  """uint8 ``image`` -> float32 ``(x + u) / 256 * 2 - 1``, u ~ U[0, 1)."""

  def random_map(self, element, rng: np.random.Generator):
    image = element["image"]
    u = rng.random(image.shape, dtype=np.float32)
    image = (image.astype(np.float32) + u) / np.float32(128.0) - 1.0
    return {**element, "image": image}


# ----------------------------------------------------------------------------
# Loader.
# ----------------------------------------------------------------------------


def _check_positive(name: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _check_image_size(source, image_size: int | None) -> None:
  """Raises if ``image_size`` differs from the data's [H, W] (no resizing)."""
  if image_size is None:
    return
  height, width = np.asarray(source[0]["image"]).shape[:2]
  if (height, width) != (image_size, image_size):
    raise ValueError(
        f"model.image_size={image_size} does not match the data's image size "
        f"{height}x{width} (height x width); images are not resized, so set "
        "model.image_size to the data's size."
    )


def make_loader(
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    seed: int,
    image_size: int | None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    random_flip: bool = False,
    dequantize: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    drop_remainder: bool = True,
    read_threads: int | None = None,
) -> grain.DataLoader:
  """Deterministic, shardable, checkpointable grain loader.

  Args:
    source: random-access source from ``get_data_source``.
    batch_size: global batch size; must be divisible by ``shard_count``.
    seed: seeds shuffling and the per-record random transforms (flip,
      dequantization). Same seed -> same batch sequence.
    image_size: expected image height = width (``model.image_size``), or
      ``None`` to skip the check. A mismatch raises (no silent resize).
    shuffle: shuffle the record order (reshuffled each epoch).
    num_epochs: number of passes over the data; ``None`` repeats forever.
    random_flip: random horizontal flips (off for digits).
    dequantize: uniform dequantization ``(x + u) / 256 * 2 - 1`` instead of
      ``x / 127.5 - 1``.
    shard_index: this process' shard; ``None`` -> ``jax.process_index()``.
    shard_count: number of shards; ``None`` -> ``jax.process_count()``.
    worker_count: grain worker processes (0 = in the main process).
    drop_remainder: drop the last incomplete batch (and uneven shard tails).
    read_threads: grain reader threads per process; ``None`` -> 0 for an
      ``ArraySource`` (threads only add overhead in memory) else 16 (grain's
      default, overlapping file reads).

  Returns:
    A ``grain.DataLoader`` whose iterator yields
    ``{"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b]}`` with
    ``b = batch_size // shard_count``, and supports ``get_state`` /
    ``set_state``.
  """
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  _check_positive("batch_size", batch_size)
  _check_positive("shard_count", shard_count)
  if not 0 <= shard_index < shard_count:
    raise ValueError(
        f"shard_index must be in [0, shard_count={shard_count}), "
        f"got {shard_index}."
    )
  if batch_size % shard_count:
    raise ValueError(
        f"batch_size={batch_size} must be divisible by the number of "
        f"processes shard_count={shard_count}."
    )
  if num_epochs is not None:
    _check_positive("num_epochs", num_epochs)
  if worker_count < 0:
    raise ValueError(f"worker_count must be >= 0, got {worker_count}.")
  if worker_count > 0:
    _allow_grain_flags()
  if read_threads is None:
    read_threads = 0 if isinstance(source, ArraySource) else 16
  _check_image_size(source, image_size)

  shard_options = grain.sharding.ShardOptions(
      shard_index=shard_index, shard_count=shard_count, drop_remainder=True
  )
  sampler = grain.samplers.IndexSampler(
      num_records=len(source),
      shard_options=shard_options,
      shuffle=shuffle,
      num_epochs=num_epochs,
      seed=seed,
  )
  operations = [SelectFeatures()]
  if random_flip:
    operations.append(RandomFlip())
  operations.append(Dequantize() if dequantize else ScalePixels())
  operations.append(
      grain.transforms.Batch(
          batch_size=batch_size // shard_count, drop_remainder=drop_remainder
      )
  )
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=operations,
      worker_count=worker_count,
      shard_options=shard_options,
      read_options=grain.ReadOptions(
          num_threads=read_threads, prefetch_buffer_size=max(4 * read_threads, 1)
      ),
  )


def _allow_grain_flags() -> None:
  """Grain workers read absl flags; outside ``absl.app.run`` use defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# ----------------------------------------------------------------------------
# Iterator checkpointing.
# ----------------------------------------------------------------------------


def get_iterator_state(iterator) -> bytes:
  """Serialized (JSON, UTF-8) state of a grain ``DataLoader`` iterator.

  Store it e.g. as ``np.frombuffer(state, np.uint8)`` in an orbax checkpoint.
  """
  state = iterator.get_state()
  return state if isinstance(state, bytes) else json.dumps(state).encode()


def set_iterator_state(iterator, state: bytes | str | np.ndarray) -> None:
  """Restores ``iterator`` from ``get_iterator_state`` output.

  Args:
    iterator: iterator of a ``DataLoader`` built with the same arguments.
    state: bytes, a JSON str, or a uint8 [n] array holding those bytes.
  """
  if isinstance(state, np.ndarray):
    state = state.astype(np.uint8).tobytes()
  elif isinstance(state, str):
    state = state.encode()
  iterator.set_state(state)
