"""Executes the notebooks top to bottom and stores their outputs in place.

  python notebooks/run_all.py                 # full runs (trains what runs/ lacks)
  python notebooks/run_all.py editing         # some of them
  DJ_SMOKE=1 python notebooks/run_all.py --no-write   # the smoke run, outputs discarded

Each notebook runs in a fresh kernel with the working directory notebooks/
and DJ_RUNS = <repository>/runs (so they share the main job's runs/digits
and train only what is missing: quickstart trains runs/digits, editing
adds runs/digits_cond, few_step runs/digits_v, runs/digits_pd and
runs/digits_cd). Order: quickstart, sampling_from_jax, editing, few_step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOKS = ("quickstart", "sampling_from_jax", "editing", "few_step")


def execute(name: str, *, write: bool, timeout: int, env: dict | None = None) -> float:
  """Runs notebooks/<name>.ipynb; returns the seconds it took."""
  import nbclient
  import nbformat
  path = os.path.join(HERE, f"{name}.ipynb")
  nb = nbformat.read(path, as_version=4)
  saved = dict(os.environ)
  os.environ.update(env or {})
  try:
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": HERE}}).execute()
    seconds = time.perf_counter() - start
  finally:
    os.environ.clear()
    os.environ.update(saved)
  if write:
    nbformat.write(nb, path)
  return seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="*", default=list(NOTEBOOKS))
  parser.add_argument("--no-write", dest="write", action="store_false",
                      help="do not store the outputs")
  parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per cell")
  args = parser.parse_args()
  env = {"DJ_RUNS": os.environ.get("DJ_RUNS", os.path.join(ROOT, "runs"))}
  for name in args.names:
    if name not in NOTEBOOKS:
      sys.exit(f"unknown notebook {name!r}; notebooks: {list(NOTEBOOKS)}")
    seconds = execute(name, write=args.write, timeout=args.timeout, env=env)
    print(f"{name}: {seconds:.0f} s{'' if args.write else ' (outputs not stored)'}", flush=True)


if __name__ == "__main__":
  main()
