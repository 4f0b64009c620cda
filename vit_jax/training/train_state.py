"""Train state (params, optimizer state, step, RNG, EMA params) created directly with its sharding.

Owns: the abstract (shape-only) state and its
NamedShardings, sharded initialisation from scratch (jit with out_shardings, so
nothing is ever materialised on one device) and from given params (fine-tuning).
Optimizer-state leaves take the sharding of the parameter they mirror (matched by path),
which holds for any optax chain, param groups' multi_transform included.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vit_jax import sharding
from vit_jax.models import factory
from vit_jax.training import ema, optim, param_groups


@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a step reads and writes. `rng` is raw uint32 key data (checkpointable).
  `ema_params`: the params' moving average (ema.py), None when config.ema is off; then it is
  no node of the pytree at all, so the checkpoint is the one older versions wrote (and read)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None

  def replace(self, **changes) -> "TrainState":
    return dataclasses.replace(self, **changes)


_STATE_FIELDS = ("step", "params", "opt_state", "rng")


def _state_children(state: TrainState):
  names = _STATE_FIELDS + (("ema_params",) if state.ema_params is not None else ())
  return names, state.ema_params is not None


jax.tree_util.register_pytree_with_keys(
    TrainState,
    lambda s: ([(jax.tree_util.GetAttrKey(n), getattr(s, n)) for n in _state_children(s)[0]],
               _state_children(s)[1]),
    lambda has_ema, children: TrainState(*children) if has_ema else TrainState(*children, None),
    flatten_func=lambda s: ([getattr(s, n) for n in _state_children(s)[0]], _state_children(s)[1]))


@dataclasses.dataclass
class StateSetup:
  """The static description of a run's state: module, optimizer, mesh and shardings."""
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  mesh: Mesh
  input_shape: tuple[int, ...]
  abstract_state: TrainState      # ShapeDtypeStructs carrying their shardings
  state_shardings: TrainState     # NamedShardings, same tree
  rules: Any = ()                 # logical -> mesh axis rules (params and activations)
  ema: Optional[ema.EmaConfig] = None  # EMA of the params (None = off)
  frozen: Any = None              # tree of bools, True = frozen (param_groups); None = none
  groups: Optional[param_groups.Groups] = None  # config.param_groups / layer_decay, parsed

  @property
  def param_shardings(self):
    return self.state_shardings.params


def init_model_params(model: nn.Module, rng: jax.Array, input_shape) -> Any:
  """model.init on zeros; returns the 'params' collection. A model with `init_inputs` (an
  image-text model: images and tokens) says what its keyword inputs are."""
  key = jax.random.wrap_key_data(rng) if rng.dtype == jnp.uint32 else rng
  rngs = {"params": key, "dropout": key}
  if hasattr(model, "init_inputs"):
    return model.init(rngs, **model.init_inputs(tuple(input_shape)), train=False)["params"]
  variables = model.init(rngs, jnp.zeros(input_shape, jnp.float32), train=False)
  return variables["params"]


def make_setup(model: nn.Module, tx: optax.GradientTransformation, schedule, mesh: Mesh,
               input_shape: tuple[int, ...], rules, ema_config: Optional[ema.EmaConfig] = None,
               groups: Optional[param_groups.Groups] = None) -> StateSetup:
  """Computes the abstract state and the shardings of every leaf (params by logical rules)."""
  rng0 = jax.ShapeDtypeStruct((2,), jnp.uint32)
  params, logical = sharding.param_layout(lambda r: init_model_params(model, r, input_shape), rng0)
  p_shard = sharding.param_shardings(params, logical, mesh, rules)
  opt_abstract = jax.eval_shape(tx.init, params)
  repl = sharding.replicated(mesh)
  opt_shard = opt_state_shardings(opt_abstract, params, p_shard, repl)
  ema_on = ema_config is not None
  shardings = TrainState(step=repl, params=p_shard, opt_state=opt_shard, rng=repl,
                         ema_params=p_shard if ema_on else None)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_abstract, rng=rng0, ema_params=params if ema_on else None)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return StateSetup(model=model, tx=tx, schedule=schedule, mesh=mesh, input_shape=input_shape,
                    abstract_state=abstract, state_shardings=shardings, rules=tuple(rules),
                    ema=ema_config, frozen=param_groups.frozen_tree(groups, params), groups=groups)


