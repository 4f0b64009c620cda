"""Looking inside a ViT: attention probabilities and per-block features, attention rollout,
mean attention distance, position-embedding similarity and patch-embedding components.

Owns the numbers behind the ViT paper's analysis (Dosovitskiy et al. 2021, Figs. 6-7) and the
files of `python -m vit_jax.visualize` (which only parses flags and prints):
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
  * `compute(model, params, images, patch_px)`: all of these for a set of images, the numbers
    behind every file the inspection CLI writes.
  * `write_outputs(out_dir, figures, ...)`, `write_summary(...)`: those files — attention.npz,
    rollout.npy / .png, attention_distance.json / .png, posemb_similarity.png,
    embedding_filters.png (RGB stems), summary.json (python -m vit_jax.visualize --help).
The numbers are pure NumPy after the forward (no TensorFlow); only the writers plot, with
matplotlib (imported when they run).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from vit_jax import models
from vit_jax.models import transformer
from vit_jax.models.fields import patch_size


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
  stride = model._root_stride() if getattr(model, "resnet", None) is not None else 1  # pylint: disable=protected-access
  ph, pw = patch_size(model.patches)
  return ph * stride, pw * stride


def intermediates(model: Any, params: Any, images: np.ndarray) -> Intermediates:
  """Logits, per-block attention probabilities and token features of `images` (B, H, W, 3)."""
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


def _posemb(model: Any, params: Any, inter: Intermediates) -> np.ndarray:
  """(N, D) position embeddings of the patch tokens (learned or the fixed sin-cos ones)."""
  if getattr(model, "posemb", "learn") == "sincos2d":
    return np.asarray(transformer.posemb_sincos2d(*inter.grid, model.hidden_size)[0])
  posemb = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])[0]
  return posemb[inter.num_prefix_tokens:]


def compute(model: Any, params: Any, images: np.ndarray, patch_px: int,
            batch_size: int = 8) -> dict[str, Any]:
  """Every figure's numbers for `images` (B, H, W, 3); raises for models without attention.

  The images run `batch_size` at a time (all layers' (heads, T, T) probabilities of a batch
  are held at once); 'inter' keeps the first batch's, the distances average all images.
  Returns {'inter', 'rollout' (rows, cols), 'distances' (layers, heads) in pixels,
  'similarity' (N, N), 'components' (embedding_components, None for a hybrid's stem)}.
  """
  if isinstance(model, models.MlpMixer):
    raise ValueError("an MLP-Mixer has no attention: attention maps, rollout and attention "
                     "distance exist for ViT checkpoints only (analysis.intermediates still "
                     "gives a Mixer's per-block features).")
  first, total = None, 0.0
  for start in range(0, len(images), batch_size):
    inter = intermediates(model, params, images[start:start + batch_size])
    per_layer = np.stack([mean_attention_distance(a, inter.grid, patch_px,
                                                  inter.num_prefix_tokens)
                          for a in inter.attention])
    total = total + per_layer * len(inter.logits)
    if first is None:
      first = inter
  kernel = np.asarray(params["embedding"]["kernel"])
  return {
      "inter": first,
      "rollout": output_rollout_map(first)[0],
      "distances": total / len(images),                  # (layers, heads)
      "similarity": posemb_similarity(_posemb(model, params, first)),
      "components": embedding_components(kernel) if kernel.shape[2] == 3 else None,
  }


def _mosaic(similarity: np.ndarray, grid: tuple[int, int], gap: int = 1) -> np.ndarray:
  """One image of gh x gw tiles; tile (r, c) = similarity of patch (r, c) to every patch."""
  gh, gw = grid
  tiles = similarity.reshape(gh, gw, gh, gw)
  out = np.full((gh * (gh + gap) - gap, gw * (gw + gap) - gap), np.nan)
  for r in range(gh):
    for c in range(gw):
      out[r * (gh + gap):r * (gh + gap) + gh, c * (gw + gap):c * (gw + gap) + gw] = tiles[r, c]
  return out


def write_outputs(out_dir: str, figures: dict, image: np.ndarray, patch_px: int,
                  num_images: int) -> list[str]:
  """Writes every file but summary.json (module doc, vit_jax/visualize.py); returns their paths.

  `figures` is compute's result, `image` the first image (H, W, 3) in [-1, 1].
  """
  # Lazy: matplotlib is an optional dependency (setup.cfg's `inspect` extra), slow to import.
  # Figures of their own (no pyplot): the caller's matplotlib backend (a notebook's inline
  # one) is left as it is.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  def subplots(*shape, squeeze=True, **kwargs):
    fig = Figure(**kwargs)
    return fig, fig.subplots(*shape, squeeze=squeeze)
  os.makedirs(out_dir, exist_ok=True)
  inter = figures["inter"]
  paths = []

  def path(name):
    paths.append(os.path.join(out_dir, name))
    return paths[-1]

  arrays = {f"layer_{i}": a[0].astype(np.float32) for i, a in enumerate(inter.attention)}
  if inter.pool_attention is not None:
    arrays["map_head"] = inter.pool_attention[0].astype(np.float32)
  np.savez(path("attention.npz"), **arrays)
  np.save(path("rollout.npy"), figures["rollout"].astype(np.float32))

  shown = (np.clip(image, -1, 1) + 1) / 2
  fig, axes = subplots(1, 2, figsize=(8, 4.2))
  axes[0].imshow(shown)
  axes[0].set_title("input")
  axes[1].imshow(shown)
  axes[1].imshow(figures["rollout"], cmap="jet", alpha=0.5, interpolation="bilinear",
                 extent=(-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))
  axes[1].set_title("attention rollout of the output")
  for ax in axes:
    ax.set_xlabel("x [pixels]")
    ax.set_ylabel("y [pixels]")
  fig.tight_layout()
  fig.savefig(path("rollout.png"), dpi=100)

  d = figures["distances"]
  with open(path("attention_distance.json"), "w", encoding="utf-8") as f:
    json.dump({"unit": "pixels", "patch_size_pixels": patch_px, "grid": list(inter.grid),
               "images": num_images,
               "definition": "per head: sum over key patches of attention (renormalised over "
                             "patch keys) x distance between query and key patch centres, "
                             "averaged over query patches and images",
               "layers": [{"layer": i, "heads": [float(x) for x in row], "mean": float(row.mean())}
                          for i, row in enumerate(d)]}, f, indent=1)
  fig, ax = subplots(figsize=(6, 4.5))
  for h in range(d.shape[1]):
    ax.scatter(np.arange(d.shape[0]), d[:, h], s=14, label=f"head {h}")
  ax.set_xlabel("network depth (layer)")
  ax.set_ylabel("mean attention distance (pixels)")
  ax.set_title("Mean attention distance per head")
  ax.set_xticks(np.arange(d.shape[0]))
  ax.set_ylim(bottom=0)
  if d.shape[1] <= 16:
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path("attention_distance.png"), dpi=100)

  fig, ax = subplots(figsize=(6, 5.5))
  im = ax.imshow(_mosaic(figures["similarity"], inter.grid), cmap="viridis", vmin=-1, vmax=1)
  ax.set_title("Position embedding similarity\n(tile r, c: cosine similarity of patch (r, c) "
               "with every patch)", fontsize=9)
  ax.set_xlabel("input patch column")
  ax.set_ylabel("input patch row")
  gh, gw = inter.grid
  ax.set_xticks([c * (gw + 1) + gw / 2 - 0.5 for c in range(gw)], [str(c + 1) for c in range(gw)])
  ax.set_yticks([r * (gh + 1) + gh / 2 - 0.5 for r in range(gh)], [str(r + 1) for r in range(gh)])
  fig.colorbar(im, ax=ax, label="cosine similarity")
  fig.tight_layout()
  fig.savefig(path("posemb_similarity.png"), dpi=100)

  if figures["components"] is not None:
    comps, ratio = figures["components"]
    cols = min(7, len(comps))
    rows = -(-len(comps) // cols)
    fig, axes = subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
      ax.axis("off")
      if i < len(comps):
        pc = comps[i]
        ax.imshow((pc - pc.min()) / max(pc.max() - pc.min(), 1e-12), interpolation="nearest")
        ax.set_title(f"PC {i + 1}: {100 * ratio[i]:.1f}%", fontsize=6)
    fig.suptitle(f"RGB embedding filters: first {len(comps)} principal components "
                 "(% of variance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path("embedding_filters.png"), dpi=100)
  return paths


def write_summary(out_dir: str, figures: dict, images: Sequence[str], resolution: int,
                  patch_px: int, paths: Sequence[str]) -> str:
  """Writes summary.json (inputs, sizes and the files written beside it); returns its path."""
  d = figures["distances"]
  summary = {"images": list(images), "resolution": resolution, "patch_size_pixels": patch_px,
             "layers": int(d.shape[0]), "heads": int(d.shape[1]), "files": sorted(
                 os.path.basename(p) for p in paths)}
  if figures["components"] is None:
    summary["embedding_filters"] = "not written: the patch embedding reads ResNet features " \
                                   "(a hybrid), not RGB pixels"
  path = os.path.join(out_dir, "summary.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  return path
