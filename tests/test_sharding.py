"""Tests for vit_jax.sharding: mesh shapes, host layout, logical rules → NamedShardings."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from vit_jax import sharding
from vit_jax.models import axes

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


@pytest.mark.parametrize("mesh_config,want", [
    ((("data", -1),), (8, 1, 1)),
    ((("data", 2), ("fsdp", 4)), (2, 4, 1)),
    ((("data", 2), ("fsdp", 2), ("model", 2)), (2, 2, 2)),
    ((("fsdp", -1), ("model", 2)), (1, 4, 2)),
])
def test_make_mesh_shapes(mesh_config, want):
  mesh = sharding.make_mesh(mesh_config)
  assert mesh.axis_names == ("data", "fsdp", "model")
  assert tuple(mesh.devices.shape) == want
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize("bad,msg", [
    ((("data", 3),), "devices"),
    ((("data", -1), ("fsdp", -1)), "one -1"),
    ((("batch", -1),), "unknown"),
    ((("data", 2), ("data", 4)), "twice"),
])
def test_make_mesh_errors(bad, msg):
  with pytest.raises(ValueError, match=msg):
    sharding.make_mesh(bad)


def test_split_over_hosts_keeps_model_within_host():
  assert sharding._split_over_hosts({"data": 4, "fsdp": 2, "model": 2}, 2) == (2, 1, 1)
  assert sharding._split_over_hosts({"data": 1, "fsdp": 8, "model": 1}, 4) == (1, 4, 1)
  with pytest.raises(ValueError):
    sharding._split_over_hosts({"data": 1, "fsdp": 3, "model": 1}, 2)


class _Tiny(nn.Module):
  """Two annotated dense layers (the logical names the real models use)."""

  @nn.compact
  def __call__(self, x):
    k = self.param("kernel", axes.logical(nn.initializers.ones, "embed", "mlp"),
                   (x.shape[-1], 16))
    head = self.param("head", axes.logical(nn.initializers.ones, "embed", "classes"), (16, 10))
    bias = self.param("bias", nn.initializers.zeros, (10,))  # Unannotated: replicated.
    return x @ k @ head + bias


def _tiny_init(rng):
  return _Tiny().init(rng, jnp.zeros((1, 8)))["params"]


def test_param_layout_reads_the_annotations_init_does_not_return():
  # model.init gives plain arrays, as Google's vit_jax and every Flax example.
  params = _tiny_init(jax.random.PRNGKey(0))
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(params))
  abstract, logical = sharding.param_layout(_tiny_init, jax.random.PRNGKey(0))
  assert logical == {"kernel": P("embed", "mlp"), "head": P("embed", "classes"), "bias": P()}
  assert jax.tree.map(lambda x: x.shape, abstract) == {"kernel": (8, 16), "head": (16, 10),
                                                       "bias": (10,)}
  # The annotation switch stays inside param_layout, and a later jit of the same function
  # traces plain arrays (its trace is not the one param_layout made).
  assert not any(isinstance(v, nn.LogicallyPartitioned)
                 for v in jax.tree.leaves(jax.jit(_tiny_init)(jax.random.PRNGKey(0)),
                                          is_leaf=lambda v: isinstance(v, nn.Partitioned)))
  assert sharding.param_layout(_tiny_init, jax.random.PRNGKey(0))[1] == logical


def test_param_shardings_follow_rules():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  boxed, logical = sharding.param_layout(_tiny_init, jax.random.PRNGKey(0))
  rules = sharding.logical_axis_rules(ml_collections.ConfigDict({"mesh": (), "sharding_rules": ()}))
  sh = sharding.param_shardings(boxed, logical, mesh, rules)
  assert sh["bias"].spec == P(None)
  assert sh["kernel"].spec == P("fsdp", "model")
  # 'classes' is replicated by default; embed→fsdp.
  assert sh["head"].spec == P("fsdp", None)
  # A config rule overrides the default; an axis that does not divide the dim is dropped.
  rules = sharding.logical_axis_rules(ml_collections.ConfigDict(
      {"mesh": (), "sharding_rules": (("classes", "model"), ("mlp", ("fsdp", "model")))}))
  sh = sharding.param_shardings(boxed, logical, mesh, rules)
  assert sh["head"].spec == P("fsdp", "model")       # 10 classes over model=2 divides.
  assert sh["kernel"].spec == P("fsdp", None)       # flax never maps one mesh axis twice.


def test_fit_spec_drops_non_dividing_axes():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
  assert sharding._fit_spec(P("fsdp", None), (10, 3), mesh) == P(None, None)
  assert sharding._fit_spec(P("fsdp"), (12, 3), mesh) == P("fsdp", None)
  assert sharding._fit_spec(P(("data", "fsdp")), (16,), mesh) == P(("data", "fsdp"))


def test_bytes_per_device_and_batch_sharding():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
  x = jax.ShapeDtypeStruct((8, 4), jnp.float32)
  assert sharding.bytes_per_device([x], [sharding.replicated(mesh)]) == 8 * 4 * 4
  assert sharding.bytes_per_device([x], [sharding.batch_sharding(mesh)]) == 4 * 4
  arr = jax.device_put(np.arange(32.0).reshape(8, 4), sharding.batch_sharding(mesh))
  assert {s.data.shape for s in arr.addressable_shards} == {(1, 4)}
  assert sharding.batch_shards(mesh) == 8
