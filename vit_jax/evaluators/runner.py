"""Evaluators of a run from `config.evals`: what runs when, over which data, and its results.

`config.evals` maps a name to one evaluator (a ConfigDict):
  type        'classification' | 'fewshot'
  every       [steps] how often (0: at the end only; None: config.eval_every)
  dataset     TFDS name or folder (None: the run's config.dataset)
  split       classification: the split, TFDS slicing allowed (None: config.eval_split)
  batch_size  global (None: config.batch_eval)
  pp          eval preprocessing overrides: eval ('resize' | 'resize_crop' | 'resize_small'),
              resize, crop_pct (the crop is the model's, config.pp.crop)
  topk        classification: k of the top-k accuracy (default 5)
  per_class   classification: also per-class top-1 accuracy (default False)
  datasets    fewshot: {short name: (dataset, train split, test split)}
  shots, l2_regs, seed, validation_per_class   fewshot: see evaluators/fewshot.py
Results are named '<name>/<metric>' ('val/top1', 'fewshot/cifar100_10shot'). With no
`config.evals` the run has one classification evaluator over config.eval_split every
config.eval_every steps whose results keep their historical names ('accuracy', 'loss',
'top5_accuracy', 'examples'), so old configs and workdirs read the same. With an EMA of the
params (config.ema) every evaluator also runs on the EMA params: 'ema/accuracy',
'val/ema/top1', 'fewshot/ema/cifar100_10shot'. Every evaluator
runs sharded on the run's mesh, covers its split once on any number of processes (padding +
mask, pipeline.create_eval_iterator) and draws no random numbers.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional

import numpy as np

from vit_jax.evaluators import fewshot

TYPES = ("classification", "fewshot")
# big_vision's configs/common_fewshot.py datasets (name: dataset, train split, test split).
FEWSHOT_DATASETS = {
    "caltech": ("caltech101", "train", "test"), "cars": ("cars196", "train", "test"),
    "cifar100": ("cifar100", "train", "test"), "dtd": ("dtd", "train", "test"),
    "pets": ("oxford_iiit_pet", "train", "test"),
    "uc_merced": ("uc_merced", "train[:1000]", "train[1000:]"),
    "imagenet": ("imagenet2012", "train[:65000]", "validation"),  # when prepared (manual)
}
_KEYS = {"type", "every", "dataset", "split", "batch_size", "pp", "topk", "per_class",
         "datasets", "shots", "l2_regs", "seed", "validation_per_class"}
_PP_KEYS = {"eval", "resize", "crop_pct"}


@dataclasses.dataclass
class Spec:
  """One evaluator: its name ('' for the default one), type, period and settings."""
  name: str
  type: str
  every: int
  settings: dict


def specs(config) -> list[Spec]:
  """The evaluators of a run config; one clear error for an unknown type or key."""
  entries = config.evals.to_dict() if hasattr(config.evals, "to_dict") else dict(config.evals)
  if not entries:
    return [Spec("", "classification", int(config.eval_every or 0), {})]
  out = []
  for name, entry in sorted(entries.items()):
    entry = dict(entry)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
      raise ValueError(f"config.evals.{name} has unknown keys {unknown}; valid: {sorted(_KEYS)}.")
    kind = entry.get("type")
    if kind not in TYPES:
      raise ValueError(f"config.evals.{name}.type={kind!r} is unknown; use one of {TYPES}.")
    bad_pp = sorted(set(entry.get("pp") or {}) - _PP_KEYS)
    if bad_pp:
      raise ValueError(f"config.evals.{name}.pp has keys {bad_pp}; an evaluator may change only "
                       f"{sorted(_PP_KEYS)} (the crop is the model's).")
    every = entry.get("every")
    out.append(Spec(name, kind, int(config.eval_every or 0) if every is None else int(every),
                    entry))
  return out


def ema_name(spec: Spec, key: str) -> str:
  """The name of an EMA-params result: 'ema/accuracy' (default evaluator), 'val/ema/top1'."""
  if not spec.name:
    return f"ema/{key}"
  return f"{spec.name}/ema/{key[len(spec.name) + 1:]}"


def due(all_specs: list[Spec], step: int, total: int) -> list[Spec]:
  """The evaluators that run after `step` (each at its period, all at the last step)."""
  return [s for s in all_specs if step == total or (s.every > 0 and step % s.every == 0)]


def data_config(config, spec: Spec, dataset: Optional[str] = None, split: Optional[str] = None):
  """The run config pointed at an evaluator's data (dataset, split, batch, eval pp)."""
  c = config.copy_and_resolve_references()
  s = spec.settings
  with c.unlocked():
    c.dataset = dataset or s.get("dataset") or config.dataset
    c.eval_split = split or s.get("split") or config.eval_split
    c.batch_eval = int(s.get("batch_size") or config.batch_eval)
    for key, value in (s.get("pp") or {}).items():
      c.pp[key] = value
    if c.dataset != config.dataset:
      c.num_classes = None
  return c


