"""Benchmark of the folder input pipeline (a script, not a test).

Throughput, in images/s, of `pipeline.make_loader` over a `folder` source of
10,000 random 32x32 RGB PNGs (10 class subfolders), batch 128, with the PNGs
decoded in the main process (worker_count=0) and in 1 and 2 grain worker
processes; and, for reference, over the same images decoded into memory once
(`data.in_memory=True`, no decoding in the loop).

Method: all settings are measured in one run, alternately, for several rounds
(so background load hits all alike), and the median round is reported. Each
round builds a fresh loader, draws `--warmup` batches untimed (worker start-up,
buffers filling), then times `--batches` batches. Train split (90%).

  python benchmarks/data_loader.py                 # images in a temp dir
  python benchmarks/data_loader.py --dir /tmp/pngs # made there once, then reused
  python benchmarks/data_loader.py --workers 0,2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import PIL.Image

from diffusion_jax.data import pipeline
from diffusion_jax.data import sources
from diffusion_jax.default_config import get_default_config


def make_pngs(root: str, n: int, size: int = 32, seed: int = 0) -> None:
  """Writes n random size x size RGB PNGs under root/class_k/ (k = i % 10)."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    directory = os.path.join(root, f"class_{i % 10}")
    os.makedirs(directory, exist_ok=True)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(os.path.join(directory, f"{i:06d}.png"))


def count_pngs(root: str) -> int:
  return sum(f.endswith(".png") for _, _, files in os.walk(root) for f in files)


def time_loader(source, worker_count: int, batch_size: int, warmup: int,
                batches: int) -> float:
  """Images/s over `batches` batches after `warmup` untimed ones."""
  loader = pipeline.make_loader(source, batch_size=batch_size, seed=0, image_size=32,
                                worker_count=worker_count)
  it = iter(loader)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape == (batch_size, 32, 32, 3)
  del it  # Stops the workers before the next setting is timed.
  return batches * batch_size / elapsed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", help="folder of PNGs (made there when it has too few)")
  parser.add_argument("--num_images", type=int, default=10_000)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--workers", default="0,1,2", help="worker counts, e.g. 0,1,2")
  parser.add_argument("--warmup", type=int, default=10, help="untimed batches per round")
  parser.add_argument("--batches", type=int, default=100, help="timed batches per round")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    root = args.dir or os.path.join(tmp, "pngs")
    if count_pngs(root) < args.num_images:
      start = time.perf_counter()
      make_pngs(root, args.num_images)
      print(f"wrote {args.num_images:,} random 32x32 RGB PNGs to {root} in "
            f"{time.perf_counter() - start:.1f} s")
    data = get_default_config().data
    data.dataset, data.path, data.image_size, data.channels = "folder", root, 32, 3
    start = time.perf_counter()
    info = sources.dataset_info(data)
    print(f"indexed in {time.perf_counter() - start:.2f} s: {info.split_sizes}, "
          f"{info.num_classes} classes; os.cpu_count()={os.cpu_count()}")
    lazy = sources.get_source(data, "train", in_memory=False)
    start = time.perf_counter()
    memory = sources.get_source(data, "train", in_memory=True)
    print(f"decoded the train split into memory in {time.perf_counter() - start:.2f} s")

    settings = [(f"decode in loader, worker_count={w}", lazy, w)
                for w in map(int, args.workers.split(","))]
    settings.append(("in memory (decoded once), worker_count=0", memory, 0))
    results = {name: [] for name, _, _ in settings}
    for r in range(args.rounds):
      for name, source, workers in settings:
        results[name].append(time_loader(source, workers, args.batch_size,
                                         args.warmup, args.batches))
      print(f"round {r + 1}: " + ", ".join(f"{v[-1]:,.0f}" for v in results.values()))

    print(f"\nbatch {args.batch_size}, {args.batches} timed batches after "
          f"{args.warmup} warm-up ones, median of {args.rounds} rounds:")
    for name, values in results.items():
      print(f"  {name:45s} {statistics.median(values):9,.0f} images/s")


if __name__ == "__main__":
  main()
