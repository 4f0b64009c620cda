"""Datasets beyond the TFDS catalogue: the embedded offline 'digits' builder and image folders.

Importing this package imports no TensorFlow: `vit_jax.datasets.digits` (which registers the
TFDS builder 'digits') is imported when a TFDS dataset is opened (sources.py) or when an
attribute of it is first asked for here.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ImageFolderSource", "class_names", "digits"]


def __getattr__(name: str) -> Any:
  if name == "digits":
    return importlib.import_module("vit_jax.datasets.digits")
  if name in ("ImageFolderSource", "class_names"):
    return getattr(importlib.import_module("vit_jax.datasets.image_folder"), name)
  raise AttributeError(f"module 'vit_jax.datasets' has no attribute {name!r}")
