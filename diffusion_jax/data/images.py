"""Image decoding and fitting: every source's images to [S, S, C] uint8.

One rule for every source (folder, npz, cifar10, tfds), so that e.g. CIFAR-10
can train at 16x16 or a folder of photos at 64x64:

1. Channels (``data.channels``): 1 -> PIL mode ``"L"``, 3 -> ``"RGB"``.
   Transparency (RGBA, LA, palette or tRNS transparency) is composited over a
   white background and then dropped, so transparent pixels become white.
   Colour -> grayscale uses PIL's ITU-R 601-2 luma; 16-bit grayscale is
   scaled to 8 bits (``round(v * 255 / 65535)``).
2. Size (``data.image_size`` = S): the shorter side is resized to S with PIL's
   antialiased BICUBIC filter (as in ADM's ``center_crop_arr``), then the
   centre S x S square is cropped (for an odd excess the extra row/column is
   dropped at the bottom/right). Large JPEGs are first decoded at a reduced
   scale (``Image.draft``) no smaller than twice the resized size.
3. When an image already is S x S with C channels, its pixels are returned
   untouched (bit-exact): nothing is resampled or converted.

EXIF orientation tags (photos) are applied before fitting.
"""

from __future__ import annotations

import dataclasses
import io

import grain
import numpy as np
import PIL.Image
import PIL.ImageOps

from diffusion_jax.errors import DataError

SUPPORTED_CHANNELS = (1, 3)
_MODE = {1: "L", 3: "RGB"}
# Channel counts of [H, W, C] uint8 arrays PIL reads (as L, LA, RGB, RGBA).
_ARRAY_MODES = (1, 2, 3, 4)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
RESAMPLE = PIL.Image.Resampling.BICUBIC

# What PIL raises for a file it cannot identify or decode (UnidentifiedImageError
# and truncated data are OSErrors; some plugins raise SyntaxError/ValueError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


def _to_channels(image: PIL.Image.Image, channels: int) -> PIL.Image.Image:
  """Converts ``image`` to mode "L" (channels=1) or "RGB" (channels=3)."""
  target = _MODE[channels]
  if image.mode == target:
    return image
  if image.mode in _SIXTEEN_BIT_MODES:
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    image = PIL.Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    return image if target == "L" else image.convert(target)
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  elif "transparency" in image.info and image.mode in ("L", "RGB"):
    image = image.convert("RGBA")
  if image.mode in _ALPHA_MODES:
    rgba = image.convert("RGBA")
    white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = PIL.Image.alpha_composite(white, rgba)
  return image.convert(target)


def _resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
  """(width, height) after resizing the shorter side to ``image_size``."""
  scale = image_size / min(width, height)
  return (max(image_size, round(width * scale)),
          max(image_size, round(height * scale)))


def fit_pil(image: PIL.Image.Image, image_size: int, channels: int) -> np.ndarray:
  """Converts, resizes and centre-crops a PIL image (module docstring).

  Args:
    image: any PIL image.
    image_size: side S of the output.
    channels: 1 or 3.

  Returns:
    uint8 [S, S, channels].
  """
  image = _to_channels(image, channels)
  width, height = image.size
  if (width, height) != (image_size, image_size):
    new_w, new_h = _resized_size(width, height, image_size)
    if (new_w, new_h) != (width, height):
      image = image.resize((new_w, new_h), RESAMPLE)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def fit_array(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """``fit_pil`` for a uint8 [H, W, C] (or [H, W]) array, C in 1..4.

  Returns:
    ``image`` itself when it already is [S, S, channels]; else a new uint8
    [S, S, channels] array.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape == (image_size, image_size, channels):
    return image
  if image.shape[-1] not in _ARRAY_MODES:
    raise ValueError(f"Images need 1..4 channels, got shape {image.shape}.")
  pil = PIL.Image.fromarray(np.ascontiguousarray(
      image[..., 0] if image.shape[-1] == 1 else image, dtype=np.uint8))
  return fit_pil(pil, image_size, channels)


def decode_image(data: bytes, name: str, image_size: int, channels: int) -> np.ndarray:
  """Decodes PNG/JPEG/WebP (any format PIL reads) bytes and fits them.

  Args:
    data: the encoded file.
    name: the file's path, for the error message.
    image_size: side S of the output.
    channels: 1 or 3.

  Returns:
    uint8 [S, S, channels].

  Raises:
    DataError: the bytes cannot be decoded (a corrupt or truncated file).
  """
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      if image.format == "JPEG" and min(image.size) >= 4 * image_size:
        new_w, new_h = _resized_size(*image.size, image_size)
        image.draft(_MODE[channels], (2 * new_w, 2 * new_h))
      image = PIL.ImageOps.exif_transpose(image)  # Loads the pixels.
      image.load()
      return fit_pil(image, image_size, channels)
  except DECODE_ERRORS as e:
    raise DataError(
        f"Cannot decode the image file {name} ({type(e).__name__}: {e}); it is "
        "corrupt or truncated: replace or delete it.") from None


# ----------------------------------------------------------------------------
# grain transforms (picklable: they run in grain workers).
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DecodeImage(grain.transforms.Map):
  """Folder record -> ``{"image": uint8 [S, S, C], "label": int32 []}``.

  The record is ``{"bytes": encoded file, "path": str, "label": int32}``.
  """

  image_size: int
  channels: int

  def map(self, element):
    image = decode_image(element["bytes"], element["path"], self.image_size,
                         self.channels)
    return {"image": image, "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True)
class FitImage(grain.transforms.Map):
  """Example with a uint8 ``image`` [H, W, C] -> ``{"image": uint8 [S, S, C'],
  "label": int32 []}`` (label 0 when the example has none)."""

  image_size: int
  channels: int

  def map(self, element):
    image = fit_array(np.asarray(element["image"], np.uint8), self.image_size,
                      self.channels)
    return {"image": image, "label": np.int32(element.get("label", 0))}
