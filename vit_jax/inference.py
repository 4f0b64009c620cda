"""Inference CLI: top-k ImageNet classes of images under a published or own checkpoint.

  python -m vit_jax.inference --model ViT-B_16 --checkpoint PATH_OR_URI IMAGE [IMAGE ...]
      [--num_classes N] [--resolution R] [--top_k 5] [--labels FILE] [--batch_size 16]
  python -m vit_jax.inference --checkpoint workdirs/quickstart/model.npz IMAGE ...  # an export
  python -m vit_jax.inference --workdir workdirs/quickstart [--step N] IMAGE ...    # a run
  python -m vit_jax.inference --model LiT-B16B --checkpoint gs://vit_models/lit/LiT-B16B.npz \
      --texts "a cat,a dog,a car" IMAGE ...  # LiT: the probability of each text, per image

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
from vit_jax.datasets import text
from vit_jax.models import lit
from vit_jax.models.fields import patch_size


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.inference",
                              description="Top-k classes of images under a ViT/Mixer checkpoint.")
  artifacts.add_flags(p, num_classes=True, resolution=True, vocab=True)
  p.add_argument("--top_k", type=int, default=5)
  p.add_argument("--labels", default=None, help="class-name file (default: shipped ImageNet lists)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  p.add_argument("--output", default=None,
                 help="write the top-k of every image to this .csv or .json instead of printing")
  p.add_argument("--texts", default=None,
                 help="an image-text (LiT) model: rank these comma-separated texts for each "
                      "image, e.g. \"a cat,a dog\"")
  p.add_argument("--keep_aspect", action="store_true",
                 help="keep each image's aspect ratio instead of resizing it to R x R: one "
                      "packed sequence per image of at most (R / patch)^2 patches (a model "
                      "with a fixed-grid position embedding: config.naflex, FlexiViT, "
                      "progressive resolution)")
  p.add_argument("images", nargs="+", help="image files (any format PIL reads) or folders")
  args = p.parse_args(argv)
  artifacts.check_flags(p, args)
  return args


_TEXTS_ON_CLASSIFIER = ("--texts is for image-text (LiT) models; this checkpoint is an image "
                        "classifier (drop --texts, or pass --model LiT-...).")


def _texts(value: Optional[str]) -> list[str]:
  texts = [t.strip() for t in (value or "").split(",") if t.strip()]
  if not texts:
    raise ValueError("an image-text (LiT) model ranks texts: pass --texts \"a cat,a dog\" "
                     "(comma-separated).")
  return texts


def _tokenizer(weights: artifacts.Weights):
  """The model's tokenizer on its vocabulary (--vocab, else the file beside the weights)."""
  if not weights.vocab:
    raise ValueError("no vocabulary beside the weights (X.txt / X.model for X.npz): pass "
                     "--vocab FILE.")
  return text.model_tokenizer(weights.model.pp, weights.vocab)


def _keep_aspect_patch(weights: artifacts.Weights, keep_aspect: bool) -> Optional[int]:
  """The patch size images are packed at with --keep_aspect (None without it)."""
  if not keep_aspect:
    return None
  patches = getattr(weights.model, "patches", None)
  if patches is None or lit.is_lit(weights.model):
    raise ValueError("--keep_aspect packs images for a ViT classifier with patches; this "
                     "model has none (a Mixer, a hybrid or an image-text model).")
  return patch_size(patches)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = parse_args(argv)
  try:
    if args.texts and args.model and not lit.is_lit(args.model):
      raise ValueError(_TEXTS_ON_CLASSIFIER)
    weights = artifacts.from_args(args)
    apply = None
    if lit.is_lit(weights.model):  # An image-text model: rank the texts.
      labels = _texts(args.texts)
      apply = predict.zero_shot_apply(weights.model, predict.text_embeddings(
          weights.model, weights.params, _tokenizer(weights)(labels)))
      num_classes = len(labels)
    elif args.texts:
      raise ValueError(_TEXTS_ON_CLASSIFIER)
    else:
      num_classes = int(weights.params["head"]["kernel"].shape[-1])
      labels = (predict.load_labels(num_classes, args.labels)
                if args.labels or not weights.class_names else weights.class_names)
    if args.output and os.path.exists(args.output):
      raise FileExistsError(f"--output {args.output!r} already exists; choose another file.")
    paths = predict.expand_images(args.images)
    k = min(args.top_k, num_classes)
    rows = predict.predict_files(weights.model, weights.params, paths, weights.resolution,
                                 labels, k, args.batch_size, apply,
                                 _keep_aspect_patch(weights, args.keep_aspect))
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
