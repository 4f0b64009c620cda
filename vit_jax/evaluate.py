"""Eval-only CLI: any checkpoint the loader reads, any dataset, classification and few-shot.

  python -m vit_jax.evaluate --model ViT-B_16 --checkpoint PATH_OR_URI --dataset imagenet2012 \
      --split validation [--resolution 384] [--eval_pp resize|resize_crop|resize_small] \
      [--resize N | --crop_pct F] [--top_k 5] [--per_class] [--json out.json]
  python -m vit_jax.evaluate --workdir workdirs/quickstart --dataset digits --split test
  python -m vit_jax.evaluate --checkpoint ... --fewshot cifar100 --fewshot pets [--shots 1,5]
      (few-shot only: --no_classification; datasets by their short name in
      evaluators/runner.FEWSHOT_DATASETS, or NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT)

The checkpoint flags are vit_jax.artifacts' (a published file with --model, an AugReg name
or file name, a vit_jax export, or --workdir [--step] [--params]); --topk is the deprecated
spelling of --top_k. The evaluation itself is vit_jax.evaluators.offline: the model runs
sharded on every local device (data parallel), each split is covered exactly once, and the
results are printed as a table and written as JSON. For a fine-tuned AugReg file evaluated on
its fine-tuning dataset at its resolution, the published `adapt_final_test` of the AugReg
index is printed beside ours with the difference; beyond 0.5 points the likely causes are
named.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from vit_jax import artifacts, exits
from vit_jax.evaluators import offline


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.evaluate",
                              description="Evaluate a ViT/Mixer checkpoint: top-k accuracy, loss, "
                                          "ReaL, per-class and few-shot linear probes.")
  artifacts.add_flags(p, num_classes=False, resolution=True)
  p.add_argument("--dataset", default=None, help="TFDS name or image folder (default: the run's)")
  p.add_argument("--split", default=None, help="split, TFDS slicing allowed (default: test, "
                                               "the published one for AugReg files)")
  p.add_argument("--eval_pp", default="resize", choices=("resize", "resize_crop", "resize_small"))
  p.add_argument("--resize", type=int, default=None, help="resize side for *_crop / resize_small")
  p.add_argument("--crop_pct", type=float, default=None, help="resize = floor(crop / crop_pct)")
  p.add_argument("--batch_size", type=int, default=64, help="global eval batch")
  p.add_argument("--top_k", "--topk", dest="top_k", type=int, default=5,
                 help="top-k accuracy to report besides top-1 (--topk: deprecated spelling)")
  p.add_argument("--per_class", action="store_true", help="also per-class top-1 accuracy")
  p.add_argument("--no_classification", action="store_true", help="few-shot evaluators only")
  p.add_argument("--fewshot", action="append", default=[],
                 help="few-shot dataset: a short name (cifar100, pets, ...) or "
                      "NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT; repeatable")
  p.add_argument("--shots", default="1,5,10,25", help="few-shot shot counts")
  p.add_argument("--evals_config", default=None,
                 help="take the evaluators from a config file's config.evals "
                      "(FILE.py[:ARG], e.g. a run's experiment config) instead of the flags above")
  p.add_argument("--tfds_data_dir", default=None)
  p.add_argument("--augreg_index", default=None, help="AugReg index.csv (default: gs://...)")
  p.add_argument("--json", default=None, help="write the results here (default: stdout only)")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  args = p.parse_args(argv)
  artifacts.check_flags(p, args)
  if args.no_classification and not args.fewshot:
    p.error("--no_classification needs at least one --fewshot dataset")
  return args


def table(summary: dict) -> list[str]:
  """The printed lines: one per metric, then the comparison with the published figure."""
  lines = [f"{'metric':<34} value", "-" * 44]
  for key, value in summary["results"].items():
    shown = f"{value:.0f}" if key.endswith("examples") else (
        f"{value:.4f}" if key.endswith("loss") else f"{value:.2%}")
    lines.append(f"{key:<34} {shown}")
  return lines + list(summary["published"])


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = parse_args(argv)
  try:
    known = offline.augreg_defaults(args.checkpoint)  # An AugReg file names its model, size.
    weights = artifacts.resolve(
        model=args.model or known.get("model"), checkpoint_path=args.checkpoint,
        workdir=args.workdir, step=args.step, which=args.params,
        resolution=args.resolution or known.get("resolution"),
        require_head=not args.no_classification)
    summary = offline.evaluate(weights, args)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    return exits.report_input_error(e, verbose=args.verbose)
  print("\n".join(table(summary)))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
  return 0


def run() -> None:
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
