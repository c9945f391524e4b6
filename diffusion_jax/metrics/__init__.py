"""Sample-quality metrics: FID Inception features, FID, KID, precision/recall.

  * `inception`: pytorch-fid's FID Inception-v3 in Flax (pool3 features),
    its weights file and a batched, device-sharded feature extractor.
  * `fid`: feature statistics (μ, Σ), their `.npz` files and the Fréchet distance.
  * `kid`: Kernel Inception Distance.
  * `precision_recall`: Kynkäänniemi et al. (2019) precision and recall.
  * `classifier`: a small digits classifier the generator never saw, and the
    Fréchet distance in its feature space (for datasets without Inception).
  * `suite`: `eval.metrics` chosen by name, as `--mode=eval` runs them.
  * `convert_inception` (not imported here; run it with ``python -m``):
    pytorch-fid's `.pth` weights -> this package's `.npz`.

Typical use:

  params = load_inception_params("fid_inception_v3.npz")
  features = make_feature_fn(params, batch_size=250)
  mu, sigma = compute_statistics(features(to_uint8(samples)))   # [-1, 1] floats
  fid = frechet_distance(mu, sigma, *load_statistics("cifar10_train.npz"))
"""

from diffusion_jax.metrics.inception import (
    FEATURE_DIM, FID_WEIGHTS_URL, INPUT_SIZE, FIDInceptionV3, inception_features,
    load_inception_params, make_feature_fn, resize_bilinear, save_inception_params,
    to_uint8, to_unit_range)
from diffusion_jax.metrics.fid import (
    compute_statistics, frechet_distance, load_statistics, save_statistics)
from diffusion_jax.metrics.kid import KID, kernel_inception_distance
from diffusion_jax.metrics.precision_recall import PrecisionRecall, precision_recall

__all__ = [
    "FEATURE_DIM", "FID_WEIGHTS_URL", "INPUT_SIZE", "FIDInceptionV3",
    "inception_features", "load_inception_params", "make_feature_fn",
    "resize_bilinear", "save_inception_params", "to_uint8", "to_unit_range",
    "compute_statistics", "frechet_distance", "load_statistics", "save_statistics",
    "KID", "kernel_inception_distance", "PrecisionRecall", "precision_recall",
]
