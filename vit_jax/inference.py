"""Inference CLI: top-k ImageNet classes of images under a published or own checkpoint.

  python -m vit_jax.inference --model ViT-B_16 --checkpoint PATH_OR_URI IMAGE [IMAGE ...]
      [--num_classes N] [--resolution R] [--top_k 5] [--labels FILE] [--batch_size 16]
  python -m vit_jax.inference --checkpoint workdirs/quickstart/model.npz IMAGE ...  # an export
  python -m vit_jax.inference --workdir workdirs/quickstart [--step N] IMAGE ...    # a run

Own models: a file written by vit_jax.export carries its architecture in a sidecar
(model.npz -> model.json: fields, classes, class names, resolution), and --workdir reads the
run's config and checkpoint, so a modified architecture needs no --model. --model names a
published architecture (MODEL_CONFIGS) for published checkpoints.

PATH_OR_URI is anything vit_jax.checkpoint.load reads (local .npz/.safetensors, gs://,
http(s)://, hf://org/name) or an AugReg file name (its Hugging Face copy is used when one is
known, else gs://vit_models/augreg/...); the weights come from vit_jax.artifacts. Images are
resized to R x R and scaled to [-1, 1] (vit_jax.predict); R defaults to the resolution the
checkpoint was trained at (from its position-embedding grid). Class names: the shipped
ImageNet-1k / -21k lists for 1000 / 21843-class heads, or --labels FILE (one name per line,
optionally 'wnid<TAB>name'); otherwise class indices.
Output, per image: its path, then top_k lines '  <probability>  <label>  [<index>]'.
A folder argument stands for every image under it (recursively, sorted); images are read and
classified --batch_size at a time with a progress bar on stderr, and --output FILE.csv or
FILE.json writes the top-k of every image there instead of printing it (CSV: one row per
image, columns path, then label_i, index_i, probability_i for i = 1..k).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from vit_jax import artifacts, exits, predict


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.inference",
                              description="Top-k classes of images under a ViT/Mixer checkpoint.")
  artifacts.add_flags(p, num_classes=True, resolution=True)
  p.add_argument("--top_k", type=int, default=5)
  p.add_argument("--labels", default=None, help="class-name file (default: shipped ImageNet lists)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  p.add_argument("--output", default=None,
                 help="write the top-k of every image to this .csv or .json instead of printing")
  p.add_argument("images", nargs="+", help="image files (any format PIL reads) or folders")
  args = p.parse_args(argv)
  artifacts.check_flags(p, args)
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = parse_args(argv)
  try:
    weights = artifacts.from_args(args)
    num_classes = int(weights.params["head"]["kernel"].shape[-1])
    labels = (predict.load_labels(num_classes, args.labels)
              if args.labels or not weights.class_names else weights.class_names)
    if args.output and os.path.exists(args.output):
      raise FileExistsError(f"--output {args.output!r} already exists; choose another file.")
    paths = predict.expand_images(args.images)
    k = min(args.top_k, num_classes)
    rows = predict.predict_files(weights.model, weights.params, paths, weights.resolution,
                                 labels, k, args.batch_size)
    if args.output:
      predict.write_predictions(args.output, rows)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    return exits.report_input_error(e, verbose=args.verbose)
  if args.output:
    print(f"Wrote the top-{k} classes of {len(rows)} images to {args.output}.")
  else:
    for row in rows:
      print(predict.format_row(row))
  return 0


def run() -> None:
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
