"""Looking inside a ViT: attention probabilities and per-block features, attention rollout,
mean attention distance, position-embedding similarity and patch-embedding components.

Owns the numbers behind the ViT paper's analysis (Dosovitskiy et al. 2021, Figs. 6-7) and
`python -m vit_jax.visualize` (which only does I/O and plots):
  * `intermediates(model, params, images)`: logits plus, per block, the attention
    probabilities (batch, heads, T, T) the forward multiplied with the values and the block's
    output tokens (Mixer: features only); from the modules' Flax `sow` into 'intermediates'
    (no parameter changes; scanned and per-layer layouts, hybrids, every classifier).
  * `rollout(attentions)`: Abnar & Zuidema (2020) with the residual: per layer
    0.5 * mean_heads(A) + 0.5 * I, multiplied from the first layer to the last.
  * `mean_attention_distance(attention, grid, patch_px)`: per head, the attention-weighted
    distance in pixels between query and key patch centres (patch tokens only, the weights
    renormalised over the patch keys), averaged over queries and images.
  * `posemb_similarity(posemb)`: cosine similarity of every patch's embedding with all others.
  * `embedding_components(kernel, k)`: principal components of the patch-embedding filters.
Pure NumPy after the forward; no TensorFlow, no plotting.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np


@dataclasses.dataclass
class Intermediates:
  """What one forward exposes for inspection (numpy, batch first)."""
  logits: np.ndarray
  attention: list[np.ndarray]          # per block: (batch, heads, T, T) float32, ViT only
  features: list[np.ndarray]           # per block: (batch, T, D) block output tokens
  pool_attention: Optional[np.ndarray]  # MAP head: (batch, heads, 1, T); else None
  num_prefix_tokens: int               # class tokens before the patch tokens (0 or 1)
  grid: tuple[int, int]                # (rows, cols) of the patch grid


def _chunks_to_batch(values: tuple, axis: int) -> np.ndarray:
  """A sown tuple (one entry per batch chunk the model ran) -> one array over the batch."""
  return np.concatenate([np.asarray(v) for v in values], axis=axis)


def _blocks(tree: dict, prefix: str, name: str) -> list[np.ndarray]:
  """Per-block arrays of `name` from the 'intermediates' tree (scanned or per-layer)."""
  if "encoderblock" in tree:  # nn.scan: leading layer axis, then batch (chunks on axis 1).
    node = tree["encoderblock"]
    node = node.get("MultiHeadDotProductAttention_0", {}) if name == "attention_weights" else node
    stacked = _chunks_to_batch(node[name], axis=1)
    return [stacked[i] for i in range(stacked.shape[0])]
  out, i = [], 0
  while f"{prefix}{i}" in tree:
    node = tree[f"{prefix}{i}"]
    if name == "attention_weights":
      node = node["MultiHeadDotProductAttention_0"]
    out.append(_chunks_to_batch(node[name], axis=0))
    i += 1
  return out


def patch_pixels(model: Any) -> tuple[int, int]:
  """(rows, cols) in input pixels of one patch token: patch size x a hybrid root's stride."""
  from vit_jax.models.fields import patch_size  # pylint: disable=g-import-not-at-top
  stride = model._root_stride() if getattr(model, "resnet", None) is not None else 1  # pylint: disable=protected-access
  ph, pw = patch_size(model.patches)
  return ph * stride, pw * stride


