"""The maths of packed sequences (NaViT / NaFlex): several images, each at its own grid, in one
token sequence.

A packed model input is a dict (`batching.PACKED_KEYS`; built on the host by
datasets/packing.py):
  'patches'      (B, L, ph*pw*C) float   flattened patches in (ph, pw, C) order (the kernel's)
  'segment_ids'  (B, L) int32            0 = padding, k + 1 = image slot k of the sequence
  'coords'       (B, L, 2) int32         each patch's (row, col) in its own image's grid
  'image_grid'   (B, K, 2) int32         (rows, cols) of image slot k's grid; (0, 0) = empty
Owns what the modules need from it: the block-diagonal attention mask (no token attends to
another image's tokens; padding attends to padding), each token's place for the position
embedding (`TokenPositions`, sin-cos or the fixed-grid learned embedding interpolated at it
with the same aligned-corner weights as `resize.grid_axis_weights`), and pooling per image
(mean or first token of each segment). With these a packed forward gives each image the
numbers its own forward at its own grid gives (tests/models/test_packed.py).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.batching import PACKED_KEYS


def is_packed(inputs: Any) -> bool:
  """True for a packed-sequence input dict (module doc)."""
  return isinstance(inputs, Mapping) and "segment_ids" in inputs


def check_packed(inputs: Mapping[str, Any], patch_dim: int) -> None:
  """One ValueError naming what is wrong with a packed input's keys or shapes."""
  missing = [k for k in PACKED_KEYS if k not in inputs]
  if missing:
    raise ValueError(f"a packed input needs the keys {PACKED_KEYS}; {missing} are missing "
                     "(datasets/packing.py builds them).")
  b, length = inputs["segment_ids"].shape
  want = {"patches": (b, length, patch_dim), "coords": (b, length, 2)}
  for key, shape in want.items():
    if tuple(inputs[key].shape) != shape:
      raise ValueError(f"packed input {key!r} has shape {tuple(inputs[key].shape)}, expected "
                       f"{shape} (batch, sequence, patch pixels of this model's patch size).")
  if inputs["image_grid"].ndim != 3 or inputs["image_grid"].shape[0] != b:
    raise ValueError(f"packed input 'image_grid' must be (batch, images, 2), got "
                     f"{tuple(inputs['image_grid'].shape)}.")


class TokenPositions(NamedTuple):
  """Where each token of a sequence sits: (row, col) in its image, that image's grid (rows,
  cols), and whether it is a prefix (class) token; `num_prefix` prefix rows in a learned
  position-embedding parameter (1 with a class token)."""
  coords: jax.Array   # (B, T, 2) int32
  grid: jax.Array     # (B, T, 2) int32, (1, 1) for padding and prefix tokens
  prefix: jax.Array   # (B, T) bool
  num_prefix: int


def attention_mask(q_segments: jax.Array, kv_segments: jax.Array) -> jax.Array:
  """(B, 1, Q, K) bool: query i may attend key j iff they belong to the same segment."""
  return (q_segments[:, :, None] == kv_segments[:, None, :])[:, None]


def membership(segment_ids: jax.Array, num_images: int) -> jax.Array:
  """(B, T, K) float32 one-hot: token t belongs to image slot k (segment id k + 1)."""
  slots = jnp.arange(1, num_images + 1, dtype=segment_ids.dtype)
  return (segment_ids[:, :, None] == slots).astype(jnp.float32)


def token_grids(segment_ids: jax.Array, image_grid: jax.Array) -> jax.Array:
  """(B, T, 2): the grid of each token's image ((1, 1) for padding tokens)."""
  slot = jnp.clip(segment_ids - 1, 0, image_grid.shape[1] - 1)
  grids = jnp.take_along_axis(image_grid, slot[:, :, None], axis=1)
  return jnp.where((segment_ids > 0)[:, :, None], grids, 1)


def _axis_weights(index: jax.Array, size: jax.Array, n_param: int):
  """Aligned-corner linear interpolation of a grid axis of n_param rows at row `index` of an
  axis of `size` rows: (lo, hi, frac) as resize.grid_axis_weights computes them."""
  index, size = index.astype(jnp.float32), size.astype(jnp.float32)
  pos = jnp.where(size > 1, index * ((n_param - 1) / jnp.maximum(size - 1, 1)), 0.0)
  lo = jnp.clip(jnp.floor(pos), 0, n_param - 1)
  hi = jnp.minimum(lo + 1, n_param - 1)
  return lo.astype(jnp.int32), hi.astype(jnp.int32), pos - lo


def interpolate_at(table: jax.Array, param_grid: tuple[int, int],
                   positions: TokenPositions) -> jax.Array:
  """(B, T, D): a learned position embedding `table` (num_prefix + gh*gw, D), its grid part
  bilinearly interpolated (aligned corners) at each token's place in its own image's grid;
  prefix tokens get row 0 (zeros without a prefix row)."""
  gh, gw = param_grid
  p = positions.num_prefix
  cells = table[p:]
  r0, r1, fr = _axis_weights(positions.coords[..., 0], positions.grid[..., 0], gh)
  c0, c1, fc = _axis_weights(positions.coords[..., 1], positions.grid[..., 1], gw)

  def at(r, c):
    return jnp.take(cells, r * gw + c, axis=0)

  fr, fc = fr[..., None], fc[..., None]
  pe = ((1 - fr) * ((1 - fc) * at(r0, c0) + fc * at(r0, c1))
        + fr * ((1 - fc) * at(r1, c0) + fc * at(r1, c1)))
  prefix_row = table[0] if p else jnp.zeros_like(table[0])
  return jnp.where(positions.prefix[..., None], prefix_row, pe)


def sincos_at(positions: TokenPositions, features: int,
              temperature: float = 10_000.0) -> jax.Array:
  """(B, T, D) 2-D sin-cos embedding of each token's (row, col), the values of
  transformer.posemb_sincos2d for its own grid; zeros for prefix tokens."""
  if features % 4:
    raise ValueError(f"posemb='sincos2d' needs a width divisible by 4, got {features}.")
  quarter = features // 4
  omega = jnp.asarray(1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1)),
                      jnp.float32)
  y = positions.coords[..., 0].astype(jnp.float32)[..., None] * omega
  x = positions.coords[..., 1].astype(jnp.float32)[..., None] * omega
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=-1)
  return jnp.where(positions.prefix[..., None], 0.0, pe)


def mean_pool(tokens: jax.Array, member: jax.Array) -> jax.Array:
  """(B, K, D): the mean of each image's tokens (zeros for an empty slot)."""
  sums = jnp.einsum("btk,btd->bkd", member.astype(tokens.dtype), tokens)
  counts = jnp.maximum(jnp.sum(member, axis=1), 1.0)[..., None]
  return sums / counts.astype(tokens.dtype)


def first_pool(tokens: jax.Array, member: jax.Array) -> jax.Array:
  """(B, K, D): each image's first token in sequence order (its (0, 0) patch when none was
  dropped)."""
  first = jnp.argmax(member, axis=1)  # (B, K)
  return jnp.take_along_axis(tokens, first[:, :, None], axis=1)
