"""Eval-only CLI: any checkpoint the loader reads, any dataset, classification and few-shot.

  python -m vit_jax.evaluate --model ViT-B_16 --checkpoint PATH_OR_URI --dataset imagenet2012 \
      --split validation [--resolution 384] [--eval_pp resize|resize_crop|resize_small] \
      [--resize N | --crop_pct F] [--topk 5] [--per_class] [--json out.json]
  python -m vit_jax.evaluate --workdir workdirs/quickstart --dataset digits --split test
  python -m vit_jax.evaluate --checkpoint ... --fewshot cifar100 --fewshot pets [--shots 1,5]
      (few-shot only: --no_classification; datasets by their short name in
      evaluators/runner.FEWSHOT_DATASETS, or NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT)

The checkpoint flags are vit_jax.inference's (a published file with --model, an AugReg name
or file name, a vit_jax export, or --workdir [--step]). The model runs sharded on every local
device (data parallel), each split is covered exactly once, and the results are printed as a
table and written as JSON. For a fine-tuned AugReg file evaluated on its fine-tuning dataset
at its resolution, the published `adapt_final_test` of the AugReg index is printed beside
ours with the difference; beyond 0.5 points the likely causes are named.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

DIFFERENCE_POINTS = 0.5


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.evaluate",
                              description="Evaluate a ViT/Mixer checkpoint: top-k accuracy, loss, "
                                          "ReaL, per-class and few-shot linear probes.")
  p.add_argument("--model", default=None, help="MODEL_CONFIGS name of a published checkpoint")
  p.add_argument("--checkpoint", default=None, help="path, gs://, http(s)://, hf://, AugReg name")
  p.add_argument("--workdir", default=None, help="a vit_jax run directory")
  p.add_argument("--step", type=int, default=None, help="with --workdir: checkpoint step")
  p.add_argument("--params", choices=("raw", "ema"), default="raw",
                 help="with --workdir: the raw weights or their moving average (config.ema)")
  p.add_argument("--dataset", default=None, help="TFDS name or image folder (default: the run's)")
  p.add_argument("--split", default=None, help="split, TFDS slicing allowed (default: test, "
                                               "the published one for AugReg files)")
  p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's)")
  p.add_argument("--eval_pp", default="resize", choices=("resize", "resize_crop", "resize_small"))
  p.add_argument("--resize", type=int, default=None, help="resize side for *_crop / resize_small")
  p.add_argument("--crop_pct", type=float, default=None, help="resize = floor(crop / crop_pct)")
  p.add_argument("--batch_size", type=int, default=64, help="global eval batch")
  p.add_argument("--topk", type=int, default=5)
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
  if (args.checkpoint is None) == (args.workdir is None):
    p.error("pass exactly one of --checkpoint (a file or URI) and --workdir (a run directory)")
  if args.no_classification and not args.fewshot:
    p.error("--no_classification needs at least one --fewshot dataset")
  args.num_classes = None
  return args


def fewshot_datasets(values: Sequence[str]) -> dict[str, tuple[str, str, str]]:
  """--fewshot values -> {name: (dataset, train split, test split)}."""
  from vit_jax.evaluators import runner  # pylint: disable=g-import-not-at-top
  out = {}
  for value in values:
    if "=" in value:
      name, spec = value.split("=", 1)
      parts, depth, current = [], 0, ""
      for ch in spec:  # ':' inside TFDS slices ('train[:1000]') is not a separator
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
          parts.append(current)
          current = ""
        else:
          current += ch
      parts.append(current)
      if len(parts) != 3:
        raise ValueError(f"--fewshot {value!r}: use NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT.")
      out[name] = tuple(parts)
    elif value in runner.FEWSHOT_DATASETS:
      out[value] = runner.FEWSHOT_DATASETS[value]
    else:
      raise ValueError(f"--fewshot {value!r} is not a known short name "
                       f"({sorted(runner.FEWSHOT_DATASETS)}); use NAME=DATASET:TRAIN:TEST.")
  return out


def run_config(args, resolution: int, dataset: str, split: str):
  """A run config for the evaluation: defaults with the data, preprocessing and evaluators."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.dataset, c.eval_split, c.batch_eval = dataset, split, int(args.batch_size)
  c.tfds_data_dir = args.tfds_data_dir
  c.pp.crop, c.pp.eval, c.pp.resize, c.pp.crop_pct = resolution, args.eval_pp, args.resize, \
      args.crop_pct
  c.input.num_workers = 0
  evals = {}
  if not args.no_classification:
    evals["classification"] = dict(type="classification", topk=int(args.topk),
                                   per_class=bool(args.per_class), every=0)
  if args.fewshot:
    evals["fewshot"] = dict(type="fewshot", every=0, datasets=fewshot_datasets(args.fewshot),
                            shots=tuple(int(s) for s in args.shots.split(",") if s))
  c.evals = ml_collections.ConfigDict(evals)
  if args.evals_config:
    path, _, arg = args.evals_config.partition(":")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--evals_config {path!r} does not exist.")
    module = base.load_config_file(path)
    source = module.get_config(arg) if arg else module.get_config()
    if not source.evals:
      raise ValueError(f"--evals_config {args.evals_config!r} defines no config.evals.")
    c.evals = ml_collections.ConfigDict(source.evals.to_dict())
  return c


