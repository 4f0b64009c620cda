"""Per-image and per-batch preprocessing of the input pipeline (numpy + Pillow, no TensorFlow).

Owns the published recipes, each a pure function of its inputs and a `np.random.Generator`
(so a worker computes the same result whatever the worker count):

* train `vit_finetune` (Google's vit_jax fine-tune recipe): resize to `resize`×`resize`
  (default `default_resize(crop)` = crop × 8/7: 224 -> 256, 384 -> 439, 32 -> 37), random
  `crop`×`crop` crop, random horizontal flip. The margin scales with the crop, so the
  random crop always covers (7/8)² ≈ 77% of the image, as big_vision's transfer configs
  (256 -> 224, 448 -> 384); a fixed +32 took a quarter of a 32 px image.
* train `inception_crop`: random crop covering 5%-100% of the area with aspect ratio in
  [3/4, 4/3] (log-uniform; 10 tries, then the whole image), resized to `crop`, random flip.
* eval `resize`: resize to `crop` (Google's vit_jax fine-tune evaluation); eval
  `resize_crop`: resize to `resize`×`resize` (same default), central `crop` crop; eval
  `resize_small`: shorter side to `resize`, aspect ratio kept (big_vision's
  `resize_small(S)|central_crop(C)`, timm/DeiT's Resize(S) + CenterCrop(C)), central `crop`
  crop. `crop_pct` sets resize = floor(crop / crop_pct) (timm's convention: 0.875 -> 224/256).
  The choice moves published numbers by a point or more (vision_transformer#39: 83.41% vs
  85.08% from the resize alone), so each recipe that quotes a number names its mode.
* optional RandAugment (vit_jax.datasets.randaugment) on the uint8 crop.
* batch level: values to float32 in [-1, 1], optional random erasing, one-hot labels with
  label smoothing (`y = (1-eps)·onehot + eps/C`, rows sum to 1), then mixup or CutMix
  (`mix_batch`, timm's batch mode: one draw per batch; rows 2m and 2m+1 mixed with each
  other; labels mixed the same way after smoothing, as timm).
  - mixup: x = λ·x + (1-λ)·x_partner, λ ~ Beta(mixup_alpha, mixup_alpha).
  - CutMix: λ ~ Beta(cutmix_alpha, cutmix_alpha); one box of sides floor(side·√(1-λ)), centre
    uniform, clipped at the borders, takes the partner's pixels; the label weight is the
    pixel fraction actually kept, after clipping (timm's correct_lam).
  - mixup_prob: probability that a batch is mixed at all; with both alphas > 0,
    mixup_switch_prob: probability that the batch uses CutMix rather than mixup.
* random erasing (timm's RandomErasing, as DeiT, on the normalised image): with probability
  random_erase_prob, 1..random_erase_count boxes of area fraction in random_erase_area and
  aspect (h/w, log-uniform) in random_erase_aspect are filled with N(0, 1) noise per value
  ('pixel'), per channel ('rand') or zeros ('const'). The boxes and a noise seed are drawn
  per image from the image's RNG (`sample_erase_boxes`, in the element transform, which
  yields uint8); the batch transform applies them after to_float (`random_erase`).

Resizing is bilinear with Pillow's antialiasing when downscaling. JPEGs are decoded with
libjpeg's DCT scaling (`Image.draft`) when the needed resolution is at most half the stored
one, which is most of the speed of ImageNet-size decoding.

pp strings: `config.pp.train` / `config.pp.eval` may instead be a big_vision pp string, e.g.
`'decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 15)|value_range(-1, 1)'` or
`'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)'` (parsed by pp_spec.py):
each op is looked up in a registry (`register_op`, `op_names`) and runs on the image with
the element's RNG, so a string that spells a named recipe gives its bytes (`decode|resize(R)|
random_crop(C)|flip_lr` = vit_finetune, `decode|inception_crop(C)|flip_lr` = inception_crop,
`decode|resize(C)` = eval resize, `decode|resize(R)|central_crop(C)` = resize_crop,
`decode|resize_small(R)|central_crop(C)` = resize_small, each then `value_range(-1, 1)`).
The ops (big_vision's names and arguments; our implementations):
  decode(channels=3, precise=False)   opens the image; pixels are decoded by the next op that
      needs them (at a reduced DCT scale when a resize allows, as the named recipes).
      Pillow's libjpeg decoder is what big_vision's precise=True matches; channels must be 3.
  resize(size, method='bilinear')     size int or (h, w); aspect ratio not kept.
  resize_small(smaller_size, method='bilinear')   shorter side to smaller_size, aspect kept.
  central_crop(crop_size=None)        int or (h, w); None: the largest central square.
  random_crop(crop_size)              uniform position (x drawn before y).
  flip_lr                             horizontal flip with probability 1/2.
  inception_crop(size=None, area_min=5, area_max=100)   the train inception_crop above (area
      in percent, aspect 3/4-4/3); size None: the crop is not resized.
  decode_jpeg_and_inception_crop(size=None, area_min=5, area_max=100, ratio_min=0.75,
      ratio_max=4/3)                  the same with the aspect range as arguments (any image
      format; big_vision's 1.33 default is read as 4/3, so it equals inception_crop).
  randaug(num_layers=2, magnitude=10) vit_jax.datasets.randaugment (AugReg's randaug(2, 15)).
  value_range(vmin=-1, vmax=1, in_min=0, in_max=255, clip_values=False)   float32 values;
      the default is to_float's bytes. Put it last: a trailing value_range runs on the batch,
      so workers pass uint8 images as for the named recipes. Without one, values are the
      float32 of the uint8 pixels [0, 255].
  onehot(depth, ...), keep(*keys), drop(*keys), copy(inkey, outkey)   accepted as no-ops:
      the pipeline one-hot encodes (and smooths / mixes) labels itself from config.pp;
      in config.pp.train onehot's depth must equal the dataset's class count (eval datasets,
      few-shot ones included, are checked against the model instead), on/off must be 1/0
      (use config.pp.label_smoothing), keep must keep and drop must not drop 'image'.
`method` is 'bilinear' | 'bicubic' | 'nearest' | 'area' (box filter) | 'lanczos3'; Pillow
antialiases when downscaling whatever `antialias` says; `key`/`inkey`/`outkey` may only
name 'image' (the ops transform the image; labels come from the dataset). With a pp string
train recipe, config.pp.flip does not apply (write flip_lr) and config.pp.randaugment_* must
be 0 (write randaug); the batch-level options (mixup, CutMix, label smoothing, random
erasing, which then works in the pp string's value range) apply as with the named recipes.
The image the ops end with must be config.pp.crop square; in eval strings, random ops draw
from a fixed seed per image. `named_eval` says which named eval recipe a string spells (for
exports, which describe the eval preprocessing in other libraries' terms).
Register an op in your own module (imported by your config file, or named in
config.pp.modules) without editing this one:

  @preprocess.register_op("grey")
  def grey(weight=1.0):           # the pp string's arguments: 'decode|grey(0.5)|...'
    def op(image, rng):           # PIL image or ndarray (H, W, C) -> either
      ...
    return op

Data worker processes are spawned: the modules of the ops a pp string uses (and those of
config.pp.modules) are recorded in PreprocessOptions and imported there too.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import io
import math
import sys
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from vit_jax.datasets import pp_spec, randaugment

TRAIN_MODES = ("vit_finetune", "inception_crop")
RESIZE_RATIO = 8 / 7  # resize / crop when config.pp.resize is unset (0.875 crop ratio).
EVAL_MODES = ("resize", "resize_crop", "resize_small")
ERASE_MODES = ("pixel", "rand", "const")  # timm's RandomErasing modes (per pixel / channel / 0).
ERASE_ATTEMPTS = 10  # Boxes drawn per erased box before giving up (timm's value).
EVAL_SEED = 0  # Seed of the RNG an eval pp string's ops get (the same for every image).


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  """Picklable preprocessing settings (built from config.pp by `options_from_config`)."""
  crop: int
  resize: int
  train: str = "vit_finetune"
  eval: str = "resize"
  flip: bool = True
  randaugment_layers: int = 0
  randaugment_magnitude: int = 0
  mixup_alpha: float = 0.0
  label_smoothing: float = 0.0
  crop_pct: float = 0.0  # informational once resolved into `resize` (0 = not used)
  cutmix_alpha: float = 0.0
  mixup_prob: float = 1.0
  mixup_switch_prob: float = 0.5
  random_erase_prob: float = 0.0
  random_erase_mode: str = "pixel"
  random_erase_area: tuple[float, float] = (0.02, 1 / 3)
  random_erase_aspect: tuple[float, float] = (0.3, 3.3)
  random_erase_count: int = 1
  # (module, file) pairs imported before a pp string's ops are looked up (config.pp.modules
  # and the modules that registered its ops), so spawned workers know them too.
  pp_modules: tuple[tuple[str, str], ...] = ()

  @property
  def pairs_rows(self) -> bool:
    """Whether the batch transform mixes rows 2m and 2m+1 (mixup or CutMix on)."""
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def default_resize(crop: int) -> int:
  """The resize side for a crop when config.pp.resize is unset: round(crop × 8/7)."""
  return int(round(crop * RESIZE_RATIO))


def resolve_resize(crop: int, resize: Any = None, crop_pct: Any = None) -> int:
  """The resize side of the eval / finetune modes: floor(crop / crop_pct) when crop_pct is set
  (timm's convention), else `resize`, else default_resize(crop)."""
  if crop_pct:
    return int(math.floor(int(crop) / float(crop_pct) + 1e-9))
  return int(resize) if resize else default_resize(int(crop))


def options_from_config(pp: Any) -> PreprocessOptions:
  """Validates config.pp and returns PreprocessOptions (resize defaults to default_resize)."""
  crop = int(pp.crop)
  crop_pct = float(pp.crop_pct or 0.0)
  if crop_pct and not 0.0 < crop_pct <= 1.0:
    raise ValueError(f"config.pp.crop_pct={crop_pct} must be in (0, 1] (e.g. 0.875: 224 of 256).")
  if crop_pct and pp.resize:
    raise ValueError(f"config.pp.resize={pp.resize} and config.pp.crop_pct={crop_pct} both set "
                     "the eval resize; set one of them.")
  resize = resolve_resize(crop, pp.resize, crop_pct)
  modules = config_modules(pp.modules)
  for key, named in (("train", TRAIN_MODES), ("eval", EVAL_MODES)):
    if str(pp[key]) not in named:
      modules += _pp_string_modules(f"config.pp.{key}", str(pp[key]), named, modules)
  opts = PreprocessOptions(crop_pct=crop_pct, pp_modules=tuple(dict.fromkeys(modules)),
      crop=crop, resize=resize, train=str(pp.train), eval=str(pp.eval), flip=bool(pp.flip),
      randaugment_layers=int(pp.randaugment_layers or 0),
      randaugment_magnitude=int(pp.randaugment_magnitude or 0),
      mixup_alpha=float(pp.mixup_alpha or 0.0), label_smoothing=float(pp.label_smoothing or 0.0),
      cutmix_alpha=float(pp.cutmix_alpha or 0.0), mixup_prob=float(pp.mixup_prob),
      mixup_switch_prob=float(pp.mixup_switch_prob),
      random_erase_prob=float(pp.random_erase_prob or 0.0),
      random_erase_mode=str(pp.random_erase_mode),
      random_erase_area=_pair(pp.random_erase_area, "random_erase_area"),
      random_erase_aspect=_pair(pp.random_erase_aspect, "random_erase_aspect"),
      random_erase_count=int(pp.random_erase_count))
  if opts.train not in TRAIN_MODES and opts.randaugment_layers:
    raise ValueError(f"config.pp.randaugment_layers={opts.randaugment_layers} applies to the "
                     f"named train recipes {TRAIN_MODES}; with the pp string "
                     f"config.pp.train={opts.train!r} write randaug({opts.randaugment_layers}, "
                     f"{opts.randaugment_magnitude}) into it and set randaugment_layers=0.")
  if opts.resize < crop and (opts.train == "vit_finetune"
                             or opts.eval in ("resize_crop", "resize_small")):
    raise ValueError(f"config.pp.resize={opts.resize} is smaller than config.pp.crop={crop}; "
                     "set resize >= crop (or leave it unset for crop x 8/7).")
  if not 0.0 <= opts.label_smoothing < 1.0:
    raise ValueError(f"config.pp.label_smoothing={opts.label_smoothing} must be in [0, 1).")
  if opts.mixup_alpha < 0:
    raise ValueError(f"config.pp.mixup_alpha={opts.mixup_alpha} must be >= 0 (0 = off).")
  if opts.cutmix_alpha < 0:
    raise ValueError(f"config.pp.cutmix_alpha={opts.cutmix_alpha} must be >= 0 (0 = off).")
  for key in ("mixup_prob", "mixup_switch_prob", "random_erase_prob"):
    if not 0.0 <= getattr(opts, key) <= 1.0:
      raise ValueError(f"config.pp.{key}={getattr(opts, key)} is a probability; it must be in "
                       "[0, 1].")
  lo, hi = opts.random_erase_area
  if not 0.0 < lo <= hi <= 1.0:
    raise ValueError(f"config.pp.random_erase_area={opts.random_erase_area} must be (min, max) "
                     "area fractions with 0 < min <= max <= 1, e.g. (0.02, 1/3).")
  lo, hi = opts.random_erase_aspect
  if not 0.0 < lo <= hi:
    raise ValueError(f"config.pp.random_erase_aspect={opts.random_erase_aspect} must be "
                     "(min, max) height/width ratios with 0 < min <= max, e.g. (0.3, 3.3).")
  if opts.random_erase_mode not in ERASE_MODES:
    raise ValueError(f"config.pp.random_erase_mode={opts.random_erase_mode!r} is unknown; use "
                     f"one of {ERASE_MODES}.")
  if opts.random_erase_count < 1 or opts.random_erase_count != float(pp.random_erase_count):
    raise ValueError(f"config.pp.random_erase_count={pp.random_erase_count} must be an integer "
                     ">= 1 (the most boxes erased in one image).")
  return opts


def _pair(value: Any, key: str) -> tuple[float, float]:
  """A (min, max) config value as a tuple of two floats."""
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"config.pp.{key}={value!r} must be a (min, max) pair of numbers.") from None
  return lo, hi


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


