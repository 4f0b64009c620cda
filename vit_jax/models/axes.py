"""Logical axis names of the model parameters (docs/architecture.md, "Sharding rules").

Owns the helper that tags a parameter initializer with logical axis names. `model.init`
returns plain arrays (as every Flax model and Google's vit_jax do); only inside
`annotated_params()` -- which `vit_jax.sharding.param_layout` enters for one abstract init --
does a tagged parameter come out as an `nn.LogicallyPartitioned` box carrying its names.
`vit_jax.sharding` maps the names to mesh axes; the models never see a mesh.

Names: 'embed' (hidden dim), 'mlp' (MLP hidden), 'heads', 'kv' (head dim),
'classes', 'layers' (scan axis), 'patch' (conv spatial / patch input dims),
'conv_in' / 'conv_out' (ResNet channels), 'tokens' (Mixer token dim),
'repr' (pre_logits out), 'posemb' (token-position axis), 'vocab' (a text tower's token table).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import flax.linen as nn
import jax

Initializer = Callable[..., Any]
# (logical names, shape) -> a jax.sharding.Sharding, set by `activation_sharding` (sharding.py).
_constrainer: Optional[Callable[[tuple, tuple], Any]] = None
# Depth of `annotated_params()` contexts: > 0 while sharding.param_layout traces an init.
_annotating = 0


def logical(init: Initializer, *names: Optional[str]) -> Initializer:
  """`init` tagged with the logical axis `names`: a plain array, or a box carrying the names
  inside `annotated_params()`."""
  boxed = nn.with_logical_partitioning(init, tuple(names))

  def initializer(*args: Any, **kwargs: Any) -> Any:
    return boxed(*args, **kwargs) if _annotating else init(*args, **kwargs)
  return initializer


@contextlib.contextmanager
def annotated_params() -> Iterator[None]:
  """Within it, tagged parameters are created as `nn.LogicallyPartitioned` boxes. Only for a
  trace of a fresh function (jax caches traces by function, not by this switch)."""
  global _annotating
  _annotating += 1
  try:
    yield
  finally:
    _annotating -= 1


@contextlib.contextmanager
def activation_sharding(constrainer: Optional[Callable[[tuple, tuple], Any]]) -> Iterator[None]:
  """Within it, `constrain` pins activations to `constrainer(names, shape)` (the train step's)."""
  global _constrainer
  previous, _constrainer = _constrainer, constrainer
  try:
    yield
  finally:
    _constrainer = previous


def constrain(x: jax.Array, *names: Optional[str]) -> jax.Array:
  """Annotates an activation with logical axis names ('batch', 'mlp', ...); a no-op outside
  `activation_sharding`. Without it GSPMD may keep FSDP weights sharded and instead
  replicate and all-reduce whole-batch activations (seen in the TPU dry run of ViT-H/14)."""
  if _constrainer is None:
    return x
  return jax.lax.with_sharding_constraint(x, _constrainer(tuple(names), tuple(x.shape)))
