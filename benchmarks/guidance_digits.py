"""Accuracy of guided digit samples against the guidance scale.

  # classifier-free guidance of a class-conditional model:
  python benchmarks/guidance_digits.py --config configs/digits_cond.py --workdir runs/digits_cond
  # classifier guidance of the unconditional model:
  python benchmarks/guidance_digits.py --config configs/digits.py --workdir runs/digits \
      --classifier_workdir runs/digits_clf

For each scale it draws --num_samples samples with balanced labels (one
compiled sampler: the scale is a traced array), scores them with a classifier
trained on the real training split (`benchmarks/digits_quality.py`) and prints
one table row: the accuracy against the requested labels, the confident
fraction, and the mean per-class spread relative to real test images. With
--grid it also writes a PNG with one row per class at the best scale.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np

import digits_quality
from diffusion_jax import generate, runs, writers
from diffusion_jax.metrics import classifier as eval_classifier
from diffusion_jax.data import sources


def load_config(path: str, overrides: list[str]):
  spec = importlib.util.spec_from_file_location("_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value
  return config


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--classifier_workdir", default=None)
  p.add_argument("--scales", default=None, help="comma-separated scales")
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--grid", default=None, help="PNG path for the best scale's grid")
  p.add_argument("--json", default=None)
  p.add_argument("--set", action="append", default=[], help="config override k=v")
  args = p.parse_args()

  config = load_config(args.config, args.set)
  classifier_guided = args.classifier_workdir is not None
  default = "0,0.5,1,2,4,8" if classifier_guided else "0,1,1.5,2,3,5"
  scales = [float(s) for s in (args.scales or default).split(",")]
  run = runs.load_run(args.workdir, config)
  params, step = run.params, run.step
  classifier_fn = None
  if classifier_guided:
    classifier_fn, cparams = generate.restore_classifier(args.classifier_workdir)
    params = {"model": params, "classifier": cparams}
  gen = generate.Generator(config, run.spec, run.model_fn, run.schedule,
                           batch_size=config.sample.batch_size,
                           classifier_fn=classifier_fn, cfg=not classifier_guided)
  train_x, train_y = sources.load_split(config.data, "train")
  test_x, test_y = sources.load_split(config.data, "test")
  clf = eval_classifier.train_eval_classifier(train_x, train_y, seed=0)
  real_spread = digits_quality.class_spread(test_x, test_y, 10)
  labels = generate.balanced_labels(args.num_samples, 10)
  name = "classifier_scale" if classifier_guided else "guidance_scale"
  print(f"step-{step} EMA params of {args.workdir}; {config.sample.sampler}, "
        f"{config.sample.num_steps} steps; {args.num_samples} samples per scale")
  print(f"| {name} | accuracy | confident (p>=0.9) | spread / real | time |")
  print("|---|---|---|---|---|")
  rows, best = [], None
  for s in scales:
    t0 = time.perf_counter()
    images = gen(params, args.num_samples, labels, seed=1, **{name: s})
    dt = time.perf_counter() - t0
    probs = eval_classifier.classify(*clf, images)
    acc = float(np.mean(probs.argmax(-1) == labels))
    conf = float(np.mean(probs.max(-1) >= 0.9))
    spread = digits_quality.class_spread(images, labels, 10)
    ratio = float(np.nanmean(spread / real_spread))
    rows.append({"scale": s, "accuracy": acc, "confident": conf,
                 "spread_ratio": ratio, "class_spread": spread.tolist()})
    print(f"| {s:g} | {acc:.1%} | {conf:.1%} | {ratio:.2f} | {dt:.0f} s |", flush=True)
    if best is None or acc > best[0]:
      best = (acc, s, images, spread)
  acc, s, images, spread = best
  print(f"best {name} = {s:g}: accuracy {acc:.1%}; per-class spread (samples/real): "
        + " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(spread, real_spread)))
  if args.grid:
    order = np.concatenate([np.where(labels == c)[0][:12] for c in range(10)])
    os.makedirs(os.path.dirname(args.grid) or ".", exist_ok=True)
    writers.save_image_grid(args.grid, writers.to_uint8(images[order]), ncols=12)
    print(f"grid: {args.grid}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"step": step, "scale_name": name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
