"""models/factory.py: the one place a run config becomes a model, image or image-text."""
import jax
import numpy as np
import pytest

from vit_jax.configs import base
from vit_jax.models import factory, lit, vit


def _config(name, **model):
  c = base.defaults()
  c.model_name = name
  for key, value in model.items():
    c.model[key] = value
  return c


def test_an_image_text_run_config_sets_its_towers_and_tokenizer_fields():
  c = _config("SigLIP-testing", image_model="ViT-S_16", hidden_size=48,
              out_dim=(None, 24), bias_init=-5.0)
  c.model.text.width, c.model.text.num_layers = 24, 2
  c.pp.max_len = 12
  fields = factory.run_model_config(c)
  assert fields.image.hidden_size == 48                    # image-model field -> image tower
  assert fields.image.transformer.num_layers == 12         # the rest of ViT-S_16
  assert fields.text.width == 24 and fields.text.num_layers == 2
  assert fields.text.vocab_size == 64                      # SigLIP-testing's own
  assert tuple(fields.out_dim) == (None, 24) and fields.bias_init == -5.0
  assert fields.pp["max_len"] == 12 and fields.pp["tokenizer_name"] == "bert"
  model = factory.model_from_run_config(c, 0)
  assert isinstance(model, lit.LitModel)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             **model.init_inputs((1, 32, 32, 3))))["params"]
  assert shapes["txt"]["pos_embedding"].shape == (1, 12, 24)
  assert "head" not in shapes["img"]                       # out_dim[0] None: no projection
  assert shapes["txt"]["head"]["kernel"].shape == (24, 24)
  assert shapes["b"].shape == (1,)


def test_an_image_model_refuses_two_tower_fields_and_is_unchanged_without_them():
  c = _config("ViT-B_16", out_dim=(8, 8))
  with pytest.raises(ValueError, match="two-tower .* image model"):
    factory.run_model_config(c)
  plain = factory.model_from_run_config(_config("ViT-B_16"), 10)
  assert isinstance(plain, vit.VisionTransformer) and plain.num_classes == 10


def test_with_text_settings_takes_the_model_tokenizer_where_unset():
  c = _config("LiT-testing")
  filled = factory.with_text_settings(c)
  assert (filled.pp.tokenizer, filled.pp.max_len) == ("bert", 8)
  assert c.pp.tokenizer is None                            # a copy
  assert factory.with_text_settings(_config("ViT-B_16")).pp.tokenizer is None


def test_the_image_tower_projection_starts_random_so_embeddings_have_gradients():
  c = _config("SigLIP-testing")
  model = factory.model_from_run_config(c, 0)
  params = model.init(jax.random.PRNGKey(0), **model.init_inputs((2, 32, 32, 3)))["params"]
  assert np.abs(np.asarray(params["img"]["head"]["kernel"])).sum() > 0
