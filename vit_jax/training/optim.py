"""Optimizers and learning-rate schedules (optax) built from the experiment config.

Config keys read here (units in brackets; every default lives in configs/base.defaults()):
  optimizer: one of OPTIMIZERS: 'sgd' (momentum; the published fine-tune recipe) | 'adamw'
    (pretraining) | 'adafactor' (big_vision's variant, ViT-g/G) | 'lion'.
  base_lr [lr at the end of warmup], warmup_steps [steps], decay_type: 'cosine' | 'linear' |
    'rsqrt' | 'constant', end_lr [final lr for cosine/linear],
    rsqrt_timescale [steps; 0 = warmup_steps].
  momentum (sgd; adafactor's first-moment EMA, 0 = none), optim_dtype (dtype of the momentum /
    Adam / Lion first moment: 'float32' or 'bfloat16'; None = param dtype).
  b1, b2 (adamw); lion_b1, lion_b2 (lion); adafactor_decay_rate, adafactor_beta2_cap,
    adafactor_min_dim_size_to_factor, adafactor_clipping_threshold, adafactor_epsilon.
  weight_decay (adamw, adafactor, lion). Weight decay is decoupled and scaled by the lr schedule
    (as optax.adamw: p -= lr_t * weight_decay * p), so weight_decay=0.1 with lr 1e-3 is the
    AugReg paper's "wd 0.1" (= big_vision's decoupled wd 1e-4). Only kernels decay:
    biases, norm scales, position embeddings and the class token do not.
  grad_norm_clip: global-norm clipping threshold (None or 0 = off).
  param_groups, layer_decay: per-parameter lr / wd multipliers, freezing and layer-wise lr
    decay (param_groups.py). Off (the defaults) the chain is exactly the one above, so old
    checkpoints' optimizer states restore; on, it is param_groups.transform around the same
    optimizer (decoupled decay per parameter: weight_decay x wd_mult on kernels).
Adafactor is big_vision's `scale_by_adafactor` (Zhai et al. 2022, "Scaling Vision
Transformers"): optax.scale_by_factored_rms with beta2_t = min(cap, 1 - t^-decay_rate), optional
block-RMS update clipping, then an EMA (not debiased) first moment in optim_dtype. On a scanned
stack ('Transformer/encoderblock/...', axis 0 = layer) it runs per layer, as on the unscanned
model, so biases and norm scales are never factored across layers. Adafactor's and Lion's
bfloat16 moments are updated in float32 and stored in bfloat16 (`float32_arithmetic`).
Also `total_steps(config, num_train_examples)`: the run length in steps from total_steps or
total_epochs (the schedule, the trainer and the dry run all take it from here).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from vit_jax import batching
from vit_jax.training import param_groups

Schedule = Callable[[Any], Any]
OPTIMIZERS = ("sgd", "adamw", "adafactor", "lion")


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


def _stage_scaled(schedule: Schedule, stages, batch: int) -> Schedule:
  """schedule(step) times the batch of step's resolution stage over `batch`."""
  starts = jnp.asarray([s.start for s in stages])
  factors = jnp.asarray([s.batch / batch for s in stages], jnp.float32)

  def scaled(step):
    index = jnp.sum(starts <= step) - 1
    return schedule(step) * factors[index]
  return scaled


