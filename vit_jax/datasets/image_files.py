"""The image file suffixes vit_jax reads, in one place: folder prediction (predict.py) and
image-folder datasets (image_folder.py) list the same files, and Pillow decodes them all.

Matching ignores case (`.JPG` counts). No imports, so any layer may use it cheaply.
"""
from __future__ import annotations

# Formats Pillow reads without extra plugins (WebP and TIFF through its bundled libraries).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def is_image(name: str) -> bool:
  """Whether a file name has one of IMAGE_SUFFIXES, in any case."""
  return name.lower().endswith(IMAGE_SUFFIXES)


def describe() -> str:
  """The suffixes for an error message: '.jpg, .jpeg, ... (any case)'."""
  return f"{', '.join(IMAGE_SUFFIXES)} (any case)"
