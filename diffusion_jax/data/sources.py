"""Data sources chosen by name (``config.data.dataset``): the public data API.

Typical use::

  info = sources.dataset_info(config.data)      # fast; DataInfo
  src = sources.get_source(config.data, "train")
  loader = pipeline.make_loader(src, batch_size=128, seed=0,
                                image_size=config.data.image_size,
                                worker_count=config.data.worker_count)
  images, labels = sources.load_split(config.data, "test")  # for evaluation
  print(sources.describe(config.data))          # --mode=describe

Sources (``data.dataset``)
  ``"folder"``   ``data.path=DIR``: PNG/JPEG/WebP files, recursively; labels
                 from first-level subfolders (``folder.py``). Decoded lazily,
                 in the loader's grain workers.
  ``"npz"``      ``data.path=FILE.npz``: ``images`` uint8 [N, H, W, C] and
                 optional ``labels`` [N] (``npz.py``; what ``--mode=sample``
                 writes).
  ``"cifar10"``  ``data.path=cifar-10-python.tar.gz``: the official CIFAR-10
                 python tarball, 50,000 train / 10,000 test (``cifar10.py``).
                 Without ``data.path``: the tfds ``cifar10``, if prepared.
  any other      a tfds image dataset prepared (array_record) in
                 ``data.data_dir``, or the embedded ``"digits"``, built there
                 offline on first use (``tfds_source.py``). Nothing is ever
                 downloaded.

Images: every source fits its images to ``data.image_size`` x
``data.image_size`` x ``data.channels`` (1 or 3) by one rule: shorter side
resized (antialiased bicubic), centre crop, channel conversion with alpha
composited over white (``images.py``). Images that already fit are
bit-exact.

Splits: ``"train"`` and ``"test"``. folder and npz split deterministically
by hash with ``data.test_fraction`` (``base.split_by_hash``); cifar10 and
tfds keep their own splits (tfds slicing like ``"train[:10%]"`` works).

``data.in_memory`` (``get_source``'s ``in_memory``): ``True`` decodes the
split once into an ``ArraySource``; ``False`` decodes in the loader; ``None``
(auto) is ``False`` for folder and ``True`` otherwise. npz and cifar10 are
always held in memory (they are read whole).

Errors: a bad setting raises ``ConfigError`` and unreadable data
``DataError``, each with one message naming the setting or file.

More sources: ``register(SourceKind(...))``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable

import numpy as np

from diffusion_jax.data import base
from diffusion_jax.data import cifar10 as cifar10_lib
from diffusion_jax.data import folder as folder_lib
from diffusion_jax.data import images as images_lib
from diffusion_jax.data import npz as npz_lib
from diffusion_jax.data import tfds_source
from diffusion_jax.errors import ConfigError

ArraySource = base.ArraySource
LazySource = base.LazySource
DataInfo = base.DataInfo
DataSettings = base.DataSettings
FolderSource = folder_lib.FolderSource
to_arrays = base.to_arrays
SPLITS = base.SPLITS
DEFAULT_TEST_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class SourceKind:
  """A data source chosen by ``data.dataset == name``.

  Attributes:
    name: the ``data.dataset`` value.
    path_help: what ``data.path`` must be (for messages).
    info: settings -> ``DataInfo`` (fast, no decoding).
    source: (settings, split, in_memory or None) -> random-access source.
    path_optional: without ``data.path`` the name is a tfds dataset.
  """

  name: str
  path_help: str
  info: Callable[[DataSettings], DataInfo]
  source: Callable[[DataSettings, str, bool | None], Any]
  path_optional: bool = False


_KINDS: dict[str, SourceKind] = {}


def register(kind: SourceKind) -> None:
  """Adds (or replaces) a source chosen by ``data.dataset == kind.name``."""
  _KINDS[kind.name] = kind


def names() -> tuple[str, ...]:
  """The ``data.dataset`` values of the registered (non-tfds) sources."""
  return tuple(_KINDS)


# ----------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------

_MISSING = object()


def _field(data_config, key: str, default=_MISSING):
  if isinstance(data_config, DataSettings):
    return getattr(data_config, key)
  try:
    value = data_config[key] if key in data_config else _MISSING
  except TypeError:  # Not a mapping: an attribute holder.
    value = getattr(data_config, key, _MISSING)
  if value is _MISSING:
    if default is _MISSING:
      raise ConfigError(f"data.{key} is missing from the data config.")
    return default
  return value


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def settings(data_config) -> DataSettings:
  """Reads and checks the ``config.data`` fields the sources use.

  Args:
    data_config: ``config.data`` (a ConfigDict), a mapping or an object with
      the fields ``dataset``, ``image_size``, ``channels`` and optionally
      ``path``, ``data_dir``, ``test_fraction``, ``in_memory``.

  Raises:
    ConfigError: a missing or invalid field (named).
  """
  if isinstance(data_config, DataSettings):
    return data_config
  dataset = _field(data_config, "dataset")
  if not isinstance(dataset, str) or not dataset:
    raise ConfigError(f"data.dataset must be a dataset name, got {dataset!r}: one "
                      f"of {list(_KINDS)}, {tfds_source.digits_lib.NAME!r} or a "
                      "tfds image dataset.")
  image_size = _field(data_config, "image_size")
  if not _is_int(image_size) or image_size < 1:
    raise ConfigError(f"data.image_size must be a positive int (the side of the "
                      f"square images the model sees), got {image_size!r}.")
  channels = _field(data_config, "channels")
  if channels not in images_lib.SUPPORTED_CHANNELS or isinstance(channels, bool):
    raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got "
                      f"{channels!r}.")
  path = _field(data_config, "path", None)
  if path is not None and (not isinstance(path, str) or not path):
    raise ConfigError(f"data.path must be a file or directory path, got {path!r}.")
  data_dir = _field(data_config, "data_dir", None)
  if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
    raise ConfigError(f"data.data_dir must be a directory path or None, got "
                      f"{data_dir!r}.")
  test_fraction = _field(data_config, "test_fraction", DEFAULT_TEST_FRACTION)
  if (not isinstance(test_fraction, numbers.Real) or isinstance(test_fraction, bool)
      or not 0 <= test_fraction < 1):
    raise ConfigError(f"data.test_fraction must be a number in [0, 1) (the share of "
                      f"a folder's or npz file's examples in the test split), "
                      f"got {test_fraction!r}.")
  in_memory = _field(data_config, "in_memory", None)
  if in_memory is not None and not isinstance(in_memory, (bool, np.bool_)):
    raise ConfigError(f"data.in_memory must be True, False or None (auto), got "
                      f"{in_memory!r}.")
  return DataSettings(
      dataset=dataset, path=path, data_dir=data_dir, image_size=int(image_size),
      channels=int(channels), test_fraction=float(test_fraction),
      in_memory=None if in_memory is None else bool(in_memory))


def _kind(s: DataSettings) -> SourceKind:
  """The registered source of ``s.dataset``, or the tfds one."""
  kind = _KINDS.get(s.dataset)
  if kind is not None and (s.path is not None or not kind.path_optional):
    if s.path is None:
      raise ConfigError(f"data.dataset={s.dataset!r} needs data.path: {kind.path_help}.")
    return kind
  if s.path is not None:
    raise ConfigError(
        f"data.path={s.path!r} is read only by data.dataset in {list(_KINDS)}; "
        f"data.dataset={s.dataset!r} is a tfds dataset read from data.data_dir. "
        "Unset data.path, or set data.dataset to the source that reads it.")
  return _TFDS


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def dataset_info(data_config) -> DataInfo:
  """Shape (as the model will see it), classes and split sizes; fast (nothing
  is decoded; a folder's headers are read once, the CIFAR-10 tarball once).

  Args:
    data_config: ``config.data`` (see ``settings``).

  Returns:
    A ``DataInfo``: height = width = ``data.image_size``, channels =
    ``data.channels``, ``num_classes``/``class_names`` (``None`` when
    unlabelled), ``split_sizes``.

  Raises:
    ConfigError: a bad setting, an unknown or unprepared tfds dataset.
    DataError: unreadable data (names the file).
  """
  s = settings(data_config)
  return _kind(s).info(s)


def get_source(data_config, split: str, *, in_memory: bool | None = None):
  """Random-access source of one split, for ``pipeline.make_loader``.

  Args:
    data_config: ``config.data`` (see ``settings``).
    split: ``"train"`` or ``"test"`` (tfds datasets: any split, slicing too).
    in_memory: decode the split once into an ``ArraySource``; ``None`` ->
      ``data.in_memory``, whose ``None`` means False for folder, else True.

  Returns:
    ``len``/``[i]`` access to ``{"image": uint8 [S, S, C], "label": int32 []}``
    (S = ``data.image_size``, C = ``data.channels``); or, for a lazily decoded
    source (``FolderSource``, ``LazySource``), raw records plus a
    ``transform`` that ``pipeline.make_loader`` applies in its workers
    (``to_arrays`` decodes a whole split).

  Raises:
    ConfigError: a bad setting; an empty split (folder/npz with a small
      ``data.test_fraction``).
    DataError: unreadable data (names the file).
  """
  s = settings(data_config)
  if in_memory is None:
    in_memory = s.in_memory
  return _kind(s).source(s, split, in_memory)


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split decoded, for evaluation.

  Returns:
    images: float32 [N, S, S, C] in [-1, 1] (``x / 127.5 - 1``).
    labels: int32 [N] (zeros when unlabelled).
  """
  images, labels = to_arrays(get_source(data_config, split, in_memory=False))
  return images.astype(np.float32) / np.float32(127.5) - 1.0, labels


def describe(data_config) -> str:
  """A few lines for ``--mode=describe``: source, path, examples per split,
  image shape and classes."""
  s = settings(data_config)
  info = dataset_info(s)
  kind = _kind(s)
  if kind is _TFDS:
    source = f"tfds {s.dataset!r} (data.data_dir={s.data_dir!r})"
  else:
    where = "" if info.location == s.path else f" = {info.location}"
    source = f"{s.dataset}, data.path={s.path!r}{where}"
  sizes = ", ".join(f"{k} {v:,}" for k, v in info.split_sizes.items())
  target = (info.height, info.width, info.channels)
  shape = "x".join(map(str, target))
  stored = info.stored_shape
  if stored is None or None in stored:
    how = "images of varying size, resized on the shorter side and centre-cropped to "
  elif tuple(stored) == target:
    how = "images stored at the model's size, unchanged: "
  else:
    how = (f"images stored as {'x'.join(map(str, stored))}, resized on the shorter "
           "side, centre-cropped and converted to ")
  if info.num_classes is None:
    classes = "classes: none (unlabelled)"
  else:
    names_ = list(info.class_names or ())
    shown = ", ".join(names_[:10]) + (", ..." if len(names_) > 10 else "")
    classes = f"classes: {info.num_classes}" + (f" ({shown})" if shown else "")
  lines = [f"data: {source}", f"examples: {sizes}",
           f"{how}{shape} (data.image_size x data.image_size x data.channels)",
           classes, *info.notes]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# The sources.
# ----------------------------------------------------------------------------


def _check_split(s: DataSettings, split: str, sizes: dict[str, int]) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS} for data.dataset={s.dataset!r}, "
                     f"got {split!r}.")
  if sizes[split] == 0:
    raise ConfigError(
        f"The {split} split of data.path={s.path!r} is empty ({sizes}): set "
        f"data.test_fraction (now {s.test_fraction}) so that both splits get "
        "examples, or add data.")


