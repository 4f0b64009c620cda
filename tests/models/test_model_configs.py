"""Tests for vit_jax.models.registry (re-exported as vit_jax.configs.models): the registry of named
architectures, parameter counts (closed form + published figures), names and the factory."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from vit_jax import models
from vit_jax.configs import models as models_config
from vit_jax.models import registry

OFFICIAL = ["testing", "ViT-Ti_16", "ViT-S_16", "ViT-S_32", "ViT-B_8", "ViT-B_16", "ViT-B_32",
            "ViT-L_16", "ViT-L_32", "ViT-H_14", "R50+ViT-B_16", "R26+ViT-S_32", "R50+ViT-L_32",
            "R+ViT-Ti_16", "Mixer-B_16", "Mixer-L_16", "ViT-g_14", "ViT-G_14"]

# Published parameter counts in millions: (registry name, num_classes, resolution, count, source).
# Tolerance: half a unit of the last published digit (the figures are rounded): 0.05M for the
# timm figures (given to 0.1M), 0.5M for the Scaling-ViT figures (whole millions).
# timm = the "Params (M)" of the timm model card on huggingface.co/timm/<model> (Google's weights
# converted by R. Wightman); ViT/Mixer/Scaling-ViT papers: Dosovitskiy et al. 2021 Table 1,
# Tolstikhin et al. 2021 Table 1, Zhai et al. 2022 ("Scaling Vision Transformers") Table 2,
# which counts the backbone without a head.
PUBLISHED = [
    ("ViT-Ti_16", 1000, 224, 5.7, "timm vit_tiny_patch16_224"),
    ("ViT-S_16", 1000, 224, 22.1, "timm vit_small_patch16_224"),
    ("ViT-S_32", 1000, 224, 22.9, "timm vit_small_patch32_224"),
    ("ViT-B_8", 1000, 224, 86.6, "timm vit_base_patch8_224"),
    ("ViT-B_16", 1000, 224, 86.6, "timm vit_base_patch16_224; ViT paper 86M"),
    ("ViT-B_32", 1000, 224, 88.2, "timm vit_base_patch32_224"),
    ("ViT-L_16", 1000, 224, 304.3, "timm vit_large_patch16_224; ViT paper 307M"),
    ("ViT-L_32", 1000, 224, 306.5, "timm vit_large_patch32_224"),
    ("ViT-H_14", 1000, 224, 632.0, "timm vit_huge_patch14_224; ViT paper 632M"),
    ("R50+ViT-B_16", 1000, 384, 99.0, "timm vit_base_r50_s16_384"),
    ("R26+ViT-S_32", 1000, 224, 36.4, "timm vit_small_r26_s32_224"),
    ("R50+ViT-L_32", 1000, 224, 329.0, "timm vit_large_r50_s32_224"),
    ("R+ViT-Ti_16", 1000, 224, 6.3, "timm vit_tiny_r_s16_p8_224"),
    ("Mixer-B_16", 1000, 224, 59.9, "timm mixer_b16_224; Mixer paper 59M"),
    ("Mixer-B_32", 1000, 224, 60.3, "timm mixer_b32_224"),
    ("Mixer-L_16", 1000, 224, 208.2, "timm mixer_l16_224; Mixer paper 207M"),
    ("ViT-g_14", None, 224, 1011.0, "Scaling ViT paper, ViT-g/14"),
    ("ViT-G_14", None, 224, 1843.0, "Scaling ViT paper, ViT-G/14"),
    ("ViT-So400m_14", None, 224, 428.0, "SigLIP So400m/14 image tower (MAP head, no head), 428M"),
]


def count_params(name, num_classes, resolution):
  """Parameter count from an abstract init (jax.eval_shape: no memory, nothing compiled)."""
  config = registry.MODEL_CONFIGS[name]
  extra = {} if registry.is_mixer(config) else {"scan_layers": True}  # fast trace
  model = registry.create_model(name, num_classes, **extra)
  tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, resolution, resolution, 3)), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(tree)))


def resnet_formula(num_layers, width_factor):
  w = int(64 * width_factor)
  total = 7 * 7 * 3 * w + 2 * w
  cin = w
  for s, units in enumerate(num_layers):
    mid = w * 2 ** s
    out = 4 * mid
    for u in range(units):
      c = cin if u == 0 else out
      total += c * mid + 9 * mid * mid + mid * out + 4 * mid + 2 * out
      if u == 0:
        total += cin * out + 2 * out
    cin = out
  return total, cin


def closed_form(config, num_classes, resolution):
  """Parameter count from the architecture's formula (independent of the Flax code)."""
  p = config.patches.size[0]
  if "num_blocks" in config:
    d, t, c = config.hidden_dim, (resolution // p) ** 2, config.tokens_mlp_dim
    mlp = config.channels_mlp_dim
    block = 4 * d + 2 * t * c + t + c + 2 * d * mlp + mlp + d
    return p * p * 3 * d + d + config.num_blocks * block + 2 * d + (d + 1) * num_classes
  d, m, layers = config.hidden_size, config.transformer.mlp_dim, config.transformer.num_layers
  total, cin, stride = 0, 3, 1
  if config.get("resnet") is not None:
    total, cin = resnet_formula(config.resnet.num_layers, config.resnet.width_factor)
    stride = 4 * 2 ** max(len(config.resnet.num_layers) - 1, 0)
  token = config.classifier == "token"
  tokens = (resolution // (p * stride)) ** 2 + token
  learned_posemb = config.get("posemb", "learn") == "learn"
  total += p * p * cin * d + d + token * d + learned_posemb * tokens * d
  ln = 1 if config.get("use_bias", True) else 0  # LayerNorm bias vectors (ViT-22B: none)
  norms = 1 if config.get("parallel_block", False) else 2  # LayerNorms per block
  qkv_bias = 3 * d if config.get("use_bias", True) else 0
  qk_norm = 2 * (1 + ln) * (d // config.transformer.num_heads) if config.get("qk_norm") else 0
  block = norms * (1 + ln) * d + 4 * d * d + d + qkv_bias + qk_norm + 2 * d * m + m + d
  total += layers * block + (1 + ln) * d
  if config.classifier == "map":  # probe, attention (q, k, v, out + biases), LayerNorm, MLP
    total += d + 4 * d * d + 4 * d + 2 * d + 2 * d * m + m + d
  width = config.representation_size or d
  if config.representation_size:
    total += d * width + width
  return total + ((width + 1) * num_classes if num_classes else 0)


def test_all_official_names_registered():
  assert set(OFFICIAL) <= set(registry.MODEL_CONFIGS)
  for name, config in registry.MODEL_CONFIGS.items():
    assert config.model_name == name and config.is_locked


@pytest.mark.parametrize("name", list(registry.MODEL_CONFIGS))
def test_param_count_matches_closed_form(name):
  config = registry.MODEL_CONFIGS[name]
  assert count_params(name, 1000, 224) == closed_form(config, 1000, 224)


@pytest.mark.parametrize("name,num_classes,resolution,millions,source", PUBLISHED,
                         ids=[row[0] for row in PUBLISHED])
def test_param_count_matches_published(name, num_classes, resolution, millions, source):
  tolerance = 0.05 if source.startswith("timm") else 0.5
  got = count_params(name, num_classes, resolution) / 1e6
  assert abs(got - millions) <= tolerance + 1e-9, (name, got, millions, source)


def test_published_list_covers_every_architecture_family():
  published = {row[0] for row in PUBLISHED}
  assert set(OFFICIAL) - published == {"testing"}


def test_augreg_short_names_resolve():
  table = {"Ti_16": "ViT-Ti_16", "S_16": "ViT-S_16", "S_32": "ViT-S_32", "B_8": "ViT-B_8",
           "B_16": "ViT-B_16", "B_32": "ViT-B_32", "L_16": "ViT-L_16", "R_Ti_16": "R+ViT-Ti_16",
           "R26_S_32": "R26+ViT-S_32", "R50_L_32": "R50+ViT-L_32"}
  for short, official in table.items():
    assert short in registry.MODEL_CONFIGS
    assert registry.MODEL_CONFIGS[short].model_name == official
    assert models_config.AUGREG_CONFIGS[short].model_name == official
  name = "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0"
  assert registry.get_model_config(name).model_name == "ViT-S_16"
  assert "Ti_16" not in list(registry.MODEL_CONFIGS)  # iteration lists official names


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid names: .*ViT-B_16"):
    registry.get_model_config("ViT-X_99")
  with pytest.raises(KeyError, match="ViT-B_16"):
    registry.MODEL_CONFIGS["ViT-X_99"]  # pylint: disable=pointless-statement
  assert registry.MODEL_CONFIGS.get("ViT-X_99") is None


def test_get_model_config_returns_an_independent_copy():
  config = registry.get_model_config("ViT-B_16")
  config.transformer.dropout_rate = 0.3
  assert registry.MODEL_CONFIGS["ViT-B_16"].transformer.dropout_rate == 0.0


def test_create_model_picks_the_class_and_applies_overrides():
  mixer = registry.create_model("Mixer-B_16", 10)
  assert isinstance(mixer, models.MlpMixer) and mixer.num_classes == 10
  vit = registry.create_model("B_16", 3, classifier="gap", transformer={"dropout_rate": 0.2})
  assert isinstance(vit, models.VisionTransformer) and vit.classifier == "gap"
  assert vit.transformer["dropout_rate"] == 0.2 and vit.transformer["num_layers"] == 12


def test_colab_api_runs_with_configdict_fields():
  x = jnp.zeros((1, 32, 32, 3))
  cfg = registry.MODEL_CONFIGS["testing"]
  model = models.VisionTransformer(num_classes=10, **cfg)
  # Init traced (zeros of its shapes), apply compiled once: not op by op.
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  assert jax.jit(lambda v: model.apply(v, x, train=False))(variables).shape == (1, 10)
  mixer = models.MlpMixer(num_classes=10, **registry.MODEL_CONFIGS["Mixer-B_16"])
  assert mixer.hidden_dim == 768


def test_no_tensorflow_at_import():
  code = ("import sys, vit_jax.models, vit_jax.models.registry, vit_jax.configs.models; "
          "bad = [m for m in sys.modules "
          "if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')];"
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["testing", "Mixer-B_16"])
def test_run_config_stochastic_depth_reaches_both_families(name):
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  config = base.defaults()
  config.model_name = name
  config.model.stochastic_depth = 0.2
  model = registry.model_from_run_config(config, 10)
  assert model.stochastic_depth == 0.2


def test_mixer_stochastic_depth_drops_residual_branches():
  """The field the config sets really acts in a Mixer: train-mode outputs differ per key."""
  fields = dict(model_name="tiny-mixer", patches={"size": (4, 4)}, hidden_dim=8, num_blocks=2,
                tokens_mlp_dim=4, channels_mlp_dim=8, stochastic_depth=0.9)
  model = registry.model_from_fields(fields, None)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  # Compiled once each (eager dispatch compiles every primitive on its own).
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(1), x, train=False))(x)
  apply = jax.jit(model.apply, static_argnames="train")
  a, b = (apply(params, x, train=True, rngs={"dropout": jax.random.PRNGKey(k)}) for k in (2, 3))
  still = apply(params, x, train=False)
  assert not np.allclose(a, b) and np.allclose(still, apply(params, x, train=False))


def test_a_field_the_family_does_not_take_is_one_clear_error():
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  config = base.defaults()
  config.model_name = "Mixer-B_16"
  config.model.scan_layers = True
  with pytest.raises(ValueError,
                     match=r"MlpMixer \(Mixer-B_16\) has no field\(s\) \['scan_layers'\]"):
    registry.model_from_run_config(config, 10)


def test_run_config_overrides_skip_unset_fields_and_create_model_sets_none():
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  config = base.defaults()
  config.model_name = "ViT-B_16"
  config.model.transformer.dropout_rate = 0.3
  merged = registry.run_model_config(config)
  assert merged.transformer.dropout_rate == 0.3 and merged.transformer.num_layers == 12
  assert "scan_layers" not in merged and merged.classifier == "token"  # unset placeholders
  # Explicit overrides (create_model) may set a field to None, e.g. to drop pre_logits.
  assert registry.create_model("ViT-B_16", 3, representation_size=None).representation_size is None
