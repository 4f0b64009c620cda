"""Exponential moving average (EMA, "Polyak averaging") of the params, as DeiT / timm train with.

Config keys (defaults in configs/base.defaults()):
  ema.decay   d in [0, 1); 0 = off (no EMA params in the state, old checkpoints unchanged).
  ema.warmup  use d_t = min(d, (1 + t) / (10 + t)), t = EMA updates done before this one: the
              num_updates form of TensorFlow's tf.train.ExponentialMovingAverage, so the
              average forgets its random-init start quickly (d_0 = 0.1, d_90 = 0.91).
  ema.every   [steps] update every k-th optimizer step (k = 1: every step, as timm's
              ModelEma). The decay applies per update, so the horizon is ~every / (1 - d) steps.
The update after an optimizer step is ema <- d_t * ema + (1 - d_t) * params (float32 as the
params), inside the jitted step. The EMA params live in TrainState.ema_params with the params'
shardings, are checkpointed with the run and evaluated beside the raw ones ('ema/...').
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EmaConfig:
  """The EMA settings of a run (see the module docstring)."""
  decay: float
  warmup: bool = False
  every: int = 1


def from_config(config) -> Optional[EmaConfig]:
  """The run's EmaConfig, or None when config.ema.decay is 0; one clear error for bad values."""
  decay, every = float(config.ema.decay), int(config.ema.every)
  if decay == 0.0:
    return None
  if not 0.0 < decay < 1.0:
    raise ValueError(f"config.ema.decay={decay} must be in [0, 1) (0 = off; DeiT uses 0.99996).")
  if every < 1:
    raise ValueError(f"config.ema.every={every} must be >= 1 [steps between EMA updates].")
  return EmaConfig(decay=decay, warmup=bool(config.ema.warmup), every=every)


def decay_at(ema: EmaConfig, num_updates: jax.Array) -> jax.Array:
  """d_t for the EMA update that follows `num_updates` earlier ones (float32 scalar)."""
  decay = jnp.float32(ema.decay)
  if not ema.warmup:
    return decay
  t = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def update(ema: EmaConfig, ema_params: Any, params: Any, step: jax.Array) -> Any:
  """The EMA params after optimizer step number `step` + 1 (`step` = updates done before it).

  Every `ema.every`-th step averages the new params in; the other steps keep the EMA as is.
  """
  new_step = step + 1
  due = (new_step % ema.every) == 0
  d = decay_at(ema, step // ema.every)

  def one(e, p):
    averaged = d.astype(e.dtype) * e + (1 - d).astype(e.dtype) * p.astype(e.dtype)
    return jnp.where(due, averaged, e)
  return jax.tree.map(one, ema_params, params)


def init(params: Any) -> Any:
  """The EMA params at the start: a copy of the params (separate buffers, same shardings)."""
  return jax.tree.map(jnp.copy, params)
