"""`folder`: a directory of images (``data.dataset="folder"``, ``data.path=DIR``).

Files
  Every file named ``*.png``, ``*.jpg``, ``*.jpeg`` or ``*.webp`` (any case)
  under DIR, recursively; symlinks are followed (each directory once) and
  hidden files and directories (name starting with ".") are skipped. Records
  are in the sorted order of the relative POSIX paths.

Labels
  * Every image lies in a first-level subfolder (``DIR/cat/1.png``,
    ``DIR/dog/x/2.jpg``): labelled. The class names are the first-level
    subfolders that hold images, sorted (Python string order), labels 0..C-1.
  * Otherwise -- all images directly in DIR, or some directly in DIR and some
    in subfolders ("mixed") -- unlabelled: ``num_classes`` is ``None`` and
    every label is 0. ``describe`` says which rule applied.

Split (deterministic, ``base.split_by_hash``)
  The test split is the ``round(N * data.test_fraction)`` files (at least one
  when the fraction is > 0 and N >= 2) with the smallest SHA-256 of their
  relative path; the rest is train. It does not depend on a seed or on the
  order of the listing, and adding a few files moves only a few others.

Unreadable files (skipped when indexing, fatal when decoding)
  The folder is indexed by reading each file's header (``PIL.Image.open``, no
  decoding: ~25 us a file, cached per process by path, size and mtime). Files
  PIL cannot identify -- empty files, an HTML page saved as ``.jpg``, a
  format PIL cannot read -- are SKIPPED: they are in no split, and one warning
  line on stderr gives their count and the first names. A file whose header is
  valid but whose pixel data are damaged (e.g. a truncated download) is only
  found when it is decoded: that is FATAL, a ``DataError`` naming the file,
  raised by the loader (from grain workers too) or by ``sources.load_split``.

Decoding
  ``FolderSource`` records are cheap reads, ``{"bytes", "path", "label"}``;
  its ``transform`` (``images.DecodeImage``) decodes and fits them to
  ``data.image_size`` x ``data.channels`` (``images.py``) in the grain workers
  of ``pipeline.make_loader``. ``base.to_arrays`` decodes a whole split.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import ClassVar

import numpy as np
import PIL.Image

from diffusion_jax.data import base
from diffusion_jax.data import images as images_lib
from diffusion_jax.errors import DataError

NAME = "folder"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_NAMED = 5  # Skipped files named in the warning.

# (absolute path, size, mtime_ns) -> whether PIL identifies the file.
_HEADER_OK: dict[tuple[str, int, int], bool] = {}
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The readable images of a folder, their labels and the split.

  Attributes:
    root: absolute path of the folder.
    files: relative POSIX paths of the readable images, sorted.
    labels: int32 [len(files)] (zeros when unlabelled).
    class_names: sorted first-level subfolder names, or ``None``.
    layout: ``"class subfolders"``, ``"flat"`` or ``"mixed"``.
    skipped: relative paths of the files PIL cannot identify.
    splits: ``{"train": int64 [n], "test": int64 [m]}`` indices into files.
  """

  root: str
  files: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...] | None
  layout: str
  skipped: tuple[str, ...]
  splits: dict[str, np.ndarray]


def _list_images(root: str) -> list[tuple[str, os.stat_result]]:
  """(relative POSIX path, stat) of every image file under ``root``."""
  found = []
  seen = set()
  stack = [(root, "")]
  while stack:
    directory, prefix = stack.pop()
    real = os.path.realpath(directory)
    if real in seen:  # A symlink cycle or a second link to the same folder.
      continue
    seen.add(real)
    try:
      entries = list(os.scandir(directory))
    except OSError as e:
      raise DataError(f"Cannot list the image folder {directory}: {e.strerror}.") from None
    for entry in entries:
      if entry.name.startswith("."):
        continue
      try:
        if entry.is_dir():
          stack.append((entry.path, f"{prefix}{entry.name}/"))
        elif entry.name.lower().endswith(EXTENSIONS) and entry.is_file():
          found.append((f"{prefix}{entry.name}", entry.stat()))
      except OSError:  # A dangling symlink: not an image we can read.
        found.append((f"{prefix}{entry.name}", None))
  found.sort(key=lambda item: item[0])
  return found


def _identifies(path: str) -> bool:
  try:
    with PIL.Image.open(path) as image:
      image.size  # pylint: disable=pointless-statement
    return True
  except images_lib.DECODE_ERRORS:
    return False


def _check_headers(root: str, listing) -> list[bool]:
  """Whether PIL identifies each listed file (cached by path, size, mtime)."""
  keys = [None if st is None else (os.path.join(root, rel), st.st_size, st.st_mtime_ns)
          for rel, st in listing]
  for key in keys:  # Sequential: threads only contend for the GIL here.
    if key is not None and key not in _HEADER_OK:
      _HEADER_OK[key] = _identifies(key[0])
  return [k is not None and _HEADER_OK[k] for k in keys]


