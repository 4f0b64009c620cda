"""The resize matrices shared by the checkpoint loader and the models (NumPy, no I/O).

* `bilinear_matrix` / `resize_matrix`: the image resize of the input pipeline ("bilinear",
  half-pixel centres, edges clamped: tf.image.resize / big_vision) as a matrix on pixels.
* `pi_resize_matrix(old_hw, new_hw)`: FlexiViT's pseudo-inverse resize of a patch-embedding
  kernel (Beyer et al. 2023, Sec. 3.4): new_kernel = pinv(B^T) kernel, B = resize_matrix.
* `grid_axis_weights`: the linear interpolation with aligned corners (scipy.ndimage.zoom
  order=1, as Google's vit_jax) that resizes position-embedding grids.
A loaded checkpoint (checkpoint/patch_embed.py, checkpoint/posemb.py) and a FlexiViT model
resizing its own parameters at another patch size (models/vit.py) use the same matrices, so
the two give the same numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of 1-D bilinear resizing with half-pixel centres, edges clamped."""
  coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  floor = np.floor(coords)
  frac = coords - floor
  lo = np.clip(floor.astype(int), 0, n_in - 1)
  hi = np.clip(floor.astype(int) + 1, 0, n_in - 1)
  weights = np.zeros((n_out, n_in))
  np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights


def resize_matrix(old_hw: Sequence[int], new_hw: Sequence[int]) -> np.ndarray:
  """(new_h*new_w, old_h*old_w) matrix B with vec(resize(x)) = B vec(x), row-major pixels."""
  return np.kron(bilinear_matrix(int(old_hw[0]), int(new_hw[0])),
                 bilinear_matrix(int(old_hw[1]), int(new_hw[1])))


def pi_resize_matrix(old_hw: Sequence[int], new_hw: Sequence[int]) -> np.ndarray:
  """(new_h*new_w, old_h*old_w) float64 matrix P with new_kernel = P @ kernel (pixels flattened
  row-major): exact for new_hw >= old_hw in both axes, least squares otherwise."""
  return np.linalg.pinv(resize_matrix(old_hw, new_hw).T)


def grid_axis_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) linear-interpolation matrix with aligned corners (scipy zoom order=1)."""
  coords = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lo = np.clip(np.floor(coords).astype(int), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = coords - lo
  weights = np.zeros((n_out, n_in))
  np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights
