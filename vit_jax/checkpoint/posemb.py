"""Position-embedding resizing for fine-tuning at another resolution or patch grid.

Owns `interpolate_posemb`: bilinear interpolation of the (gh, gw) grid part of a
(1, prefix + gh*gw, D) position embedding, prefix (class-token) rows kept as they
are. The sampling is the one of scipy.ndimage.zoom(order=1) that Google's
vit_jax uses: output index o maps to input coordinate o * (n_in - 1) / (n_out - 1)
(corners aligned), each grid axis interpolated linearly in turn.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from vit_jax.models.resize import grid_axis_weights


def square_grid(num_tokens: int, what: str = "position embedding") -> tuple[int, int]:
  """(g, g) for a perfect-square token count; a clear error otherwise."""
  side = math.isqrt(num_tokens)
  if side * side != num_tokens:
    raise ValueError(f"the {what} has {num_tokens} grid tokens, which is not a square grid; pass "
                     "the grid explicitly (old_grid=(gh, gw) / new_grid=(gh, gw)).")
  return side, side


def resize_grid(grid: np.ndarray, new_grid: Sequence[int]) -> np.ndarray:
  """(gh, gw, D) -> (new_gh, new_gw, D), bilinear with aligned corners, float64 maths."""
  wh = grid_axis_weights(grid.shape[0], int(new_grid[0]))
  ww = grid_axis_weights(grid.shape[1], int(new_grid[1]))
  out = np.einsum("ah,hwd->awd", wh, grid.astype(np.float64))
  return np.einsum("bw,awd->abd", ww, out)


def interpolate_posemb(posemb: np.ndarray, new_shape_or_grid: Union[Sequence[int], int], *,
                       num_prefix_tokens: int, old_grid: Optional[Sequence[int]] = None
                       ) -> np.ndarray:
  """Resizes a (1, prefix + gh*gw, D) position embedding to a new grid; prefix rows kept.

  new_shape_or_grid: the target posemb shape (1, N, D) (its grid must then be square),
  a grid (gh, gw), or a side length g. old_grid: the source grid when it is not square.
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"expected a position embedding of shape (1, tokens, width), got "
                     f"{posemb.shape}.")
  prefix, grid_part = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  if isinstance(new_shape_or_grid, int):
    new_grid = (new_shape_or_grid, new_shape_or_grid)
  elif len(new_shape_or_grid) == 3:
    new_grid = square_grid(int(new_shape_or_grid[1]) - num_prefix_tokens, "target")
  else:
    new_grid = tuple(int(g) for g in new_shape_or_grid)
  old_grid = tuple(old_grid) if old_grid else square_grid(grid_part.shape[0], "checkpoint's")
  if old_grid[0] * old_grid[1] != grid_part.shape[0]:
    raise ValueError(f"old_grid={old_grid} does not match the {grid_part.shape[0]} grid tokens "
                     "of the position embedding.")
  grid = grid_part.reshape(old_grid[0], old_grid[1], -1)
  resized = resize_grid(grid, new_grid).reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix, resized.astype(posemb.dtype)], axis=1)