class Runner:
  """Runs due evaluators with the run's params; compiled steps are made once per setup."""

  def __init__(self, setup, config):
    self.setup, self.config, self.specs = setup, config, specs(config)
    self._steps: dict[Any, Any] = {}

  def _step(self, *key):
    """The compiled eval step ('cls', topk, per_class) or feature step ('features',), made once."""
    from vit_jax.training import train_step  # pylint: disable=g-import-not-at-top
    if key not in self._steps:
      self._steps[key] = (train_step.make_feature_step(self.setup) if key[0] == "features"
                          else train_step.make_eval_step(self.setup, *key[1:]))
    return self._steps[key]

  def run(self, params, step: int, total: int, ema_params=None) -> dict[str, float]:
    """Results of the evaluators due after `step`, by their names; with `ema_params` (the
    run's EMA, config.ema) each evaluator also runs on them, named by ema_name."""
    out = {}
    for spec in due(self.specs, step, total):
      out.update(self.run_one(spec, params))
      if ema_params is not None:
        out.update({ema_name(spec, k): v for k, v in self.run_one(spec, ema_params).items()})
    return out

  def run_one(self, spec: Spec, params) -> dict[str, float]:
    """Results of one evaluator, named '<name>/<metric>' (historical names for the default)."""
    if spec.type == "fewshot":
      return self._fewshot(spec, params)
    topk, per_class = int(spec.settings.get("topk") or 5), bool(spec.settings.get("per_class"))
    classes = int(self.setup.abstract_state.params["head"]["kernel"].shape[-1])
    totals = classification_pass(self._step("cls", topk, per_class), params,
                                 data_config(self.config, spec), classes)
    values = classification_values(totals, topk)
    if not spec.name:
      return values
    named = {"top1": values["accuracy"], f"top{topk}": values[f"top{topk}_accuracy"],
             "loss": values["loss"], "examples": values["examples"]}
    if "real_accuracy" in values:
      named.update(real=values["real_accuracy"], real_examples=values["real_examples"])
    if per_class:
      with np.errstate(invalid="ignore", divide="ignore"):
        acc = totals["class_correct"] / totals["class_count"]
      named.update({f"class_{i}": float(a) for i, a in enumerate(acc) if np.isfinite(a)})
    return {f"{spec.name}/{k}": float(v) for k, v in named.items()}

  def _fewshot(self, spec: Spec, params) -> dict[str, float]:
    s = spec.settings
    datasets = s.get("datasets") or default_fewshot_datasets(self.config.tfds_data_dir)
    shots = tuple(int(k) for k in (s.get("shots") or fewshot.DEFAULT_SHOTS))
    out = {}
    for short, (dataset, train_split, test_split) in sorted(dict(datasets).items()):
      feats = {}
      for which, split in (("train", train_split), ("test", test_split)):
        feats[which] = extract_features(self._step("features"), params,
                                        data_config(self.config, spec, dataset, split))
      result = fewshot.evaluate(*feats["train"], *feats["test"], shots=shots,
                                l2_regs=tuple(s.get("l2_regs") or fewshot.DEFAULT_L2_REGS),
                                validation_per_class=int(s.get("validation_per_class") or 5),
                                seed=int(s.get("seed") or 0))
      for k in shots:
        out[f"{spec.name}/{short}_{k}shot"] = result.accuracy[k]
    return out


