"""Evaluating given weights outside a training run (what `python -m vit_jax.evaluate` runs).

Given weights (what vit_jax.artifacts resolves: a published file, an AugReg name or file
name, a vit_jax export, a workdir) run sharded on every local device (data parallel) through
the run's evaluators (evaluators.runner), each split covered exactly once. For a workdir every
eval setting (data, pp.eval / resize / crop_pct, resolution, batch, config.evals) is the
run's unless a flag sets it, and `eval_settings` says which flags changed what. A fine-tuned AugReg
file name supplies the architecture, the fine-tuning dataset, its published test split and
the resolution (`augreg_defaults`); evaluated there, the published `adapt_final_test` of the
AugReg index is compared with ours, and beyond DIFFERENCE_POINTS the likely causes are named.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import ml_collections
import optax

from vit_jax import batching, sharding
from vit_jax.checkpoint import augreg, sources
from vit_jax.configs import base
from vit_jax.evaluators import command_line, runner, zeroshot
from vit_jax.models import lit
from vit_jax.models.fields import patch_size
from vit_jax.training import train_state

DIFFERENCE_POINTS = 0.5


def fewshot_datasets(values: Sequence[str]) -> dict[str, tuple[str, str, str]]:
  """--fewshot values -> {name: (dataset, train split, test split)}."""
  out = {}
  for value in values:
    if "=" in value:
      name, spec = value.split("=", 1)
      parts = command_line.split_top(spec, ":")  # ':' inside TFDS slices is not a separator
      if len(parts) != 3:
        raise ValueError(f"--fewshot {value!r}: use NAME=DATASET:TRAIN_SPLIT:TEST_SPLIT.")
      out[name] = tuple(parts)
    elif value in runner.FEWSHOT_DATASETS:
      out[value] = runner.FEWSHOT_DATASETS[value]
    else:
      raise ValueError(f"--fewshot {value!r} is not a known short name "
                       f"({sorted(runner.FEWSHOT_DATASETS)}); use NAME=DATASET:TRAIN:TEST.")
  return out


# Evaluator settings the flags set on every entry of a type: (type, entry key, flag, default).
SETTING_FLAGS = (("classification", "topk", "top_k", 5),
                 ("classification", "per_class", "per_class", False),
                 ("fewshot", "shots", "shots", None),
                 ("fewshot", "num_seeds", "fewshot_seeds", 1),
                 ("fewshot", "l2_reg", "fewshot_l2_reg", None))


def zeroshot_entries(args: Any, vocab: Optional[str]) -> dict[str, dict[str, Any]]:
  """--zeroshot DATASET (repeatable) -> {name: zeroshot entry}: 'zeroshot' for one dataset,
  'zeroshot_<dataset>' for several; class names / templates from --zeroshot_classnames /
  --zeroshot_templates files (one per line), the vocabulary `vocab` (artifacts.Weights.vocab:
  --vocab, else the file beside the weights)."""
  datasets = list(getattr(args, "zeroshot", None) or ())
  if not datasets:
    return {}
  _require_vocab(vocab, "zero-shot evaluation")
  extra: dict[str, Any] = {"vocab": str(vocab)}
  for key, flag in (("classnames", "zeroshot_classnames"), ("templates", "zeroshot_templates")):
    path = getattr(args, flag, None)
    if path and key == "templates" and path in zeroshot.PROMPT_SETS:
      extra[key] = path  # A shipped prompt set by name.
    elif path:
      if not os.path.isfile(path):
        raise FileNotFoundError(f"--{flag} {path!r} does not exist; give a text file with one "
                                f"{'class name' if key == 'classnames' else 'template'} per line.")
      with open(path, encoding="utf-8") as f:
        extra[key] = tuple(line.strip() for line in f if line.strip())
  return _dataset_entries("zeroshot", datasets, extra)


def retrieval_entries(args: Any, vocab: Optional[str]) -> dict[str, dict[str, Any]]:
  """--retrieval DATASET (repeatable: a caption dataset) -> {name: retrieval entry}:
  'retrieval' for one dataset, 'retrieval_<dataset>' for several, with the vocabulary."""
  datasets = list(getattr(args, "retrieval", None) or ())
  if not datasets:
    return {}
  _require_vocab(vocab, "retrieval")
  return _dataset_entries("retrieval", datasets, {"vocab": str(vocab)})


def _require_vocab(vocab: Optional[str], what: str) -> None:
  if not vocab:
    raise ValueError(f"{what} needs the text tower's vocabulary and none was found beside the "
                     "weights (X.txt / X.model for X.npz): pass --vocab FILE.")


def _dataset_entries(kind: str, datasets: Sequence[str], extra: dict[str, Any]
                     ) -> dict[str, dict[str, Any]]:
  """One `kind` entry per dataset: named `kind` for one dataset, `kind_<dataset>` for several."""
  out = {}
  for dataset in datasets:
    name = kind if len(datasets) == 1 else f"{kind}_" + "".join(
        ch if ch.isalnum() else "_" for ch in os.path.basename(str(dataset).rstrip("/")))
    out[name] = dict(type=kind, dataset=str(dataset), **extra)
  return out


def eval_settings(args: Any, resolution: int, dataset: str, split: str,
                  tfds_data_dir: Optional[str] = None,
                  run: Optional[ml_collections.ConfigDict] = None, *,
                  image_text: bool = False, vocab: Optional[str] = None,
                  model_patch: Optional[int] = None
                  ) -> tuple[ml_collections.ConfigDict, dict[str, dict[str, Any]]]:
  """(config, overridden): the run's config (`run`, a workdir's; else the defaults) with the
  data, the resolution and what the flags set; overridden = {setting: {'run', 'flag'}} for
  each setting a flag changed from the run's.

  `args`: the evaluate flags (batch_size, eval_pp, resize, crop_pct, top_k, per_class,
  no_classification, fewshot, shots, fewshot_seeds, fewshot_l2_reg, evals, evals_config,
  tfds_data_dir); a flag left unset (None) keeps the run's setting. The evaluators are the
  run's config.evals (its default classification evaluator, named 'classification', when it
  has none) unless --evals / --evals_config name others; --fewshot adds one ('fewshot'),
  --zeroshot one per dataset (zeroshot_entries; `vocab`: the weights' vocabulary),
  --no_classification drops the classification ones, and so does `image_text` (a LiT model
  has no classification head: it is evaluated zero-shot).

  Aspect ratio kept (packed sequences, datasets/naflex.py): a packed-sequence run
  (config.naflex), or any model with a fixed-grid position embedding given --keep_aspect, is
  evaluated one image per sequence at the token budget of the resolution, (resolution //
  patch)^2 (`model_patch`: the model's patch size), its run's eval_seq_len at its own crop.
  """
  c = (run if run is not None else base.defaults()).copy_and_resolve_references()
  overridden: dict[str, dict[str, Any]] = {}

  def note(key: str, was: Any, now: Any) -> None:
    if was != now:
      overridden[key] = {"run": was, "flag": now}

  with c.unlocked():
    for key, was, now in (("dataset", c.dataset, dataset), ("split", c.eval_split, split)):
      if run is not None:
        note(key, was, now)
    c.dataset, c.eval_split = dataset, split
    c.tfds_data_dir = tfds_data_dir or args.tfds_data_dir or c.tfds_data_dir
    c.mesh, c.sharding_rules = base.DEFAULT_MESH, ()  # Data parallel on the local devices.
    if c.pp.resize and int(c.pp.crop) != int(resolution):  # the run's resize / crop ratio kept
      c.pp.resize = int(round(int(c.pp.resize) * int(resolution) / int(c.pp.crop)))
    run_crop = int(c.pp.crop)
    c.pp.crop = resolution
    _packed_eval(c, args, resolution, run_crop, model_patch, note)
    c.input.num_workers = 0
    if run is None:
      c.batch_eval = 64
    entries, run_names = _entries(args, c, run, image_text, vocab)
    if args.batch_size is not None:
      note("batch_size", int(c.batch_eval), int(args.batch_size))
      c.batch_eval = int(args.batch_size)
      for entry in entries.values():
        entry.pop("batch_size", None)
    given = {key: value for key, value in (("eval", args.eval_pp), ("resize", args.resize),
                                           ("crop_pct", args.crop_pct)) if value is not None}
    for one, other in (("resize", "crop_pct"), ("crop_pct", "resize")):
      if one in given and other not in given:  # Both set the eval resize: the flag's wins.
        given[other] = None
    for key, value in given.items():
      note(f"pp.{key}", c.pp[key], value)
      c.pp[key] = value
      for name, entry in entries.items():
        pp = entry.get("pp") or {}
        if key in pp:
          note(f"{name}.pp.{key}", pp.pop(key), value)
    for kind, key, flag, default in SETTING_FLAGS:
      value = getattr(args, flag, None)
      if value is None:
        continue
      if key == "shots":
        value = tuple(int(k) for k in str(value).split(",") if k.strip())
      for name, entry in entries.items():
        if entry.get("type") == kind:
          if name in run_names:
            was = entry.get(key)
            note(f"{name}.{key}", default if was is None else was, value)
          entry[key] = value
    patch = getattr(args, "patch_size", None)
    for name, entry in entries.items():
      entry["every"] = 0  # Each runs once.
      if patch:  # A FlexiViT model at that patch size (training/flexi.py).
        note(f"{name}.patch_size", entry.get("patch_size"), int(patch))
        entry["patch_size"] = int(patch)
    c.evals = ml_collections.ConfigDict(entries)
  return c, overridden


def _packed_eval(c: ml_collections.ConfigDict, args: Any, resolution: int, run_crop: int,
                 model_patch: Optional[int], note: Any) -> None:
  """config.naflex of an evaluation that keeps each image's aspect ratio (eval_settings)."""
  keep_aspect = bool(getattr(args, "keep_aspect", False))
  packed_run = batching.packed_run(c)
  if not keep_aspect and not packed_run:
    return
  patch = int(getattr(args, "patch_size", None) or c.naflex.patch_size or model_patch or 0)
  if patch <= 0:
    raise ValueError("--keep_aspect needs the model's patch size; these weights have none (a "
                     "Mixer or a hybrid cannot take packed sequences).")
  budget = (int(resolution) // patch) ** 2
  was = int(c.naflex.eval_seq_len or c.naflex.seq_len or 0)  # 0: the run is not packed
  if not packed_run:
    c.naflex.seq_len = budget
  if keep_aspect or int(resolution) != run_crop or patch != int(c.naflex.patch_size or patch):
    note("naflex.eval_seq_len", was, budget)
    c.naflex.eval_seq_len = budget
  c.naflex.patch_size = patch


def _entries(args: Any, c: ml_collections.ConfigDict, run: Optional[ml_collections.ConfigDict],
             image_text: bool = False, vocab: Optional[str] = None
             ) -> tuple[dict[str, dict], set[str]]:
  """({name: entry} the evaluation runs, the names that are the run's own evaluators)."""
  own = c.evals.to_dict() if run is not None else {}
  from_flags = bool(args.evals_config or args.evals)
  if from_flags:
    entries = {}
    if args.evals_config:
      path, _, arg = args.evals_config.partition(":")
      if not os.path.isfile(path):
        raise FileNotFoundError(f"--evals_config {path!r} does not exist.")
      module = base.load_config_file(path)
      source = module.get_config(arg) if arg else module.get_config()
      if not source.evals:
        raise ValueError(f"--evals_config {args.evals_config!r} defines no config.evals.")
      entries.update(source.evals.to_dict())
    entries.update(command_line.parse(args.evals or ()))
  elif own:
    entries = own
  else:  # The run's default evaluator, under a name.
    entries = {"classification": dict(type="classification")}
  run_names = set() if from_flags else set(entries)
  if args.fewshot:
    entries["fewshot"] = dict(type="fewshot", datasets=fewshot_datasets(args.fewshot))
    run_names.discard("fewshot")
  flagged = {**zeroshot_entries(args, vocab), **retrieval_entries(args, vocab)}
  if flagged:
    entries.update(flagged)
    run_names -= set(flagged)
  elif image_text and run is not None and not own and not from_flags:
    default = runner.default_spec(c)  # An image-text run's own default evaluator.
    entries[default.type] = dict(type=default.type, **default.settings)
    run_names.add(default.type)
  if image_text and not any(v.get("type") in ("zeroshot", "retrieval")
                            for v in entries.values()):
    raise ValueError("an image-text (LiT / SigLIP) model has no classification head: evaluate "
                     "it zero-shot with --zeroshot DATASET (a TFDS name or an image folder) or "
                     "by retrieval with --retrieval DATASET (a caption dataset).")
  if args.no_classification or image_text:
    entries = {k: v for k, v in entries.items() if v.get("type") != "classification"}
    if not entries:
      raise ValueError("--no_classification leaves no evaluator; add --fewshot DATASET, "
                       "--zeroshot DATASET or --evals NAME:TYPE[:KEY=VALUE,...].")
  return entries, run_names


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
  'workdir', 'dataset', 'split', 'resolution', 'eval_pp', 'resize', 'crop_pct', 'batch_size',
  'evaluators' ({name: entry}), 'settings_from' ('the run in W' or 'the defaults'),
  'overridden' ({setting: {'run', 'flag'}}, eval_settings), 'results': {metric: value},
  'published': lines comparing with the AugReg index}.

  `args`: checkpoint, workdir, dataset, split, augreg_index and what eval_settings reads. The
  dataset and split default to an AugReg file's, then to a workdir run's, then split 'test';
  every other eval setting to the workdir run's (eval_settings).
  """
  known = augreg_defaults(args.checkpoint)
  image_text = lit.is_lit(weights.model)
  zeroshot = list(getattr(args, "zeroshot", None) or ())
  zeroshot += list(getattr(args, "retrieval", None) or ())
  dataset = args.dataset or known.get("dataset") or (
      zeroshot[0] if image_text and zeroshot else None)
  split = args.split or known.get("split")
  tfds_data_dir = args.tfds_data_dir
  if weights.config is not None:  # A workdir: its data unless the flags say otherwise.
    dataset, split = dataset or weights.config.dataset, split or weights.config.eval_split
    tfds_data_dir = tfds_data_dir or weights.config.tfds_data_dir
  if not dataset:
    raise ValueError("pass --dataset (a TFDS name or an image folder) to evaluate on.")
  split = split or "test"
  patches = getattr(weights.model, "patches", None)
  config, overridden = eval_settings(args, weights.resolution, dataset, split, tfds_data_dir,
                                     weights.config, image_text=image_text,
                                     vocab=weights.vocab,
                                     model_patch=patch_size(patches)[0] if patches else None)
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
                                    results.get("classification/top1"), str(config.pp.eval),
                                    args.augreg_index)
  return {"checkpoint": args.checkpoint, "workdir": args.workdir, "dataset": dataset,
          "split": split, "resolution": weights.resolution, "eval_pp": str(config.pp.eval),
          "resize": config.pp.resize, "crop_pct": config.pp.crop_pct,
          "batch_size": int(config.batch_eval), "evaluators": config.evals.to_dict(),
          "settings_from": (f"the run in {args.workdir}" if weights.config is not None
                            else "the defaults"),
          "overridden": overridden, "results": results, "published": comparison}
