"""`digits`: the UCI handwritten digits (shipped inside scikit-learn) as a tfds dataset.

The builder prepares fully offline -- the raw data comes from
``sklearn.datasets.load_digits`` -- and writes ``array_record`` files so that
``tfds.data_source`` / ``builder.as_data_source()`` can read them with random
access. Neither preparing nor reading needs TensorFlow:

* images are handed to tfds as ``PIL.Image`` objects, so tfds PNG-encodes them
  with PIL (``Image._encode_pil_image``) instead of ``tf.image.encode_png``;
* tfds serialises examples with its own protobuf code and array_record writer;
* ``as_data_source`` decodes the PNG bytes with PIL (``decode_example_np``);
* ``code_path`` is overridden: tfds' default resolves it through the
  ``importlib_resources`` backport, which is not a dependency here.

Importing this module registers the builder under the name ``"digits"``.

Data
  1,797 grayscale 8x8 images, originally with integer values 0..16, 10 classes.
  ``image``: uint8 [8, 8, 1], ``round(v * 255 / 16)`` so 0..16 -> 0..255.
  ``label``: ClassLabel(num_classes=10), the digit.

Splits (deterministic, stratified by label; sklearn ``train_test_split`` with
``test_size=0.2, random_state=0``):
  ``train``: 1,437 examples, ``test``: 360 examples.
"""

from __future__ import annotations

from etils import epath
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

NAME = "digits"
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
SPLIT_SIZES = {"train": 1437, "test": 360}
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_raw_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits from scikit-learn, rescaled.

  Returns:
    images: uint8 [1797, 8, 8, 1] with values in 0..255.
    labels: int64 [1797] with values in 0..9.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  raw = load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, raw.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Deterministic stratified 80/20 split of ``arange(len(labels))``.

  Args:
    labels: int [N] class labels.

  Returns:
    ``{"train": int [~0.8 N], "test": int [~0.2 N]}`` sorted index arrays.
  """
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  train_idx, test_idx = train_test_split(
      np.arange(len(labels)),
      test_size=TEST_FRACTION,
      random_state=SPLIT_SEED,
      stratify=labels,
  )
  return {"train": np.sort(train_idx), "test": np.sort(test_idx)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI handwritten digits (8x8, 10 classes) from scikit-learn, offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (stratified 80/20 split, seed 0)."}

  def __init__(self, *, file_format=None, **kwargs):
    # array_record by default: random access for grain, and no TensorFlow needed.
    super().__init__(
        file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs
    )

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. (tfds' default needs the `importlib_resources` backport.)"""
    return epath.Path(__file__)

  def _log_download_bytes(self) -> None:
    """Replaces tfds' "Downloading and preparing dataset ..." line."""
    print(f"Building the embedded digits dataset from scikit-learn into "
          f"{self.data_dir} (offline, once).", flush=True)

  def _log_download_done(self) -> None:
    """Nothing to add to the line above."""

  def _info(self) -> tfds.core.DatasetInfo:
    # `tfds.core.DatasetInfo(builder=self, ...)` rather than
    # `self.dataset_info_from_configs`, which would look for metadata files
    # (README, CITATIONS.bib) next to this module.
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "UCI ML hand-written digits (Alpaydin & Kaynak, 1998) as shipped "
            "with scikit-learn: 8x8 grayscale, values 0..16 rescaled to 0..255."
        ),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
        citation=(
            "@misc{alpaydin1998optical, author={Alpaydin, E. and Kaynak, C.}, "
            "title={Optical Recognition of Handwritten Digits}, year={1998}, "
            "howpublished={UCI Machine Learning Repository}}"
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = load_raw_digits()
    return {
        split: self._generate_examples(images, labels, idx)
        for split, idx in split_indices(labels).items()
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      image = PIL.Image.fromarray(images[i, :, :, 0])  # 2-D uint8 -> mode "L"
      yield int(i), {"image": image, "label": int(labels[i])}
