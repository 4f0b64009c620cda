"""Packing images at their own aspect ratio into fixed-length token sequences (NaViT / NaFlex),
on the host in NumPy.

A pack holds the K images of K consecutive stream elements in one sequence of `seq_len`
tokens (the model input of models/packed.py: patches, segment ids, per-image coordinates and
grids). `pack_layout` picks each image's grid: its aspect ratio kept (to the patch), its token
budget its share `weight` of the sequence, all budgets scaled by the largest factor whose
grids (after token dropping) fit, then each image grown while the pack still has room. So no
image is dropped, every image has at least one token, the sum never exceeds `seq_len`, and
what is left over is rounding (`bench/packing.py` measures it). K = 1 is NaFlex (SigLIP 2):
one image per sequence at the largest grid of its aspect ratio within the budget.

Why fixed K per pack: a pack is then a unit of the one global stream (pack j = elements
[jK, (j+1)K)), so packs, like the image pipeline's batches, do not depend on the process
count and a resume is O(1) (datasets/pipeline.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from vit_jax.batching import PACKED_KEYS


def fit_grid(height: int, width: int, budget: int, patch: int) -> tuple[int, int]:
  """(rows, cols) of the largest patch grid with the aspect ratio of a height x width image
  and at most `budget` (>= 1) patches: the shorter side at its ideal patch count rounded down
  or up, the longer side that times the aspect ratio, rounded (each side at least 1)."""
  budget = max(int(budget), 1)
  transpose = height > width
  short, long = (width, height) if transpose else (height, width)
  ideal = short * math.sqrt(budget * patch * patch / max(height * width, 1)) / patch
  best = (1, min(max(1, round(long / max(short, 1))), budget))
  for s in {max(1, math.floor(ideal + 1e-6)), max(1, math.ceil(ideal - 1e-6))}:
    if s > budget:
      continue
    other = min(max(1, round(s * long / max(short, 1))), budget // s)
    if other >= 1 and (s * other, -abs(other / s - long / short)) > (
        best[0] * best[1], -abs(best[1] / best[0] - long / short)):
      best = (s, other)
  return (best[1], best[0]) if transpose else best


def kept_tokens(tokens: int, drop_rate: float) -> int:
  """Tokens of an image of `tokens` patches left after dropping `drop_rate` of them (>= 1)."""
  return max(1, tokens - math.floor(drop_rate * tokens))


def pack_layout(sizes: Sequence[tuple[int, int]], seq_len: int, patch: int, *,
                weights: Optional[Sequence[float]] = None, max_tokens: Optional[int] = None,
                drop_rate: float = 0.0) -> list[tuple[int, int]]:
  """The (rows, cols) grid of each (height, width) image of one pack (module doc).

  weights: each image's relative share of the sequence (default equal); max_tokens: a cap on
  one image's patches; drop_rate: the fraction of each image's patches that token dropping
  removes (the kept tokens must fit, so the grids may be larger than seq_len allows).
  """
  k = len(sizes)
  if not 1 <= k <= seq_len:
    raise ValueError(f"a pack of {k} images cannot fit a sequence of {seq_len} tokens (each "
                     "image takes at least one); raise config.naflex.seq_len or lower "
                     "config.naflex.images_per_pack.")
  weights = np.ones(k) if weights is None else np.asarray(weights, np.float64)
  cap = int(max_tokens or seq_len) if drop_rate == 0 else int(max_tokens or 10 * seq_len)

  def grid(i: int, budget: int) -> tuple[int, int]:
    return fit_grid(sizes[i][0], sizes[i][1], min(max(budget, 1), cap), patch)

  def used(grids) -> int:
    return sum(kept_tokens(r * c, drop_rate) for r, c in grids)

  def at(scale: float) -> list[tuple[int, int]]:
    return [grid(i, math.floor(scale * weights[i] * seq_len)) for i in range(k)]

  lo, hi = 0.0, 1.0 / (1.0 - min(drop_rate, 0.99))
  if used(at(hi)) <= seq_len:
    lo = hi
  else:
    for _ in range(50):
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if used(at(mid)) <= seq_len else (lo, mid)
  grids = at(lo)
  for i in range(k):  # grow each image into what rounding left over, while the pack fits
    area = grids[i][0] * grids[i][1]
    for budget in range(area + 1, cap + 1):
      bigger = grid(i, budget)
      if bigger[0] * bigger[1] <= area:
        continue
      trial = grids[:i] + [bigger] + grids[i + 1:]
      if used(trial) > seq_len:
        break
      grids, area = trial, bigger[0] * bigger[1]
  return grids


def patchify(image: np.ndarray, patch: int) -> np.ndarray:
  """(rows*cols, patch*patch*C) patches of an (rows*patch, cols*patch, C) image, row-major
  over the grid, each flattened in (ph, pw, C) order (the patch-embedding kernel's)."""
  h, w, c = image.shape
  rows, cols = h // patch, w // patch
  cells = image.reshape(rows, patch, cols, patch, c).transpose(0, 2, 1, 3, 4)
  return cells.reshape(rows * cols, patch * patch * c)


def grid_coords(rows: int, cols: int) -> np.ndarray:
  """(rows*cols, 2) int32 (row, col) of each patch, row-major."""
  row, col = np.mgrid[:rows, :cols]
  return np.stack([row.reshape(-1), col.reshape(-1)], axis=1).astype(np.int32)


def keep_indices(tokens: int, drop_rate: float, rng: Optional[np.random.Generator]
                 ) -> np.ndarray:
  """Sorted indices of the patches token dropping keeps (all when drop_rate is 0)."""
  keep = kept_tokens(tokens, drop_rate)
  if keep >= tokens or rng is None:
    return np.arange(tokens)
  return np.sort(rng.choice(tokens, keep, replace=False))


def pack(patches: Sequence[np.ndarray], coords: Sequence[np.ndarray],
         grids: Sequence[tuple[int, int]], seq_len: int, num_slots: int) -> dict:
  """One packed sequence (models/packed.py's keys): image i's patches (n_i, P) and coords
  (n_i, 2) one after the other as segment i + 1, zero padding (segment 0) to seq_len, and
  image_grid (num_slots, 2) with (0, 0) for unused slots."""
  total = sum(len(p) for p in patches)
  if total > seq_len or len(patches) > num_slots:
    raise ValueError(f"{len(patches)} images of {total} tokens do not fit a pack of "
                     f"{num_slots} images and {seq_len} tokens.")
  dim = patches[0].shape[1]
  out_patches = np.zeros((seq_len, dim), patches[0].dtype)
  segment_ids = np.zeros((seq_len,), np.int32)
  out_coords = np.zeros((seq_len, 2), np.int32)
  image_grid = np.zeros((num_slots, 2), np.int32)
  start = 0
  for i, (p, c) in enumerate(zip(patches, coords)):
    out_patches[start:start + len(p)] = p
    out_coords[start:start + len(p)] = c
    segment_ids[start:start + len(p)] = i + 1
    image_grid[i] = grids[i]
    start += len(p)
  return dict(zip(PACKED_KEYS, (out_patches, segment_ids, out_coords, image_grid)))


def padding_fraction(segment_ids: np.ndarray) -> float:
  """The fraction of a batch's tokens that are padding (segment 0)."""
  return float(np.mean(np.asarray(segment_ids) == 0))
