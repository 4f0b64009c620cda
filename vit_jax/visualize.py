"""Inspection CLI: attention maps, rollout, mean attention distance, position-embedding
similarity and embedding filters of a ViT checkpoint, as in the ViT paper's Figs. 6-7.

  python -m vit_jax.visualize --checkpoint workdirs/quickstart/model.npz --out DIR IMAGE [...]
  python -m vit_jax.visualize --workdir workdirs/quickstart [--step N] --out DIR IMAGE [...]
  python -m vit_jax.visualize --model ViT-B_16 --checkpoint PATH_OR_URI --out DIR IMAGE [...]

The checkpoint flags are vit_jax.artifacts' (exports with their sidecar, run workdirs,
published files by --model; zero i21k heads and heads-free towers are fine here).
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
The numbers and the files come from vit_jax.analysis; plots need matplotlib.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from vit_jax import analysis, artifacts, exits, predict


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.visualize",
                              description="Attention maps, rollout, attention distance, position-"
                                          "embedding similarity and filters of a ViT.")
  artifacts.add_flags(p, num_classes=False, resolution=True)
  p.add_argument("--out", required=True, help="directory for the files (created if needed)")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  p.add_argument("images", nargs="+", help="image files (any format PIL reads)")
  args = p.parse_args(argv)
  artifacts.check_flags(p, args)
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = parse_args(argv)
  try:
    weights = artifacts.from_args(args, require_head=False)
    images = np.stack([predict.load_image(p, weights.resolution) for p in args.images])
    patch_px = analysis.patch_pixels(weights.model)[0]
    figures = analysis.compute(weights.model, weights.params, images, patch_px)
    paths = analysis.write_outputs(args.out, figures, images[0], patch_px, len(images))
    analysis.write_summary(args.out, figures, args.images, weights.resolution, patch_px, paths)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    return exits.report_input_error(e, verbose=args.verbose)
  d = figures["distances"]
  print(f"Wrote {len(paths) + 1} files to {args.out}: mean attention distance "
        f"{d[0].mean():.1f} px in layer 0, {d[-1].mean():.1f} px in layer {d.shape[0] - 1}.")
  return 0


def run() -> None:
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
