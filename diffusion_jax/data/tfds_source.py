"""tfds datasets by name (``data.dataset=NAME``, read from ``data.data_dir``).

This library never downloads. A tfds dataset is read with random access
(``builder.as_data_source``, array_record or parquet files, no TensorFlow)
when it is already prepared in ``data.data_dir``; the one exception is the
embedded ``digits`` (``digits.py``), which is built there offline from
scikit-learn on first use. Anything else fails at once -- before tfds writes
or fetches anything -- with one ``ConfigError`` naming ``data.dataset`` and
``data.data_dir`` and listing the offline alternatives.

Community datasets (``namespace:name``) are refused: tfds would look them up
online.
"""

from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

from diffusion_jax.data import base
from diffusion_jax.data import digits as digits_lib
from diffusion_jax.data import images as images_lib
from diffusion_jax.errors import ConfigError

EMBEDDED = {digits_lib.NAME: "built offline from scikit-learn's UCI digits"}
# name[/config][:version]; no "namespace:" prefix.
_NAME = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9]+\.[0-9*]+\.[0-9*]+)?$")

OFFLINE_HELP = (
    "Offline sources: data.dataset='folder' with data.path=DIR (PNG/JPEG/WebP "
    "images, first-level subfolders as classes), 'npz' with data.path=FILE.npz "
    "(images uint8 [N, H, W, C], optional labels), 'cifar10' with "
    "data.path=cifar-10-python.tar.gz (the official python tarball), or the "
    f"embedded {digits_lib.NAME!r}."
)


def _data_dir_text(data_dir: str | None) -> str:
  if data_dir:
    return f"data.data_dir={data_dir!r}"
  default = os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
  return f"data.data_dir=None (tfds' default, {default})"


def _unknown(name: str, why: str = "") -> ConfigError:
  return ConfigError(
      f"Unknown data.dataset={name!r}{why}. Set it to one of this library's "
      f"sources or to a tfds image dataset (e.g. 'mnist', 'cifar10', 'celeb_a') "
      f"prepared in data.data_dir. {OFFLINE_HELP}")


def _not_prepared(name: str, data_dir: str | None) -> ConfigError:
  where = _data_dir_text(data_dir)
  base_name = name.split("/")[0].split(":")[0]
  if base_name == "cifar10":
    return ConfigError(
        f"data.dataset='cifar10' without data.path reads the tfds cifar10, which "
        f"is not prepared in {where}, and nothing is downloaded: set "
        "data.path=cifar-10-python.tar.gz (the CIFAR-10 python tarball from "
        "https://www.cs.toronto.edu/~kriz/cifar.html) to read it offline, or "
        "prepare the tfds one elsewhere with `tfds build cifar10 "
        "--file_format=array_record --data_dir=DIR` and set data.data_dir=DIR.")
  return ConfigError(
      f"data.dataset={name!r} is not prepared in {where}, and this library "
      f"never downloads. {OFFLINE_HELP} Or prepare it where tfds can download "
      f"with `tfds build {base_name} --file_format=array_record --data_dir=DIR` "
      "and set data.data_dir=DIR.")


def _needs_module(name: str, e: ModuleNotFoundError) -> ConfigError:
  module = e.name or "a module"
  if module.split(".")[0] == "tensorflow":
    return ConfigError(
        f"Reading or preparing the tfds dataset data.dataset={name!r} needs "
        "TensorFlow, which this project does not use: prepare it elsewhere with "
        f"`tfds build {name} --file_format=array_record --data_dir=DIR` and set "
        f"data.data_dir=DIR. {OFFLINE_HELP}")
  return ConfigError(f"The tfds dataset data.dataset={name!r} needs the missing "
                     f"package {module!r} (`pip install {module.split('.')[0]}`).")


def builder(name: str, data_dir: str | None):
  """The tfds builder of ``name`` (nothing is prepared, fetched or written).

  Raises:
    ConfigError: an unknown or community name, a builder that needs a missing
      package, or a dataset without an ``image`` feature.
  """
  if not _NAME.match(name):
    why = (" (a community 'namespace:name' dataset: tfds would look it up online)"
           if ":" in name else "")
    raise _unknown(name, why)
  try:
    b = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown(name) from None
  except ModuleNotFoundError as e:
    raise _needs_module(name, e) from None
  except ValueError as e:  # E.g. an unknown config or version.
    raise ConfigError(f"data.dataset={name!r}: {str(e).splitlines()[0]}") from None
  features = b.info.features
  if "image" not in features:
    raise ConfigError(f"data.dataset={name!r} has no 'image' feature (features: "
                      f"{sorted(features.keys())}); this library reads image datasets.")
  return b


