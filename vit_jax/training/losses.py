"""Train losses by name (`config.loss`): per-example losses on logits and (soft) targets.

`get(name)(logits, labels) -> (batch,)` float32; the train step takes the mean over the batch.
Labels are float (batch, classes) rows: one-hot, label-smoothed, mixup / CutMix mixtures
(rows sum to 1) or multi-hot.

* 'softmax_xent' (default): -Σ_c y_c · log softmax(z)_c. On mixed labels this *is* the
  soft-target cross-entropy of timm's SoftTargetCrossEntropy / DeiT, and it equals
  λ·CE(z, y_a) + (1-λ)·CE(z, y_b) (linear in y), so no separate mixup loss is needed.
* 'sigmoid_xent' (big_vision's `sigmoid_xent`): Σ_c [-y_c log σ(z_c) - (1-y_c) log σ(-z_c)],
  a binary cross-entropy per class, SUMMED over classes. timm's `--bce-loss`
  (BinaryCrossEntropy) takes the MEAN over classes (and batch), i.e. 1/C of this, and can
  binarise targets with `--bce-target-thresh` (not offered here); at equal learning rates
  the gradient of this loss is C times timm's. big_vision pairs it with a head bias
  initialised to -10 (`head_bias_init`), which our models do not offer.

The eval step keeps reporting softmax cross-entropy whatever config.loss is
(evaluators/classification_evaluator.make_eval_step), so eval losses compare across runs.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Loss = Callable[[jax.Array, jax.Array], jax.Array]


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy against one-hot / soft labels (float32)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(labels.astype(jnp.float32) * logp, axis=-1)


def sigmoid_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example sum over classes of sigmoid binary cross-entropy (float32, stable form)."""
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  nll = labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits)
  return -jnp.sum(nll, axis=-1)


LOSSES: dict[str, Loss] = {"softmax_xent": softmax_xent, "sigmoid_xent": sigmoid_xent}


def get(name: str) -> Loss:
  """The per-example loss called `name` (config.loss); ValueError naming the choices if unknown."""
  try:
    return LOSSES[name]
  except (KeyError, TypeError):
    raise ValueError(f"config.loss={name!r} is unknown; use one of {tuple(LOSSES)}.") from None
