"""Sample quality on small labelled datasets (digits and friends), through a
small classifier the generator never saw.

* ``SmallCNN`` + ``train_eval_classifier``: a clean-image classifier trained on
  the real training split (images in [-1, 1], NHWC), deterministically (fixed
  seed and steps). On 8x8 digits it trains in a few seconds on 2 CPU cores
  and reaches ~99% test accuracy. ``cached_classifier`` trains it once per
  dataset and keeps it in the data dir.
* ``classify`` / ``features``: class probabilities and the 128-d penultimate
  features of images.
* ``sample_quality_report``: the Fréchet distance in that feature space
  (samples vs the training split, as a ratio to the real test split's
  distance: 1 = as close to the data as held-out real images), the share of
  confidently classified samples, the class shares, and nearest-neighbour L2
  distances to the training set compared with those of real test images (a
  memorization check).

Example::

  train_x, train_y = sources.load_split(config.data, "train")
  test_x, _ = sources.load_split(config.data, "test")
  clf = train_eval_classifier(train_x, train_y, seed=0)
  report = sample_quality_report(samples, clf, train_x, test_x)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class SmallCNN(nn.Module):
  """Small clean-image classifier for H x W x C images in [-1, 1].

  Per stage: two 3x3 conv + GELU, then 2x2 average pooling while H > 4;
  finally global average pooling, Dense(128) + GELU, Dense(num_classes).

  Attributes:
    num_classes: number of classes.
    features: channels of each stage.
  """

  num_classes: int = 10
  features: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
    """x: float [B, H, W, C]. Returns float32 logits [B, num_classes], or with
    `features` the 128-d penultimate activations [B, 128]."""
    for width in self.features:
      x = nn.gelu(nn.Conv(width, (3, 3))(x))
      x = nn.gelu(nn.Conv(width, (3, 3))(x))
      if x.shape[1] > 4:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.gelu(nn.Dense(128)(x))
    if features:
      return x.astype(jnp.float32)
    return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def _random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image by up to max_shift pixels (edge padding). [B,H,W,C].

  Built from static slices and a one-hot mix (gathers are slow on XLA:CPU).
  """
  b, h, w, _ = images.shape
  k = 2 * max_shift + 1
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = jnp.pad(images, pad, mode="edge")
  shifted = jnp.stack(
      [padded[:, i : i + h, j : j + w] for i in range(k) for j in range(k)]
  )  # [k*k, B, H, W, C]
  choice = jax.nn.one_hot(jax.random.randint(key, (b,), 0, k * k), k * k)
  return jnp.einsum("sbhwc,bs->bhwc", shifted, choice)


def train_eval_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    seed: int = 0,
    steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    num_classes: int | None = None,
    max_shift: int = 1,
) -> tuple[ApplyFn, Any]:
  """Trains a ``SmallCNN`` on real images (AdamW, cosine decay, random shifts).

  Args:
    train_images: float [N, H, W, C] in [-1, 1].
    train_labels: int [N] in 0..num_classes-1.
    seed: PRNG seed (init, batches, augmentation).
    steps: optimisation steps.
    batch_size: examples per step (sampled with replacement).
    learning_rate: peak learning rate.
    num_classes: number of classes; None -> max(train_labels) + 1.
    max_shift: random-translation augmentation in pixels (0 disables).

  Returns:
    ``(apply_fn, params)`` with ``apply_fn(params, images [B, H, W, C])`` ->
    float32 logits [B, num_classes] (jitted).
  """
  images = jnp.asarray(train_images, jnp.float32)
  labels = jnp.asarray(train_labels, jnp.int32)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(
        "train_images must be [N, H, W, C] and train_labels [N]; got "
        f"{images.shape} and {labels.shape}."
    )
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}.")
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  model = SmallCNN(num_classes=num_classes)
  init_key, train_key = jax.random.split(jax.random.key(seed))
  params = jax.jit(model.init)(init_key, images[:1])
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, min(100, steps // 10 + 1), steps
  )
  tx = optax.adamw(schedule, weight_decay=1e-4)

  def loss_fn(p, x, y):
    logits = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, opt_state, key, all_x, all_y):
    idx_key, shift_key = jax.random.split(key)
    idx = jax.random.randint(idx_key, (batch_size,), 0, all_x.shape[0])
    x = all_x[idx]
    if max_shift:
      x = _random_shift(shift_key, x, max_shift)
    grads = jax.grad(loss_fn)(p, x, all_y[idx])
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  # A Python loop over a jitted step: on XLA:CPU, convolutions inside a
  # lax.scan body ran an order of magnitude slower.
  opt_state = jax.jit(tx.init)(params)
  for key in jax.random.split(train_key, steps):
    params, opt_state = step(params, opt_state, key, images, labels)
  return jax.jit(model.apply, static_argnames="features"), params


