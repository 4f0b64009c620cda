"""The jitted train and eval steps (explicit in/out shardings, buffer donation).

Train step: softmax cross-entropy on the (already smoothed / mixed) one-hot labels,
gradients accumulated over `accum_steps` equal micro-batches with lax.scan (the mean
equals the full-batch gradient), then the optax chain (global-norm clipping,
SGD-momentum or AdamW). Dropout keys are derived from the state's RNG and the step
number only, so a resumed run draws exactly the same random numbers.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax import sharding
from vit_jax.models import axes
from vit_jax.batching import check_accum_steps  # noqa: F401  (re-export: the notebook calls it here)
from vit_jax.train_state import StateSetup, TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy against one-hot / soft labels (float32)."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)


def _split_micro(x: jax.Array, accum_steps: int, mesh) -> jax.Array:
  """(B, ...) → (accum, B/accum, ...); micro-batch i takes every accum-th example, so each
  device keeps its own rows (no resharding) and every micro-batch is spread over all devices."""
  micro = x.shape[0] // accum_steps
  x = x.reshape((micro, accum_steps) + x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def make_loss_and_grad(setup: StateSetup, accum_steps: int) -> Callable:
  """Returns f(params, batch, rng) -> (loss, accuracy, grads) averaged over micro-batches."""
  model = setup.model
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def loss_fn(params, images, labels, rng):
    with axes.activation_sharding(constrainer):
      logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    loss = cross_entropy(logits, labels).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
    return loss, acc

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grad(params, batch, rng):
    if accum_steps == 1:
      (loss, acc), grads = grad_fn(params, batch["image"], batch["label"], rng)
      return loss, acc, grads
    images = _split_micro(batch["image"], accum_steps, setup.mesh)
    labels = _split_micro(batch["label"], accum_steps, setup.mesh)

    def body(carry, xs):
      i, img, lab = xs
      (loss, acc), grads = grad_fn(params, img, lab, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (loss, acc, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), images, labels))
    return jax.tree.map(lambda t: t / accum_steps, total)

  return loss_and_grad


def make_train_step(setup: StateSetup, accum_steps: int = 1) -> Callable:
  """jit(train_step)(state, batch) -> (state, metrics); donates the state's buffers."""
  loss_and_grad = make_loss_and_grad(setup, accum_steps)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    step_rng = jax.random.fold_in(state.rng, state.step)
    loss, acc, grads = loss_and_grad(state.params, batch, step_rng)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.global_norm(grads),
               "lr": jnp.asarray(setup.schedule(state.step), jnp.float32)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  batch_shard = sharding.batch_sharding(setup.mesh)
  repl = sharding.replicated(setup.mesh)
  return jax.jit(train_step, in_shardings=(setup.state_shardings, batch_shard),
                 out_shardings=(setup.state_shardings, repl), donate_argnums=(0,))


def make_eval_step(setup: StateSetup, topk: int = 5, per_class: bool = False) -> Callable:
  """jit(eval_step)(params, batch) -> {'loss_sum', 'correct', 'correct_topk', 'count'} sums over
  unmasked examples (with per_class: 'class_count' and 'class_correct', (classes,) each)."""
  model = setup.model
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def eval_step(params: Any, batch: dict[str, jax.Array]):
    with axes.activation_sharding(constrainer):
      logits = model.apply({"params": params}, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    label, pred = jnp.argmax(batch["label"], -1), jnp.argmax(logits, -1)
    correct = (pred == label).astype(jnp.float32)
    k = min(int(topk), logits.shape[-1])
    in_topk = jnp.any(jax.lax.top_k(logits, k)[1] == label[:, None], axis=-1)
    out = {"loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
           "correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
           "correct_topk": jnp.sum(in_topk.astype(jnp.float32) * mask)}
    if "real" in batch:  # ReaL: right when the prediction is in the set; empty sets skipped
      real = batch["real"]
      hit = jnp.take_along_axis(real, pred[:, None], axis=-1)[:, 0]
      out["real_correct"] = jnp.sum(hit * mask)
      out["real_count"] = jnp.sum((jnp.sum(real, -1) > 0).astype(jnp.float32) * mask)
    if per_class:
      onehot = jax.nn.one_hot(label, logits.shape[-1]) * mask[:, None]
      out["class_count"] = jnp.sum(onehot, axis=0)
      out["class_correct"] = jnp.sum(onehot * correct[:, None], axis=0)
    return out

  batch_shard = sharding.batch_sharding(setup.mesh)
  return jax.jit(eval_step, in_shardings=(setup.param_shardings, batch_shard),
                 out_shardings=sharding.replicated(setup.mesh))


def make_feature_step(setup: StateSetup) -> Callable:
  """jit(feature_step)(params, images) -> the model's pre-logits (the pooled representation,
  after pre_logits when there is one): the model without its head, on the run's sharding.
  `params` may include the head; it is not used."""
  model = setup.model.clone(num_classes=None)
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def feature_step(params: Any, images: jax.Array):
    with axes.activation_sharding(constrainer):
      return model.apply({"params": {k: v for k, v in params.items() if k != "head"}}, images,
                         train=False)

  return jax.jit(feature_step)


def abstract_batch(config, num_classes: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global train batch as ShapeDtypeStructs on the batch sharding (nothing allocated)."""
  crop = int(config.pp.crop)
  bsh = sharding.batch_sharding(mesh)
  shapes = {"image": (config.batch, crop, crop, 3), "label": (config.batch, num_classes)}
  return {k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=bsh) for k, shape in shapes.items()}


def compile_train_step(setup: StateSetup, config, num_classes: int) -> Any:
  """The train step the trainer runs, lowered and compiled for the abstract state and batch.

  The trainer, the dry run and the benchmarks all compile through here, so what the dry run
  reports (memory, FLOPs) is what the run executes.
  """
  step_fn = make_train_step(setup, int(config.accum_steps))
  return step_fn.lower(setup.abstract_state, abstract_batch(config, num_classes, setup.mesh)).compile()
