"""The sample-quality metrics of the CLI and of training, chosen by name.

`eval.metrics` is a comma-separated list of names in `METRICS`:
  * "classifier": on a small labelled dataset (digits, ...), the Fréchet
    distance in the feature space of a small classifier trained once on the
    training split (`metrics/classifier.py`), as a ratio to the real test
    split's; the share of confidently classified samples; the class shares;
    the nearest-neighbour distance ratio (a memorization check);
  * "fid", "kid", "precision_recall": in the FID Inception's feature space
    (pytorch-fid's network, `metrics/inception.py`), against the real images
    of `eval.reference_split` (or, for FID, the statistics file
    `eval.fid_stats`: `--mode=fid_stats` writes one, and pytorch-fid's / TTUR's
    published files load too);
  * "bpd": the task's likelihood in bits/dim (`--mode=eval` only).
The Inception metrics need its weights (`eval.inception_weights`); without
them they are skipped with one line saying how to get and convert them, and
the others still run.
"""

from __future__ import annotations

import numpy as np
from etils import epath

from diffusion_jax.errors import ConfigError

__all__ = ["METRICS", "SAMPLE_METRICS", "INCEPTION_METRICS", "parse", "inception_feature_fn",
           "sample_metrics", "scalars"]

SAMPLE_METRICS = ("classifier", "fid", "kid", "precision_recall")
INCEPTION_METRICS = ("fid", "kid", "precision_recall")
METRICS = SAMPLE_METRICS + ("bpd",)


def parse(config) -> tuple[str, ...]:
  """The names of `eval.metrics` (ConfigError for an unknown one)."""
  text = config.eval.metrics or ""
  names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
  bad = [n for n in names if n not in METRICS]
  if bad:
    raise ConfigError(f"eval.metrics={text!r}: unknown metric(s) {bad}; known metrics: "
                      f"{list(METRICS)} (comma-separated).")
  return names


def inception_feature_fn(config):
  """The sharded FID Inception feature function of `eval.inception_weights`,
  or (None, the one-line reason) when no weights file is given."""
  from diffusion_jax.metrics import inception
  path = config.eval.inception_weights
  if not path or not epath.Path(path).exists():
    what = "no eval.inception_weights" if not path else f"no file {path!r}"
    return None, (f"{what}: download pytorch-fid's weights ({inception.FID_WEIGHTS_URL}), "
                  "convert them with `python -m diffusion_jax.metrics.convert_inception "
                  "pt_inception-2015-12-05-6726825d.pth fid_inception.npz` and set "
                  "eval.inception_weights=fid_inception.npz")
  params = inception.load_inception_params(path)
  return inception.make_feature_fn(params, batch_size=config.eval.inception_batch_size), None


def _reference_images(config) -> np.ndarray:
  from diffusion_jax.data import sources
  from diffusion_jax.metrics.inception import to_uint8
  images, _ = sources.load_split(config.data, config.eval.reference_split)
  n = config.eval.reference_examples
  return to_uint8(images[:n] if n else images)


def sample_metrics(config, images: np.ndarray, names=None) -> tuple[dict, list[str]]:
  """The sample metrics of `names` (default: `eval.metrics`' sample metrics)
  of uint8 images [N, H, W, C]. Returns (results, summary lines)."""
  from diffusion_jax.metrics import classifier, fid, kid
  from diffusion_jax.metrics.precision_recall import precision_recall
  names = [n for n in (parse(config) if names is None else names) if n in SAMPLE_METRICS]
  results, lines = {}, []
  if "classifier" in names:
    clf, train_x, test_x = classifier.cached_classifier(config.data)
    x = images.astype(np.float32) / np.float32(127.5) - 1.0
    r = classifier.sample_quality_report(x, clf, train_x, test_x)
    results["classifier"] = r
    lines.append(
        f"classifier metrics ({len(images)} samples): Fréchet ratio {r['frechet_ratio']:.3f} "
        f"(distance {r['frechet_distance']:.3f}, real test split {r['frechet_floor']:.3f}), "
        f"confident {r['confident_fraction']:.1%}, classes "
        f"{r['class_share_min']:.1%}..{r['class_share_max']:.1%}, NN distance ratio "
        f"{r['nn_median_ratio']:.2f}")
  wanted = [n for n in names if n in INCEPTION_METRICS]
  if wanted:
    feature_fn, why = inception_feature_fn(config)
    if feature_fn is None:
      lines.append(f"skipped {', '.join(wanted)}: {why}")
    else:
      fake = feature_fn(images)
      real = None
      if "fid" in wanted:
        if config.eval.fid_stats:
          ref = fid.load_statistics(config.eval.fid_stats)
        else:
          real = feature_fn(_reference_images(config))
          ref = fid.compute_statistics(real)
        results["fid"] = fid.frechet_distance(*fid.compute_statistics(fake), *ref)
        lines.append(f"FID ({len(images)} samples): {results['fid']:.3f}")
      if "kid" in wanted or "precision_recall" in wanted:
        real = feature_fn(_reference_images(config)) if real is None else real
      if "kid" in wanted:
        k = kid.kernel_inception_distance(fake, real, num_subsets=config.eval.kid_subsets,
                                          subset_size=config.eval.kid_subset_size)
        results["kid"] = {"mean": k.mean, "std": k.std}
        lines.append(f"KID: {k.mean:.5f} ± {k.std:.5f}")
      if "precision_recall" in wanted:
        pr = precision_recall(real, fake, k=config.eval.pr_k)
        results["precision_recall"] = {"precision": pr.precision, "recall": pr.recall}
        lines.append(f"precision {pr.precision:.3f}, recall {pr.recall:.3f} "
                     f"(k = {config.eval.pr_k})")
  return results, lines


def scalars(results: dict) -> dict[str, float]:
  """The headline numbers of `sample_metrics`' results, flat ("frechet_ratio", "fid", ...)."""
  out = {}
  r = results.get("classifier")
  if r:
    out |= {k: r[k] for k in ("frechet_ratio", "frechet_distance", "confident_fraction",
                              "class_share_min", "class_share_max", "nn_median_ratio")}
  if "fid" in results:
    out["fid"] = results["fid"]
  if "kid" in results:
    out["kid"] = results["kid"]["mean"]
  if "precision_recall" in results:
    out |= results["precision_recall"]
  return {k: float(v) for k, v in out.items()}
