"""Google's pmap-style training pieces: `create_learning_rate_schedule`, `accumulate_gradient`
and `make_update_fn(apply_fn=, accum_steps=, tx=)`, as its Colab calls them.

Our trainer uses jit over a mesh (train_step.py); these exist so code written for Google's
vit_jax keeps working. The schedule is our optim.make_schedule (one formula), the loss our
train_step.cross_entropy.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax.google_compat import schema


def create_learning_rate_schedule(total_steps: int, base: float, decay_type: str,
                                  warmup_steps: int, linear_end: float = schema.LINEAR_END
                                  ) -> Callable[[Any], jax.Array]:
  """step -> float32 lr: linear warmup to `base`, then 'cosine' (to 0) or 'linear' (to
  `linear_end`) decay over the remaining steps; constant past total_steps."""
  from vit_jax.training import optim  # pylint: disable=g-import-not-at-top
  if decay_type not in ("cosine", "linear"):
    raise ValueError(f"decay_type={decay_type!r}: use 'cosine' or 'linear'.")
  config = ml_collections.ConfigDict(dict(
      base_lr=float(base), warmup_steps=int(warmup_steps), decay_type=decay_type,
      end_lr=float(linear_end) if decay_type == "linear" else 0.0, rsqrt_timescale=0))
  schedule = optim.make_schedule(config, int(total_steps))
  return lambda step: jnp.asarray(schedule(step), jnp.float32)


def accumulate_gradient(loss_and_grad_fn: Callable, params: Any, images: jax.Array,
                        labels: jax.Array, accum_steps: int) -> tuple[jax.Array, Any]:
  """Mean (loss, grads) of `loss_and_grad_fn(params, images, labels)` over `accum_steps`
  contiguous micro-batches (equal to the full-batch value; less activation memory)."""
  if not accum_steps or accum_steps == 1:
    return loss_and_grad_fn(params, images, labels)
  if images.shape[0] % accum_steps:
    raise ValueError(f"accum_steps={accum_steps} does not divide the per-device batch of "
                     f"{images.shape[0]}; choose a divisor.")
  split = lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

  def body(total, xs):
    value = loss_and_grad_fn(params, *xs)
    return jax.tree.map(jnp.add, total, value), None

  zeros = jax.eval_shape(loss_and_grad_fn, params, split(images)[0], split(labels)[0])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
  total, _ = jax.lax.scan(body, zeros, (split(images), split(labels)))
  return jax.tree.map(lambda t: t / accum_steps, total)


def make_update_fn(*, apply_fn: Callable, accum_steps: int,
                   tx: optax.GradientTransformation) -> Callable:
  """pmap(update)(params, opt_state, batch, rng) -> (params, opt_state, loss, rng), over axis
  'batch': softmax cross-entropy on one-hot labels, gradients accumulated over accum_steps
  and averaged over devices, then `tx`. Dropout gets a key per device and step."""
  from vit_jax.training import train_step  # pylint: disable=g-import-not-at-top

  def update(params, opt_state, batch, rng):
    rng, next_rng = jax.random.split(rng)
    dropout_rng = jax.random.fold_in(rng, jax.lax.axis_index("batch"))

    def loss(p, images, labels):
      logits = apply_fn({"params": p}, images, train=True, rngs={"dropout": dropout_rng})
      return jnp.mean(train_step.cross_entropy(logits, labels))

    value, grads = accumulate_gradient(jax.value_and_grad(loss), params, batch["image"],
                                       batch["label"], accum_steps)
    grads = jax.lax.pmean(grads, axis_name="batch")
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            jax.lax.pmean(value, axis_name="batch"), next_rng)

  return jax.pmap(update, axis_name="batch", donate_argnums=(0,))
