"""Image primitives of the input pipeline (numpy + Pillow): open, crop, resize, to float.

The lowest layer of the preprocessing: the named recipes (preprocess.py) and big_vision's pp
ops (pp_ops.py) are built from these, so a pp string that spells a named recipe gives
its bytes. Each function is pure given its `np.random.Generator`.

Resizing is bilinear with Pillow's antialiasing when downscaling (`resample` picks another
filter). JPEGs are decoded with libjpeg's DCT scaling (`Image.draft`) when the needed
resolution is at most half the stored one, which is most of the speed of ImageNet-size
decoding.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Union

import numpy as np
from PIL import Image

# (left, top, w, h) of a box in an image of (width, height), given the element's RNG.
BoxFn = Callable[[int, int, Any], tuple[int, int, int, int]]


def open_image(data: Any) -> Image.Image:
  """Encoded bytes (JPEG/PNG/...) or a uint8 (H, W[, C]) array → lazily decoded PIL image
  (a PIL image is returned as it is)."""
  if isinstance(data, Image.Image):
    return data
  if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim >= 2:
    arr = data if data.ndim == 3 else data[..., None]
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(arr, arr.shape[:2] + (3,))))
  if isinstance(data, np.ndarray):
    data = data.item()
  return Image.open(io.BytesIO(data))


def sample_inception_box(width: int, height: int, rng: np.random.Generator,
                         area_range=(0.05, 1.0), aspect_range=(3 / 4, 4 / 3),
                         attempts: int = 10) -> tuple[int, int, int, int]:
  """Random (left, top, w, h) with area fraction and aspect ratio in range; else whole image."""
  area = width * height
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, w, h
  return 0, 0, width, height


def resize_box(data: Any, box_fn: BoxFn, out_size: Union[int, Callable[[int, int], Any]],
               rng: Any = None, resample: int = Image.BILINEAR) -> Image.Image:
  """Decodes `data`, crops box_fn(w, h, rng) = (left, top, w, h) and resizes it to out_size²
  (or to out_size(w, h) = (out_w, out_h) of the box, when out_size is a function).

  A JPEG is decoded at a reduced DCT scale when the box still has >= the output's shorter
  side there.
  """
  img = open_image(data)
  width, height = img.size
  left, top, w, h = box_fn(width, height, rng)
  out = tuple(out_size(w, h)) if callable(out_size) else (out_size, out_size)
  scale = min(out) / max(min(w, h), 1)
  if img.format == "JPEG" and scale < 0.5:
    img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
  sx, sy = img.size[0] / width, img.size[1] / height
  if img.mode != "RGB":
    img = img.convert("RGB")
  return img.resize(out, resample,
                    box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def inception_crop(data: Any, size: int, rng: np.random.Generator) -> Image.Image:
  """Inception-style random area/aspect crop, resized to size×size."""
  return resize_box(data, lambda w, h, r: sample_inception_box(w, h, r), size, rng)


def sides(size: Any) -> tuple[int, int]:
  """(height, width) of an int side or an (h, w) pair."""
  if isinstance(size, (tuple, list)):
    h, w = size
    return int(h), int(w)
  return int(size), int(size)


def resize_full(data: Any, size: Any, resample: int = Image.BILINEAR) -> Image.Image:
  """Whole image resized to size×size or (h, w) (aspect ratio not kept, as vit_jax)."""
  h, w = sides(size)
  out = h if h == w else (lambda *_: (w, h))
  return resize_box(data, lambda iw, ih, r: (0, 0, iw, ih), out, resample=resample)


def random_crop(img: Image.Image, size: Any, rng: np.random.Generator) -> Image.Image:
  """Uniformly placed size×size or (h, w) crop (left drawn before top)."""
  h, w = sides(size)
  left = int(rng.integers(0, img.size[0] - w + 1))
  top = int(rng.integers(0, img.size[1] - h + 1))
  return img.crop((left, top, left + w, top + h))


def resize_small(data: Any, size: int, resample: int = Image.BILINEAR) -> Image.Image:
  """Whole image with its shorter side resized to `size`, aspect ratio kept (long side rounded)."""
  def shape(width, height):
    ratio = size / max(min(width, height), 1)
    if width <= height:
      return size, max(size, int(round(height * ratio)))
    return max(size, int(round(width * ratio))), size
  return resize_box(data, lambda w, h, r: (0, 0, w, h), shape, resample=resample)


def central_crop(img: Image.Image, size: Any) -> Image.Image:
  """Centred size×size or (h, w) crop."""
  h, w = sides(size)
  left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
  return img.crop((left, top, left + w, top + h))


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [-1, 1] (the named recipes' model inputs)."""
  return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
