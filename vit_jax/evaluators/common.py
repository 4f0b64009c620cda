"""What every evaluator type shares: its config entry (Spec), the run it evaluates (Context),
the data of an entry (data_config) and passes over it (batches, classification_pass,
extract_features). Every pass runs sharded on the run's mesh, covers its split once on any
number of processes (padding + mask, pipeline.create_eval_iterator) and draws no random
numbers.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from vit_jax import sharding
from vit_jax.datasets import device_prefetch, pipeline, sources
from vit_jax.models import axes
from vit_jax.training import train_step

# The entry keys of every type (each type adds its own, registry.register(keys=...)).
COMMON_KEYS = frozenset({"type", "every", "dataset", "split", "batch_size", "pp",
                         "patch_size"})  # patch_size: a FlexiViT model at that patch size
PP_KEYS = ("eval", "resize", "crop_pct")  # What an entry's pp may change (the crop is the model's).


@dataclasses.dataclass
class Spec:
  """One evaluator: its name ('' for the default one), type, period and settings."""
  name: str
  type: str
  every: int
  settings: dict


def data_config(config, spec: Spec, dataset: Optional[str] = None, split: Optional[str] = None):
  """The run config pointed at an evaluator's data (dataset, split, batch, eval pp)."""
  c = config.copy_and_resolve_references()
  s = spec.settings
  with c.unlocked():
    c.dataset = dataset or s.get("dataset") or config.dataset
    c.eval_split = split or s.get("split") or config.eval_split
    c.batch_eval = int(s.get("batch_size") or config.batch_eval)
    entry_pp = dict(s.get("pp") or {})
    for key, value in entry_pp.items():
      c.pp[key] = value
    # resize and crop_pct both set the eval resize: the entry's one replaces the run's other.
    if entry_pp.get("resize") is not None and "crop_pct" not in entry_pp:
      c.pp.crop_pct = None
    if entry_pp.get("crop_pct") is not None and "resize" not in entry_pp:
      c.pp.resize = None
    if c.dataset != config.dataset:
      c.num_classes = None
  return c


class Context:
  """The run an evaluator measures: its config, StateSetup (model, mesh, shardings) and a
  cache of compiled steps that the run's evaluators share (compiled once per run)."""

  def __init__(self, setup, config):
    self.setup, self.config = setup, config
    self._cache: dict[Any, Any] = {}

  def cached(self, key: Any, make: Callable[[], Any]) -> Any:
    """make() the first time `key` is asked for, the same object after."""
    if key not in self._cache:
      self._cache[key] = make()
    return self._cache[key]

  @property
  def num_classes(self) -> int:
    """The width of the model's head."""
    return int(self.setup.abstract_state.params["head"]["kernel"].shape[-1])

  def data_config(self, spec: Spec, dataset: Optional[str] = None,
                  split: Optional[str] = None):
    """data_config of the run config."""
    return data_config(self.config, spec, dataset, split)

  def logits_step(self) -> Callable:
    """jit(logits)(params, images): the model's forward on the run's sharding (cached)."""
    return self.cached(("logits",), lambda: make_logits_step(self.setup))

  def feature_step(self) -> Callable:
    """train_step.make_feature_step: the pre-logits of the headless model (cached)."""
    return self.cached(("features",), lambda: train_step.make_feature_step(self.setup))


def logits_fn(setup) -> Callable:
  """logits(params, images): the model's eval forward with the run's activation sharding."""
  model = setup.model
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def logits(params, images):
    with axes.activation_sharding(constrainer):
      out = model.apply({"params": params}, images, train=False)
    return train_step.one_image_per_sequence(images, out)
  return logits


def make_logits_step(setup) -> Callable:
  """jit(logits_fn(setup)) on the run's param and batch shardings."""

  return jax.jit(logits_fn(setup),
                 in_shardings=(setup.param_shardings, sharding.batch_sharding(setup.mesh)))


def batches(params, config, keys: Iterable[str] = ("image", "label", "mask")):
  """The device batches of one masked pass over config.eval_split (sharded as `params`' mesh):
  dicts of `keys` ('image', 'label' one-hot, 'mask' 1 real / 0 pad, 'index', 'real')."""

  bsh = sharding.batch_sharding(jax.tree.leaves(params)[0].sharding.mesh)
  return device_prefetch.DevicePrefetcher(pipeline.create_eval_iterator(config), bsh,
                                          config.input.device_prefetch, keys=tuple(keys))


def classification_pass(eval_step, params, config, num_classes: Optional[int] = None
                        ) -> dict[str, Any]:
  """Sums of one masked pass over config.eval_split (scalars as floats, per-class as arrays)."""
  totals: dict[str, Any] = collections.defaultdict(float)
  multilabel = sources.open_source(config, config.eval_split)[1].multilabel_key
  keys = ("image", "label", "mask") + (("real",) if multilabel else ())
  for batch in batches(params, config, keys):
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
  feats, labels, order = [], [], []
  for batch in batches(params, config, ("image", "label", "mask", "index")):
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
