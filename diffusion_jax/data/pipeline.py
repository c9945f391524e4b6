"""Grain input pipeline over the random-access sources of `sources.py`.

Typical use::

  source = sources.get_source(config.data, "train")
  loader = make_loader(source, batch_size=128, seed=0, image_size=8)
  it = iter(loader)
  batch = next(it)  # {"image": f32 [b, H, W, C] in [-1, 1], "label": i32 [b]}
  state = get_iterator_state(it)  # bytes; restore with set_iterator_state.

Decoding: a lazily decoded source (a folder's ``FolderSource``, a resized
tfds ``LazySource``) carries a ``transform`` that the loader applies first,
in its grain worker processes when ``worker_count > 0``.

Determinism and resumption: for given arguments (``worker_count``
included: grain gives each worker its own slice of the records) the batches
depend only on ``seed``; an iterator restored with ``set_iterator_state``
continues with the same batches.

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

from diffusion_jax.data import base
from diffusion_jax.errors import ConfigError

# ----------------------------------------------------------------------------
# Per-record transforms (picklable, so they also work with worker_count > 0).
# ----------------------------------------------------------------------------


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
  """Raises if ``image_size`` differs from the (decoded) data's [H, W]."""
  if image_size is None:
    return
  height, width = base.example(source, 0)["image"].shape[:2]
  if (height, width) != (image_size, image_size):
    raise ValueError(
        f"data.image_size={image_size} does not match the source's images, "
        f"{height}x{width} (height x width): the loader does not resize; take "
        "the source from sources.get_source(config.data, split), which fits "
        "the images to data.image_size."
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
    source: random-access source from ``sources.get_source`` (or
      ``get_data_source``). A source with a ``transform`` attribute (a lazily
      decoded ``FolderSource`` or ``LazySource``) has it applied first, in
      the grain workers when ``worker_count > 0``.
    batch_size: global batch size; must be divisible by ``shard_count``.
    seed: seeds shuffling and the per-record random transforms (flip,
      dequantization). Same seed -> same batch sequence.
    image_size: expected image height = width (``data.image_size``), or
      ``None`` to skip the check. A mismatch raises (``sources.get_source``
      fits images to ``data.image_size``; the loader does not resize).
    shuffle: shuffle the record order (reshuffled each epoch).
    num_epochs: number of passes over the data; ``None`` repeats forever.
    random_flip: random horizontal flips (off for digits).
    dequantize: uniform dequantization ``(x + u) / 256 * 2 - 1`` instead of
      ``x / 127.5 - 1``.
    shard_index: this process' slice of each global batch; ``None`` ->
      ``jax.process_index()`` (``BatchSliceSampler``).
    shard_count: number of slices; ``None`` -> ``jax.process_count()``.
    worker_count: grain worker processes (0 = in the main process).
    drop_remainder: drop the last incomplete batch (and uneven shard tails).
    read_threads: grain reader threads per process; ``None`` -> the source's
      ``default_read_threads`` if it has one (0 for a ``FolderSource``), 0 for
      an ``ArraySource`` (threads only add overhead in memory), else 16
      (grain's default, overlapping file reads).

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
    read_threads = getattr(source, "default_read_threads",
                           0 if isinstance(source, base.ArraySource) else 16)
  if not len(source):
    raise ValueError(f"The data source {source!r} is empty.")
  _check_image_size(source, image_size)

  sampler = BatchSliceSampler(
      grain.samplers.IndexSampler(
          num_records=len(source), shuffle=shuffle, num_epochs=num_epochs, seed=seed),
      batch_size=batch_size, shard_index=shard_index, shard_count=shard_count)
  transform = getattr(source, "transform", None)  # Decoding, in the workers.
  operations = [] if transform is None else [transform]
  operations.append(base.SelectFeatures())
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
      shard_options=grain.sharding.NoSharding(),
      read_options=grain.ReadOptions(
          num_threads=read_threads, prefetch_buffer_size=max(4 * read_threads, 1)
      ),
  )


class BatchSliceSampler:
  """Process `shard_index`'s slice of every global batch of `base`'s order.

  With global batch B and b = B / shard_count, local example k is the global
  sample g = (k // b) B + shard_index b + (k % b) of `base` (a grain sampler
  over the whole data, same seed on every process). So the global batch that
  the processes assemble is the same whatever their number: a run on 2
  processes sees exactly the batches of a run on 1, and the per-record random
  transforms (seeded by g) agree too. The stream ends at the first g past the
  end of `base` (finite epochs), so a last partial global batch is split by
  position.
  """

  def __init__(self, base, *, batch_size: int, shard_index: int, shard_count: int):
    self._base, self._p, self._P = base, shard_index, shard_count
    self._B, self._b = batch_size, batch_size // shard_count
    n = len(base)
    full, rest = divmod(n, self._B)
    self._len = full * self._b + min(max(rest - self._p * self._b, 0), self._b)

  def _global(self, k: int) -> int:
    return (k // self._b) * self._B + self._p * self._b + k % self._b

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    return (f"BatchSliceSampler({self._base!r}, batch_size={self._B}, "
            f"shard_index={self._p}, shard_count={self._P})")

  def __getitem__(self, index: int):
    if index < 0 or index >= self._len:
      raise IndexError(f"index {index} is out of bounds [0, {self._len}).")
    meta = self._base[self._global(index)]
    return dataclasses.replace(meta, index=index)


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
