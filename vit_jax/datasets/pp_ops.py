"""big_vision's pp ops, our implementations: the factories that pp strings name by default.

Each factory takes the op's pp-string arguments and returns `op(image, rng) -> image`; the
registry (pp_registry.py) starts with the factories of `OPS`, and users add their own there.
The ops are built from image_ops.py, so a string that spells a named recipe gives its bytes
(`decode|resize(R)|random_crop(C)|flip_lr` = vit_finetune, `decode|inception_crop(C)|flip_lr`
= inception_crop, `decode|resize(C)` = eval resize, `decode|resize(R)|central_crop(C)` =
resize_crop, `decode|resize_small(R)|central_crop(C)` = resize_small, each then
`value_range(-1, 1)`). The ops (big_vision's names and arguments):

  decode(channels=3, precise=False)   opens the image; pixels are decoded by the next op that
      needs them (at a reduced DCT scale when a resize allows, as the named recipes).
      Pillow's libjpeg decoder is what big_vision's precise=True matches; channels must be 3.
  resize(size, method='bilinear')     size int or (h, w); aspect ratio not kept.
  resize_small(smaller_size, method='bilinear')   shorter side to smaller_size, aspect kept.
  central_crop(crop_size=None)        int or (h, w); None: the largest central square.
  random_crop(crop_size)              uniform position (x drawn before y).
  flip_lr                             horizontal flip with probability 1/2.
  inception_crop(size=None, area_min=5, area_max=100)   the train inception_crop (area in
      percent, aspect 3/4-4/3); size None: the crop is not resized.
  decode_jpeg_and_inception_crop(size=None, area_min=5, area_max=100, ratio_min=0.75,
      ratio_max=4/3)                  the same with the aspect range as arguments (any image
      format; big_vision's 1.33 default is read as 4/3, so it equals inception_crop).
  randaug(num_layers=2, magnitude=10) vit_jax.datasets.randaugment (AugReg's randaug(2, 15)).
  value_range(vmin=-1, vmax=1, in_min=0, in_max=255, clip_values=False)   float32 values;
      the default is to_float's bytes. Put it last: a trailing value_range runs on the batch,
      so workers pass uint8 images as for the named recipes. Without one, values are the
      float32 of the uint8 pixels [0, 255].
  onehot(depth, ...), keep(*keys), drop(*keys), copy(inkey, outkey)   accepted as no-ops
      (`LabelOp`): the pipeline one-hot encodes (and smooths / mixes) labels itself from
      config.pp; in config.pp.train onehot's depth must equal the dataset's class count (eval
      datasets, few-shot ones included, are checked against the model instead), on/off must
      be 1/0 (use config.pp.label_smoothing), keep must keep and drop must not drop 'image'.

`method` is 'bilinear' | 'bicubic' | 'nearest' | 'area' (box filter) | 'lanczos3'; Pillow
antialiases when downscaling whatever `antialias` says; `key`/`inkey`/`outkey` may only
name 'image' (the ops transform the image; labels come from the dataset).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from vit_jax.datasets import image_ops, randaugment

OPS: dict[str, Callable[..., Callable]] = {}  # name -> factory, in the order defined here.
KEY_OPS: set[str] = set()  # Our image ops: big_vision's key / inkey / outkey may name 'image'.
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "area": Image.BOX, "lanczos3": Image.LANCZOS}


@dataclasses.dataclass(frozen=True)
class ValueRange:
  """value_range: pixels [in_min, in_max] -> float32 [vmin, vmax] (per channel when lists)."""
  vmin: float = -1.0
  vmax: float = 1.0
  in_min: Any = 0.0
  in_max: Any = 255.0
  clip_values: bool = False

  def __call__(self, image: Any, rng: Any = None) -> np.ndarray:
    x = as_array(image)
    if x.dtype == np.uint8 and (self.vmin, self.vmax, self.in_min, self.in_max,
                                self.clip_values) == (-1, 1, 0, 255, False):
      return image_ops.to_float(x)  # The named recipes' bytes.
    lo, hi = np.asarray(self.in_min, np.float32), np.asarray(self.in_max, np.float32)
    out = (x.astype(np.float32) - lo) / (hi - lo) * np.float32(self.vmax - self.vmin)
    out = out + np.float32(self.vmin)
    if self.clip_values:
      out = np.clip(out, min(self.vmin, self.vmax), max(self.vmin, self.vmax))
    return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LabelOp:
  """onehot / keep / drop / copy of a big_vision pp string: no-ops here (the pipeline encodes
  the dataset's labels itself); onehot's depth is checked against the dataset."""
  name: str
  depth: Optional[int] = None

  def __call__(self, image: Any, rng: Any = None) -> Any:
    return image


def as_array(image: Any) -> np.ndarray:
  """A PIL image as uint8 RGB (H, W, 3); arrays as they are."""
  if isinstance(image, Image.Image):
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
  return np.asarray(image)


def _image(image: Any, op: str) -> Image.Image:
  """An op's input as a PIL image (uint8 arrays converted); float values are refused."""
  if isinstance(image, Image.Image):
    return image
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    raise ValueError(f"{op} takes uint8 pixels but got {arr.dtype} values; put value_range(...) "
                     "after the image ops.")
  return image_ops.open_image(arr)


def _hw(image: Any) -> tuple[int, int]:
  if isinstance(image, Image.Image):
    return image.size[1], image.size[0]
  return tuple(np.shape(image)[:2])


def _size_arg(size: Any, what: str) -> tuple[int, int]:
  try:
    h, w = image_ops.sides(size)
  except (TypeError, ValueError):
    raise ValueError(f"{what}={size!r} must be an int or an (h, w) pair.") from None
  if h <= 0 or w <= 0:
    raise ValueError(f"{what}={size!r} must be positive.")
  return h, w


def _resample(method: Any) -> int:
  try:
    return RESAMPLE[str(method)]
  except KeyError:
    raise ValueError(f"method={method!r} is not one of {sorted(RESAMPLE)}.") from None


def _builtin(name: str, keys: bool = True) -> Callable[[Callable], Callable]:
  """Adds a factory to OPS; `keys`: it takes big_vision's key / inkey / outkey ('image')."""
  def decorator(factory: Callable) -> Callable:
    OPS[name] = factory
    if keys:
      KEY_OPS.add(name)
    return factory
  return decorator


def _keep_image(image: Any, rng: Any) -> Any:
  return image


@_builtin("decode")
def _pp_decode(channels: int = 3, precise: bool = False) -> Callable:
  """Opens the image (pixels are decoded lazily by the next op that needs them)."""
  del precise  # Pillow's libjpeg decoding is what big_vision's precise=True matches.
  if channels != 3:
    raise ValueError(f"channels={channels!r}: the models take RGB; only channels=3 is supported.")
  return _keep_image


@_builtin("resize")
def _pp_resize(size: Any, method: str = "bilinear", antialias: bool = False) -> Callable:
  """Whole image to size (int or (h, w)), aspect ratio not kept."""
  del antialias  # Pillow antialiases when downscaling.
  h, w = _size_arg(size, "size")
  resample = _resample(method)
  return lambda image, rng: image_ops.resize_full(_image(image, "resize"), (h, w), resample)


@_builtin("resize_small")
def _pp_resize_small(smaller_size: int, method: str = "bilinear",
                     antialias: bool = False) -> Callable:
  """Shorter side to smaller_size, aspect ratio kept."""
  del antialias  # Pillow antialiases when downscaling.
  size, _ = _size_arg(smaller_size, "smaller_size")
  resample = _resample(method)
  return lambda image, rng: image_ops.resize_small(_image(image, "resize_small"), size,
                                                   resample)


def _window(image: Any, h: int, w: int, top: int, left: int) -> Any:
  if isinstance(image, Image.Image):
    return image.crop((left, top, left + w, top + h))
  return image[top:top + h, left:left + w]


def _fits(image: Any, h: int, w: int, op: str) -> tuple[int, int]:
  ih, iw = _hw(image)
  if h > ih or w > iw:
    raise ValueError(f"{op} of {h}x{w} (h x w) is larger than the {ih}x{iw} image; resize first.")
  return ih, iw


@_builtin("central_crop")
def _pp_central_crop(crop_size: Any = None) -> Callable:
  """Centred crop of crop_size (int or (h, w)); None: the largest central square."""
  sides = _size_arg(crop_size, "crop_size") if crop_size else None

  def op(image, rng):
    h, w = sides or (min(_hw(image)),) * 2
    ih, iw = _fits(image, h, w, "central_crop")
    return _window(image, h, w, (ih - h) // 2, (iw - w) // 2)
  return op


@_builtin("random_crop")
def _pp_random_crop(crop_size: Any) -> Callable:
  """Uniformly placed crop of crop_size (int or (h, w)); left drawn before top."""
  h, w = _size_arg(crop_size, "crop_size")

  def op(image, rng):
    ih, iw = _fits(image, h, w, "random_crop")
    left = int(rng.integers(0, iw - w + 1))
    top = int(rng.integers(0, ih - h + 1))
    return _window(image, h, w, top, left)
  return op


@_builtin("flip_lr")
def _pp_flip_lr() -> Callable:
  """Horizontal flip with probability 1/2."""
  def op(image, rng):
    if not rng.random() < 0.5:
      return image
    if isinstance(image, Image.Image):
      return image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image)[:, ::-1]
  return op


def _inception(name: str, size: Any, area_min: float, area_max: float, ratio_min: float,
               ratio_max: float, method: str) -> Callable:
  """sample_inception_box (area in percent), resized to size (None: not resized)."""
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"area_min={area_min}, area_max={area_max} must satisfy 0 < min <= max "
                     "<= 100 (percent of the image).")
  if not 0 < ratio_min <= ratio_max:
    raise ValueError(f"ratio_min={ratio_min}, ratio_max={ratio_max} must satisfy 0 < min <= max.")
  area, aspect = (area_min / 100, area_max / 100), (ratio_min, ratio_max)
  box = lambda w, h, r: image_ops.sample_inception_box(w, h, r, area, aspect)
  resample = _resample(method)
  if not size:
    def crop(image, rng):
      img = _image(image, name)
      left, top, w, h = box(img.size[0], img.size[1], rng)
      return img.crop((left, top, left + w, top + h))
    return crop
  h, w = _size_arg(size, "size")
  out = h if h == w else (lambda *_: (w, h))
  if resample == Image.BILINEAR:  # big_vision's: bilinear, not antialiased (image_ops doc)
    return lambda image, rng: image_ops.crop_resize(_image(image, name), box, out, rng)
  return lambda image, rng: image_ops.resize_box(_image(image, name), box, out, rng, resample)


