"""Evaluating given weights outside a training run (what `python -m vit_jax.evaluate` runs).

Given weights (what vit_jax.artifacts resolves: a published file, an AugReg name or file
name, a vit_jax export, a workdir) run sharded on every local device (data parallel) through
the run's evaluators (evaluators.runner), each split covered exactly once. A fine-tuned AugReg
file name supplies the architecture, the fine-tuning dataset, its published test split and
the resolution (`augreg_defaults`); evaluated there, the published `adapt_final_test` of the
AugReg index is compared with ours, and beyond DIFFERENCE_POINTS the likely causes are named.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import ml_collections
import optax

from vit_jax import sharding
from vit_jax.checkpoint import augreg, sources
from vit_jax.configs import base
from vit_jax.evaluators import runner
from vit_jax.training import train_state

DIFFERENCE_POINTS = 0.5


def fewshot_datasets(values: Sequence[str]) -> dict[str, tuple[str, str, str]]:
  """--fewshot values -> {name: (dataset, train split, test split)}."""
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


def run_config(args: Any, resolution: int, dataset: str, split: str,
               tfds_data_dir: Optional[str] = None) -> ml_collections.ConfigDict:
  """A run config for the evaluation: defaults with the data, preprocessing and evaluators.

  `args`: the evaluate flags (batch_size, eval_pp, resize, crop_pct, top_k, per_class,
  no_classification, fewshot, shots, evals_config, tfds_data_dir).
  """
  c = base.defaults()
  c.dataset, c.eval_split, c.batch_eval = dataset, split, int(args.batch_size)
  c.tfds_data_dir = tfds_data_dir or args.tfds_data_dir
  c.pp.crop, c.pp.eval, c.pp.resize, c.pp.crop_pct = resolution, args.eval_pp, args.resize, \
      args.crop_pct
  c.input.num_workers = 0
  evals = {}
  if not args.no_classification:
    evals["classification"] = dict(type="classification", topk=int(args.top_k),
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


def augreg_defaults(location: Optional[str]) -> dict[str, Any]:
  """What an AugReg file name says of itself: {'model'} and, for a fine-tuned one, its
  {'dataset', 'split' (the published test split), 'resolution'}; {} for other locations."""
  name = os.path.basename(str(location or "").rstrip("/"))
  if not augreg.is_filename(name):
    return {}
  ckpt = augreg.parse_filename(name)
  known = {"model": ckpt.model_name}
  if ckpt.adapt_ds:
    known.update(dataset=ckpt.adapt_ds, resolution=ckpt.resolution,
                 split=augreg.PUBLISHED_TEST_SPLITS.get(ckpt.adapt_ds, "test"))
  return known


def evaluate(weights: Any, args: Any) -> dict[str, Any]:
  """Evaluates `weights` (an artifacts.Weights) as the evaluate flags ask: {'checkpoint',
  'workdir', 'dataset', 'split', 'resolution', 'eval_pp', 'resize', 'crop_pct', 'results':
  {metric: value}, 'published': lines comparing with the AugReg index}.

  `args`: checkpoint, workdir, dataset, split, augreg_index and what run_config reads. The
  dataset and split default to an AugReg file's, then to a workdir run's, then split 'test'.
  """
  known = augreg_defaults(args.checkpoint)
  dataset, split = args.dataset or known.get("dataset"), args.split or known.get("split")
  tfds_data_dir = args.tfds_data_dir
  if weights.config is not None:  # A workdir: its data unless the flags say otherwise.
    dataset, split = dataset or weights.config.dataset, split or weights.config.eval_split
    tfds_data_dir = tfds_data_dir or weights.config.tfds_data_dir
  if not dataset:
    raise ValueError("pass --dataset (a TFDS name or an image folder) to evaluate on.")
  split = split or "test"
  config = run_config(args, weights.resolution, dataset, split, tfds_data_dir)
  mesh = sharding.make_mesh(base.DEFAULT_MESH)
  size = weights.resolution
  setup = train_state.make_setup(weights.model, optax.identity(), None, mesh, (1, size, size, 3),
                                 sharding.logical_axis_rules(config))
  placed = train_state.put_params(weights.params, setup)
  evals = runner.Runner(setup, config)
  results = {}
  for spec in evals.specs:
    results.update(evals.run_one(spec, placed))
  comparison = published_comparison(args.checkpoint or "", dataset, split, weights.resolution,
                                    results.get("classification/top1"), args.eval_pp,
                                    args.augreg_index)
  return {"checkpoint": args.checkpoint, "workdir": args.workdir, "dataset": dataset,
          "split": split, "resolution": weights.resolution, "eval_pp": args.eval_pp,
          "resize": config.pp.resize, "crop_pct": config.pp.crop_pct, "results": results,
          "published": comparison}
