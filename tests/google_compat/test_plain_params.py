"""`model.init` returns plain arrays, so code written for Google's models that walks the tree
works unchanged: flatten by names, np.savez, load with our loader; shapes in a notebook."""
import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vit_jax import checkpoint, models
from vit_jax.configs import models as models_config

FAMILIES = {"ViT": "testing", "ViT-unpooled": "testing-unpooled"}


def _names_and_values(tree, prefix=""):
  """Google's test_utils traversal, written out: sorted dict keys joined by '/', dataclasses
  through flax's state dict; anything else is a leaf (a box would be one, with no array)."""
  if dataclasses.is_dataclass(tree):
    tree = flax.serialization.to_state_dict(tree)
  if isinstance(tree, (dict, flax.core.FrozenDict)):
    for key in sorted(tree):
      yield from _names_and_values(tree[key], f"{prefix}{key}/")
  else:
    yield prefix.rstrip("/"), tree


def _tiny(family):
  if family == "Mixer":
    return models.MlpMixer(num_classes=1, patches={"size": (4, 4)}, hidden_dim=8,
                           num_blocks=1, tokens_mlp_dim=4, channels_mlp_dim=8)
  if family == "R+ViT":
    config = models_config.get_r_ti16_config()
    config.resnet.num_layers = (1,)
    config.transformer.num_layers = 1
    return models.VisionTransformer(num_classes=1, **config)
  return models.VisionTransformer(num_classes=1, **models_config.MODEL_CONFIGS[FAMILIES[family]])


@pytest.mark.parametrize("family", ["ViT", "ViT-unpooled", "R+ViT", "Mixer"])
def test_google_tree_walking_code_saves_a_checkpoint_our_loader_reads(family, tmp_path):
  model = _tiny(family)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
      jnp.ones([1, 32, 32, 3], jnp.float32))
  params = jax.device_get(variables["params"])
  # A notebook's shape listing: every leaf is an array with a shape, no boxes, no `.value`.
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert all(isinstance(s, tuple) for s in jax.tree.leaves(shapes, is_leaf=lambda s:
                                                              isinstance(s, tuple)))
  flat = dict(_names_and_values(params))
  assert not any(k.endswith("/value") for k in flat), sorted(flat)[:5]
  assert flat.keys() == traverse_util.flatten_dict(params, sep="/").keys()
  path = tmp_path / "google.npz"
  with open(path, "wb") as f:
    np.savez(f, **flat)
  loaded = traverse_util.flatten_dict(checkpoint.load(str(path)), sep="/")
  assert loaded.keys() == flat.keys()
  for k, v in flat.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)


def test_google_checkpoint_test_flow(tmp_path):
  """Google's checkpoint_test: create_checkpoint, then load_pretrained into a 2-class init."""
  from vit_jax import test_utils  # pylint: disable=g-import-not-at-top
  config = models_config.get_testing_config()
  test_utils.create_checkpoint(config, f"{tmp_path}/testing.npz")
  model = models.VisionTransformer(num_classes=2, **config)
  variables = model.init(jax.random.PRNGKey(0), inputs=jnp.ones([1, 32, 32, 3], jnp.float32),
                         train=False)
  loaded = checkpoint.load_pretrained(pretrained_path=f"{tmp_path}/testing.npz",
                                      init_params=variables["params"], model_config=config)
  assert jax.tree.map(np.shape, loaded) == jax.tree.map(np.shape, variables["params"])
  # The head is the init's (2 classes); the body is the checkpoint's.
  np.testing.assert_array_equal(loaded["head"]["kernel"], variables["params"]["head"]["kernel"])
  saved = checkpoint.load(f"{tmp_path}/testing.npz")
  np.testing.assert_array_equal(loaded["embedding"]["kernel"], saved["embedding"]["kernel"])
