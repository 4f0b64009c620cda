"""Eval-only CLI: any checkpoint the loader reads, any dataset, classification, few-shot and
zero-shot (image-text models).

  python -m vit_jax.evaluate --model ViT-B_16 --checkpoint PATH_OR_URI --dataset imagenet2012 \
      --split validation [--resolution 384] [--eval_pp resize|resize_crop|resize_small] \
      [--resize N | --crop_pct F] [--top_k 5] [--per_class] [--json out.json]
  python -m vit_jax.evaluate --workdir workdirs/quickstart          # the run's own evaluation
  python -m vit_jax.evaluate --checkpoint ... --fewshot cifar100 --fewshot pets [--shots 1,5]
      [--fewshot_seeds 3] [--fewshot_l2_reg 1024]
      (few-shot only: --no_classification; datasets by their short name in
      evaluators/runner.FEWSHOT_DATASETS, or NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT)
  python -m vit_jax.evaluate --workdir W --evals=half:classification:split=test[:50%],topk=2
  python -m vit_jax.evaluate --model LiT-B16B --checkpoint gs://vit_models/lit/LiT-B16B.npz \
      --zeroshot cifar100 [--zeroshot imagenette] [--split test] [--vocab FILE] \
      [--zeroshot_classnames FILE] [--zeroshot_templates FILE] [--retrieval CAPTION_DATASET]
      (an image-text model, classified zero-shot: class names from TFDS or the folder's class
      folders, or one per line of FILE; prompt templates with '{}' one per line; the
      vocabulary published beside the weights unless --vocab)

With --workdir every eval setting is the run's (config.json): dataset, eval_split, pp.eval,
pp.resize, pp.crop_pct, the resolution, batch_eval and its evaluators (config.evals; its
default classification evaluator, reported as 'classification/...', when it has none), so
the run is re-scored as its own evaluator scored it. A flag given changes that setting (the
flags default to unset) and the printed settings mark it 'flag' with the run's value:
--eval_pp/--resize/--crop_pct/--batch_size replace the run's (its entries' pp too),
--top_k/--per_class apply to every classification evaluator, --shots/--fewshot_seeds/
--fewshot_l2_reg to every few-shot one (mean ± std over the seeds; a fixed ridge strength
instead of the held-out choice), --fewshot adds a few-shot evaluator, --no_classification
drops the classification ones, and --evals (NAME:TYPE[:KEY=VALUE,...], repeatable; syntax in
vit_jax/evaluators/command_line.py) or --evals_config (a file's config.evals) evaluate with
those evaluators instead of the run's. Without a workdir the settings are the defaults.

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
from vit_jax.evaluators import command_line, offline


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.evaluate",
                              description="Evaluate a ViT/Mixer checkpoint: top-k accuracy, loss, "
                                          "ReaL, per-class and few-shot linear probes.")
  artifacts.add_flags(p, num_classes=False, resolution=True, vocab=True)
  p.add_argument("--dataset", default=None, help="TFDS name or image folder (default: the run's)")
  p.add_argument("--split", default=None, help="split, TFDS slicing allowed (default: the run's "
                                               "eval_split, the published one for AugReg files, "
                                               "else test)")
  p.add_argument("--patch_size", type=int, default=None,
                 help="a FlexiViT model (trained with config.flexi.patch_sizes): evaluate it at "
                      "this patch size (default: the run's entries', else its base patch size)")
  p.add_argument("--keep_aspect", action="store_true",
                 help="keep each image's aspect ratio: one image per packed sequence at the "
                      "token budget of --resolution, (resolution / patch)^2 (a model with a "
                      "fixed-grid position embedding: FlexiViT, progressive resolution; a "
                      "packed-sequence run, config.naflex, is always evaluated so)")
  p.add_argument("--eval_pp", default=None, choices=("resize", "resize_crop", "resize_small"),
                 help="eval preprocessing (default: the run's pp.eval, else resize)")
  p.add_argument("--resize", type=int, default=None,
                 help="resize side for *_crop / resize_small (default: the run's pp.resize)")
  p.add_argument("--crop_pct", type=float, default=None,
                 help="resize = floor(crop / crop_pct) (default: the run's pp.crop_pct)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="global eval batch (default: the run's batch_eval, else 64)")
  p.add_argument("--top_k", "--topk", dest="top_k", type=int, default=None,
                 help="k of the top-k accuracy, on every classification evaluator (default: "
                      "the run's, else 5; --topk: deprecated spelling)")
  p.add_argument("--per_class", action=argparse.BooleanOptionalAction, default=None,
                 help="also per-class top-1 accuracy (default: the run's, else off)")
  p.add_argument("--no_classification", action="store_true",
                 help="drop the classification evaluators (few-shot ones only)")
  p.add_argument("--fewshot", action="append", default=[],
                 help="add a few-shot evaluator on this dataset: a short name (cifar100, "
                      "pets, ...) or NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT; repeatable")
  p.add_argument("--shots", default=None,
                 help="few-shot shot counts, e.g. 1,5,10,25 (default: the run's, else those)")
  p.add_argument("--fewshot_seeds", type=int, default=None,
                 help="few-shot: mean ± std over this many seeds of the shots (default: the "
                      "run's num_seeds, else 1)")
  p.add_argument("--fewshot_l2_reg", type=float, default=None,
                 help="few-shot: this fixed ridge strength (big_vision: 1024) instead of the "
                      "held-out choice from l2_regs (default: the run's l2_reg, else chosen)")
  p.add_argument("--zeroshot", action="append", default=[],
                 help="an image-text (LiT) model: classify this dataset zero-shot (TFDS name "
                      "or image folder); repeatable")
  p.add_argument("--zeroshot_classnames", default=None,
                 help="zero-shot: class names, one per line in label order (default: the "
                      "dataset's)")
  p.add_argument("--zeroshot_templates", default=None,
                 help="zero-shot: prompt templates with '{}', one per line, or a shipped set: "
                      "clip_paper (CLIP's 80 ImageNet prompts) or clip_best (default: "
                      "'a photo of a {}.')")
  p.add_argument("--retrieval", action="append", default=[],
                 help="an image-text model: image <-> text recall@1/5/10 on this caption "
                      "dataset (TFDS coco_captions, a captions.jsonl / .csv folder, .tar "
                      "shards); repeatable")
  p.add_argument("--evals", action="append", default=[],
                 help=f"evaluate with this evaluator instead of the run's: {command_line.SYNTAX} "
                      "(vit_jax/evaluators/command_line.py); repeatable")
  p.add_argument("--evals_config", default=None,
                 help="take the evaluators from a config file's config.evals "
                      "(FILE.py[:ARG], e.g. a run's experiment config) instead of the run's")
  p.add_argument("--tfds_data_dir", default=None)
  p.add_argument("--augreg_index", default=None, help="AugReg index.csv (default: gs://...)")
  p.add_argument("--json", default=None, help="write the results here (default: stdout only)")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  args = p.parse_args(argv)
  artifacts.check_flags(p, args)
  return args


def table(summary: dict) -> list[str]:
  """The printed lines: the settings (marking those a flag changed from the run's), one line
  per metric (few-shot means over seeds as mean ± std), then the comparison with the
  published figure."""
  overridden = summary.get("overridden") or {}
  lines = [f"settings from {summary.get('settings_from', 'the defaults')}"
           + (" except those marked 'flag'" if overridden else "")]
  shown = {"dataset": summary["dataset"], "split": summary["split"],
           "resolution": summary["resolution"], "batch_size": summary.get("batch_size"),
           "pp.eval": summary["eval_pp"], "pp.resize": summary["resize"],
           "pp.crop_pct": summary["crop_pct"],
           "evaluators": ", ".join(f"{name} ({entry.get('type')})" for name, entry in
                                   (summary.get("evaluators") or {}).items())}
  width = max([16] + [len(k) for k in overridden])
  for key, value in shown.items():
    mark = (f"   flag (the run's: {overridden[key]['run']})" if key in overridden else "")
    lines.append(f"  {key:<{width}} {value}{mark}")
  for key in sorted(set(overridden) - set(shown)):
    lines.append(f"  {key:<{width}} {overridden[key]['flag']}   flag (the run's: "
                 f"{overridden[key]['run']})")
  lines += [f"{'metric':<34} value", "-" * 44]
  results = summary["results"]
  for key, value in results.items():
    if key.endswith("_std") and key[:-len("_std")] in results:
      continue  # Shown with its mean.
    shown_value = f"{value:.0f}" if key.endswith(("examples", "classes")) else (
        f"{value:.4f}" if key.endswith("loss") else f"{value:.2%}")
    if f"{key}_std" in results:
      shown_value += f" ± {results[f'{key}_std']:.2%}"
    lines.append(f"{key:<34} {shown_value}")
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
        require_head=not args.no_classification, vocab=args.vocab)
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
