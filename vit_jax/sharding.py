"""Device mesh and shardings: the mesh from `config.mesh`, logical-axis rules, param/batch
shardings.

Owns the sharding contract (docs/architecture.md, "Sharding rules": declared, not
hand-placed). The model annotates its parameters with logical axis names ('embed', 'mlp',
'heads', ...); the config maps
them to the mesh axes 'data' (pure data parallel), 'fsdp' (batch and parameters
sharded) and 'model' (tensor parallel). Batches are sharded over ('data', 'fsdp').

Config keys read here:
  config.mesh: sequence of (axis_name, size) pairs; one size may be -1 (= the rest
    of the devices). Its default (pure data parallel) is configs.common.DEFAULT_MESH.
  config.sharding_rules: optional sequence of (logical_name, mesh_axis or None);
    it replaces the rules of `default_rules(config.mesh)` for the names it lists.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from vit_jax import runtime_defaults

runtime_defaults.apply_at_first_use()  # Before JAX starts a backend (runtime_defaults.py).

# pylint: disable=wrong-import-position
import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax import batching
from vit_jax.models import axes as model_axes

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(mesh_config: Sequence[Sequence[Any]], num_devices: int) -> dict[str, int]:
  """Returns {'data': d, 'fsdp': f, 'model': m} with -1 replaced so the product is num_devices."""
  sizes = {}
  for entry in mesh_config:
    if len(entry) != 2:
      raise ValueError(f"config.mesh entries are (axis, size) pairs, got {entry!r}.")
    name, size = entry[0], int(entry[1])
    if name not in MESH_AXES:
      raise ValueError(f"config.mesh axis {name!r} is unknown; use axes from {MESH_AXES}.")
    if name in sizes:
      raise ValueError(f"config.mesh names axis {name!r} twice: {list(mesh_config)!r}.")
    sizes[name] = size
  free = [n for n, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh may have one -1 size, got {list(mesh_config)!r}.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if fixed <= 0 or num_devices % fixed:
      raise ValueError(f"config.mesh {list(mesh_config)!r}: {num_devices} devices are not "
                       f"divisible by the fixed axis sizes (product {fixed}).")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"config.mesh {list(mesh_config)!r} has {math.prod(sizes.values())} "
                     f"devices but {num_devices} are available; use -1 for one axis to take the "
                     "rest.")
  return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def make_mesh(mesh_config: Sequence[Sequence[Any]],
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'model') mesh in the devices' physical order.

  Devices joined by a slow network form "granules": TPU slices (multi-slice, joined over
  the data-centre network; the hosts of one slice share the ICI torus) and, elsewhere, hosts.
  Across granules data (then fsdp) is split outermost; 'model' stays within a granule.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  tpu = devices[0].platform == "tpu"
  granule = ((lambda d: getattr(d, "slice_index", 0)) if tpu else (lambda d: d.process_index))
  num_granules = len({granule(d) for d in devices})
  if num_granules > 1:
    per_granule = len(devices) // num_granules
    what = "TPU slice" if tpu else "host"
    if shape["model"] > per_granule or per_granule % shape["model"]:
      raise ValueError(f"mesh axis 'model'={shape['model']} must divide the {per_granule} "
                       f"devices of one {what} (tensor parallelism stays within a {what}).")
    dcn = _split_over_hosts(shape, num_granules)
    ici = tuple(d // h for d, h in zip(dims, dcn))
    try:
      grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not tpu)
    except (ValueError, AssertionError, NotImplementedError):
      grid = np.array(sorted(devices, key=lambda d: (granule(d), d.id))).reshape(dims)
  else:
    try:
      grid = mesh_utils.create_device_mesh(dims, devices)
    except (ValueError, AssertionError, NotImplementedError):
      grid = np.array(devices).reshape(dims)
  return Mesh(grid, MESH_AXES)


def mesh_for_config(config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """The run's mesh from config.mesh, after checking the batch geometry against it.

  Raises one ValueError when config.batch / batch_eval / accum_steps do not split over
  the processes owning `devices` (default: all devices) and the mesh's batch shards.
  """
  devices = list(jax.devices() if devices is None else devices)
  mesh = make_mesh(config.mesh, devices)
  processes = len({d.process_index for d in devices})
  batching.check_batches(config, processes, batch_shards(mesh))
  for stage in batching.resolution_stages(config):  # each stage's batch splits the same way
    batching.check_batches(batching.stage_config(config, stage), processes, batch_shards(mesh))
  return mesh


def _split_over_hosts(shape: dict[str, int], num_hosts: int) -> tuple[int, int, int]:
  """How many hosts each mesh axis spans: first 'data', then 'fsdp'; 'model' never."""
  data_hosts = math.gcd(shape["data"], num_hosts)
  fsdp_hosts = num_hosts // data_hosts
  if shape["fsdp"] % fsdp_hosts:
    raise ValueError(f"mesh data={shape['data']} x fsdp={shape['fsdp']} cannot be laid out over "
                     f"{num_hosts} hosts; make data*fsdp a multiple of the host count.")
  return (data_hosts, fsdp_hosts, 1)


def default_rules(mesh_config: Sequence[Sequence[Any]] = ()) -> list[tuple[str, Any]]:
  """Logical→mesh rules: big dims go to 'fsdp' (FSDP) and heads/mlp to 'model' (tensor parallel)."""
  del mesh_config  # Rules naming axes of size 1 are harmless: those dims simply stay whole.
  return [
      ("batch", BATCH_AXES),
      ("embed", "fsdp"),
      ("mlp", "model"),
      ("heads", "model"),
      ("kv", None),
      ("classes", None),
      ("layers", None),
      ("patch", None),
      ("conv_in", None),
      ("conv_out", "fsdp"),
      ("tokens", None),
      ("repr", None),
      ("posemb", None),
      ("vocab", None),
  ]


def logical_axis_rules(config) -> list[tuple[str, Any]]:
  """The default rules with `config.sharding_rules` (if any) overriding names it mentions."""
  rules = dict(default_rules(config.mesh))
  for name, axis in (config.sharding_rules or ()):
    rules[name] = tuple(axis) if isinstance(axis, list) else axis
  return list(rules.items())


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide a dimension (e.g. 10 classes over 4 devices): those
  dimensions are replicated."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if names and dim % size == 0 else None)
  return P(*fitted)


def param_layout(init: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
  """(ShapeDtypeStructs, logical PartitionSpecs) of the params `init(*args)` returns (e.g. a
  `model.init(...)["params"]`), from one abstract trace with the models' axis annotations on.
  The one place the annotations are read: `model.init` itself returns plain arrays."""
  with model_axes.annotated_params():
    boxed = jax.eval_shape(lambda *a: init(*a), *args)  # A fresh function: its own trace.
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def param_shardings(abstract_params: Any, logical: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings of a param tree from its logical specs (`param_layout`); unannotated
  leaves replicate, mesh axes that do not divide a dimension are dropped."""
  return jax.tree.map(
      lambda spec, x: NamedSharding(
          mesh, _fit_spec(logical_to_mesh_spec(spec, rules), x.shape, mesh)),
      logical, abstract_params, is_leaf=lambda s: isinstance(s, P))