def _arrays(s: DataSettings, images: np.ndarray, labels: np.ndarray) -> ArraySource:
  """In-memory source fitted to the settings (untouched when it fits)."""
  source = ArraySource(images, labels)
  if images.shape[1:] == (s.image_size, s.image_size, s.channels):
    return source
  fit = images_lib.FitImage(image_size=s.image_size, channels=s.channels)
  return ArraySource(*to_arrays(LazySource(source, fit)))


def _split_rule(s: DataSettings, what: str) -> str:
  key = "relative path" if what == "files" else "index"
  return (f"split: test = the round(N * {s.test_fraction:g}) {what} with the "
          f"smallest SHA-256 of their {key} (data.test_fraction)")


def _folder_info(s: DataSettings) -> DataInfo:
  index = folder_lib.index_folder(s.path, s.test_fraction)
  notes = [folder_lib.describe_layout(index), _split_rule(s, "files")]
  if index.skipped:
    notes.append(f"skipped: {len(index.skipped)} unreadable file(s), e.g. "
                 f"{index.skipped[0]}")
  return DataInfo(
      height=s.image_size, width=s.image_size, channels=s.channels,
      num_classes=len(index.class_names) if index.class_names else None,
      class_names=index.class_names,
      split_sizes={k: len(v) for k, v in index.splits.items()},
      dataset=s.dataset, location=index.root, stored_shape=None, notes=tuple(notes))


