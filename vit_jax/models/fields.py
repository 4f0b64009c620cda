"""The Google-layout config fields the modules take, and the input checks made from them.

`patches`, `transformer` and `resnet` arrive as ConfigDicts, plain dicts or objects with
attributes (Google's configs, ours, a user's); these helpers read them one way.
"""
from __future__ import annotations

from typing import Any, Optional


def config_get(cfg: Any, key: str, default: Any = None) -> Any:
  """cfg[key] for dicts / ConfigDicts / objects with attributes; `default` when absent."""
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def patch_size(patches: Any) -> tuple[int, int]:
  """(ph, pw) from a `patches` config ({'size': (ph, pw)}) or a bare int / pair."""
  size = config_get(patches, "size", patches) if not isinstance(patches, (int, tuple, list)) \
      else patches
  if isinstance(size, int):
    return (size, size)
  ph, pw = tuple(size)
  return int(ph), int(pw)


def sequence_length(patches: Any, classifier: str, height: int, width: int,
                    distilled: bool = False) -> int:
  """Encoder tokens of a ViT for (height, width) patch-embedding input: patches + class token
  (+ DeiT's distillation token when `distilled`)."""
  ph, pw = patch_size(patches)
  prefix = (1 + bool(distilled)) if classifier in ("token", "token_unpooled") else 0
  return (height // ph) * (width // pw) + prefix


def check_image_size(shape: tuple[int, ...], patch: tuple[int, int], stride: int,
                     model_name: Optional[str]) -> None:
  """Raises a ValueError when (B,H,W,C) images do not tile into whole patches."""
  if len(shape) != 4:
    raise ValueError(f"expected images of shape (batch, height, width, channels), got {shape}.")
  eff = (patch[0] * stride, patch[1] * stride)
  h, w = shape[1], shape[2]
  if h % eff[0] or w % eff[1]:
    what = f"patch {patch[0]}x{patch[1]}" + (f" x ResNet stride {stride}" if stride > 1 else "")
    near = (max(eff[0], round(h / eff[0]) * eff[0]), max(eff[1], round(w / eff[1]) * eff[1]))
    raise ValueError(
        f"image size {h}x{w} is not divisible by the effective patch size {eff[0]}x{eff[1]} "
        f"({what}) of model {model_name or 'VisionTransformer'}; resize or crop the images to "
        f"a multiple of it, e.g. {near[0]}x{near[1]} (config.pp.crop).")
