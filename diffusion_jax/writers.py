"""Outputs: metrics (JSON lines + TensorBoard, no TensorFlow), progress bars,
image grids, npz and JSON files. Paths go through `etils.epath`, so a
`gs://` workdir works like a local one."""

from __future__ import annotations

import io
import json
import math
import sys
import time
from typing import Iterable

import numpy as np
from etils import epath
from PIL import Image

__all__ = ["to_uint8", "image_grid", "save_image_grid", "save_npz", "save_json",
           "progress", "MetricWriter", "NullWriter"]


def to_uint8(images) -> np.ndarray:
  """float images in [-1, 1], [N, H, W, C] -> uint8 [N, H, W, C]."""
  x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
  return np.round(x).astype(np.uint8)


def image_grid(images_uint8: np.ndarray, ncols: int | None = None,
               pad: int = 1, scale: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C]."""
  n, h, w, c = images_uint8.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images_uint8):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = img
  if scale > 1:
    grid = grid.repeat(scale, 0).repeat(scale, 1)
  return grid


def _write_bytes(path, data: bytes) -> str:
  """Writes atomically where the file system allows (a temporary name, then a rename)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(path)
  return str(path)


def save_image_grid(path, images, ncols: int | None = None) -> str:
  """Saves float images in [-1, 1] (or uint8) [N, H, W, C] as one PNG grid."""
  arr = images if images.dtype == np.uint8 else to_uint8(images)
  small = max(arr.shape[1], arr.shape[2]) < 32
  grid = image_grid(arr, ncols, scale=4 if small else 1)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  buf = io.BytesIO()
  Image.fromarray(grid).save(buf, format="PNG")
  return _write_bytes(path, buf.getvalue())


def save_npz(path, **arrays) -> str:
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return _write_bytes(path, buf.getvalue())


def save_json(path, obj) -> str:
  return _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def progress(iterable: Iterable, *, desc: str, unit: str, total: int | None = None,
             initial: int = 0):
  """A tqdm progress bar on stderr (none when stderr is not a terminal and
  the loop is short is fine too: tqdm prints sparse updates)."""
  from tqdm import tqdm
  return tqdm(iterable, desc=desc, unit=unit, total=total, initial=initial,
              dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


class MetricWriter:
  """Writes scalars to workdir/metrics.jsonl and TensorBoard event files, and
  drives a progress bar that advances every step (steps/s, ETA, last loss).

  A run resumed from step `initial` first drops the rows (and, through
  TensorBoard's purge, the events) of steps past it, so every step appears once.
  """

  def __init__(self, workdir: str, *, total_steps: int, initial: int = 0,
               progress: bool = True):
    from tensorboardX import SummaryWriter
    from tqdm import tqdm
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self._path = root / "metrics.jsonl"
    self._rows = []
    if self._path.exists():  # Keep the rows up to the restored step only.
      self._rows = [line for line in self._path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= initial]
    self._tb = None
    if "://" not in str(root):  # tensorboardX writes local files only.
      self._tb = SummaryWriter(str(root / "tensorboard"), purge_step=initial + 1)
    self._bar = tqdm(total=total_steps, initial=initial, disable=not progress,
                     unit="step", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    self._last_step, self._last_time = initial, time.perf_counter()
    self.last = {}
    self._flush()

  def _flush(self) -> None:
    _write_bytes(self._path, ("\n".join(self._rows) + "\n" if self._rows else "").encode())

  def step(self, step: int) -> None:
    """Advances the bar to `step` (no device sync)."""
    self._bar.update(step - self._bar.n)

  def write(self, step: int, scalars: dict) -> None:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    row = {k: float(v) for k, v in scalars.items()} | {"steps_per_sec": rate}
    self.last = {"step": step, **row}
    self._rows.append(json.dumps(self.last))
    self._flush()
    if self._tb is not None:
      for k, v in row.items():
        self._tb.add_scalar(f"train/{k}", v, step)
    self._bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
    self.step(step)

  def write_eval(self, step: int, scalars: dict) -> None:
    """A row of evaluation scalars, logged as "eval/<name>"."""
    row = {f"eval/{k}": float(v) for k, v in scalars.items()}
    self._rows.append(json.dumps({"step": step, **row}))
    self._flush()
    if self._tb is not None:
      for k, v in row.items():
        self._tb.add_scalar(k, v, step)

  @property
  def path(self) -> str:
    return str(self._path)

  def close(self) -> None:
    self._bar.close()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """The MetricWriter of the processes that do not write (all but process 0)."""
  last: dict = {}
  path = ""

  def step(self, step: int) -> None:
    del step

  def write(self, step: int, scalars: dict) -> None:
    del step, scalars

  def write_eval(self, step: int, scalars: dict) -> None:
    del step, scalars

  def close(self) -> None:
    pass