def _resize_box(data: Any, box_fn, out_size, rng=None, resample=Image.BILINEAR) -> Image.Image:
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
  return _resize_box(data, lambda w, h, r: sample_inception_box(w, h, r), size, rng)


def _sides(size: Any) -> tuple[int, int]:
  """(height, width) of an int side or an (h, w) pair."""
  if isinstance(size, (tuple, list)):
    h, w = size
    return int(h), int(w)
  return int(size), int(size)


def resize_full(data: Any, size: Any, resample=Image.BILINEAR) -> Image.Image:
  """Whole image resized to size×size or (h, w) (aspect ratio not kept, as vit_jax)."""
  h, w = _sides(size)
  out = h if h == w else (lambda *_: (w, h))
  return _resize_box(data, lambda iw, ih, r: (0, 0, iw, ih), out, resample=resample)


def random_crop(img: Image.Image, size: Any, rng: np.random.Generator) -> Image.Image:
  """Uniformly placed size×size or (h, w) crop (left drawn before top)."""
  h, w = _sides(size)
  left = int(rng.integers(0, img.size[0] - w + 1))
  top = int(rng.integers(0, img.size[1] - h + 1))
  return img.crop((left, top, left + w, top + h))


def resize_small(data: Any, size: int, resample=Image.BILINEAR) -> Image.Image:
  """Whole image with its shorter side resized to `size`, aspect ratio kept (long side rounded)."""
  def shape(width, height):
    ratio = size / max(min(width, height), 1)
    if width <= height:
      return size, max(size, int(round(height * ratio)))
    return max(size, int(round(width * ratio))), size
  return _resize_box(data, lambda w, h, r: (0, 0, w, h), shape, resample=resample)


