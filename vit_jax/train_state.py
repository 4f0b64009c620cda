"""Train state (params, optimizer state, step, RNG) created directly with its sharding.

Owns: the abstract (shape-only) state and its
NamedShardings, sharded initialisation from scratch (jit with out_shardings, so
nothing is ever materialised on one device) and from given params (fine-tuning).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from vit_jax import model_configs, optim, sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `rng` is raw uint32 key data (checkpointable)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


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

  @property
  def param_shardings(self):
    return self.state_shardings.params


def _init_params(model: nn.Module, rng: jax.Array, input_shape) -> Any:
  """model.init on zeros; returns the (boxed) 'params' collection."""
  key = jax.random.wrap_key_data(rng) if rng.dtype == jnp.uint32 else rng
  variables = model.init({"params": key, "dropout": key}, jnp.zeros(input_shape, jnp.float32),
                         train=False)
  return variables["params"]


def make_setup(model: nn.Module, tx: optax.GradientTransformation, schedule, mesh: Mesh,
               input_shape: tuple[int, ...], rules) -> StateSetup:
  """Computes the abstract state and the shardings of every leaf (params by logical rules)."""
  rng0 = jax.ShapeDtypeStruct((2,), jnp.uint32)
  boxed = jax.eval_shape(lambda r: _init_params(model, r, input_shape), rng0)
  p_shard = sharding.param_shardings(boxed, mesh, rules)
  params = nn.meta.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, params)
  repl = sharding.replicated(mesh)
  opt_shard = optax.tree_utils.tree_map_params(
      tx, lambda _, s: s, opt_abstract, p_shard,
      transform_non_params=lambda _: repl,
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  shardings = TrainState(step=repl, params=p_shard, opt_state=opt_shard, rng=repl)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_abstract, rng=rng0)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return StateSetup(model=model, tx=tx, schedule=schedule, mesh=mesh, input_shape=input_shape,
                    abstract_state=abstract, state_shardings=shardings, rules=tuple(rules))


def setup_from_config(config, mesh: Mesh, num_classes: int, total_steps: int) -> StateSetup:
  """StateSetup for the model/optimizer/input size that `config` describes."""
  model = model_configs.model_from_run_config(config, num_classes)
  tx, schedule = optim.make_optimizer(config, total_steps)
  crop = int(config.pp.crop)
  return make_setup(model, tx, schedule, mesh, (1, crop, crop, 3), sharding.logical_axis_rules(config))


def init_params(setup: StateSetup, seed: int) -> Any:
  """The params create_train_state(setup, seed) starts from (sharded on setup.mesh)."""
  def init(rng):
    init_rng, _ = jax.random.split(rng)
    return nn.meta.unbox(_init_params(setup.model, init_rng, setup.input_shape))
  return jax.jit(init, out_shardings=setup.param_shardings)(jax.random.PRNGKey(seed))


def create_train_state(setup: StateSetup, seed: int) -> TrainState:
  """A freshly initialised state, created already sharded on setup.mesh."""
  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    params = nn.meta.unbox(_init_params(setup.model, init_rng, setup.input_shape))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params), rng=train_rng)
  rng = jax.random.PRNGKey(seed)
  return jax.jit(init, out_shardings=setup.state_shardings)(rng)


def put_params(params: Any, setup: StateSetup) -> Any:
  """Places a host (numpy) param tree onto the param shardings, checking the tree matches."""
  expected = setup.abstract_state.params
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
                      opt_state=setup.tx.init(params), rng=train_rng)
  return jax.jit(init, out_shardings=setup.state_shardings)(params, jax.random.PRNGKey(seed))