def logical_to_mesh_spec(logical: P, rules: Sequence[tuple[str, Any]]) -> P:
  """Maps logical dim names to mesh axes; unknown names and reused mesh axes stay unsharded.

  Unlike flax.linen.logical_to_mesh this allows a logical name to repeat within one array
  (e.g. ('patch', 'patch', 'patch', 'embed') for a conv kernel).
  """
  table = dict(rules)
  used, out = set(), []
  for name in logical:
    axes = table.get(name) if isinstance(name, str) else name
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if not names or used.intersection(names):
      out.append(None)
      continue
    used.update(names)
    out.append(axes if isinstance(axes, str) else tuple(names))
  return P(*out)


def activation_constrainer(mesh: Mesh, rules: Sequence[tuple[str, Any]]):
  """(logical names, shape) -> NamedSharding, for models.axes.activation_sharding."""
  def constrainer(names: tuple, shape: tuple) -> NamedSharding:
    return NamedSharding(mesh, _fit_spec(logical_to_mesh_spec(P(*names), rules), shape, mesh))
  return constrainer


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on `mesh` (scalars, the RNG key, the step)."""
  return NamedSharding(mesh, P())


def batch_shards(mesh: Mesh) -> int:
  """Number of ways a batch is split (data × fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
  """Bytes one device holds for `abstract_tree` laid out with `shardings` (largest device)."""
  total = 0
  for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard = s.shard_shape(x.shape) if hasattr(s, "shard_shape") else x.shape
    total += math.prod(shard) * np.dtype(x.dtype).itemsize
  return total