def central_crop(img: Image.Image, size: Any) -> Image.Image:
  """Centred size×size or (h, w) crop."""
  h, w = _sides(size)
  left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
  return img.crop((left, top, left + w, top + h))


def train_image(data: Any, opts: PreprocessOptions, rng: np.random.Generator) -> np.ndarray:
  """Train recipe (named or pp string) on one encoded image → uint8 (crop, crop, 3)."""
  if opts.train not in TRAIN_MODES:
    return _pp_image(opts.train, data, opts, rng)
  if opts.train == "inception_crop":
    img = inception_crop(data, opts.crop, rng)
  else:
    img = random_crop(resize_full(data, opts.resize), opts.crop, rng)
  if opts.flip and rng.random() < 0.5:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  if opts.randaugment_layers:
    img = randaugment.randaugment(img, opts.randaugment_layers, opts.randaugment_magnitude, rng)
  return np.asarray(img, dtype=np.uint8)


def eval_image(data: Any, opts: PreprocessOptions) -> np.ndarray:
  """Deterministic eval recipe (named or pp string) on one encoded image → uint8 (crop, crop, 3)."""
  if opts.eval not in EVAL_MODES:
    return _pp_image(opts.eval, data, opts, np.random.default_rng(EVAL_SEED))
  if opts.eval == "resize_crop":
    img = central_crop(resize_full(data, opts.resize), opts.crop)
  elif opts.eval == "resize_small":
    img = central_crop(resize_small(data, opts.resize), opts.crop)
  else:
    img = resize_full(data, opts.crop)
  return np.asarray(img, dtype=np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [-1, 1]."""
  return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def train_values(images: np.ndarray, opts: PreprocessOptions) -> np.ndarray:
  """A batch of train_image outputs → float32 model inputs (to_float, or the pp string's
  trailing value_range)."""
  if opts.train in TRAIN_MODES:
    return to_float(images)
  return pp_pipeline(opts.train, opts.pp_modules).values(images)


def eval_values(images: np.ndarray, opts: PreprocessOptions) -> np.ndarray:
  """A batch of eval_image outputs → float32 model inputs (as train_values)."""
  if opts.eval in EVAL_MODES:
    return to_float(images)
  return pp_pipeline(opts.eval, opts.pp_modules).values(images)


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
  """Integer labels → float32 one-hot rows, smoothed to (1-eps)·onehot + eps/C (sum 1)."""
  labels = np.asarray(labels, dtype=np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"label {int(labels.max())} is outside [0, {num_classes}); check the "
                     "dataset's class count (config.num_classes).")
  out = np.full(labels.shape + (num_classes,), smoothing / num_classes, np.float32)
  np.put_along_axis(out, labels[..., None], np.float32(1.0 - smoothing + smoothing / num_classes),
                    axis=-1)
  return out


def mixup(images: np.ndarray, labels: np.ndarray, alpha: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
  """Mixes row 2m with row 2m+1 (and back) by one λ ~ Beta(α, α); returns (x, y, λ).

  The pairs stay inside any even-aligned slice of the batch, so a global batch split over
  processes mixes the same pairs as when one process holds all of it.
  """
  if len(images) % 2:
    raise ValueError(f"mixup pairs rows 2m and 2m+1; got an odd batch of {len(images)} rows.")
  lam = float(rng.beta(alpha, alpha))
  mix = lambda a: (lam * a + (1.0 - lam) * _partner(a)).astype(np.float32)
  return mix(images), mix(labels), lam


def _partner(a: np.ndarray) -> np.ndarray:
  """Rows 2m and 2m+1 swapped: each row's mixing partner."""
  return a.reshape((-1, 2) + a.shape[1:])[:, ::-1].reshape(a.shape)


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a CutMix box: sides floor(side·√(1-λ)) (area ≈ (1-λ) of the image),
  centre uniform over the pixels, clipped at the borders (so it may be smaller)."""
  ratio = math.sqrt(max(1.0 - lam, 0.0))
  cut_h, cut_w = int(height * ratio), int(width * ratio)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  top, left = cy - cut_h // 2, cx - cut_w // 2
  y0, y1 = max(top, 0), min(top + cut_h, height)
  x0, x1 = max(left, 0), min(left + cut_w, width)
  return y0, x0, max(y1 - y0, 0), max(x1 - x0, 0)


def cutmix(images: np.ndarray, labels: np.ndarray, alpha: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
  """Pastes one box of row 2m+1 into row 2m (and back), λ ~ Beta(α, α); returns (x, y, λ').

  One box for the whole batch (timm's batch mode). λ' = 1 - (box area after clipping) / (image
  area) is the weight of a row's own label, so the label weights are exactly the pixel
  fractions (timm's correct_lam). Pairs stay inside even-aligned slices, as mixup's.
  """
  if len(images) % 2:
    raise ValueError(f"CutMix pairs rows 2m and 2m+1; got an odd batch of {len(images)} rows.")
  lam = float(rng.beta(alpha, alpha))
  height, width = images.shape[1:3]
  top, left, h, w = cutmix_box(height, width, lam, rng)
  x = np.array(images, dtype=np.float32)
  box = (slice(None), slice(top, top + h), slice(left, left + w))
  x[box] = _partner(images)[box]
  lam = 1.0 - h * w / (height * width)
  y = (lam * labels + (1.0 - lam) * _partner(labels)).astype(np.float32)
  return x, y, lam


def mix_batch(images: np.ndarray, labels: np.ndarray, opts: PreprocessOptions,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Mixup or CutMix of a batch as config.pp says (timm's batch mode; labels already smoothed).

  With probability mixup_prob the batch is mixed at all; with both alphas > 0, CutMix is
  picked with probability mixup_switch_prob, else mixup. Draw order: the mixup_prob uniform
  (only when mixup_prob < 1), the switch uniform (only when both are on), then the mix's own
  draws; so a mixup-only config draws exactly what it drew before these options existed.
  """
  if not opts.pairs_rows:
    return images, labels
  if opts.mixup_prob < 1.0 and not rng.random() < opts.mixup_prob:
    return images, labels
  use_cutmix = opts.cutmix_alpha > 0
  if use_cutmix and opts.mixup_alpha > 0:
    use_cutmix = bool(rng.random() < opts.mixup_switch_prob)
  if use_cutmix:
    images, labels, _ = cutmix(images, labels, opts.cutmix_alpha, rng)
  else:
    images, labels, _ = mixup(images, labels, opts.mixup_alpha, rng)
  return images, labels


def sample_erase_boxes(height: int, width: int, opts: PreprocessOptions,
                       rng: np.random.Generator) -> np.ndarray:
  """Random-erasing boxes of one image: int32 (random_erase_count, 4) rows (top, left, h, w).

  With probability random_erase_prob the image is erased by n boxes, n uniform in
  [1, random_erase_count] (timm's --recount); each box has an area fraction uniform in
  random_erase_area / n and an aspect h/w log-uniform in random_erase_aspect, drawn up to
  ERASE_ATTEMPTS times until it fits strictly inside the image. Unused rows are zeros (h = 0).
  """
  boxes = np.zeros((opts.random_erase_count, 4), np.int32)
  if not rng.random() < opts.random_erase_prob:
    return boxes
  count = opts.random_erase_count
  if count > 1:
    count = int(rng.integers(1, count + 1))
  log_lo, log_hi = (math.log(a) for a in opts.random_erase_aspect)
  for b in range(count):
    for _ in range(ERASE_ATTEMPTS):
      area = rng.uniform(*opts.random_erase_area) * height * width / count
      aspect = math.exp(rng.uniform(log_lo, log_hi))
      h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if 0 < h < height and 0 < w < width:
        boxes[b] = (rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w)
        break
  return boxes


def random_erase(image: np.ndarray, boxes: np.ndarray, noise_seed: int, mode: str) -> np.ndarray:
  """A float (H, W, C) image with its boxes replaced (a copy when anything is erased).

  Fill values, in the normalised [-1, 1] space: 'pixel' N(0, 1) per value, 'rand' N(0, 1) per
  channel and box, 'const' 0 (mid grey); the noise comes from `noise_seed` only. As timm
  (whose fill is N(0, 1) in mean/std-normalised units), the noise is not clipped, so erased
  values may fall outside [-1, 1].
  """
  boxes = np.asarray(boxes).reshape(-1, 4)
  if not np.any(boxes[:, 2] * boxes[:, 3]):
    return image
  image = np.array(image, dtype=np.float32)
  rng = np.random.default_rng(int(noise_seed))
  channels = image.shape[-1]
  for top, left, h, w in boxes.tolist():
    if h * w == 0:
      continue
    if mode == "pixel":
      fill = rng.standard_normal((h, w, channels), dtype=np.float32)
    elif mode == "rand":
      fill = rng.standard_normal((1, 1, channels), dtype=np.float32)
    else:
      fill = np.float32(0.0)
    image[top:top + h, left:left + w] = fill
  return image


# --- pp strings: the op registry, big_vision's ops, pipelines -------------------------------

_OPS: dict[str, Callable[..., Callable]] = {}
_KEY_OPS: set[str] = set()  # Our image ops: big_vision's key / inkey / outkey may name 'image'.
_PIPELINES: dict[Any, "PpPipeline"] = {}
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "area": Image.BOX, "lanczos3": Image.LANCZOS}
HOW_TO_REGISTER = ("register one in your own module with @vit_jax.datasets.preprocess."
                   "register_op('NAME') on a function of the op's arguments that returns "
                   "op(image, rng) -> image, imported by your config file or named in "
                   "config.pp.modules")


def register_op(name: str) -> Callable[[Callable], Callable]:
  """Decorator: registers a pp op factory (its pp-string arguments -> op(image, rng) -> image)
  under `name`; re-registering the same function (a module imported again) is allowed."""
  if not pp_spec.is_op_name(name):
    raise ValueError(f"pp op name {name!r} must be a Python identifier (pp strings name it).")

  def decorator(factory: Callable) -> Callable:
    old = _OPS.get(name)
    if old is not None and _where(old) != _where(factory):
      raise ValueError(f"pp op {name!r} is already registered by {_where(old)}; register "
                       f"{_where(factory)} under another name.")
    _OPS[name] = factory
    _PIPELINES.clear()
    return factory
  return decorator


def _where(fn: Callable) -> str:
  return f"{fn.__module__}.{fn.__qualname__}"


def op_names() -> tuple[str, ...]:
  """The registered pp op names, sorted."""
  return tuple(sorted(_OPS))


def get_op(name: str) -> Callable[..., Callable]:
  """The factory registered as `name`; one clear error listing the registered ops otherwise."""
  try:
    return _OPS[name]
  except KeyError:
    raise ValueError(f"pp op {name!r} is unknown; registered ops: {', '.join(op_names())}; "
                     f"{HOW_TO_REGISTER}.") from None


def config_modules(values: Any) -> tuple[tuple[str, str], ...]:
  """config.pp.modules (dotted module names or .py files) as (module, file) pairs, imported."""
  out = []
  for value in values or ():
    value = str(value)
    if value.endswith(".py"):
      stem = "".join(ch if ch.isalnum() else "_" for ch in value.rpartition("/")[2][:-3])
      out.append((f"vit_jax_pp_{stem}", value))
    else:
      out.append((value, ""))
  import_modules(out)
  return tuple(out)


def import_modules(modules: Any) -> None:
  """Imports (module, file) pairs not imported yet: by name, else from the file when given."""
  for name, path in modules:
    if name in sys.modules:
      continue
    try:
      importlib.import_module(name)
      continue
    except ModuleNotFoundError as e:
      if not path or not (e.name == name or name.startswith(f"{e.name}.")):
        raise ValueError(f"cannot import the pp module {name!r} ({e}); check config.pp.modules "
                         "and that the module is on the Python path.") from e
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
      raise ValueError(f"cannot import the pp module {name!r} from {path!r}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise


def _module_entry(name: str) -> tuple[str, str]:
  return name, str(getattr(sys.modules.get(name), "__file__", None) or "")


@dataclasses.dataclass(frozen=True)
class ValueRange:
  """value_range: pixels [in_min, in_max] -> float32 [vmin, vmax] (per channel when lists)."""
  vmin: float = -1.0
  vmax: float = 1.0
  in_min: Any = 0.0
  in_max: Any = 255.0
  clip_values: bool = False

  def __call__(self, image: Any, rng: Any = None) -> np.ndarray:
    x = _as_array(image)
    if x.dtype == np.uint8 and (self.vmin, self.vmax, self.in_min, self.in_max,
                                self.clip_values) == (-1, 1, 0, 255, False):
      return to_float(x)  # The named recipes' bytes.
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


@dataclasses.dataclass(frozen=True)
class PpPipeline:
  """A parsed pp string: image ops (run per element with its RNG), a trailing value_range
  (run on the batch, so elements stay uint8), onehot's depth, the modules of its user ops."""
  spec: str
  ops: tuple[tuple[str, Callable], ...]
  value_range: Optional[ValueRange] = None
  num_classes: Optional[int] = None
  modules: tuple[tuple[str, str], ...] = ()

  def image(self, data: Any, rng: np.random.Generator) -> np.ndarray:
    """The ops on one encoded image (opened lazily, so a resize may decode at a DCT scale)."""
    image = open_image(data)
    for text, op in self.ops:
      try:
        image = op(image, rng)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"pp op {text!r} of {self.spec!r}: {e}") from e
    return _as_array(image)

  def values(self, images: np.ndarray) -> np.ndarray:
    """A batch of `image` outputs -> float32 (the trailing value_range, if any)."""
    if self.value_range is not None:
      return self.value_range(images)
    return np.asarray(images, np.float32)


def pp_pipeline(spec: str, modules: Any = ()) -> PpPipeline:
  """The pipeline of a pp string, built once per string (after importing `modules`)."""
  key = (spec, tuple(modules))
  if key not in _PIPELINES:
    import_modules(modules)
    pipe = _build(spec)
    _PIPELINES[key] = pipe
  return _PIPELINES[key]


def _build(spec: str) -> PpPipeline:
  ops, depth, modules = [], None, []
  for call in pp_spec.parse(spec):
    factory = get_op(call.name)
    kwargs = call.kwargs_dict
    if call.name in _KEY_OPS:
      for k in ("key", "inkey", "outkey"):
        if kwargs.pop(k, "image") not in ("image", None):
          raise ValueError(f"pp op {call.text!r}: {k} must be 'image' (the ops transform the "
                           "image; labels come from the dataset).")
    try:
      inspect.signature(factory).bind(*call.args, **kwargs)
    except TypeError as e:
      raise ValueError(f"pp op {call.text!r}: {e}; it takes {call.name}"
                       f"{inspect.signature(factory)}.") from None
    except ValueError:  # No signature (a builtin or C function): let the call check.
      pass
    try:
      op = factory(*call.args, **kwargs)
    except (TypeError, ValueError) as e:
      raise ValueError(f"pp op {call.text!r}: {e}") from None
    if factory.__module__ not in (__name__, "__main__"):
      modules.append(_module_entry(factory.__module__))
    if isinstance(op, LabelOp):
      depth = op.depth if op.depth is not None else depth
      continue
    if not callable(op):
      raise ValueError(f"pp op {call.text!r}: its factory {_where(factory)} returned "
                       f"{type(op).__name__}, not op(image, rng) -> image.")
    ops.append((call.text, op))
  value_range = ops.pop()[1] if ops and isinstance(ops[-1][1], ValueRange) else None
  return PpPipeline(spec, tuple(ops), value_range, depth, tuple(dict.fromkeys(modules)))


def _pp_string_modules(where: str, spec: str, named: tuple[str, ...], modules: Any
                       ) -> tuple[tuple[str, str], ...]:
  """Validates a pp string of config.pp (ops, arguments); the modules that registered its ops."""
  try:
    return pp_pipeline(spec, modules).modules
  except ValueError as e:
    if pp_spec.is_op_name(spec):  # One word: most likely a misspelt named recipe.
      raise ValueError(f"{where}={spec!r} is unknown; use one of {named} or a pp string of the "
                       f"ops {', '.join(op_names())} (e.g. 'decode|resize(256)|random_crop(224)"
                       f"|flip_lr|value_range(-1, 1)'); {HOW_TO_REGISTER}.") from None
    raise ValueError(f"{where}={spec!r}: {e}") from None


def check_label_classes(opts: PreprocessOptions, num_classes: int) -> None:
  """The train pp string's onehot(depth, ...) must match the train set's class count."""
  if opts.train in TRAIN_MODES:
    return
  depth = pp_pipeline(opts.train, opts.pp_modules).num_classes
  if depth is not None and int(depth) != int(num_classes):
    raise ValueError(f"config.pp.train one-hot encodes {depth} classes (onehot({depth}, ...)) "
                     f"but the dataset has {num_classes}; fix the depth or drop the op (the "
                     "pipeline one-hot encodes the dataset's labels itself).")


def _pp_image(spec: str, data: Any, opts: PreprocessOptions, rng: np.random.Generator
              ) -> np.ndarray:
  image = pp_pipeline(spec, opts.pp_modules).image(data, rng)
  if image.shape != (opts.crop, opts.crop, 3):
    raise ValueError(f"pp string {spec!r} gave an image of shape {image.shape}; the model takes "
                     f"({opts.crop}, {opts.crop}, 3) (config.pp.crop): end its image ops at "
                     f"that size, e.g. with central_crop({opts.crop}).")
  return image


def _image(image: Any, op: str) -> Image.Image:
  """An op's input as a PIL image (uint8 arrays converted); float values are refused."""
  if isinstance(image, Image.Image):
    return image
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    raise ValueError(f"{op} takes uint8 pixels but got {arr.dtype} values; put value_range(...) "
                     "after the image ops.")
  return open_image(arr)


def _as_array(image: Any) -> np.ndarray:
  """A PIL image as uint8 RGB (H, W, 3); arrays as they are."""
  if isinstance(image, Image.Image):
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
  return np.asarray(image)


def _hw(image: Any) -> tuple[int, int]:
  if isinstance(image, Image.Image):
    return image.size[1], image.size[0]
  return tuple(np.shape(image)[:2])


def _size_arg(size: Any, what: str) -> tuple[int, int]:
  try:
    h, w = _sides(size)
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
  """Registers one of our ops; `keys`: it takes big_vision's key / inkey / outkey ('image')."""
  def decorator(factory: Callable) -> Callable:
    register_op(name)(factory)
    if keys:
      _KEY_OPS.add(name)
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
  return lambda image, rng: resize_full(_image(image, "resize"), (h, w), resample)


@_builtin("resize_small")
def _pp_resize_small(smaller_size: int, method: str = "bilinear",
                     antialias: bool = False) -> Callable:
  """Shorter side to smaller_size, aspect ratio kept."""
  del antialias  # Pillow antialiases when downscaling.
  size, _ = _size_arg(smaller_size, "smaller_size")
  resample = _resample(method)
  return lambda image, rng: resize_small(_image(image, "resize_small"), size, resample)


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
  box = lambda w, h, r: sample_inception_box(w, h, r, area, aspect)
  resample = _resample(method)
  if not size:
    def crop(image, rng):
      img = _image(image, name)
      left, top, w, h = box(img.size[0], img.size[1], rng)
      return img.crop((left, top, left + w, top + h))
    return crop
  h, w = _size_arg(size, "size")
  out = h if h == w else (lambda *_: (w, h))
  return lambda image, rng: _resize_box(_image(image, name), box, out, rng, resample)


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


def named_eval(spec: str) -> Optional[tuple[str, int, int]]:
  """(mode, resize, crop) of the named eval recipe a pp string spells byte for byte (bilinear,
  value_range(-1, 1) last, label ops ignored), e.g. 'decode|resize_small(256)|central_crop(224)|
  value_range(-1, 1)' -> ('resize_small', 256, 224); None for any other string."""
  if spec in EVAL_MODES:
    return None
  try:
    calls = [call for call in pp_spec.parse(spec) if call.name not in ("onehot", "keep", "drop", "copy")]
    pipe = pp_pipeline(spec)
  except ValueError:
    return None
  if pipe.value_range is None or pipe.value_range != ValueRange():
    return None
  calls = calls[1:] if calls and calls[0].name == "decode" and not calls[0].args else calls
  if any(call.kwargs_dict.get("method", "bilinear") != "bilinear" or
         set(call.kwargs_dict) - {"method", "antialias", "key"} for call in calls[:-1]):
    return None
  names = [call.name for call in calls[:-1]]
  sides = [call.args[0] if call.args else None for call in calls[:-1]]
  if names == ["resize"] and isinstance(sides[0], int):
    return "resize", sides[0], sides[0]
  if names in (["resize", "central_crop"], ["resize_small", "central_crop"]) and all(
      isinstance(x, int) for x in sides) and len(calls[1].args) == 1:
    return ("resize_crop" if names[0] == "resize" else "resize_small"), sides[0], sides[1]
  return None
