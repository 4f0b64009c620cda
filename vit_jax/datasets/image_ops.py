"""Image primitives of the input pipeline (numpy, OpenCV, Pillow): open, crop, resize, to float.

The lowest layer of the preprocessing: the named recipes (preprocess.py) and big_vision's pp
ops (pp_ops.py) are built from these, so a pp string that spells a named recipe gives
its bytes. Each function is pure given its `np.random.Generator`.

Two resize paths:
  * `crop_resize` (the train inception crop, named or as a bilinear pp op: the hot path of
    pre-training) decodes a JPEG with OpenCV's libjpeg-turbo at the largest DCT scale (1/2,
    1/4, 1/8) that still leaves the box at least the output's size, then resizes the box
    with half-pixel bilinear weights and no antialiasing (as big_vision's inception_crop and
    tf.image.resize): after the DCT reduction the remaining factor is under 2, so aliasing
    stays small. Other formats are decoded by Pillow.
  * `resize_box` (eval recipes, the pp resize ops, other filters): Pillow, antialiased,
    with libjpeg's DCT scaling (`Image.draft`) when the needed resolution is at most half
    the stored one.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np
from PIL import Image

from vit_jax import batching

# One thread per resize: the pipeline parallelises over its workers, not inside an image.
cv2.setNumThreads(1)

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


# cv2.imdecode flags: the libjpeg DCT scale 1/r, RGB order (OpenCV >= 4.10; an older cv2, e.g.
# a notebook's preinstalled one, decodes BGR and the channels are swapped), EXIF orientation
# ignored (as Pillow and tf.io decode).
_REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_COLOR_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_jpeg(encoded: bytes, reduction: int = 1, rgb_flag: Optional[int] = _COLOR_RGB
                ) -> np.ndarray:
  """A JPEG decoded by libjpeg-turbo at DCT scale 1/`reduction` → uint8 (h, w, 3) RGB; one
  ValueError if it does not decode."""
  color = cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag
  arr = cv2.imdecode(np.frombuffer(encoded, np.uint8),
                     _REDUCED[reduction] | color | cv2.IMREAD_IGNORE_ORIENTATION)
  if arr is None:
    raise ValueError(f"not a decodable JPEG ({len(encoded)} bytes; truncated or corrupt)")
  return arr if rgb_flag is not None else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
  """(width, height) from a JPEG's frame header, without decoding; None if `data` is not a
  JPEG (or its header is cut short)."""
  if data[:2] != b"\xff\xd8":
    return None
  i, n = 2, len(data)
  while i + 9 < n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker in _SOF:
      height = int.from_bytes(data[i + 5:i + 7], "big")
      width = int.from_bytes(data[i + 7:i + 9], "big")
      return (width, height) if width and height else None
    if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
      i += 2
      continue
    i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
  return None


def _encoded(data: Any) -> Optional[bytes]:
  """The bytes of an encoded image (bytes, a numpy bytes scalar, or a PIL image from
  open_image that is not decoded yet); None for decoded input."""
  if isinstance(data, Image.Image):
    fp = getattr(data, "fp", None)
    return fp.getvalue() if getattr(data, "tile", None) and hasattr(fp, "getvalue") else None
  if isinstance(data, np.ndarray) and data.dtype.kind in "SO" and data.ndim == 0:
    data = data.item()
  return data if isinstance(data, (bytes, bytearray, memoryview)) else None


def _out_shape(out_size: Union[int, Callable[[int, int], Any]], w: int, h: int
               ) -> tuple[int, int]:
  return tuple(int(v) for v in out_size(w, h)) if callable(out_size) else (out_size, out_size)


def _dct_reduction(scale: float) -> int:
  """The largest libjpeg DCT reduction r in (1, 2, 4, 8) with 1/r >= scale."""
  r = 1
  while r < 8 and scale * (2 * r) <= 1:
    r *= 2
  return r


def crop_resize(data: Any, box_fn: BoxFn, out_size: Union[int, Callable[[int, int], Any]],
                rng: Any = None) -> np.ndarray:
  """Bilinear resize of the box box_fn(w, h, rng) = (left, top, w, h) of an image to out_size²
  (or to out_size(w, h) = (out_w, out_h)) → uint8 (out_h, out_w, 3).

  `data`: encoded bytes, a PIL image or a uint8 array. A JPEG is decoded at the DCT scale the
  box allows (module doc); its size comes from the header, so the box is drawn first.
  """
  encoded = _encoded(data)
  size = jpeg_size(encoded) if encoded is not None else None
  arr = None
  if size is None:  # not a JPEG: Pillow decodes (PNG, WebP, ...; a decoded image as it is)
    arr = np.asarray(open_image(data).convert("RGB"))
    size = arr.shape[1], arr.shape[0]
  width, height = size
  left, top, w, h = box_fn(width, height, rng)
  out_w, out_h = _out_shape(out_size, w, h)
  if arr is None:
    reduction = _dct_reduction(min(out_w, out_h) / max(min(w, h), 1))
    arr = decode_jpeg(encoded, reduction)
  sx, sy = arr.shape[1] / width, arr.shape[0] / height
  x0 = min(int(round(left * sx)), arr.shape[1] - 1)
  y0 = min(int(round(top * sy)), arr.shape[0] - 1)
  x1 = max(min(int(round((left + w) * sx)), arr.shape[1]), x0 + 1)
  y1 = max(min(int(round((top + h) * sy)), arr.shape[0]), y0 + 1)
  box = arr[y0:y1, x0:x1]
  if box.shape[:2] == (out_h, out_w):
    return np.ascontiguousarray(box)
  # A box still >= 2x the output (only where no DCT reduction applied): area averaging.
  shrink = box.shape[1] >= 2 * out_w and box.shape[0] >= 2 * out_h
  return cv2.resize(box, (out_w, out_h),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_box(data: Any, box_fn: BoxFn, out_size: Union[int, Callable[[int, int], Any]],
               rng: Any = None, resample: int = Image.BILINEAR) -> Image.Image:
  """Decodes `data` with Pillow, crops box_fn(w, h, rng) = (left, top, w, h) and resizes it
  to out_size² (or to out_size(w, h) = (out_w, out_h) of the box) with Pillow's antialiased
  `resample` filter (the eval recipes and the pp resize ops).

  A JPEG is decoded at a reduced DCT scale when the box still has >= the output's shorter
  side there.
  """
  img = open_image(data)
  width, height = img.size
  left, top, w, h = box_fn(width, height, rng)
  out = _out_shape(out_size, w, h)
  scale = min(out) / max(min(w, h), 1)
  if img.format == "JPEG" and scale < 0.5:
    img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
  sx, sy = img.size[0] / width, img.size[1] / height
  if img.mode != "RGB":
    img = img.convert("RGB")
  return img.resize(out, resample,
                    box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def inception_crop(data: Any, size: int, rng: np.random.Generator) -> np.ndarray:
  """Inception-style random area/aspect crop, resized to size×size (crop_resize) → uint8."""
  return crop_resize(data, sample_inception_box, size, rng)


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
  return resize_box(data, whole_image, out, resample=resample)


def whole_image(width: int, height: int, rng: Any = None) -> tuple[int, int, int, int]:
  """The box of the whole image (a BoxFn)."""
  del rng
  return 0, 0, width, height


def random_crop(img: Image.Image, size: Any, rng: np.random.Generator) -> Image.Image:
  """Uniformly placed size×size or (h, w) crop (left drawn before top)."""
  h, w = sides(size)
  left = int(rng.integers(0, img.size[0] - w + 1))
  top = int(rng.integers(0, img.size[1] - h + 1))
  return img.crop((left, top, left + w, top + h))


def flip_left_right(img: np.ndarray) -> np.ndarray:
  """(H, W, C) uint8 array mirrored left-right (contiguous)."""
  return cv2.flip(np.ascontiguousarray(img), 1).reshape(img.shape)


def resize_small(data: Any, size: int, resample: int = Image.BILINEAR) -> Image.Image:
  """Whole image with its shorter side resized to `size`, aspect ratio kept (long side rounded)."""
  def shape(width, height):
    ratio = size / max(min(width, height), 1)
    if width <= height:
      return size, max(size, int(round(height * ratio)))
    return max(size, int(round(width * ratio))), size
  return resize_box(data, whole_image, shape, resample=resample)


def central_crop(img: Image.Image, size: Any) -> Image.Image:
  """Centred size×size or (h, w) crop."""
  h, w = sides(size)
  left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
  return img.crop((left, top, left + w, top + h))


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [-1, 1] (the named recipes' model inputs)."""
  if isinstance(images, np.ndarray) and images.ndim:  # in place: one float buffer per batch
    out = np.multiply(images, np.float32(1 / 127.5), dtype=np.float32)
    return np.subtract(out, np.float32(1.0), out=out)
  return batching.scaled_values(images)  # scalars, JAX arrays
