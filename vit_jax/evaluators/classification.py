"""Classification metrics over logits: top-k hits, ReaL hits on multi-label sets, per class.

ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): a prediction is right when it is in
the image's set of real labels; images whose set is empty are left out of the count.

Each metric has one definition here, written against an array namespace `xp` (NumPy by
default; the classification evaluator's compiled step, classification_evaluator.make_eval_step,
passes jax.numpy): `batch_sums` is what that step computes for a run during training and for
`python -m vit_jax.evaluate`, and `values` / `per_class_values` turn a pass's sums into the
figures both report. Nothing else counts hits.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def topk_hits(logits: Any, labels: Any, k: int, xp: Any = np) -> Any:
  """(N,) bool: label among the k largest logits (ties broken towards the lower index).

  The label's rank is the number of logits above it plus the equal ones at lower indices
  (no sort, the same in NumPy and jax.numpy; as lax.top_k's order).
  """
  logits = xp.asarray(logits)
  labels = xp.asarray(labels).reshape(-1)
  k = min(int(k), logits.shape[-1])
  own = xp.take_along_axis(logits, labels[:, None], axis=-1)
  before = xp.arange(logits.shape[-1])[None, :] < labels[:, None]
  rank = xp.sum(logits > own, axis=-1) + xp.sum((logits == own) & before, axis=-1)
  return rank < k


def real_hits_multihot(logits: Any, real: Any, xp: Any = np) -> tuple[Any, Any]:
  """(hits, counted) from (N, C) multi-hot real labels: top-1 prediction in the set; counted
  is False for images whose set is empty."""
  pred = xp.argmax(xp.asarray(logits), axis=-1)
  real = xp.asarray(real)
  counted = xp.sum(real, axis=-1) > 0
  hits = xp.take_along_axis(real, pred[:, None], axis=-1)[:, 0] > 0
  return hits & counted, counted


def per_class_sums(logits: Any, labels: Any, num_classes: int, weights: Any = None,
                   xp: Any = np) -> tuple[Any, Any]:
  """(count, correct), (num_classes,) each: examples of each true class and how many of them
  are top-1 right, each example counted with its weight (the eval mask; default 1)."""
  labels = xp.asarray(labels).reshape(-1)
  right = (xp.argmax(xp.asarray(logits), axis=-1) == labels).astype(xp.float32)
  onehot = (labels[:, None] == xp.arange(num_classes)[None, :]).astype(xp.float32)
  if weights is not None:
    onehot = onehot * xp.asarray(weights, xp.float32)[:, None]
  return xp.sum(onehot, axis=0), xp.sum(onehot * right[:, None], axis=0)


def batch_sums(logits: Any, labels: Any, mask: Any, *, topk: int = 5, per_class: bool = False,
               real: Optional[Any] = None, xp: Any = np) -> dict[str, Any]:
  """Sums over the unmasked rows of one batch: 'correct' (top-1), 'correct_topk', 'count',
  with `real` (multi-hot) 'real_correct' / 'real_count', with per_class 'class_count' /
  'class_correct' ((classes,) each). `labels` are class indices; `mask` is 1 real / 0 pad."""
  logits = xp.asarray(logits)
  labels = xp.asarray(labels).reshape(-1)
  mask = xp.asarray(mask, xp.float32)
  correct = (xp.argmax(logits, axis=-1) == labels).astype(xp.float32)
  in_topk = topk_hits(logits, labels, topk, xp).astype(xp.float32)
  out = {"correct": xp.sum(correct * mask), "count": xp.sum(mask),
         "correct_topk": xp.sum(in_topk * mask)}
  if real is not None:
    hits, counted = real_hits_multihot(logits, real, xp)
    out["real_correct"] = xp.sum(hits.astype(xp.float32) * mask)
    out["real_count"] = xp.sum(counted.astype(xp.float32) * mask)
  if per_class:
    out["class_count"], out["class_correct"] = per_class_sums(logits, labels, logits.shape[-1],
                                                              mask, xp)
  return out


def values(totals: dict, topk: int = 5) -> dict[str, float]:
  """accuracy, loss, top<k>_accuracy, examples (and real_accuracy, real_examples for label
  sets) from the sums of a pass (batch_sums added up, with 'loss_sum')."""
  count = max(totals["count"], 1.0)
  out = {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count,
         f"top{topk}_accuracy": totals["correct_topk"] / count, "examples": totals["count"]}
  if "real_count" in totals:
    out["real_accuracy"] = totals["real_correct"] / max(totals["real_count"], 1.0)
    out["real_examples"] = totals["real_count"]
  return out


def per_class_values(totals: dict) -> dict[int, float]:
  """{class: top-1 accuracy} from the 'class_count' / 'class_correct' sums of a pass, for the
  classes that have an example (the others have no accuracy and are left out)."""
  count = np.asarray(totals["class_count"], np.float64)
  correct = np.asarray(totals["class_correct"], np.float64)
  return {int(i): float(correct[i] / count[i]) for i in np.flatnonzero(count > 0)}
