"""RandAugment (Cubuk et al. 2019) on uint8 PIL images, for the AugReg recipes.

`randaugment(img, num_layers, magnitude, rng)` applies `num_layers` operations, each drawn
uniformly from `OPS`, each at strength `magnitude / 10` of its maximum (magnitudes above 10
are allowed, as AugReg's randaug(2, 15/20); geometric and enhancement ops get a random sign).
The operation list and ranges are those of the AutoAugment/RandAugment reference
implementation: rotate ±30°, shear ±0.3, translate ±100 px (scaled to the image as
±100/331 of its size), enhancements 1 ± 0.9, posterize 4 → 0 bits removed, solarize
threshold 256 → 0, solarize-add +110, cutout half-size up to 40/331 of the image.
Random numbers come only from `rng`, so the result is a function of (seed, element index).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_FILL = (128, 128, 128)


def _signed(level: float, max_value: float, rng: np.random.Generator) -> float:
  return level * max_value * (1 if rng.random() < 0.5 else -1)


def _affine(img: Image.Image, matrix) -> Image.Image:
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=_FILL)


def _rotate(img, level, rng):
  return img.rotate(_signed(level, 30.0, rng), resample=Image.NEAREST, fillcolor=_FILL)


def _shear_x(img, level, rng):
  return _affine(img, (1, _signed(level, 0.3, rng), 0, 0, 1, 0))


def _shear_y(img, level, rng):
  return _affine(img, (1, 0, 0, _signed(level, 0.3, rng), 1, 0))


def _translate_x(img, level, rng):
  return _affine(img, (1, 0, _signed(level, 100 / 331 * img.size[0], rng), 0, 1, 0))


def _translate_y(img, level, rng):
  return _affine(img, (1, 0, 0, 0, 1, _signed(level, 100 / 331 * img.size[1], rng)))


def _enhance(cls) -> Callable:
  def op(img, level, rng):
    return cls(img).enhance(max(1.0 + _signed(level, 0.9, rng), 0.0))
  return op


def _posterize(img, level, rng):
  del rng
  return ImageOps.posterize(img, int(np.clip(8 - round(level * 4), 1, 8)))


def _solarize(img, level, rng):
  del rng
  return ImageOps.solarize(img, int(np.clip(256 - level * 256, 0, 256)))


def _solarize_add(img, level, rng):
  del rng
  arr = np.asarray(img, dtype=np.int16)
  added = np.clip(arr + int(level * 110), 0, 255)
  return Image.fromarray(np.where(arr < 128, added, arr).astype(np.uint8))


def _cutout(img, level, rng):
  arr = np.array(img)
  half = int(level * 40 / 331 * min(img.size))
  cy, cx = int(rng.integers(0, img.size[1])), int(rng.integers(0, img.size[0]))
  arr[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = _FILL
  return Image.fromarray(arr)


OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "AutoContrast": lambda img, level, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, rng: ImageOps.equalize(img),
    "Invert": lambda img, level, rng: ImageOps.invert(img),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Cutout": _cutout,
}
_NAMES = tuple(OPS)


def randaugment(img: Image.Image, num_layers: int, magnitude: float,
                rng: np.random.Generator) -> Image.Image:
  """Applies `num_layers` uniformly drawn OPS at strength magnitude/10 (RGB uint8 in and out)."""
  level = float(magnitude) / 10.0
  for _ in range(int(num_layers)):
    img = OPS[_NAMES[int(rng.integers(len(_NAMES)))]](img, level, rng)
  return img