def _folder_source(s: DataSettings, split: str, in_memory: bool | None):
  index = folder_lib.index_folder(s.path, s.test_fraction)
  _check_split(s, split, {k: len(v) for k, v in index.splits.items()})
  source = folder_lib.make_source(index, split, s.image_size, s.channels)
  return ArraySource(*to_arrays(source)) if in_memory else source


def _npz_info(s: DataSettings) -> DataInfo:
  header = npz_lib.read_header(s.path, s.test_fraction)
  return DataInfo(
      height=s.image_size, width=s.image_size, channels=s.channels,
      num_classes=header.num_classes, class_names=header.class_names,
      split_sizes={k: len(v) for k, v in header.splits.items()},
      dataset=s.dataset, location=header.path, stored_shape=header.shape[1:],
      notes=(_split_rule(s, "records"),))


def _npz_source(s: DataSettings, split: str, in_memory: bool | None):
  del in_memory  # Read whole anyway.
  header = npz_lib.read_header(s.path, s.test_fraction)
  _check_split(s, split, {k: len(v) for k, v in header.splits.items()})
  idx = header.splits[split]
  labels = (np.zeros(len(idx), np.int32) if header.labels is None
            else header.labels[idx])
  return _arrays(s, npz_lib.load_images(header)[idx], labels)


