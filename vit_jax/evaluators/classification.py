"""Classification metrics over logits: top-k hits, ReaL hits on multi-label sets, per class.

ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): a prediction is right when it is in
the image's set of real labels; images whose set is empty are left out of the count.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """(N,) bool: label among the k largest logits (ties broken towards the lower index)."""
  logits = np.asarray(logits)
  labels = np.asarray(labels).reshape(-1)
  k = min(int(k), logits.shape[-1])
  top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return np.any(top == labels[:, None], axis=-1)


def real_hits(logits: np.ndarray, label_sets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """(hits, counted): top-1 prediction in the image's real-label set; counted is False for
  images whose set is empty (they are skipped, as in the ReaL paper)."""
  pred = np.argmax(np.asarray(logits), axis=-1)
  counted = np.array([len(s) > 0 for s in label_sets], bool)
  hits = np.array([int(p) in set(int(x) for x in s) for p, s in zip(pred, label_sets)], bool)
  return hits & counted, counted


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes,) top-1 accuracy per true class (NaN for classes with no example)."""
  labels = np.asarray(labels).reshape(-1)
  right = np.argmax(np.asarray(logits), axis=-1) == labels
  count = np.bincount(labels, minlength=num_classes).astype(np.float64)
  correct = np.bincount(labels, weights=right.astype(np.float64), minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, correct / count, np.nan)