@_builtin("inception_crop")
def _pp_inception_crop(size: Any = None, area_min: float = 5, area_max: float = 100,
                       method: str = "bilinear", antialias: bool = False) -> Callable:
  """The train inception_crop: area area_min-area_max % of the image, aspect 3/4-4/3."""
  del antialias  # Pillow antialiases when downscaling.
  return _inception("inception_crop", size, area_min, area_max, 3 / 4, 4 / 3, method)


@_builtin("decode_jpeg_and_inception_crop")
def _pp_decode_and_inception_crop(size: Any = None, area_min: float = 5, area_max: float = 100,
                                  ratio_min: float = 0.75, ratio_max: float = 4 / 3,
                                  method: str = "bilinear", antialias: bool = False) -> Callable:
  """inception_crop with the aspect range as arguments (big_vision's 1.33 read as 4/3)."""
  del antialias  # Pillow antialiases when downscaling.
  ratio_max = 4 / 3 if ratio_max == 1.33 else ratio_max
  return _inception("decode_jpeg_and_inception_crop", size, area_min, area_max, ratio_min,
                    ratio_max, method)


@_builtin("randaug")
def _pp_randaug(num_layers: int = 2, magnitude: int = 10) -> Callable:
  """RandAugment (vit_jax.datasets.randaugment) with num_layers ops at magnitude."""
  def op(image, rng):
    img = _image(image, "randaug")
    return randaugment.randaugment(img if img.mode == "RGB" else img.convert("RGB"),
                                   int(num_layers), magnitude, rng)
  return op