def published_comparison(location: str, dataset: str, split: str, resolution: int,
                         top1: Optional[float], eval_pp: str, index_path: Optional[str]
                         ) -> list[str]:
  """Lines comparing top-1 with the AugReg index's adapt_final_test ([] when not applicable)."""
  from vit_jax.checkpoint import augreg, sources  # pylint: disable=g-import-not-at-top
  name = os.path.basename(str(location).rstrip("/"))
  if top1 is None or not augreg.is_filename(name) or augreg.parse_filename(name).adapt_ds is None:
    return []
  try:
    row = augreg.published_result(name, **({"index_path": index_path} if index_path else {}))
  except sources.FetchError as e:
    return [f"published: unavailable, the AugReg index cannot be read ({str(e)[:120]})"]
  if row is None:
    return [f"published: {name} is not in the AugReg index"]
  want_split = augreg.PUBLISHED_TEST_SPLITS.get(row["adapt_ds"], "test")
  if (dataset, split, resolution) != (row["adapt_ds"], want_split, row["resolution"]):
    return [f"published: not comparable: AugReg measured {row['adapt_ds']} {want_split} at "
            f"{row['resolution']} px; this is {dataset} {split} at {resolution} px"]
  diff = 100 * (top1 - row["test"])
  lines = [f"published adapt_final_test {row['test']:.2%}   ours {top1:.2%}   "
           f"difference {diff:+.2f} points"]
  if abs(diff) > DIFFERENCE_POINTS:
    causes = []
    if eval_pp != "resize":
      causes.append(f"preprocessing: AugReg fine-tunes were evaluated with a square resize to "
                    f"{row['resolution']} px (--eval_pp resize); this run used {eval_pp}")
    causes.append("data: a different TFDS version or decoding of the split (JPEG decoder, "
                  "resize antialiasing) moves ImageNet numbers by a few tenths")
    causes.append("weights: a converted copy (the hf:// timm copy) differing from the .npz")
    lines.append("likely causes: " + "; ".join(causes))
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  try:
    results, lines = evaluate(args)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    status = exits.report(e, verbose=args.verbose)
    return exits.BAD_INPUT if isinstance(e, OSError) and status == exits.ERROR else status
  print("\n".join(lines))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return 0


def evaluate(args) -> tuple[dict, list[str]]:
  """(results dict, printed lines) for parsed flags."""
  import optax  # pylint: disable=g-import-not-at-top

  from vit_jax import inference, sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.checkpoint import augreg  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  from vit_jax.evaluators import runner  # pylint: disable=g-import-not-at-top
  from vit_jax.run import run_state
  from vit_jax.training import train_state
  dataset, split = args.dataset, args.split
  name = os.path.basename(str(args.checkpoint or "").rstrip("/"))
  flags = argparse.Namespace(**vars(args))
  if augreg.is_filename(name):  # An AugReg file names its architecture and fine-tune data.
    ckpt = augreg.parse_filename(name)
    flags.model = flags.model or ckpt.model_name
    if ckpt.adapt_ds:
      dataset = dataset or ckpt.adapt_ds
      split = split or augreg.PUBLISHED_TEST_SPLITS.get(ckpt.adapt_ds, "test")
      flags.resolution = flags.resolution or ckpt.resolution
  model, params, resolution, _ = inference.load_model(flags,
                                                      require_head=not args.no_classification)
  if args.workdir:
    stored = run_state.read_config(args.workdir)
    dataset, split = dataset or stored.dataset, split or stored.eval_split
    args.tfds_data_dir = args.tfds_data_dir or stored.tfds_data_dir
  if not dataset:
    raise ValueError("pass --dataset (a TFDS name or an image folder) to evaluate on.")
  split = split or "test"
  config = run_config(args, resolution, dataset, split)
  mesh = sharding.make_mesh(base.DEFAULT_MESH)
  setup = train_state.make_setup(model, optax.identity(), None, mesh, (1, resolution, resolution, 3),
                                 sharding.logical_axis_rules(config))
  placed = train_state.put_params(params, setup)
  evals = runner.Runner(setup, config)
  results = {}
  for spec in evals.specs:
    results.update(evals.run_one(spec, placed))
  top1 = results.get("classification/top1")
  lines = [f"{'metric':<34} value", "-" * 44]
  for key, value in results.items():
    shown = f"{value:.0f}" if key.endswith("examples") else (
        f"{value:.4f}" if key.endswith("loss") else f"{value:.2%}")
    lines.append(f"{key:<34} {shown}")
  comparison = published_comparison(args.checkpoint or "", dataset, split, resolution, top1,
                                    args.eval_pp, args.augreg_index)
  lines.extend(comparison)
  summary = {"checkpoint": args.checkpoint, "workdir": args.workdir, "dataset": dataset,
             "split": split, "resolution": resolution, "eval_pp": args.eval_pp,
             "resize": config.pp.resize, "crop_pct": config.pp.crop_pct, "results": results,
             "published": comparison}
  return summary, lines


def run() -> None:
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
