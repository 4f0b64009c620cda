"""Few-shot linear probes on frozen features (the ViT paper's pretraining-quality metric).

For k shots per class, a closed-form L2-regularised least-squares classifier on +-1 targets
(one output per class, an unregularised bias; the prediction is the largest output) is fit
on k seeded training examples per class. Its strength is either fixed (`l2_reg`, as
big_vision's fewshot_lsr reports, 2**10 there) or chosen from `l2_regs` on a held-out sample
of the train split disjoint from the shots (`l2_reg` None, the default); the test accuracy is
reported with that strength. With `num_seeds` N the draw is repeated for seeds seed, ...,
seed + N - 1 (each seed picks its own shots and held-out sample) and the mean and standard
deviation (NumPy's, ddof 0) over the N test accuracies are reported. The fit equals
scikit-learn's Ridge(alpha=l2, fit_intercept=True) on the same targets.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2_REGS = tuple(2.0 ** i for i in range(-10, 21, 2))


@dataclasses.dataclass
class FewShotResult:
  """Per shot count: the mean test accuracy over the seeds, its standard deviation (0 for one
  seed), and per seed the test accuracy, the regularisation used and its held-out accuracy
  (None with a fixed l2_reg)."""
  accuracy: dict[int, float]
  accuracy_std: dict[int, float]
  seed_accuracy: dict[int, list[float]]
  l2_reg: dict[int, list[float]]
  validation_accuracy: dict[int, list[Optional[float]]]


def fit_ridge(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float
              ) -> tuple[np.ndarray, np.ndarray]:
  """(W (D, C), b (C,)) of least squares on +-1 one-vs-rest targets with penalty l2 |W|^2."""
  x = np.asarray(x, np.float64)
  targets = 2.0 * np.eye(num_classes)[np.asarray(y, int)] - 1.0
  mean_x, mean_t = x.mean(axis=0), targets.mean(axis=0)
  xc, tc = x - mean_x, targets - mean_t
  n, d = xc.shape
  if n < d:  # Dual form: an (n, n) system instead of (d, d).
    w = xc.T @ np.linalg.solve(xc @ xc.T + l2_reg * np.eye(n), tc)
  else:
    w = np.linalg.solve(xc.T @ xc + l2_reg * np.eye(d), xc.T @ tc)
  return w, mean_t - mean_x @ w


def predict(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Predicted class per row of x."""
  return np.argmax(np.asarray(x, np.float64) @ w + b, axis=-1)


def sample_per_class(labels: np.ndarray, count: int, rng: np.random.Generator,
                     exclude: np.ndarray = None) -> np.ndarray:
  """Indices of `count` examples of every class (fewer where a class has fewer), seeded."""
  labels = np.asarray(labels)
  taken = (np.zeros(len(labels), bool) if exclude is None
           else np.isin(np.arange(len(labels)), exclude))
  out = []
  for c in np.unique(labels):
    pool = np.flatnonzero((labels == c) & ~taken)
    out.append(rng.permutation(pool)[:count])
  return np.sort(np.concatenate(out)) if out else np.zeros(0, int)


def evaluate(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             *, shots: Sequence[int] = DEFAULT_SHOTS, l2_regs: Sequence[float] = DEFAULT_L2_REGS,
             l2_reg: Optional[float] = None, validation_per_class: int = 5, seed: int = 0,
             num_seeds: int = 1) -> FewShotResult:
  """Few-shot test accuracy per shot count (module docstring) from frozen features."""
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  train_y, test_y = np.asarray(train_y, int).reshape(-1), np.asarray(test_y, int).reshape(-1)
  if len(train_x) != len(train_y) or len(test_x) != len(test_y):
    raise ValueError(f"features and labels differ in length: train {len(train_x)} vs "
                     f"{len(train_y)}, test {len(test_x)} vs {len(test_y)}.")
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(f"train features {train_x.shape[1:]} and test features {test_x.shape[1:]} "
                     "differ in width.")
  if int(num_seeds) < 1:
    raise ValueError(f"few-shot num_seeds={num_seeds} must be at least 1.")
  if l2_reg is not None and not float(l2_reg) >= 0.0:
    raise ValueError(f"few-shot l2_reg={l2_reg} must be >= 0 (or None: chosen from l2_regs).")
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  result = FewShotResult({}, {}, {}, {}, {})
  for k in shots:
    k = int(k)
    runs = [_one_seed(train_x, train_y, test_x, test_y, k, num_classes, l2_regs, l2_reg,
                      validation_per_class, int(seed) + i) for i in range(int(num_seeds))]
    accs = [r[0] for r in runs]
    result.seed_accuracy[k] = accs
    result.accuracy[k] = float(np.mean(accs))
    result.accuracy_std[k] = float(np.std(accs))
    result.l2_reg[k] = [r[1] for r in runs]
    result.validation_accuracy[k] = [r[2] for r in runs]
  return result


def pick_shots(train_y: np.ndarray, k: int, seed: int, validation_per_class: int,
               held_out: bool) -> tuple[np.ndarray, np.ndarray]:
  """(shots, held-out sample) of one seed: the held-out sample (empty unless `held_out`, the
  l2_reg choice) from default_rng(seed), then k per class from default_rng([seed, k]) among
  the rest."""
  validation = (sample_per_class(train_y, validation_per_class, np.random.default_rng(seed))
                if held_out else np.zeros(0, int))
  picked = sample_per_class(train_y, k, np.random.default_rng([seed, k]), exclude=validation)
  return picked, validation


def _one_seed(train_x, train_y, test_x, test_y, k, num_classes, l2_regs, l2_reg,
              validation_per_class, seed) -> tuple[float, float, Optional[float]]:
  """(test accuracy, l2 used, held-out accuracy or None) of the k-shot probe of one seed."""
  picked, validation = pick_shots(train_y, k, seed, validation_per_class, l2_reg is None)
  x, y = train_x[picked], train_y[picked]
  if l2_reg is not None:
    w, b = fit_ridge(x, y, num_classes, float(l2_reg))
    return float(np.mean(predict(w, b, test_x) == test_y)), float(l2_reg), None
  best = None
  for l2 in l2_regs:
    w, b = fit_ridge(x, y, num_classes, l2)
    acc = float(np.mean(predict(w, b, train_x[validation]) == train_y[validation]))
    if best is None or acc > best[0]:
      best = (acc, l2, w, b)
  acc, l2, w, b = best
  return float(np.mean(predict(w, b, test_x) == test_y)), float(l2), acc
