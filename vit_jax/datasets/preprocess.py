"""Per-image and per-batch preprocessing settings and the named recipes (numpy + Pillow, no TF).

Owns config.pp → PreprocessOptions (`options_from_config`, which validates it) and the
published recipes, each a pure function of its inputs and a `np.random.Generator` (so a
worker computes the same result whatever the worker count), built from image_ops.py:

* train `vit_finetune` (Google's vit_jax fine-tune recipe): resize to `resize`×`resize`
  (default `default_resize(crop)` = crop × 8/7: 224 -> 256, 384 -> 439, 32 -> 37), random
  `crop`×`crop` crop, random horizontal flip. The margin scales with the crop, so the
  random crop always covers (7/8)² ≈ 77% of the image, as big_vision's transfer configs
  (256 -> 224, 448 -> 384); a fixed +32 took a quarter of a 32 px image.
* train `inception_crop`: random crop covering 5%-100% of the area with aspect ratio in
  [3/4, 4/3] (log-uniform; 10 tries, then the whole image), resized to `crop` (bilinear,
  not antialiased, after a DCT-scaled JPEG decode: image_ops.crop_resize), random flip.
* eval `resize`: resize to `crop` (Google's vit_jax fine-tune evaluation); eval
  `resize_crop`: resize to `resize`×`resize` (same default), central `crop` crop; eval
  `resize_small`: shorter side to `resize`, aspect ratio kept (big_vision's
  `resize_small(S)|central_crop(C)`, timm/DeiT's Resize(S) + CenterCrop(C)), central `crop`
  crop. `crop_pct` sets resize = floor(crop / crop_pct) (timm's convention: 0.875 -> 224/256).
  The choice moves published numbers by a point or more (vision_transformer#39: 83.41% vs
  85.08% from the resize alone), so each recipe that quotes a number names its mode.
* optional RandAugment (vit_jax.datasets.randaugment) on the uint8 crop.
* batch level: values to float32 in [-1, 1] (`train_values` / `eval_values`), then random
  erasing, smoothed one-hot labels and mixup / CutMix (mixing.py, from these options).

pp strings: `config.pp.train` / `config.pp.eval` may instead be a big_vision pp string, e.g.
`'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)'`, run by pp_pipeline.py (the
ops: pp_ops.py; registering your own: pp_registry.py). With a pp string train recipe,
config.pp.flip does not apply (write flip_lr) and config.pp.randaugment_* must be 0 (write
randaug); the batch-level options (mixup, CutMix, label smoothing, random erasing, which then
works in the pp string's value range) apply as with the named recipes. The image the ops end
with must be config.pp.crop square; in eval strings, random ops draw from a fixed seed per
image. `named_eval` says which named eval recipe a string spells (for exports, which
describe the eval preprocessing in other libraries' terms).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np
from PIL import Image

from vit_jax import batching
from vit_jax.datasets import (
  image_ops,
  mixing,
  pp_ops,
  pp_pipeline,
  pp_registry,
  pp_spec,
  randaugment,
)

TRAIN_MODES = batching.NAMED_TRAIN_RECIPES
RESIZE_RATIO = 8 / 7  # resize / crop when config.pp.resize is unset (0.875 crop ratio).
EVAL_MODES = ("resize", "resize_crop", "resize_small")
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
  modules = pp_registry.config_modules(pp.modules)
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
  if opts.random_erase_mode not in mixing.ERASE_MODES:
    raise ValueError(f"config.pp.random_erase_mode={opts.random_erase_mode!r} is unknown; use "
                     f"one of {mixing.ERASE_MODES}.")
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


def train_image(data: Any, opts: PreprocessOptions, rng: np.random.Generator) -> np.ndarray:
  """Train recipe (named or pp string) on one encoded image → uint8 (crop, crop, 3)."""
  if opts.train not in TRAIN_MODES:
    return _pp_image(opts.train, data, opts, rng)
  if opts.train == "inception_crop":
    img = image_ops.inception_crop(data, opts.crop, rng)
  else:
    img = np.asarray(image_ops.random_crop(image_ops.resize_full(data, opts.resize),
                                           opts.crop, rng))
  if opts.flip and rng.random() < 0.5:
    img = image_ops.flip_left_right(img)
  if opts.randaugment_layers:
    img = randaugment.randaugment(Image.fromarray(np.ascontiguousarray(img)),
                                  opts.randaugment_layers, opts.randaugment_magnitude, rng)
  return np.ascontiguousarray(img, dtype=np.uint8)


def eval_image(data: Any, opts: PreprocessOptions) -> np.ndarray:
  """Deterministic eval recipe (named or pp string) on one encoded image → uint8 (crop, crop, 3)."""
  if opts.eval not in EVAL_MODES:
    return _pp_image(opts.eval, data, opts, np.random.default_rng(EVAL_SEED))
  if opts.eval == "resize_crop":
    img = image_ops.central_crop(image_ops.resize_full(data, opts.resize), opts.crop)
  elif opts.eval == "resize_small":
    img = image_ops.central_crop(image_ops.resize_small(data, opts.resize), opts.crop)
  else:
    img = image_ops.resize_full(data, opts.crop)
  return np.asarray(img, dtype=np.uint8)


def train_values(images: np.ndarray, opts: PreprocessOptions) -> np.ndarray:
  """A batch of train_image outputs → float32 model inputs (to_float, or the pp string's
  trailing value_range)."""
  if opts.train in TRAIN_MODES:
    return image_ops.to_float(images)
  return pp_pipeline.get(opts.train, opts.pp_modules).values(images)


def eval_values(images: np.ndarray, opts: PreprocessOptions) -> np.ndarray:
  """A batch of eval_image outputs → float32 model inputs (as train_values)."""
  if opts.eval in EVAL_MODES:
    return image_ops.to_float(images)
  return pp_pipeline.get(opts.eval, opts.pp_modules).values(images)


def _pp_string_modules(where: str, spec: str, named: tuple[str, ...], modules: Any
                       ) -> tuple[tuple[str, str], ...]:
  """Validates a pp string of config.pp (ops, arguments); the modules that registered its ops."""
  try:
    return pp_pipeline.get(spec, modules).modules
  except ValueError as e:
    if pp_spec.is_op_name(spec):  # One word: most likely a misspelt named recipe.
      raise ValueError(f"{where}={spec!r} is unknown; use one of {named} or a pp string of the "
                       f"ops {', '.join(pp_registry.op_names())} (e.g. 'decode|resize(256)|"
                       "random_crop(224)|flip_lr|value_range(-1, 1)'); "
                       f"{pp_registry.HOW_TO_REGISTER}.") from None
    raise ValueError(f"{where}={spec!r}: {e}") from None


def check_label_classes(opts: PreprocessOptions, num_classes: int) -> None:
  """The train pp string's onehot(depth, ...) must match the train set's class count."""
  if opts.train in TRAIN_MODES:
    return
  depth = pp_pipeline.get(opts.train, opts.pp_modules).num_classes
  if depth is not None and int(depth) != int(num_classes):
    raise ValueError(f"config.pp.train one-hot encodes {depth} classes (onehot({depth}, ...)) "
                     f"but the dataset has {num_classes}; fix the depth or drop the op (the "
                     "pipeline one-hot encodes the dataset's labels itself).")


def _pp_image(spec: str, data: Any, opts: PreprocessOptions, rng: np.random.Generator
              ) -> np.ndarray:
  image = pp_pipeline.get(spec, opts.pp_modules).image(data, rng)
  if image.shape != (opts.crop, opts.crop, 3):
    raise ValueError(f"pp string {spec!r} gave an image of shape {image.shape}; the model takes "
                     f"({opts.crop}, {opts.crop}, 3) (config.pp.crop): end its image ops at "
                     f"that size, e.g. with central_crop({opts.crop}).")
  return image


def named_eval(spec: str) -> Optional[tuple[str, int, int]]:
  """(mode, resize, crop) of the named eval recipe a pp string spells byte for byte (bilinear,
  value_range(-1, 1) last, label ops ignored), e.g. 'decode|resize_small(256)|central_crop(224)|
  value_range(-1, 1)' -> ('resize_small', 256, 224); None for any other string."""
  if spec in EVAL_MODES:
    return None
  try:
    calls = [call for call in pp_spec.parse(spec)
             if call.name not in ("onehot", "keep", "drop", "copy")]
    pipe = pp_pipeline.get(spec)
  except ValueError:
    return None
  if pipe.value_range is None or pipe.value_range != pp_ops.ValueRange():
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