def classify(
    apply_fn: ApplyFn, params: Any, images: np.ndarray, *, batch_size: int = 512
) -> np.ndarray:
  """Class probabilities.

  Args:
    apply_fn: ``(params, images [b, H, W, C]) -> logits [b, K]``.
    params: classifier parameters.
    images: float [N, H, W, C] in [-1, 1].
    batch_size: evaluation chunk (the last chunk is padded, so one compile).

  Returns:
    float32 [N, K] softmax probabilities.
  """
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  chunk = min(batch_size, max(n, 1))
  padded = np.concatenate(
      [images, np.zeros((-n % chunk, *images.shape[1:]), np.float32)]
  )
  probs = [
      jax.nn.softmax(apply_fn(params, padded[i : i + chunk]), axis=-1)
      for i in range(0, padded.shape[0], chunk)
  ]
  return np.asarray(jnp.concatenate(probs))[:n]


def features(apply_fn: ApplyFn, params: Any, images: np.ndarray, *,
             batch_size: int = 512) -> np.ndarray:
  """The classifier's 128-d penultimate features of images [N, H, W, C] in
  [-1, 1] (``apply_fn`` from ``train_eval_classifier``). Returns float64 [N, 128]."""
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  chunk = min(batch_size, max(n, 1))
  padded = np.concatenate([images, np.zeros((-n % chunk, *images.shape[1:]), np.float32)])
  out = [np.asarray(apply_fn(params, padded[i:i + chunk], features=True))
         for i in range(0, padded.shape[0], chunk)]
  return np.concatenate(out).astype(np.float64)[:n]


def frechet_ratio(sample_feats: np.ndarray, train_feats: np.ndarray,
                  test_feats: np.ndarray, *, seed: int = 0, repeats: int = 50) -> dict:
  """The Fréchet distance between samples and the training split in feature
  space, next to the same distance for the real test split (the floor a
  perfect generator reaches at that sample size).

  The samples are compared in random subsets of the test split's size (the
  mean over `repeats` subsets), so both distances carry the same small-sample
  bias. One subset's distance varies a lot (on digits, 1,000 samples of one
  model: a standard deviation of about 30% of the mean over subsets of 360),
  hence the many subsets; the samples themselves still vary by seed.
  Returns {"frechet_distance", "frechet_floor", "frechet_ratio"}.
  """
  from diffusion_jax.metrics.fid import compute_statistics, frechet_distance
  train = compute_statistics(train_feats)
  n = min(len(test_feats), len(sample_feats))
  rng = np.random.default_rng(seed)
  draws = [sample_feats[rng.choice(len(sample_feats), n, replace=False)]
           for _ in range(repeats if len(sample_feats) > n else 1)]
  fd = float(np.mean([frechet_distance(*compute_statistics(d), *train) for d in draws]))
  floor = frechet_distance(*compute_statistics(test_feats[:n]), *train)
  return {"frechet_distance": fd, "frechet_floor": floor,
          "frechet_ratio": fd / max(floor, 1e-12)}


def nearest_neighbor_distances(
    queries: np.ndarray, references: np.ndarray, *, chunk: int = 1024
) -> np.ndarray:
  """L2 distance from each query image to its nearest reference image.

  Args:
    queries: [N, ...] images; references: [M, ...] images of the same shape.
    chunk: queries per chunk (bounds the [chunk, M] distance matrix).

  Returns:
    float64 [N] distances.
  """
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  r = np.asarray(references, np.float64).reshape(len(references), -1)
  if q.shape[1] != r.shape[1]:
    raise ValueError(
        f"queries {np.shape(queries)} and references {np.shape(references)} "
        "must have the same image shape."
    )
  r_sq = np.sum(r * r, axis=1)
  out = []
  for i in range(0, len(q), chunk):
    qc = q[i : i + chunk]
    d2 = np.sum(qc * qc, axis=1)[:, None] + r_sq[None, :] - 2.0 * qc @ r.T
    out.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
  return np.concatenate(out) if out else np.zeros((0,))


def _summary(d: np.ndarray) -> dict[str, float]:
  return {"min": float(d.min()), "median": float(np.median(d)), "mean": float(d.mean())}


