"""Output writers: metrics (JSON lines + TensorBoard, no TensorFlow), progress bar,
and image grids."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from PIL import Image


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


def save_image_grid(path: str, images, ncols: int | None = None) -> str:
  """Saves float images in [-1, 1] (or uint8) [N, H, W, C] as one PNG grid."""
  arr = images if images.dtype == np.uint8 else to_uint8(images)
  small = max(arr.shape[1], arr.shape[2]) < 32
  grid = image_grid(arr, ncols, scale=4 if small else 1)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  tmp = path + ".tmp.png"
  Image.fromarray(grid).save(tmp)
  os.replace(tmp, path)
  return path


class MetricWriter:
  """Writes scalars to workdir/metrics.jsonl and TensorBoard event files, and
  drives a progress bar with loss, steps/s and ETA."""

  def __init__(self, workdir: str, *, total_steps: int, initial: int = 0,
               progress: bool = True):
    from tensorboardX import SummaryWriter
    from tqdm import tqdm
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._bar = tqdm(total=total_steps, initial=initial, disable=not progress,
                     unit="step", dynamic_ncols=True, mininterval=1.0)
    self._last_step, self._last_time = initial, time.perf_counter()

  def write(self, step: int, scalars: dict) -> None:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    row = {k: float(v) for k, v in scalars.items()} | {"steps_per_sec": rate}
    self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
    self._jsonl.flush()
    for k, v in row.items():
      self._tb.add_scalar(f"train/{k}", v, step)
    self._bar.set_postfix(loss=f"{row['loss']:.4f}", steps_s=f"{rate:.2f}")
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    self._bar.close()
    self._tb.close()
    self._jsonl.close()


class NullWriter:
  """The MetricWriter of the processes that do not write (all but process 0)."""

  def write(self, step: int, scalars: dict) -> None:
    del step, scalars

  def close(self) -> None:
    pass
