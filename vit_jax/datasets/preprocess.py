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
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image

TRAIN_MODES = ("vit_finetune", "inception_crop")
RESIZE_RATIO = 8 / 7  # resize / crop when config.pp.resize is unset (0.875 crop ratio).
EVAL_MODES = ("resize", "resize_crop", "resize_small")
ERASE_MODES = ("pixel", "rand", "const")  # timm's RandomErasing modes (per pixel / channel / 0).
ERASE_ATTEMPTS = 10  # Boxes drawn per erased box before giving up (timm's value).


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
  opts = PreprocessOptions(crop_pct=crop_pct,
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
  if opts.train not in TRAIN_MODES:
    raise ValueError(f"config.pp.train={opts.train!r} is unknown; use one of {TRAIN_MODES}.")
  if opts.eval not in EVAL_MODES:
    raise ValueError(f"config.pp.eval={opts.eval!r} is unknown; use one of {EVAL_MODES}.")
  if opts.resize < crop and (opts.train == "vit_finetune" or opts.eval != "resize"):
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
  """Encoded bytes (JPEG/PNG/...) or a uint8 (H, W[, C]) array → lazily decoded PIL image."""
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


def _resize_box(data: Any, box_fn, out_size, rng=None) -> Image.Image:
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
  return img.resize(out, Image.BILINEAR,
                    box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def inception_crop(data: Any, size: int, rng: np.random.Generator) -> Image.Image:
  """Inception-style random area/aspect crop, resized to size×size."""
  return _resize_box(data, lambda w, h, r: sample_inception_box(w, h, r), size, rng)


def resize_full(data: Any, size: int) -> Image.Image:
  """Whole image resized to size×size (aspect ratio not kept, as vit_jax)."""
  return _resize_box(data, lambda w, h, r: (0, 0, w, h), size)


def random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
  """Uniformly placed size×size crop."""
  left = int(rng.integers(0, img.size[0] - size + 1))
  top = int(rng.integers(0, img.size[1] - size + 1))
  return img.crop((left, top, left + size, top + size))


def resize_small(data: Any, size: int) -> Image.Image:
  """Whole image with its shorter side resized to `size`, aspect ratio kept (long side rounded)."""
  def shape(width, height):
    ratio = size / max(min(width, height), 1)
    if width <= height:
      return size, max(size, int(round(height * ratio)))
    return max(size, int(round(width * ratio))), size
  return _resize_box(data, lambda w, h, r: (0, 0, w, h), shape)


def central_crop(img: Image.Image, size: int) -> Image.Image:
  """Centred size×size crop."""
  left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
  return img.crop((left, top, left + size, top + size))


def train_image(data: Any, opts: PreprocessOptions, rng: np.random.Generator) -> np.ndarray:
  """Train recipe on one encoded image → uint8 (crop, crop, 3)."""
  if opts.train == "inception_crop":
    img = inception_crop(data, opts.crop, rng)
  else:
    img = random_crop(resize_full(data, opts.resize), opts.crop, rng)
  if opts.flip and rng.random() < 0.5:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  if opts.randaugment_layers:
    from vit_jax.datasets import randaugment  # pylint: disable=g-import-not-at-top
    img = randaugment.randaugment(img, opts.randaugment_layers, opts.randaugment_magnitude, rng)
  return np.asarray(img, dtype=np.uint8)


def eval_image(data: Any, opts: PreprocessOptions) -> np.ndarray:
  """Deterministic eval recipe on one encoded image → uint8 (crop, crop, 3)."""
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