@_builtin("value_range")
def _pp_value_range(vmin: float = -1, vmax: float = 1, in_min: Any = 0, in_max: Any = 255.0,
                    clip_values: bool = False) -> ValueRange:
  """Pixels [in_min, in_max] -> float32 [vmin, vmax]."""
  return ValueRange(vmin, vmax, in_min, in_max, bool(clip_values))


@_builtin("onehot", keys=False)
def _pp_onehot(depth: int, key: str = "labels", key_result: Optional[str] = None,
               multi: bool = True, on: float = 1.0, off: float = 0.0) -> LabelOp:
  """Accepted: the pipeline one-hot encodes the labels (depth checked against the dataset)."""
  del key, key_result, multi
  if (on, off) != (1, 0):
    raise ValueError(f"on={on}, off={off}: labels are one-hot encoded by the pipeline; set "
                     "config.pp.label_smoothing instead (on = 1 - eps + eps/C, off = eps/C).")
  if not isinstance(depth, int) or depth < 1:
    raise ValueError(f"depth={depth!r} must be a positive int (the class count).")
  return LabelOp("onehot", depth)


@_builtin("keep", keys=False)
def _pp_keep(*keys: str) -> LabelOp:
  """Accepted: the batches always hold the image and its label."""
  if "image" not in keys:
    raise ValueError(f"keep{keys} drops 'image'; the batches always hold the image.")
  return LabelOp("keep")


@_builtin("drop", keys=False)
def _pp_drop(*keys: str) -> LabelOp:
  """Accepted unless it drops the image."""
  if "image" in keys:
    raise ValueError("drop('image'): the batches always hold the image.")
  return LabelOp("drop")


@_builtin("copy", keys=False)
def _pp_copy(inkey: str, outkey: str) -> LabelOp:
  """Accepted: labels are 'label' (big_vision's copy('label', 'labels') is not needed)."""
  if outkey == "image":
    raise ValueError(f"copy({inkey!r}, 'image') would replace the image.")
  return LabelOp("copy")
