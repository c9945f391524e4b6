"""Inpainting the bottom half of the test digits: classifier accuracy of the completions.

Loads the EMA params of a trained digits run (default: the main job,
runs/digits), hides the bottom half of every test digit and completes it with
replacement and with RePaint (`diffusion_jax/edit.py`'s `Editor`, the run's
sampler settings), then scores the completed images with the project's
digits classifier (`metrics.classifier.train_eval_classifier`, trained on the real
training split) against their true labels. For reference it also scores the
real test digits and the half digits with the bottom half gray (0). The model
never sees the labels (an unconditional model; a conditional one gets the
null label through classifier-free guidance with w = 0).

Writes docs/digits_inpaint_<method>.png (rows: real, masked, completed; the
first 16 test digits) and docs/results/inpaint_digits.json, and prints a table.

  python benchmarks/inpaint_digits.py --workdir runs/digits
  python benchmarks/inpaint_digits.py --workdir /tmp/tiny --num_images 32 \
      --jump_length 2 --out /tmp/tiny_docs        # a tiny run (README: tests/_tiny.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "digits"))
  parser.add_argument("--methods", default="replace,repaint")
  parser.add_argument("--jump_length", type=int, default=10)
  parser.add_argument("--jump_n_sample", type=int, default=10)
  parser.add_argument("--mask", default="bottom_half", help="a name in edit.MASKS or a PNG")
  parser.add_argument("--num_images", type=int, default=None, help="first N test digits (all)")
  parser.add_argument("--batch_size", type=int, default=None, help="default: sample.batch_size")
  parser.add_argument("--classifier_steps", type=int, default=500)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(ROOT, "docs"))
  args = parser.parse_args()

  from diffusion_jax import edit, runs, writers
  from diffusion_jax.metrics import classifier as eval_classifier
  from diffusion_jax.data import sources

  run = runs.load_run(args.workdir)
  config = run.config
  config.edit.jump_length, config.edit.jump_n_sample = args.jump_length, args.jump_n_sample
  if run.spec.conditioning != "none":
    config.sample.guidance_scale = 0.0      # The null label: the model does not see y.
  test_x, test_y = sources.load_split(config.data, "test")
  if args.num_images is not None:
    test_x, test_y = test_x[:args.num_images], test_y[:args.num_images]
  train_x, train_y = sources.load_split(config.data, "train")
  start = time.perf_counter()
  clf = eval_classifier.train_eval_classifier(train_x, train_y, seed=args.seed,
                                         steps=args.classifier_steps)
  print(f"classifier trained in {time.perf_counter() - start:.1f} s")

  def score(images):
    probs = eval_classifier.classify(*clf, images)
    return {"accuracy": float(np.mean(probs.argmax(-1) == test_y)),
            "confident_fraction": float(np.mean(probs.max(-1) >= 0.9))}

  mask = edit.read_mask(args.mask, run.spec.image_size)
  masked = np.where(mask > 0, test_x, 0.0).astype(np.float32)
  results = {"workdir": args.workdir, "step": run.step, "num_images": int(len(test_x)),
             "mask": args.mask, "sampler": config.sample.sampler,
             "num_steps": config.sample.num_steps, "spacing": config.sample.spacing,
             "eta": config.sample.eta, "real": score(test_x), "masked (gray)": score(masked)}
  editor = edit.Editor(config, run, args.batch_size or config.sample.batch_size)
  labels = np.zeros(len(test_x), np.int32) if run.spec.conditioning != "none" else None
  os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
  for method in args.methods.split(","):
    start = time.perf_counter()
    done = editor.inpaint(test_x, mask, labels, method=method, seed=args.seed)
    seconds = time.perf_counter() - start
    known = np.broadcast_to(mask > 0, done.shape)
    assert np.array_equal(done[known], test_x[known]), "known pixels changed"
    results[method] = score(done) | {
        "seconds": round(seconds, 1),
        "jump_length": args.jump_length if method == "repaint" else None,
        "jump_n_sample": args.jump_n_sample if method == "repaint" else None,
        "mse_to_real_in_the_hole": float(np.mean((done - test_x)[~known] ** 2))}
    grid = edit._rows([test_x[:16], masked[:16], done[:16]])
    path = writers.save_image_grid(os.path.join(args.out, f"digits_inpaint_{method}.png"), grid,
                                   ncols=min(16, len(test_x)))
    print(f"{method}: {seconds:.1f} s; grid {path}")
  path = writers.save_json(os.path.join(args.out, "results", "inpaint_digits.json"), results)
  print(f"\n{'images':24s} {'accuracy':>9s} {'confident (p>=0.9)':>19s}")
  for name in ["real", "masked (gray)"] + args.methods.split(","):
    r = results[name]
    print(f"{name:24s} {100 * r['accuracy']:8.1f}% {100 * r['confident_fraction']:18.1f}%")
  print(path)


if __name__ == "__main__":
  sys.exit(main())