def _prepared_builder(name: str, data_dir: str | None):
  """``builder`` after checking (or, for digits, building) the prepared data."""
  b = builder(name, data_dir)
  if not b.is_prepared():
    if name not in EMBEDDED:
      raise _not_prepared(name, data_dir)
    _build_embedded(b, name)
  formats = b.info.available_file_formats()
  if not formats & set(tfds.core.FileFormat.with_random_access()):
    raise ConfigError(
        f"data.dataset={name!r} is prepared in {_data_dir_text(data_dir)} as "
        f"{', '.join(sorted(f.value for f in formats)) or 'an unknown format'}, "
        "which has no random access: rebuild it with `tfds build "
        f"{name} --file_format=array_record --data_dir=DIR`.")
  return b


def _build_embedded(b, name: str) -> None:
  """Builds an embedded dataset (no download; the builder prints one line)."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

  bars = getattr(tqdm_utils, "_active", True)
  tfds.disable_progress_bar()
  try:
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except ModuleNotFoundError as e:
    raise _needs_module(name, e) from None
  finally:
    if bars:
      tfds.enable_progress_bar()


def _split_sizes(b, name: str) -> dict[str, int]:
  if not b.is_prepared() and name == digits_lib.NAME:
    return dict(digits_lib.SPLIT_SIZES)
  return {str(k): int(v.num_examples) for k, v in b.info.splits.items()}


def info(settings: base.DataSettings) -> base.DataInfo:
  """``DataInfo`` of a prepared (or embedded) tfds dataset; prepares nothing."""
  name = settings.dataset
  b = builder(name, settings.data_dir)
  if not b.is_prepared() and name not in EMBEDDED:
    raise _not_prepared(name, settings.data_dir)
  features = b.info.features
  label = features["label"] if "label" in features else None
  labelled = isinstance(label, tfds.features.ClassLabel)
  notes = [f"tfds {b.info.full_name} in {b.data_dir}"]
  if name in EMBEDDED:
    notes.append(f"embedded: {EMBEDDED[name]}"
                 + ("" if b.is_prepared() else " on first use"))
  return base.DataInfo(
      height=settings.image_size,
      width=settings.image_size,
      channels=settings.channels,
      num_classes=label.num_classes if labelled else None,
      class_names=tuple(label.names) if labelled else None,
      split_sizes=_split_sizes(b, name),
      dataset=name,
      location=b.data_dir,
      stored_shape=tuple(features["image"].shape),
      notes=tuple(notes),
  )


def raw_source(name: str, data_dir: str | None, split: str):
  """The tfds data source of ``split`` as stored (tfds slicing such as
  ``"train[:90%]"`` works), building the embedded digits on first use.

  Raises:
    ConfigError: see ``builder``; a dataset that is not prepared, not stored
      with random access, lacks the split, or needs TensorFlow to decode.
  """
  b = _prepared_builder(name, data_dir)
  split_name = split.split("[")[0]
  if split_name not in b.info.splits:
    raise ConfigError(f"data.dataset={name!r} has no {split_name!r} split (splits: "
                      f"{sorted(b.info.splits.keys())}).")
  try:
    src = b.as_data_source(split=split)
    if len(src):
      src[0]  # pylint: disable=pointless-statement  # Decoding may need TensorFlow.
  except ModuleNotFoundError as e:
    raise _needs_module(name, e) from None
  return src, tuple(b.info.features["image"].shape)


def source(settings: base.DataSettings, split: str, in_memory: bool):
  """``raw_source`` fitted to ``data.image_size`` and ``data.channels``.

  Returns:
    ``in_memory``: an ``ArraySource``; else the tfds data source itself when
    the stored shape is the model's, or a ``LazySource`` fitting each example.
  """
  src, stored_shape = raw_source(settings.dataset, settings.data_dir, split)
  target = (settings.image_size, settings.image_size, settings.channels)
  if stored_shape != target:
    src = base.LazySource(src, images_lib.FitImage(image_size=settings.image_size,
                                                   channels=settings.channels))
  return base.ArraySource(*base.to_arrays(src)) if in_memory else src
