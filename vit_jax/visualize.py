"""Inspection CLI: attention maps, rollout, mean attention distance, position-embedding
similarity and embedding filters of a ViT checkpoint, as in the ViT paper's Figs. 6-7.

  python -m vit_jax.visualize --checkpoint workdirs/quickstart/model.npz --out DIR IMAGE [...]
  python -m vit_jax.visualize --workdir workdirs/quickstart [--step N] --out DIR IMAGE [...]
  python -m vit_jax.visualize --model ViT-B_16 --checkpoint PATH_OR_URI --out DIR IMAGE [...]

The checkpoint flags are those of vit_jax.inference (exports with their sidecar, run
workdirs, published files by --model; zero i21k heads and heads-free towers are fine here).
Images are resized to the model's resolution and scaled to [-1, 1]. Written into --out:
  attention.npz            layer_{i}: float32 (heads, T, T) softmax probabilities, first image
                           (T = tokens incl. the class token); map_head: the MAP probe's, if any
  rollout.npy, rollout.png the output's attention rollout over the patch grid (first image),
                           and over that image
  attention_distance.json, attention_distance.png
                           mean attention distance [pixels] per layer and head, all images
  posemb_similarity.png    cosine similarity of each patch's position embedding with all others
  embedding_filters.png    top principal components of the patch-embedding filters (RGB stem)
  summary.json             what was computed from what
The numbers come from vit_jax.analysis; plots need matplotlib.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from vit_jax import analysis


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.visualize",
                              description="Attention maps, rollout, attention distance, position-"
                                          "embedding similarity and filters of a ViT.")
  p.add_argument("--model", default=None,
                 help="MODEL_CONFIGS name of a published checkpoint's architecture")
  p.add_argument("--checkpoint", default=None,
                 help="path, gs://, http(s)://, hf:// or an AugReg file name; or a vit_jax export")
  p.add_argument("--workdir", default=None, help="a vit_jax run directory (its checkpoint)")
  p.add_argument("--step", type=int, default=None, help="with --workdir: checkpoint step")
  p.add_argument("--params", choices=("raw", "ema"), default="raw",
                 help="with --workdir: the raw weights or their moving average (config.ema)")
  p.add_argument("--resolution", type=int, default=None,
                 help="input size (default: the checkpoint's training resolution)")
  p.add_argument("--out", required=True, help="directory for the files (created if needed)")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  p.add_argument("images", nargs="+", help="image files (any format PIL reads)")
  args = p.parse_args(argv)
  if (args.checkpoint is None) == (args.workdir is None):
    p.error("pass exactly one of --checkpoint (a file or URI) and --workdir (a run directory)")
  args.num_classes = None
  return args


def _posemb(model, params, inter: analysis.Intermediates) -> np.ndarray:
  """(N, D) position embeddings of the patch tokens (learned or the fixed sin-cos ones)."""
  if getattr(model, "posemb", "learn") == "sincos2d":
    from vit_jax.models import transformer  # pylint: disable=g-import-not-at-top
    return transformer.posemb_sincos2d(*inter.grid, model.hidden_size)[0]
  posemb = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])[0]
  return posemb[inter.num_prefix_tokens:]


def compute(model, params, images: np.ndarray, patch_px: int, batch_size: int = 8) -> dict:
  """Every figure's numbers for `images` (B, H, W, 3); raises for models without attention.

  The images run `batch_size` at a time (all layers' (heads, T, T) probabilities of a batch
  are held at once); 'inter' keeps the first batch's, the distances average all images.
  """
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  if isinstance(model, models.MlpMixer):
    raise ValueError("an MLP-Mixer has no attention: attention maps, rollout and attention "
                     "distance exist for ViT checkpoints only (analysis.intermediates still "
                     "gives a Mixer's per-block features).")
  first, total = None, 0.0
  for start in range(0, len(images), batch_size):
    inter = analysis.intermediates(model, params, images[start:start + batch_size])
    per_layer = np.stack([analysis.mean_attention_distance(a, inter.grid, patch_px,
                                                           inter.num_prefix_tokens)
                          for a in inter.attention])
    total = total + per_layer * len(inter.logits)
    if first is None:
      first = inter
  kernel = np.asarray(params["embedding"]["kernel"])
  return {
      "inter": first,
      "rollout": analysis.output_rollout_map(first)[0],
      "distances": total / len(images),                  # (layers, heads)
      "similarity": analysis.posemb_similarity(_posemb(model, params, first)),
      "components": analysis.embedding_components(kernel) if kernel.shape[2] == 3 else None,
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
  """Writes the files listed in the module doc; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
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
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
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
  plt.close(fig)

  d = figures["distances"]
  with open(path("attention_distance.json"), "w", encoding="utf-8") as f:
    json.dump({"unit": "pixels", "patch_size_pixels": patch_px, "grid": list(inter.grid),
               "images": num_images,
               "definition": "per head: sum over key patches of attention (renormalised over "
                             "patch keys) x distance between query and key patch centres, "
                             "averaged over query patches and images",
               "layers": [{"layer": i, "heads": [float(x) for x in row], "mean": float(row.mean())}
                          for i, row in enumerate(d)]}, f, indent=1)
  fig, ax = plt.subplots(figsize=(6, 4.5))
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
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 5.5))
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
  plt.close(fig)

  if figures["components"] is not None:
    comps, ratio = figures["components"]
    cols = min(7, len(comps))
    rows = -(-len(comps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.6), squeeze=False)
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
    plt.close(fig)
  return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  from vit_jax import exits, inference  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  try:
    model, params, resolution, _ = inference.load_model(args, require_head=False)
    images = np.stack([inference.load_image(p, resolution) for p in args.images])
    patch_px = analysis.patch_pixels(model)[0]
    figures = compute(model, params, images, patch_px)
    paths = write_outputs(args.out, figures, images[0], patch_px, len(images))
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    status = exits.report(e, verbose=args.verbose)
    return exits.BAD_INPUT if isinstance(e, OSError) and status == exits.ERROR else status
  d = figures["distances"]
  summary = {"images": list(args.images), "resolution": resolution, "patch_size_pixels": patch_px,
             "layers": int(d.shape[0]), "heads": int(d.shape[1]), "files": sorted(
                 os.path.basename(p) for p in paths)}
  if figures["components"] is None:
    summary["embedding_filters"] = "not written: the patch embedding reads ResNet features " \
                                   "(a hybrid), not RGB pixels"
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(f"Wrote {len(paths) + 1} files to {args.out}: mean attention distance "
        f"{d[0].mean():.1f} px in layer 0, {d[-1].mean():.1f} px in layer {d.shape[0] - 1}.")
  return 0


def run() -> None:
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
