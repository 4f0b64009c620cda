"""Google's `vit_jax.configs.models`: MODEL_CONFIGS (Google's names) / AUGREG_CONFIGS and a
`get_<name>_config()` per registered model (our registry, vit_jax/models/registry.py, is the one
home of the numbers and holds every name).

Names follow Google's rule: 'ViT-B_16' -> get_b16_config, 'R50+ViT-B_16' -> get_r50_b16_config,
'ViT-S_16-gap-norep' -> get_s16_gap_norep_config, 'Mixer-B_16' -> get_mixer_b16_config,
'testing-unpooled' -> get_testing_unpooled_config; a variant whose lower-case name would clash
keeps its capital ('ViT-G_14' -> get_G14_config beside 'ViT-g_14' -> get_g14_config).
Each returns a fresh unlocked copy. Google's five LiT configs (get_lit_b16b_config & co.) are
those of vit_jax/models/lit.py, and this MODEL_CONFIGS holds them as Google's does.
"""
import re
from typing import Callable

import ml_collections

from vit_jax.models.lit import GOOGLE_LIT_NAMES, LIT_CONFIGS, get_lit_config
from vit_jax.models.registry import *  # noqa: F401,F403  pylint: disable=wildcard-import
from vit_jax.models.registry import (  # noqa: F401
  AUGREG_CONFIGS,
  AUGREG_NAMES,
  MODEL_CONFIGS,
  canonical_name,
  create_model,
  get_model_config,
  is_mixer,
)

# The names Google's vit_jax registers (image models): this module's MODEL_CONFIGS holds
# exactly these, as Google's does (its models_test checks that); every name of ours,
# big_vision's variants included, is in vit_jax.models.registry.MODEL_CONFIGS and has a
# get_<name>_config() below, and models.get_model() takes it.
GOOGLE_NAMES = (
    "testing", "testing-unpooled", "ViT-Ti_16", "ViT-S_16", "ViT-B_16", "ViT-L_16", "ViT-H_14",
    "ViT-S_16-gap-norep", "ViT-B_16-gap-norep", "ViT-B_8", "ViT-S_32", "ViT-B_32", "ViT-L_32",
    "ViT-S_32-gap-norep", "ViT-B_32-gap-norep", "R+ViT-Ti_16", "R50+ViT-B_16", "R26+ViT-B_32",
    "R26+ViT-S_32", "R50+ViT-L_32", "Mixer-B_16", "Mixer-B_32", "Mixer-L_16")
ALL_MODEL_CONFIGS = MODEL_CONFIGS
MODEL_CONFIGS = type(ALL_MODEL_CONFIGS)({name: ALL_MODEL_CONFIGS[name] for name in GOOGLE_NAMES})
MODEL_CONFIGS.update({name: LIT_CONFIGS[name] for name in GOOGLE_LIT_NAMES})

# Google's LiT config functions.
LIT_GETTERS = {"get_lit_b16b_config": "LiT-B16B", "get_lit_b16b_2_config": "LiT-B16B_2",
               "get_lit_l16l_config": "LiT-L16L", "get_lit_l16s_config": "LiT-L16S",
               "get_lit_l16ti_config": "LiT-L16Ti"}


def function_suffix(name: str, lower: bool = True) -> str:
  """'R50+ViT-B_16' -> 'r50_b16' (the <suffix> of get_<suffix>_config)."""
  out = name.replace("ViT-", "").replace("+", "_").replace("-", "_")
  out = re.sub(r"([A-Za-z])_(\d)", r"\1\2", out)
  return out.lower() if lower else out


def _suffixes() -> dict[str, str]:
  """Lower-case suffixes; where two names would clash, the one with capitals keeps them."""
  lowered = [function_suffix(n) for n in ALL_MODEL_CONFIGS]
  return {n: function_suffix(n, lower=lowered.count(function_suffix(n)) == 1
                             or function_suffix(n, lower=False) == function_suffix(n))
          for n in ALL_MODEL_CONFIGS}


def _getter(name: str) -> Callable[[], ml_collections.ConfigDict]:
  def get_config() -> ml_collections.ConfigDict:
    return get_model_config(name)
  get_config.__doc__ = f"A fresh copy of the {name} architecture config."
  return get_config


def _lit_getter(name: str) -> Callable[[], ml_collections.ConfigDict]:
  def get_config() -> ml_collections.ConfigDict:
    return get_lit_config(name)
  get_config.__doc__ = f"A fresh copy of the {name} image-text model config."
  return get_config


GETTERS = {f"get_{suffix}_config": name for name, suffix in _suffixes().items()}
for _fn, _name in GETTERS.items():
  globals()[_fn] = _getter(_name)
  globals()[_fn].__name__ = _fn
for _fn, _name in LIT_GETTERS.items():
  globals()[_fn] = _lit_getter(_name)
  globals()[_fn].__name__ = _fn
del _fn, _name
