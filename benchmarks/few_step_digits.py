"""Sample quality against the number of network evaluations (NFE) on digits.

  python benchmarks/few_step_digits.py                      # every run below that exists
  python benchmarks/few_step_digits.py --num_samples 500 --json docs/results/few_step_digits.json

Compares, at equal NFE, the v-prediction teacher (`configs/digits_v.py`,
runs/digits_v) sampled by deterministic DDIM and DPM-Solver++(2M) with few
steps, against its accelerated students: progressive distillation
(`configs/digits_distill.py`: runs/digits_pd2 after three rounds, two steps;
runs/digits_pd after four, one step) and consistency distillation /
training (`configs/digits_cd.py` runs/digits_cd, `configs/digits_ct.py`
runs/digits_ct), each on the grid it was trained for. A run whose workdir holds
no checkpoint is skipped. Every row is scored like the main job
(`benchmarks/digits_quality.py`): the fraction of samples a classifier trained
on the real training split labels with confidence >= 0.9, the spread of the
predicted classes, and the nearest-training-image distance relative to real
test images (a copy check). With --grids DIR it writes one PNG grid per row.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from guidance_digits import load_config
from diffusion_jax import generate, runs, writers
from diffusion_jax.metrics import classifier as eval_classifier
from diffusion_jax.data import sources


def rows(args):
  """(label, config path, workdir, overrides, NFE) of every comparison row."""
  teacher = ("configs/digits_v.py", args.teacher_workdir)
  out = []
  for k in (64, 16, 8, 4, 2, 1):
    out.append((f"teacher, DDIM (eta=0) {k} steps", *teacher,
                [f"sample.num_steps={k}", "sample.eta=0.0"], k))
  for k in (8, 4, 2):  # On the config's trailing grid: logsnr is worse on this
    # cosine schedule, whose last index has λ ≈ -10 (README, "Few-step sampling").
    out.append((f"teacher, DPM-Solver++(2M) {k} steps", *teacher,
                [f"sample.num_steps={k}", "sample.sampler=dpmpp_2m"], k))
  out.append(("progressive distillation, 2 steps", "configs/digits_distill.py",
              args.pd2_workdir, ["train.num_steps=1800"], 2))
  out.append(("progressive distillation, 1 step", "configs/digits_distill.py",
              args.pd_workdir, [], 1))
  for name, path, workdir in (("consistency distillation", "configs/digits_cd.py",
                               args.cd_workdir),
                              ("consistency training", "configs/digits_ct.py",
                               args.ct_workdir)):
    for ts in ("999", "499,999"):
      out.append((f"{name}, {len(ts.split(','))} step(s)", path, workdir,
                  [f"consistency.sample_timesteps={ts}"], len(ts.split(","))))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--pd_workdir", default="runs/digits_pd",
                 help="the 4-round (one-step) progressive distillation run")
  p.add_argument("--pd2_workdir", default="runs/digits_pd2",
                 help="the same run stopped after 3 rounds (train.num_steps=1800, two steps)")
  p.add_argument("--cd_workdir", default="runs/digits_cd")
  p.add_argument("--ct_workdir", default="runs/digits_ct")
  p.add_argument("--teacher_workdir", default="runs/digits_v")
  p.add_argument("--grids", default=None, help="directory for one PNG grid per row")
  p.add_argument("--json", default=None)
  args = p.parse_args()

  train_x, train_y = sources.load_split(dict(dataset="digits", data_dir=None, image_size=8, channels=1), "train")
  test_x, _ = sources.load_split(dict(dataset="digits", data_dir=None, image_size=8, channels=1), "test")
  clf = eval_classifier.train_eval_classifier(train_x, train_y, seed=0)
  print(f"{args.num_samples} samples per row, seed 1; scored by a classifier trained on "
        "the real training split")
  print("| method | NFE | confident (p>=0.9) | mean confidence | class share min..max "
        "| NN distance / real | time |")
  print("|---|---|---|---|---|---|---|")
  results = []
  for label, path, workdir, overrides, nfe in rows(args):
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      print(f"| {label} | — | skipped: no run in {workdir} | | | | |")
      continue
    config = load_config(path, overrides)
    run = runs.load_run(workdir, config)
    params, step = run.params, run.step
    gen = generate.Generator(config, run.spec, run.model_fn, run.schedule,
                             batch_size=config.sample.batch_size)
    grid = run.task.sampling.grid(config)
    assert nfe == (len(grid["timesteps"]) if "timesteps" in grid else grid["num_steps"]), label
    t0 = time.perf_counter()
    images = gen(params, args.num_samples, seed=1)
    dt = time.perf_counter() - t0
    r = eval_classifier.sample_quality_report(images, clf, train_x, test_x)
    fr = np.asarray(r["class_fractions"])
    print(f"| {label} | {nfe} | {r['confident_fraction']:.1%} | {r['mean_confidence']:.3f} "
          f"| {fr.min():.1%}..{fr.max():.1%} | {r['nn_median_ratio']:.2f} | {dt:.1f} s |",
          flush=True)
    results.append({"method": label, "nfe": nfe, "workdir": workdir, "step": step,
                    "seconds": dt} | r)
    if args.grids:
      os.makedirs(args.grids, exist_ok=True)
      name = label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
      writers.save_image_grid(os.path.join(args.grids, f"{name}.png"),
                              writers.to_uint8(images[:100]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