def intermediates(model: Any, params: Any, images: np.ndarray) -> Intermediates:
  """Logits, per-block attention probabilities and token features of `images` (B, H, W, 3)."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import models  # pylint: disable=g-import-not-at-top
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images of shape (batch, height, width, 3), got {images.shape}.")
  mixer = isinstance(model, models.MlpMixer)
  logits, state = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False,
                                                   mutable=["intermediates"]))(params, images)
  tree = jax.device_get(state).get("intermediates", {})
  rows, cols = patch_pixels(model)
  grid = (images.shape[1] // rows, images.shape[2] // cols)
  if mixer:
    return Intermediates(np.asarray(logits), [], _blocks(tree, "MixerBlock_", "features"), None,
                         0, grid)
  encoder = tree.get("Transformer", {})
  pool = None
  if "MAPHead_0" in tree:
    pool = _chunks_to_batch(tree["MAPHead_0"]["MultiHeadDotProductAttention_0"]
                            ["attention_weights"], axis=0)
  prefix = 1 if model.classifier in ("token", "token_unpooled") else 0
  return Intermediates(np.asarray(logits), _blocks(encoder, "encoderblock_", "attention_weights"),
                       _blocks(encoder, "encoderblock_", "features"), pool, prefix, grid)


def rollout(attentions: Sequence[np.ndarray], residual: float = 0.5) -> np.ndarray:
  """Joint attention (batch, T, T) from per-layer (batch, heads, T, T) probabilities.

  Each layer's heads are averaged and mixed with the identity for the residual stream,
  (1 - residual) * A + residual * I (rows still sum to 1), then layers compose as
  A_L ... A_2 A_1: row q says how much output token q draws on each input token.
  """
  if not attentions:
    raise ValueError("no attention layers to roll out (an MLP-Mixer has none).")
  joint = None
  for a in attentions:
    a = np.asarray(a, np.float64).mean(axis=1)
    a = (1.0 - residual) * a + residual * np.eye(a.shape[-1])[None]
    joint = a if joint is None else a @ joint
  return joint


def output_rollout_map(inter: Intermediates, residual: float = 0.5) -> np.ndarray:
  """(batch, rows, cols) rollout from what the classifier reads back to the patches.

  Class token: its row of the joint attention. MAP head: the probe's head-averaged attention
  over the tokens times the joint attention. gap (and unpooled): the mean of all rows.
  """
  joint = rollout(inter.attention, residual)
  if inter.num_prefix_tokens:
    weights = joint[:, 0]
  elif inter.pool_attention is not None:
    probe = np.asarray(inter.pool_attention, np.float64).mean(axis=1)[:, 0]  # (batch, T)
    weights = np.einsum("bt,btk->bk", probe, joint)
  else:
    weights = joint.mean(axis=1)
  patches = weights[:, inter.num_prefix_tokens:]
  return patches.reshape((patches.shape[0],) + tuple(inter.grid))


def patch_distances(grid: Sequence[int], patch_px: float) -> np.ndarray:
  """(N, N) Euclidean distances in pixels between patch centres of a row-major grid."""
  rows, cols = np.divmod(np.arange(int(grid[0]) * int(grid[1])), int(grid[1]))
  dr, dc = rows[:, None] - rows[None], cols[:, None] - cols[None]
  return float(patch_px) * np.sqrt(dr ** 2 + dc ** 2)


def mean_attention_distance(attention: np.ndarray, grid: Sequence[int], patch_px: float,
                            num_prefix_tokens: int = 0) -> np.ndarray:
  """(heads,) mean attention distance in pixels of one layer's (batch, heads, T, T) weights."""
  a = np.asarray(attention, np.float64)[..., num_prefix_tokens:, num_prefix_tokens:]
  n = int(grid[0]) * int(grid[1])
  if a.shape[-1] != n:
    raise ValueError(f"attention over {a.shape[-1]} patch tokens does not match the "
                     f"{grid[0]}x{grid[1]} grid.")
  a = a / np.maximum(a.sum(axis=-1, keepdims=True), 1e-12)
  per_query = (a * patch_distances(grid, patch_px)).sum(axis=-1)  # (batch, heads, queries)
  return per_query.mean(axis=(0, 2))


def posemb_similarity(posemb: np.ndarray) -> np.ndarray:
  """(N, N) cosine similarity between the rows of an (N, D) position embedding."""
  p = np.asarray(posemb, np.float64)
  p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
  return p @ p.T


def embedding_components(kernel: np.ndarray, k: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """Top-k principal components of the D patch-embedding filters of a (ph, pw, C, D) kernel.

  Returns ((k, ph, pw, C) components, (k,) explained-variance ratios): PCA of the D filters
  (each a ph*pw*C vector), centred, by SVD; signs as the SVD gives them.
  """
  kernel = np.asarray(kernel, np.float64)
  ph, pw, c, d = kernel.shape
  filters = kernel.reshape(ph * pw * c, d).T            # (D, ph*pw*C)
  centred = filters - filters.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  k = min(k, vt.shape[0])
  variance = s ** 2
  ratio = variance[:k] / max(variance.sum(), 1e-300)
  return vt[:k].reshape(k, ph, pw, c), ratio