def _cifar10_info(s: DataSettings) -> DataInfo:
  data = cifar10_lib.read(s.path)
  return DataInfo(
      height=s.image_size, width=s.image_size, channels=s.channels, num_classes=10,
      class_names=data.class_names,
      split_sizes={k: len(v) for k, v in data.labels.items()},
      dataset=s.dataset, location=data.path, stored_shape=cifar10_lib.IMAGE_SHAPE,
      notes=("split: the tarball's (data_batch_1..5 = train, test_batch = test)",))


def _cifar10_source(s: DataSettings, split: str, in_memory: bool | None):
  del in_memory  # Read whole anyway.
  data = cifar10_lib.read(s.path)
  _check_split(s, split, {k: len(v) for k, v in data.labels.items()})
  return _arrays(s, data.images[split], data.labels[split])


def _tfds_source(s: DataSettings, split: str, in_memory: bool | None):
  return tfds_source.source(s, split, True if in_memory is None else in_memory)


_TFDS = SourceKind("tfds", "", tfds_source.info, _tfds_source)

register(SourceKind(
    folder_lib.NAME, "a directory of PNG/JPEG/WebP images (first-level subfolders "
    "are classes), e.g. data.path=/data/images", _folder_info, _folder_source))
register(SourceKind(
    npz_lib.NAME, "a .npz file with images uint8 [N, H, W, C] and optional labels "
    "int [N], e.g. data.path=WORKDIR/samples.npz", _npz_info, _npz_source))
register(SourceKind(
    cifar10_lib.NAME, "the CIFAR-10 python tarball, data.path=cifar-10-python.tar.gz",
    _cifar10_info, _cifar10_source, path_optional=True))
