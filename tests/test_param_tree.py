"""param_tree: facts read off real model init trees, checked against the configs that made them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta

from tests import official_layout as ol
from vit_jax import models, param_tree


def _shapes(model, resolution):
  x = jnp.zeros((1, resolution, resolution, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return meta.unbox(shapes["params"])


@pytest.mark.parametrize("classifier,resolution", [("token", 16), ("gap", 24)])
def test_vit_heads_and_tokens(classifier, resolution):
  cfg = ol.tiny_config(classifier=classifier)
  tree = _shapes(models.VisionTransformer(num_classes=3, **cfg), resolution)
  assert param_tree.num_heads(tree) == ol.HEADS
  assert param_tree.num_heads(param_tree.flat_view(tree)) == ol.HEADS  # flat trees too
  assert param_tree.patch_tokens(tree) == (resolution // ol.PATCH) ** 2
  assert param_tree.mixer_tokens(tree) is None


def test_mixer_tokens():
  mixer = models.MlpMixer(num_classes=3, patches={"size": (4, 4)}, hidden_dim=16, num_blocks=2,
                          tokens_mlp_dim=8, channels_mlp_dim=32)
  tree = _shapes(mixer, 24)
  assert param_tree.mixer_tokens(tree) == param_tree.patch_tokens(tree) == 36
  assert param_tree.num_heads(tree) is None


def test_heads_from_configs():
  assert param_tree.num_heads(config=ol.tiny_config()) == ol.HEADS  # our model config
  assert param_tree.num_heads(config={"num_attention_heads": 12}) == 12  # transformers
  assert param_tree.num_heads(config={"model_args": {"num_heads": 6}}) == 6  # timm
  assert param_tree.num_heads(config={"hidden_size": 768}) is None
  # A tree wins over a config that disagrees with it: the tree is what gets loaded.
  tree = {"Transformer": {"encoderblock_0": {"MultiHeadDotProductAttention_0": {
      "query": {"kernel": np.zeros((8, 2, 4))}}}}}
  assert param_tree.num_heads(tree, {"num_attention_heads": 4}) == 2


def test_flat_view_round_trip():
  nested = {"a": {"b": np.ones(2), "c": {"d": np.zeros(1)}}, "e": np.ones(3)}
  assert sorted(param_tree.flat_view(nested)) == ["a/b", "a/c/d", "e"]
  assert param_tree.flat_view({"a/b": 1}) == {"a/b": 1}
