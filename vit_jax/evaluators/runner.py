"""Evaluators of a run from `config.evals`: what runs when, over which data, and its results.

`config.evals` maps a name to one evaluator (a ConfigDict):
  type        'classification' | 'fewshot' | a registered type | a module's dotted path
              (registry.py: a type defined in your own module, without editing these)
  every       [steps] how often (0: at the end only; None: config.eval_every)
  dataset     TFDS name or folder (None: the run's config.dataset)
  split       classification: the split, TFDS slicing allowed (None: config.eval_split)
  batch_size  global (None: config.batch_eval)
  pp          eval preprocessing overrides: eval ('resize' | 'resize_crop' | 'resize_small' |
              a pp string, datasets/preprocess.py), resize, crop_pct (the crop is the
              model's, config.pp.crop)
  topk        classification: k of the top-k accuracy (default 5)
  per_class   classification: also per-class top-1 accuracy (default False)
  datasets    fewshot: {short name: (dataset, train split, test split)}
  shots, l2_reg, l2_regs, seed, num_seeds, validation_per_class
              fewshot: shot counts, a fixed ridge strength (None: chosen from l2_regs on a
              held-out sample), the mean ± std over num_seeds seeds (fewshot_evaluator.py)
  classnames, templates, vocab, tokenizer, max_len
              zeroshot: an image-text (LiT) model's class names x prompt templates
              (zeroshot_evaluator.py)
  (each type's own keys: classification_evaluator.py, fewshot_evaluator.py,
  zeroshot_evaluator.py, or its register)
Entries may also come from the command line: --evals=NAME:TYPE[:KEY=VALUE,...] of vit_jax.main
and vit_jax.evaluate (command_line.py).
Results are named '<name>/<metric>' ('val/top1', 'fewshot/cifar100_10shot'). With no
`config.evals` the run has one classification evaluator over config.eval_split every
config.eval_every steps whose results keep their historical names ('accuracy', 'loss',
'top5_accuracy', 'examples'), so old configs and workdirs read the same. With an EMA of the
params (config.ema) every evaluator also runs on the EMA params: 'ema/accuracy',
'val/ema/top1', 'fewshot/ema/cifar100_10shot'. Every evaluator
runs sharded on the run's mesh, covers its split once on any number of processes (padding +
mask, pipeline.create_eval_iterator) and draws no random numbers (common.py).
"""
from __future__ import annotations

from vit_jax.datasets import sources

# classification_evaluator and fewshot_evaluator register the built-in types when imported.
from vit_jax.evaluators import (  # noqa: F401
  classification,
  classification_evaluator,
  common,
  fewshot_evaluator,
  registry,
  retrieval_evaluator,
  zeroshot_evaluator,
)
from vit_jax.evaluators.common import (  # noqa: F401  (re-exported: this module's API)
  Spec,
  classification_pass,
  data_config,
  extract_features,
)
from vit_jax.evaluators.fewshot_evaluator import (  # noqa: F401  (re-exported)
  FEWSHOT_DATASETS,
  default_fewshot_datasets,
)
from vit_jax.models import factory
from vit_jax.training import flexi

# The types the modules above register.
BUILTIN_TYPES = ("classification", "fewshot", "zeroshot", "retrieval")


def specs(config) -> list[Spec]:
  """The evaluators of a run config; one clear error for an unknown type or key."""
  entries = config.evals.to_dict() if hasattr(config.evals, "to_dict") else dict(config.evals)
  if not entries:
    return [default_spec(config)]
  out = []
  for name, entry in sorted(entries.items()):
    entry = dict(entry)
    kind = entry.get("type")
    try:
      evaluator = registry.get(kind)
    except registry.UnknownTypeError as e:
      raise ValueError(f"config.evals.{name}.type={kind!r} {e.reason}") from None
    valid = common.COMMON_KEYS | evaluator.keys
    unknown = sorted(set(entry) - valid)
    if unknown:
      raise ValueError(f"config.evals.{name} has unknown keys {unknown}; valid: {sorted(valid)}.")
    bad_pp = sorted(set(entry.get("pp") or {}) - set(common.PP_KEYS))
    if bad_pp:
      raise ValueError(f"config.evals.{name}.pp has keys {bad_pp}; an evaluator may change only "
                       f"{sorted(common.PP_KEYS)} (the crop is the model's).")
    every = entry.get("every")
    out.append(Spec(name, kind, int(config.eval_every or 0) if every is None else int(every),
                    entry))
  return out


def default_spec(config) -> Spec:
  """The evaluator of a run without config.evals: classification over config.eval_split; for
  an image-text model zero-shot classification (labelled eval data, prompted with
  config.input.caption_templates when set) or image <-> text retrieval (caption data)."""
  every = int(config.eval_every or 0)
  if not factory.is_image_text_run(config):
    return Spec("", "classification", every, {})
  if sources.open_source(config, config.eval_split)[1].captions_key:
    return Spec("", "retrieval", every, {})
  settings = {}
  if tuple(config.input.caption_templates or ()):
    settings["templates"] = tuple(config.input.caption_templates)
  if tuple(config.input.caption_classnames or ()):
    settings["classnames"] = tuple(config.input.caption_classnames)
  return Spec("", "zeroshot", every, settings)


def ema_name(spec: Spec, key: str) -> str:
  """The name of an EMA-params result: 'ema/accuracy' (default evaluator), 'val/ema/top1'."""
  if not spec.name:
    return f"ema/{key}"
  return f"{spec.name}/ema/{key[len(spec.name) + 1:]}"


def due(all_specs: list[Spec], step: int, total: int) -> list[Spec]:
  """The evaluators that run after `step` (each at its period, all at the last step)."""
  return [s for s in all_specs if step == total or (s.every > 0 and step % s.every == 0)]


class Runner:
  """Runs due evaluators with the run's params; compiled steps are made once per setup."""

  def __init__(self, setup, config):
    self.setup, self.config, self.specs = setup, config, specs(config)
    self.context = common.Context(setup, config)
    self._contexts = {None: self.context}  # FlexiViT: one per evaluated patch size

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
    """Results of one evaluator (its registered type's run), named '<name>/<metric>'
    (historical names for the default)."""
    patch = spec.settings.get("patch_size")
    patch = int(patch) if patch else None
    if patch not in self._contexts:  # its compiled steps are cached with it
      self._contexts[patch] = common.Context(flexi.at_patch_size(self.setup, patch), self.config)
    values = registry.get(spec.type).run(self._contexts[patch], spec, params)
    if not spec.name:
      return values
    return {f"{spec.name}/{k}": float(v) for k, v in values.items()}


def classification_values(totals: dict, topk: int = 5) -> dict[str, float]:
  """accuracy, loss, top<k>_accuracy, examples (and real_accuracy, real_examples for label
  sets) from the sums of classification_pass (classification.values)."""
  return classification.values(totals, topk)