def sample_quality_report(
    images: np.ndarray,
    classifier: tuple[ApplyFn, Any],
    train_images: np.ndarray,
    test_images: np.ndarray,
    *,
    confidence: float = 0.9,
) -> dict[str, Any]:
  """Classifier- and nearest-neighbour-based quality summary of samples.

  Args:
    images: float [N, H, W, C] samples in [-1, 1] (N >= 1).
    classifier: ``(apply_fn, params)`` from ``train_eval_classifier``.
    train_images: float [M, H, W, C] real training images in [-1, 1].
    test_images: float [T, H, W, C] real held-out images in [-1, 1].
    confidence: threshold for ``confident_fraction``.

  Returns:
    JSON-friendly dict:
      ``frechet_distance``, ``frechet_floor``, ``frechet_ratio``: the
        feature-space Fréchet distance (``frechet_ratio``);
      ``class_share_min``, ``class_share_max``: the extreme class shares;
      ``num_samples``;
      ``confident_fraction``: fraction of samples with max prob >= confidence;
      ``mean_confidence``: mean max probability;
      ``class_fractions``: [K] fraction of samples predicted as each class;
      ``nn_train_distance``: {min, median, mean} L2 distance of each sample
        to its nearest training image;
      ``test_nn_train_distance``: the same for real test images (reference);
      ``nn_median_ratio``: sample median / test median (far below 1 hints at
        memorization, e.g. < 0.5);
      ``copy_fraction``: fraction of samples closer to the training set than
        the closest real test image is.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f"images must be a non-empty [N, H, W, C] array, got {images.shape}.")
  if not 0.0 < confidence <= 1.0:
    raise ValueError(f"confidence must be in (0, 1], got {confidence}.")
  apply_fn, params = classifier
  probs = classify(apply_fn, params, images)
  num_classes = probs.shape[-1]
  predicted = probs.argmax(axis=-1)
  sample_nn = nearest_neighbor_distances(images, train_images)
  test_nn = nearest_neighbor_distances(test_images, train_images)
  test_median = float(np.median(test_nn))
  shares = np.bincount(predicted, minlength=num_classes) / len(images)
  fd = frechet_ratio(features(apply_fn, params, images), features(apply_fn, params, train_images),
                     features(apply_fn, params, test_images))
  return fd | {
      "class_share_min": float(shares.min()),
      "class_share_max": float(shares.max()),
      "num_samples": int(len(images)),
      "confident_fraction": float(np.mean(probs.max(axis=-1) >= confidence)),
      "mean_confidence": float(probs.max(axis=-1).mean()),
      "class_fractions": (
          np.bincount(predicted, minlength=num_classes) / len(images)
      ).tolist(),
      "nn_train_distance": _summary(sample_nn),
      "test_nn_train_distance": _summary(test_nn),
      "nn_median_ratio": float(np.median(sample_nn) / max(test_median, 1e-12)),
      "copy_fraction": float(np.mean(sample_nn < test_nn.min())),
  }


# ----------------------------------------------------------------------------
# The classifier of a dataset, trained once and cached.
# ----------------------------------------------------------------------------

# The recipe of the cached classifier; a new version retrains it.
RECIPE = dict(seed=0, steps=500, batch_size=128, learning_rate=3e-3, max_shift=1, version=1)


def cache_path(data_config):
  """Where the classifier of `data_config`'s dataset is cached: the data dir
  (data.data_dir, or ~/.cache/diffusion_jax)."""
  import hashlib
  import json
  import os
  from etils import epath
  key = json.dumps({k: data_config.get(k) for k in ("dataset", "path", "image_size", "channels",
                                                    "test_fraction")} | RECIPE, sort_keys=True)
  root = data_config.get("data_dir") or os.path.join("~", ".cache", "diffusion_jax")
  name = f"eval_classifier_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
  return epath.Path(os.path.expanduser(root)) / "diffusion_jax_eval" / name


def cached_classifier(data_config):
  """((apply_fn, params), train images, test images) of a labelled dataset:
  `train_eval_classifier` on its training split with `RECIPE`, trained once
  and then loaded from `cache_path` (deterministic either way)."""
  from flax import serialization
  from diffusion_jax.data import sources
  from diffusion_jax.errors import ConfigError
  train_x, train_y = sources.load_split(data_config, "train")
  test_x, _ = sources.load_split(data_config, "test")
  info = sources.dataset_info(data_config)
  if info.num_classes is None:
    raise ConfigError(f"eval.metrics 'classifier' needs a labelled dataset; "
                      f"data.dataset={data_config.get('dataset')!r} has no labels.")
  recipe = {k: v for k, v in RECIPE.items() if k != "version"}
  path = cache_path(data_config)
  model = SmallCNN(num_classes=info.num_classes)
  apply_fn = jax.jit(model.apply, static_argnames="features")
  if path.exists():
    template = jax.eval_shape(model.init, jax.random.key(0), train_x[:1])
    params = serialization.from_bytes(template, path.read_bytes())
  else:
    apply_fn, params = train_eval_classifier(train_x, train_y, num_classes=info.num_classes,
                                             **recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(params)))
    tmp.replace(path)
  return (apply_fn, params), train_x, test_x
