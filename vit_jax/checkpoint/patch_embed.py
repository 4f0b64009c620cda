"""Patch-size change of a patch-embedding kernel: FlexiViT's pseudo-inverse (PI) resize.

Owns `resize_patch_kernel(kernel, new_hw)`. A (ph, pw, C, D) kernel trained on ph x pw
patches is mapped to new_hw patches so that, for a patch x and its bilinear resize
B x to new_hw, <B x, new_kernel> = <x, kernel> (Beyer et al. 2023, "FlexiViT", Sec. 3.4):
new_kernel = pinv(B^T) kernel. When new_hw is at least the old size in both axes B has
full column rank and the equality is exact; when it is smaller the solution is the
least-squares one. B is the image resize the input pipeline uses for "bilinear" (half-pixel
centres, no antialiasing, edges clamped: tf.image.resize / big_vision); the matrices are
models/resize.py's, which a FlexiViT model also uses to resize its kernel on the fly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vit_jax.models.resize import bilinear_matrix, pi_resize_matrix, resize_matrix  # noqa: F401


def resize_patch_kernel(kernel: np.ndarray, new_hw: Sequence[int]) -> np.ndarray:
  """(ph, pw, C, D) patch-embedding kernel -> (new_h, new_w, C, D) by the PI resize."""
  kernel = np.asarray(kernel)
  if kernel.ndim != 4:
    raise ValueError(f"expected a (ph, pw, channels, width) patch-embedding kernel, got shape "
                     f"{kernel.shape}.")
  old_hw, new_hw = tuple(kernel.shape[:2]), tuple(int(s) for s in new_hw)
  if old_hw == new_hw:
    return kernel
  flat = kernel.reshape(old_hw[0] * old_hw[1], -1).astype(np.float64)
  resized = pi_resize_matrix(old_hw, new_hw) @ flat       # (new, C*D)
  return resized.reshape(new_hw + kernel.shape[2:]).astype(kernel.dtype)