def opt_state_shardings(opt_abstract: Any, params: Any, param_shardings: Any, other: Any) -> Any:
  """The sharding of every optimizer-state leaf: a leaf whose path ends in a parameter's path
  (momentum, Adam moments, under any wrapper or masked partition) with that parameter's shape
  takes its sharding; counts and other leaves get `other` (replicated)."""
  by_path = {tuple(param_groups.path_str([k]) for k in p): (x.shape, s)
             for (p, x), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                  jax.tree.leaves(param_shardings))}

  def one(path, leaf):
    keys = []
    for entry in reversed(path):  # The trailing run of dict keys is the parameter's path.
      if not isinstance(entry, jax.tree_util.DictKey):
        break
      keys.insert(0, str(entry.key))
    match = by_path.get(tuple(keys))
    return match[1] if match is not None and tuple(match[0]) == tuple(leaf.shape) else other
  return jax.tree_util.tree_map_with_path(one, opt_abstract)


def setup_from_config(config, mesh: Mesh, num_classes: int, total_steps: int) -> StateSetup:
  """StateSetup for the model/optimizer/input size/EMA that `config` describes."""
  model = factory.model_from_run_config(config, num_classes)
  groups = param_groups.from_config(config)  # config.param_groups is parsed here, once.
  tx, schedule = optim.make_optimizer(config, total_steps, groups)
  crop = int(config.pp.crop)
  return make_setup(model, tx, schedule, mesh, (1, crop, crop, 3),
                    sharding.logical_axis_rules(config), ema.from_config(config), groups)


def init_params(setup: StateSetup, seed: int) -> Any:
  """The params create_train_state(setup, seed) starts from (sharded on setup.mesh)."""
  def init(rng):
    init_rng, _ = jax.random.split(rng)
    return init_model_params(setup.model, init_rng, setup.input_shape)
  return jax.jit(init, out_shardings=setup.param_shardings)(jax.random.PRNGKey(seed))


def create_train_state(setup: StateSetup, seed: int) -> TrainState:
  """A freshly initialised state, created already sharded on setup.mesh."""
  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    params = init_model_params(setup.model, init_rng, setup.input_shape)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params), rng=train_rng,
                      ema_params=ema.init(params) if setup.ema else None)
  rng = jax.random.PRNGKey(seed)
  return jax.jit(init, out_shardings=setup.state_shardings)(rng)


def put_params(params: Any, setup: StateSetup) -> Any:
  """Places a host (numpy) param tree onto the param shardings, checking the tree matches."""
  return place_params(params, setup.abstract_state.params)


def place_params(params: Any, expected: Any) -> Any:
  """Places a host (numpy) tree onto the shardings of `expected` (ShapeDtypeStructs carrying
  NamedShardings: the run's params, a teacher's), checking keys and shapes match."""
  if jax.tree.structure(params) != jax.tree.structure(expected):
    missing = _paths(expected) ^ _paths(params)
    raise ValueError(f"params do not match the model: differing keys {sorted(missing)[:10]}.")
  def place(x, abstract):
    x = np.asarray(x)
    if x.shape != abstract.shape:
      raise ValueError(f"param of shape {x.shape} does not fit the model's {abstract.shape}.")
    x = x.astype(abstract.dtype)
    return jax.make_array_from_callback(x.shape, abstract.sharding, lambda idx: x[idx])
  return jax.tree.map(place, params, expected)


def _paths(tree) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_from_params(setup: StateSetup, params: Any, seed: int) -> TrainState:
  """A step-0 state around given (e.g. pretrained) params: fresh optimizer state, sharded."""
  params = put_params(params, setup)
  def init(params, rng):
    _, train_rng = jax.random.split(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params), rng=train_rng,
                      ema_params=ema.init(params) if setup.ema else None)
  return jax.jit(init, out_shardings=setup.state_shardings)(params, jax.random.PRNGKey(seed))
