"""Batch-level label and pixel mixing: one-hot labels, mixup, CutMix and random erasing (numpy).

Each function is pure given its `np.random.Generator`, as timm's batch mode:

* one-hot labels with label smoothing (`y = (1-eps)·onehot + eps/C`, rows sum to 1), then
  mixup or CutMix (`mix_batch`: one draw per batch; rows 2m and 2m+1 mixed with each other;
  labels mixed the same way after smoothing, as timm).
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
  yields uint8); the batch transform applies them after the float conversion
  (`random_erase`).

The settings come from config.pp through preprocess.PreprocessOptions (`MixOptions`,
`EraseOptions` name the fields read here, so this module does not import the options).
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np

ERASE_MODES = ("pixel", "rand", "const")  # timm's RandomErasing modes (per pixel / channel / 0).
ERASE_ATTEMPTS = 10  # Boxes drawn per erased box before giving up (timm's value).


class MixOptions(Protocol):
  """The mixup / CutMix settings `mix_batch` reads (preprocess.PreprocessOptions has them)."""
  mixup_alpha: float
  cutmix_alpha: float
  mixup_prob: float
  mixup_switch_prob: float

  @property
  def pairs_rows(self) -> bool:
    """Whether rows 2m and 2m+1 are mixed at all (mixup or CutMix on)."""


class EraseOptions(Protocol):
  """The random-erasing settings `sample_erase_boxes` reads (as PreprocessOptions')."""
  random_erase_prob: float
  random_erase_area: tuple[float, float]
  random_erase_aspect: tuple[float, float]
  random_erase_count: int


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


def mix_batch(images: np.ndarray, labels: np.ndarray, opts: MixOptions,
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


def sample_erase_boxes(height: int, width: int, opts: EraseOptions,
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