def default_fewshot_datasets(data_dir: Optional[str]) -> dict[str, tuple[str, str, str]]:
  """big_vision's few-shot set: caltech, cars, cifar100, dtd, pets, uc_merced, and imagenet
  when imagenet2012 is prepared in `data_dir` (it needs a manual download)."""
  out = {k: v for k, v in FEWSHOT_DATASETS.items() if k != "imagenet"}
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if tfds.builder("imagenet2012", data_dir=data_dir).is_prepared():
      out["imagenet"] = FEWSHOT_DATASETS["imagenet"]
  except Exception:  # pylint: disable=broad-except  # Not registered / not readable: leave out.
    pass
  return out


def classification_values(totals: dict, topk: int = 5) -> dict[str, float]:
  """accuracy, loss, top<k>_accuracy, examples (and real_accuracy, real_examples for label
  sets) from the sums of classification_pass."""
  count = max(totals["count"], 1.0)
  values = {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count,
            f"top{topk}_accuracy": totals["correct_topk"] / count, "examples": totals["count"]}
  if "real_count" in totals:
    values["real_accuracy"] = totals["real_correct"] / max(totals["real_count"], 1.0)
    values["real_examples"] = totals["real_count"]
  return values


def classification_pass(eval_step, params, config, num_classes: Optional[int] = None
                        ) -> dict[str, Any]:
  """Sums of one masked pass over config.eval_split (scalars as floats, per-class as arrays)."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding
  from vit_jax.datasets import (  # pylint: disable=g-import-not-at-top
    device_prefetch,
    pipeline,
    sources,  # pylint: disable=g-import-not-at-top
  )
  bsh = sharding.batch_sharding(jax.tree.leaves(params)[0].sharding.mesh)
  totals: dict[str, Any] = collections.defaultdict(float)
  multilabel = sources.open_source(config, config.eval_split)[1].multilabel_key
  keys = ("image", "label", "mask") + (("real",) if multilabel else ())
  batches = device_prefetch.DevicePrefetcher(pipeline.create_eval_iterator(config), bsh,
                                             config.input.device_prefetch, keys=keys)
  for batch in batches:
    if num_classes is not None and batch["label"].shape[-1] != num_classes:
      raise ValueError(f"{config.dataset} ({config.eval_split}) has {batch['label'].shape[-1]} "
                       f"classes and the model {num_classes}: a classification evaluator needs "
                       "the model's label space; use a 'fewshot' evaluator for other datasets.")
    for k, v in jax.device_get(eval_step(params, batch)).items():
      v = np.asarray(v, np.float64)
      totals[k] = totals[k] + (float(v) if v.ndim == 0 else v)
  return totals


def extract_features(feature_step, params, config) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, D), labels (N,)) of config.eval_split in the split's order, from
  `feature_step` (train_step.make_feature_step), padding removed; the same arrays on any
  number of processes."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding
  from vit_jax.datasets import device_prefetch, pipeline  # pylint: disable=g-import-not-at-top
  bsh = sharding.batch_sharding(jax.tree.leaves(params)[0].sharding.mesh)
  feats, labels, order = [], [], []
  batches = device_prefetch.DevicePrefetcher(pipeline.create_eval_iterator(config), bsh,
                                             config.input.device_prefetch,
                                             keys=("image", "label", "mask", "index"))
  for batch in batches:
    out = feature_step(params, batch["image"])
    label, mask, index = jax.numpy.argmax(batch["label"], -1), batch["mask"], batch["index"]
    if jax.process_count() > 1:
      out, label, mask, index = (multihost_utils.process_allgather(x, tiled=True)
                                 for x in (out, label, mask, index))
    out, label, mask, index = (np.asarray(jax.device_get(x)) for x in (out, label, mask, index))
    keep = mask > 0
    order.append(index[keep])
    if out.ndim != 2:
      raise ValueError(f"few-shot needs one feature vector per image; this model's classifier "
                       f"gives {out.shape[1:]} per image (unpooled); use a pooled classifier.")
    feats.append(out[keep])
    labels.append(label[keep])
  rank = np.argsort(np.concatenate(order), kind="stable")  # batches interleave processes
  return np.concatenate(feats)[rank], np.concatenate(labels)[rank]