def index_folder(path: str, test_fraction: float) -> FolderIndex:
  """Lists, checks, labels and splits the images under ``path`` (module doc).

  Args:
    path: ``data.path``, a directory.
    test_fraction: ``data.test_fraction``.

  Raises:
    DataError: ``path`` is missing or not a directory, or holds no readable
      image.
  """
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(root):
    raise DataError(f"data.path={path!r}: no such directory (data.dataset='folder' "
                    "reads the PNG/JPEG/WebP images under it).")
  if not os.path.isdir(root):
    hint = (" For a .npz file set data.dataset='npz'." if root.endswith(".npz") else
            " For the CIFAR-10 tarball set data.dataset='cifar10'."
            if root.endswith((".tar.gz", ".tgz", ".tar")) else "")
    raise DataError(f"data.path={path!r} is a file, but data.dataset='folder' needs "
                    f"a directory of images.{hint}")
  listing = _list_images(root)
  ok = _check_headers(root, listing)
  files = tuple(rel for (rel, _), good in zip(listing, ok) if good)
  skipped = tuple(rel for (rel, _), good in zip(listing, ok) if not good)
  if not files:
    what = (f"none of its {len(skipped)} image files can be read (e.g. {skipped[0]})"
            if skipped else f"it has no {'/'.join(e[1:] for e in EXTENSIONS)} files")
    raise DataError(f"data.path={path!r}: no images to read in {root}: {what}. "
                    "data.dataset='folder' reads the images under data.path, "
                    "recursively, with first-level subfolders as classes.")
  if skipped and (root, skipped) not in _WARNED:
    _WARNED.add((root, skipped))
    names = ", ".join(skipped[:MAX_NAMED]) + (", ..." if len(skipped) > MAX_NAMED else "")
    print(f"diffusion_jax: warning: data.path={path!r}: skipped {len(skipped)} "
          f"unreadable image file(s) (not images PIL can identify): {names}",
          file=sys.stderr, flush=True)

  top_level = sum("/" not in rel for rel in files)
  if top_level == 0:
    layout = "class subfolders"
    folders = [rel.split("/", 1)[0] for rel in files]
    class_names = tuple(sorted(set(folders)))
    ids = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([ids[f] for f in folders], np.int32)
  else:
    layout = "flat" if top_level == len(files) else "mixed"
    class_names = None
    labels = np.zeros(len(files), np.int32)
  return FolderIndex(root=root, files=files, labels=labels, class_names=class_names,
                     layout=layout, skipped=skipped,
                     splits=base.split_by_hash(files, test_fraction))


def describe_layout(index: FolderIndex) -> str:
  """One line: the labelling rule that applied."""
  if index.layout == "class subfolders":
    return f"labels: the {len(index.class_names)} first-level subfolders, sorted"
  if index.layout == "flat":
    return "labels: none (all images directly in data.path)"
  return ("labels: none (images both directly in data.path and in subfolders; "
          "put every image in a class subfolder for labels)")


@dataclasses.dataclass(frozen=True, repr=False)
class FolderSource:
  """Random access to one split of a folder: cheap reads, decoded later.

  Records are ``{"bytes": the encoded file, "path": str, "label": int32 []}``;
  ``transform`` decodes them to ``{"image": uint8 [S, S, C], "label": ...}``.

  Attributes:
    root: absolute folder path.
    files: relative paths of this split's images.
    labels: int32 [len(files)].
    transform: ``images.DecodeImage`` for ``data.image_size``/``channels``.
    split: the split name.
    digest: fingerprint of ``files`` and ``labels`` (for ``repr``).
  """

  root: str
  files: tuple[str, ...]
  labels: np.ndarray
  transform: images_lib.DecodeImage
  split: str
  digest: str

  # `pipeline.make_loader`'s default grain read threads. Reading a local file
  # takes ~15 us; handing records over from reader threads costs more (GIL
  # contention): 16 threads gave 1.9k and 0 gave 4.4k images/s for 32x32 PNGs
  # with worker_count=0 (5.9k and 8.2k with 2 workers). On a network file
  # system pass `read_threads` to overlap the reads.
  default_read_threads: ClassVar[int] = 0

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int):
    path = os.path.join(self.root, self.files[index])
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise DataError(f"Cannot read the image file {path} ({e.strerror}); the "
                      "folder changed after it was indexed?") from None
    return {"bytes": data, "path": path, "label": self.labels[index]}

  def __repr__(self) -> str:
    # Part of grain's iterator state, checked on restore: the same files and
    # labels (wherever the folder now lies) and the same decoding.
    return (f"FolderSource(split={self.split!r}, examples={len(self.files)}, "
            f"files={self.digest}, {self.transform!r})")


def make_source(index: FolderIndex, split: str, image_size: int,
                channels: int) -> FolderSource:
  """The ``split`` of ``index`` as a ``FolderSource``."""
  idx = index.splits[split]
  files = tuple(index.files[i] for i in idx)
  labels = index.labels[idx]
  return FolderSource(
      root=index.root,
      files=files,
      labels=labels,
      transform=images_lib.DecodeImage(image_size=image_size, channels=channels),
      split=split,
      digest=base.fingerprint(files, labels),
  )
