"""Scores digit samples with a classifier trained on the real training split.

  python benchmarks/digits_quality.py runs/digits/samples.npz [--json out.json]

Prints, for the `images` (uint8 [N, 8, 8, 1]) of a samples.npz written by
`--mode=sample`, one line per claim of the main job:
  * the fraction classified with confidence >= 0.9 (target >= 95%);
  * the predicted-class fractions (target: each within 7%..13%);
  * nearest-neighbour L2 distances to the training images, against those of
    the real test images (a copy check);
and, when the npz holds `labels` (a conditional model), the accuracy of the
samples against their labels and the per-class spread (pixel std within a
class) against that of the real test images.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from diffusion_jax.metrics import classifier as eval_classifier
from diffusion_jax.data import sources


def class_spread(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Mean per-pixel std of the images of each class, [num_classes]."""
  return np.array([images[labels == c].std(axis=0).mean() if np.any(labels == c)
                   else np.nan for c in range(num_classes)])


def score(samples_uint8: np.ndarray, labels=None, *, data_dir=None, seed: int = 0,
          classifier=None) -> dict:
  """The quality report of uint8 samples [N, H, W, C] (and their labels)."""
  train_x, train_y = sources.load_split(dict(dataset="digits", data_dir=data_dir, image_size=8, channels=1), "train")
  test_x, test_y = sources.load_split(dict(dataset="digits", data_dir=data_dir, image_size=8, channels=1), "test")
  if classifier is None:
    classifier = eval_classifier.train_eval_classifier(train_x, train_y, seed=seed)
  probs_test = eval_classifier.classify(*classifier, test_x)
  images = samples_uint8.astype(np.float32) / 127.5 - 1.0
  report = eval_classifier.sample_quality_report(images, classifier, train_x, test_x)
  report["classifier_test_accuracy"] = float(np.mean(probs_test.argmax(-1) == test_y))
  if labels is not None:
    probs = eval_classifier.classify(*classifier, images)
    pred = probs.argmax(-1)
    report["label_accuracy"] = float(np.mean(pred == labels))
    report["class_spread"] = class_spread(images, labels, 10).tolist()
    report["test_class_spread"] = class_spread(test_x, test_y, 10).tolist()
  return report


def print_report(r: dict) -> None:
  fr = np.asarray(r["class_fractions"])
  print(f"eval classifier test accuracy: {r['classifier_test_accuracy']:.2%}")
  print(f"confident (p>=0.9): {r['confident_fraction']:.2%} of {r['num_samples']} "
        f"samples (target >= 95%)")
  print(f"class fractions: min {fr.min():.1%}, max {fr.max():.1%} (target 7%..13%): "
        + " ".join(f"{f:.1%}" for f in fr))
  s, t = r["nn_train_distance"], r["test_nn_train_distance"]
  print(f"nearest training image, L2: samples min {s['min']:.3f} median "
        f"{s['median']:.3f}; real test images min {t['min']:.3f} median {t['median']:.3f}"
        f" (ratio {r['nn_median_ratio']:.2f}); copies: {r['copy_fraction']:.2%}")
  if "label_accuracy" in r:
    print(f"accuracy of samples against their labels: {r['label_accuracy']:.2%}")
    print("per-class spread (samples / real test): " + " ".join(
        f"{a:.3f}/{b:.3f}" for a, b in zip(r["class_spread"], r["test_class_spread"])))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("samples", help="samples.npz written by --mode=sample")
  parser.add_argument("--data_dir", default=None, help="tfds data dir")
  parser.add_argument("--json", default=None, help="also write the report here")
  args = parser.parse_args()
  data = np.load(args.samples)
  report = score(data["images"], data["labels"] if "labels" in data else None,
                 data_dir=args.data_dir)
  print_report(report)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