def make_optimizer(config, total_steps: int, groups: Optional[param_groups.Groups]
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """Returns (clip → optimizer chain, lr schedule) for `config` under its parameter groups
  (`param_groups.from_config(config)`, parsed once by the caller; None = no groups)."""
  schedule = make_schedule(config, total_steps)
  stages = batching.resolution_stages(config)
  if stages and config.resolution_schedule_scale_lr:  # lr x stage batch / config.batch
    schedule = _stage_scaled(schedule, stages, int(config.batch))
  name = config.optimizer
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer={name!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")
  if groups is None:
    return _chain(config, schedule), schedule
  if name == "sgd" and any(r.wd_mult != 1.0 for r in groups.rules):
    raise ValueError("config.param_groups sets wd_mult, but optimizer='sgd' has no weight "
                     f"decay; use one of {', '.join(OPTIMIZERS[1:])} or drop wd_mult.")
  tx = param_groups.transform(groups, lambda wd_mult_of: _chain(config, schedule, wd_mult_of))
  return tx, schedule


def _chain(config, schedule: Schedule,
           wd_mult_of: Optional[Callable[[str], float]] = None) -> optax.GradientTransformation:
  """clip → SGD-momentum, or a scaling (Adam / Adafactor / Lion) → decoupled decay → lr. With
  `wd_mult_of` (parameter path → multiplier) the decay is per parameter."""
  acc_dtype = _dtype(config.optim_dtype)
  weight_decay = float(config.weight_decay)
  if config.optimizer == "sgd":
    opt = optax.sgd(schedule, momentum=config.momentum, accumulator_dtype=acc_dtype)
  elif config.optimizer == "adamw" and wd_mult_of is None:  # optax.adamw's own state tree.
    opt = optax.adamw(schedule, b1=config.b1, b2=config.b2,
                      mu_dtype=acc_dtype, weight_decay=weight_decay, mask=decay_mask)
  else:
    decay = (optax.add_decayed_weights(weight_decay, mask=decay_mask) if wd_mult_of is None
             else _decayed_weights_by_path(weight_decay, wd_mult_of))
    opt = optax.chain(_scaling(config, acc_dtype), decay, optax.scale_by_learning_rate(schedule))
  clip = config.grad_norm_clip
  if clip:
    opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
  return opt


def _scaling(config, acc_dtype) -> optax.GradientTransformation:
  """The lr-free direction of adamw, adafactor or lion (what comes before decay and lr)."""
  if config.optimizer == "adamw":
    return optax.scale_by_adam(b1=config.b1, b2=config.b2, mu_dtype=acc_dtype)
  if config.optimizer == "lion":
    return float32_arithmetic(optax.scale_by_lion(
        b1=float(config.lion_b1), b2=float(config.lion_b2), mu_dtype=acc_dtype))
  threshold = config.adafactor_clipping_threshold
  return per_layer(float32_arithmetic(scale_by_adafactor(
      decay_rate=float(config.adafactor_decay_rate), beta2_cap=float(config.adafactor_beta2_cap),
      min_dim_size_to_factor=int(config.adafactor_min_dim_size_to_factor),
      clipping_threshold=float(threshold) if threshold else None,
      momentum=float(config.momentum or 0.0), momentum_dtype=acc_dtype,
      epsilon=float(config.adafactor_epsilon))))


def float32_arithmetic(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with its low-precision float state (a bfloat16 moment) upcast to float32 for the update
  and stored back in its own dtype: otherwise `decay * moment` is a bfloat16 product and the
  decay itself rounds (0.9 -> 0.8984, 0.99 -> 0.9883)."""
  def low(x):
    return jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize < 4

  def update(updates, state, params=None):
    wide = jax.tree.map(lambda x: x.astype(jnp.float32) if low(x) else x, state)
    updates, new = tx.update(updates, wide, params)
    return updates, jax.tree.map(lambda n, x: n.astype(x.dtype), new, state)

  return optax.GradientTransformation(tx.init, update)


def scale_by_adafactor(decay_rate: float = 0.8, beta2_cap: float = 0.999,
                       min_dim_size_to_factor: int = 32, clipping_threshold: Optional[float] = None,
                       momentum: float = 0.9, momentum_dtype: Any = jnp.bfloat16,
                       epsilon: float = 1e-30) -> optax.GradientTransformation:
  """big_vision's Adafactor direction: factored RMS scaling → block-RMS clip → EMA momentum."""
  def beta2(count, rate):  # count = updates done before this one; t = count + 1.
    return jnp.minimum(beta2_cap, 1.0 - (jnp.asarray(count, jnp.float32) + 1.0) ** -rate)

  parts = [optax.scale_by_factored_rms(factored=True, decay_rate=decay_rate,
                                       min_dim_size_to_factor=min_dim_size_to_factor,
                                       epsilon=epsilon, decay_rate_fn=beta2)]
  if clipping_threshold:
    parts.append(optax.clip_by_block_rms(clipping_threshold))
  if momentum:
    parts.append(optax.ema(momentum, debias=False, accumulator_dtype=momentum_dtype))
  return optax.chain(*parts)


def is_stacked(path: str) -> bool:
  """Whether a '/'-joined parameter path is in a scanned stack (models/transformer.py's
  scan_layers: one 'Transformer/encoderblock' subtree, axis 0 = layer)."""
  return path.startswith(_STACKED)


_STACKED = "Transformer/encoderblock/"


def per_layer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` applied to each layer of a scanned stack separately (vmap over axis 0) and to the other
  leaves as they are; a tree without a stack gets `tx` itself (the same state tree)."""
  layered = optax.GradientTransformation(jax.vmap(tx.init), jax.vmap(tx.update))

  def labels(tree):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "layers" if is_stacked(param_groups.path_str(p)) else "flat", tree)

  def inner(tree) -> optax.GradientTransformation:
    present = set(jax.tree.leaves(labels(tree)))
    if "layers" not in present:
      return tx
    return optax.multi_transform({"flat": tx, "layers": layered}, labels)

  def init(params):
    return inner(params).init(params)

  def update(updates, state, params=None):
    return inner(updates).update(updates, state, params)

  return optax.GradientTransformation(init, update)


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
  return max(int(config.total_epochs * num_train_examples // batching.images_per_step(config)),
             1)
