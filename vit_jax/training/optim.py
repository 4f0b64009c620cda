"""Optimizers and learning-rate schedules (optax) built from the experiment config.

Config keys read here (units in brackets; every default lives in configs/base.defaults()):
  optimizer: 'sgd' (momentum; the published fine-tune recipe) | 'adamw' (pretraining).
  base_lr [lr at the end of warmup], warmup_steps [steps], decay_type: 'cosine' | 'linear' |
    'rsqrt' | 'constant', end_lr [final lr for cosine/linear],
    rsqrt_timescale [steps; 0 = warmup_steps].
  momentum (sgd), optim_dtype (dtype of the momentum / Adam first moment:
    'float32' or 'bfloat16'; None = param dtype).
  b1, b2, weight_decay (adamw). Weight decay is decoupled and scaled by the lr schedule
    (optax.adamw: p -= lr_t * weight_decay * p), so weight_decay=0.1 with lr 1e-3 is the
    AugReg paper's "wd 0.1" (= big_vision's decoupled wd 1e-4). Only kernels decay:
    biases, norm scales, position embeddings and the class token do not.
  grad_norm_clip: global-norm clipping threshold (None or 0 = off).
  param_groups, layer_decay: per-parameter lr / wd multipliers, freezing and layer-wise lr
    decay (param_groups.py). Off (the defaults) the chain is exactly the one above, so old
    checkpoints' optimizer states restore; on, it is param_groups.transform around the same
    optimizer (AdamW's decoupled decay per parameter: weight_decay x wd_mult on kernels).
Also `total_steps(config, num_train_examples)`: the run length in steps from total_steps or
total_epochs (the schedule, the trainer and the dry run all take it from here).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from vit_jax.training import param_groups

Schedule = Callable[[Any], Any]


def make_schedule(config, total_steps: int) -> Schedule:
  """Linear warmup from 0 to base_lr over warmup_steps, then the configured decay to end_lr."""
  base_lr = float(config.base_lr)
  warmup = int(config.warmup_steps)
  end_lr = float(config.end_lr)
  decay_type = config.decay_type
  if warmup > total_steps:
    raise ValueError(f"warmup_steps={warmup} exceeds total_steps={total_steps}; lower "
                     "--config.warmup_steps.")
  decay_steps = max(total_steps - warmup, 1)
  if decay_type == "cosine":
    decay = optax.cosine_decay_schedule(base_lr, decay_steps,
                                        alpha=end_lr / base_lr if base_lr else 0.0)
  elif decay_type == "linear":
    decay = optax.linear_schedule(base_lr, end_lr, decay_steps)
  elif decay_type == "constant":
    decay = optax.constant_schedule(base_lr)
  elif decay_type == "rsqrt":
    timescale = float(config.rsqrt_timescale or max(warmup, 1))
    decay = lambda s: base_lr * jax.lax.rsqrt(1.0 + s / timescale)
  else:
    raise ValueError(f"decay_type={decay_type!r} is unknown; use 'cosine', 'linear', 'rsqrt' or "
                     "'constant'.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), decay], [warmup])


def decays(path: Any) -> bool:
  """Whether the leaf at a jax key path gets weight decay: only 'kernel' leaves (not biases,
  norms, posemb, cls)."""
  return getattr(path[-1], "key", None) == "kernel"


def decay_mask(params: Any) -> Any:
  """True for the leaves that get weight decay (`decays`)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def _dtype(name):
  return None if name in (None, "", "none", "None") else jnp.dtype(name)


def make_optimizer(config, total_steps: int, groups: Optional[param_groups.Groups]
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """Returns (clip → optimizer chain, lr schedule) for `config` under its parameter groups
  (`param_groups.from_config(config)`, parsed once by the caller; None = no groups)."""
  schedule = make_schedule(config, total_steps)
  name = config.optimizer
  if name not in ("sgd", "adamw"):
    raise ValueError(f"optimizer={name!r} is unknown; use 'sgd' or 'adamw'.")
  if groups is None:
    return _chain(config, schedule), schedule
  if name == "sgd" and any(r.wd_mult != 1.0 for r in groups.rules):
    raise ValueError("config.param_groups sets wd_mult, but optimizer='sgd' has no weight "
                     "decay; use optimizer='adamw' or drop wd_mult.")
  tx = param_groups.transform(groups, lambda wd_mult_of: _chain(config, schedule, wd_mult_of))
  return tx, schedule


def _chain(config, schedule: Schedule,
           wd_mult_of: Optional[Callable[[str], float]] = None) -> optax.GradientTransformation:
  """clip → SGD-momentum or AdamW. With `wd_mult_of` (parameter path → multiplier) AdamW's
  decay is per parameter (the same maths as optax.adamw, whose state it keeps)."""
  acc_dtype = _dtype(config.optim_dtype)
  if config.optimizer == "sgd":
    opt = optax.sgd(schedule, momentum=config.momentum, accumulator_dtype=acc_dtype)
  elif wd_mult_of is None:
    opt = optax.adamw(schedule, b1=config.b1, b2=config.b2,
                      mu_dtype=acc_dtype, weight_decay=config.weight_decay, mask=decay_mask)
  else:
    opt = optax.chain(optax.scale_by_adam(b1=config.b1, b2=config.b2, mu_dtype=acc_dtype),
                      _decayed_weights_by_path(float(config.weight_decay), wd_mult_of),
                      optax.scale_by_learning_rate(schedule))
  clip = config.grad_norm_clip
  if clip:
    opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
  return opt


def _decayed_weights_by_path(weight_decay: float, wd_mult_of: Callable[[str], float]
                             ) -> optax.GradientTransformation:
  """u + weight_decay x wd_mult(path) x p on the leaves that decay (`decays`), u elsewhere."""
  def update(updates, state, params):
    def one(path, u, p):
      coeff = weight_decay * wd_mult_of(param_groups.path_str(path)) if decays(path) else 0.0
      return u if coeff == 0.0 else u + coeff * p
    return jax.tree_util.tree_map_with_path(one, updates, params), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def total_steps(config, num_train_examples: int) -> int:
  """config.total_steps, else config.total_epochs × examples / batch (rounded down, >= 1)."""
  if config.total_steps:
    return int(config.total_steps)
  if not config.total_epochs:
    raise ValueError("set --config.total_steps (steps) or --config.total_epochs (epochs).")
  return max(int(config.total_epochs * num_train_examples // config.batch), 1)
