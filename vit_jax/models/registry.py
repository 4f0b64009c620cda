"""The named architectures: MODEL_CONFIGS, AugReg short names, get_model_config, create_model.

Owns the registry of model configurations (ml_collections ConfigDicts, locked)
under the official names of gs://vit_models and gs://mixer_models ('ViT-B_16',
'R50+ViT-B_16', 'Mixer-B_16', ...), the ViT-g/14 and ViT-G/14 sizes of "Scaling
Vision Transformers" (Zhai et al. 2021), and the AugReg short names used in
gs://vit_models/augreg/index.csv ('B_16', 'R26_S_32', 'R_Ti_16', ...; the part of
a checkpoint file name before the first '-'), which resolve to the same configs.

big_vision's variants that Google does not name are registered the same way ('ViT-mu_16',
'ViT-M_16', 'ViT-So400m_14', 'ViT-So400m_16', 'ViT-g-opt_16', 'ViT-G-opt_14'), and
`from_big_vision(variant, pool_type=..., posemb=..., rep_size=...)` maps any big_vision
`vit.Model` configuration to ours.

`MODEL_CONFIGS[name]` accepts official and AugReg names; iterating it lists the
official names only. Each config holds exactly the fields VisionTransformer /
MlpMixer take, so `models.VisionTransformer(num_classes=10, **MODEL_CONFIGS[n])`
works. No TensorFlow, no I/O.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import ml_collections

from vit_jax.models.mixer import MlpMixer
from vit_jax.models.vit import VisionTransformer

# AugReg short name -> official name (gs://vit_models/augreg/index.csv 'name' prefixes).
AUGREG_NAMES = {
    "Ti_16": "ViT-Ti_16", "S_16": "ViT-S_16", "S_32": "ViT-S_32", "B_8": "ViT-B_8",
    "B_16": "ViT-B_16", "B_32": "ViT-B_32", "L_16": "ViT-L_16", "L_32": "ViT-L_32",
    "R_Ti_16": "R+ViT-Ti_16", "R26_S_32": "R26+ViT-S_32", "R26_B_32": "R26+ViT-B_32",
    "R50_L_32": "R50+ViT-L_32", "R50_B_16": "R50+ViT-B_16", "H_14": "ViT-H_14",
    "S_16-gap-norep": "ViT-S_16-gap-norep", "B_16-gap-norep": "ViT-B_16-gap-norep",
    "S_32-gap-norep": "ViT-S_32-gap-norep", "B_32-gap-norep": "ViT-B_32-gap-norep",
}


class _Registry(dict):
  """dict of official name -> config that also resolves AugReg short names on lookup."""

  def _resolve(self, name: Any) -> Any:
    if isinstance(name, str) and not dict.__contains__(self, name):
      return AUGREG_NAMES.get(name, name)
    return name

  def __missing__(self, name):
    raise KeyError(f"unknown model name {name!r}; valid names: {sorted(self)} "
                   f"(AugReg short names also accepted: {sorted(AUGREG_NAMES)}).")

  def __getitem__(self, name):
    return dict.__getitem__(self, self._resolve(name))

  def __contains__(self, name) -> bool:
    return dict.__contains__(self, self._resolve(name))

  def get(self, name, default=None):
    return self[name] if name in self else default


MODEL_CONFIGS: dict[str, ml_collections.ConfigDict] = _Registry()


def _register(name: str, config: ml_collections.ConfigDict) -> None:
  """Names, locks and registers `config`."""
  config.model_name = name
  MODEL_CONFIGS[name] = config.lock()


def vit(patch: int, hidden: int, mlp: int, heads: int, layers: int, dropout: float = 0.0,
        classifier: str = "token") -> ml_collections.ConfigDict:
  """A ViT config: patch size, width, MLP width, heads, depth (Google's field layout)."""
  c = ml_collections.ConfigDict()
  c.model_name = ""
  c.patches = ml_collections.ConfigDict({"size": (patch, patch)})
  c.hidden_size = hidden
  c.transformer = ml_collections.ConfigDict(dict(
      mlp_dim=mlp, num_heads=heads, num_layers=layers, attention_dropout_rate=0.0,
      dropout_rate=dropout))
  c.classifier = classifier
  c.representation_size = None
  return c


def _with(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
  """`config` with extra model fields set (e.g. the ViT-22B options)."""
  for key, value in fields.items():
    config[key] = value
  return config


def hybrid(base: ml_collections.ConfigDict, num_layers: tuple[int, ...], patch: int,
           width_factor: float = 1) -> ml_collections.ConfigDict:
  """`base` ViT on top of a ResNet-v2 root with stages `num_layers` and `patch`x`patch` patches."""
  base.patches.size = (patch, patch)
  base.resnet = ml_collections.ConfigDict(dict(num_layers=num_layers, width_factor=width_factor))
  return base


def mixer(patch: int, hidden: int, blocks: int, tokens_mlp: int,
          channels_mlp: int) -> ml_collections.ConfigDict:
  """An MLP-Mixer config (Google's field layout)."""
  return ml_collections.ConfigDict(dict(
      model_name="", patches=ml_collections.ConfigDict({"size": (patch, patch)}),
      hidden_dim=hidden, num_blocks=blocks, tokens_mlp_dim=tokens_mlp,
      channels_mlp_dim=channels_mlp))


# Widths/depths: ViT paper (Dosovitskiy et al. 2021) Table 1, DeiT (Ti/S), Scaling ViT (g/G),
# Mixer paper Table 1. Dropout defaults as Google's vit_jax/configs/models.py.
_register("testing", vit(16, 10, 10, 2, 1, dropout=0.1))
_register("testing-unpooled", vit(16, 10, 10, 2, 1, dropout=0.1, classifier="unpooled"))
_register("ViT-Ti_16", vit(16, 192, 768, 3, 12))
_register("ViT-S_16", vit(16, 384, 1536, 6, 12))
_register("ViT-S_32", vit(32, 384, 1536, 6, 12))
_register("ViT-B_8", vit(8, 768, 3072, 12, 12))
_register("ViT-B_16", vit(16, 768, 3072, 12, 12))
_register("ViT-B_32", vit(32, 768, 3072, 12, 12))
_register("ViT-L_16", vit(16, 1024, 4096, 16, 24, dropout=0.1))
_register("ViT-L_32", vit(32, 1024, 4096, 16, 24))
_register("ViT-H_14", vit(14, 1280, 5120, 16, 32, dropout=0.1))
_register("ViT-g_14", vit(14, 1408, 6144, 16, 40))
_register("ViT-G_14", vit(14, 1664, 8192, 16, 48))
# ViT-e (PaLI, Chen et al. 2022): width 1792, depth 56, MLP 15360, 16 heads (~3.9B).
_register("ViT-e_14", vit(14, 1792, 15360, 16, 56))
# ViT-22B (Dehghani et al. 2023): width 6144, depth 48, MLP 24576, 48 heads (~21.7B), parallel
# attention + MLP blocks, LayerNorm on queries and keys, no QKV / LayerNorm biases.
_register("ViT-22B_14", _with(vit(14, 6144, 24576, 48, 48), parallel_block=True, qk_norm=True,
                              use_bias=False))
# big_vision's variants (big_vision/models/vit.py `decode_variant`) that Google's vit_jax does
# not name. So400m/14 = SoViT-400m (Alabdulmohsin et al. 2023), the SigLIP image tower; the
# registered So400m, g-opt and G-opt use its MAP-head pooling (SigLIP / SigLIP 2 towers).
_register("ViT-mu_16", vit(16, 32, 128, 2, 1))
_register("ViT-M_16", vit(16, 512, 2048, 8, 12))
_register("ViT-So400m_14", vit(14, 1152, 4304, 16, 27, classifier="map"))
_register("ViT-So400m_16", vit(16, 1152, 4304, 16, 27, classifier="map"))
_register("ViT-g-opt_16", vit(16, 1536, 6144, 16, 40, classifier="map"))
_register("ViT-G-opt_14", vit(14, 1536, 8192, 16, 48, classifier="map"))
_register("ViT-S_16-gap-norep", vit(16, 384, 1536, 6, 12, classifier="gap"))
_register("ViT-B_16-gap-norep", vit(16, 768, 3072, 12, 12, classifier="gap"))
_register("ViT-S_32-gap-norep", vit(32, 384, 1536, 6, 12, classifier="gap"))
_register("ViT-B_32-gap-norep", vit(32, 768, 3072, 12, 12, classifier="gap"))
# Hybrids: the root downsamples 4x, each stage after the first 2x more; R50+B/16 uses
# (3, 4, 9) stages so that 4 * 2 * 2 = 16 with 1x1 patches; R+Ti/16 has no stages and 8x8 patches.
_register("R+ViT-Ti_16", hybrid(vit(16, 192, 768, 3, 12), (), 8))
_register("R50+ViT-B_16", hybrid(vit(16, 768, 3072, 12, 12, dropout=0.1), (3, 4, 9), 1))
_register("R26+ViT-B_32", hybrid(vit(32, 768, 3072, 12, 12), (2, 2, 2, 2), 1))
_register("R26+ViT-S_32", hybrid(vit(32, 384, 1536, 6, 12), (2, 2, 2, 2), 1))
_register("R50+ViT-L_32", hybrid(vit(32, 1024, 4096, 16, 24, dropout=0.1), (3, 4, 6, 3), 1))
_register("Mixer-B_16", mixer(16, 768, 12, 384, 3072))
_register("Mixer-B_32", mixer(32, 768, 12, 384, 3072))
_register("Mixer-L_16", mixer(16, 1024, 24, 512, 4096))

AUGREG_CONFIGS = {short: MODEL_CONFIGS[name] for short, name in AUGREG_NAMES.items()}


def canonical_name(name: str) -> str:
  """Official registry name for an official or AugReg short name (also a full AugReg filename)."""
  if name in MODEL_CONFIGS:
    return MODEL_CONFIGS[name].model_name
  prefix = name.split("-")[0].split("/")[-1] if isinstance(name, str) else name
  if prefix in AUGREG_NAMES:
    return AUGREG_NAMES[prefix]
  raise ValueError(f"unknown model name {name!r}; valid names: {sorted(MODEL_CONFIGS)} "
                   f"(AugReg short names also accepted: {sorted(AUGREG_NAMES)}).")


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """An unlocked copy of the config registered as `name` (official or AugReg name)."""
  config = MODEL_CONFIGS[canonical_name(name)]
  return ml_collections.ConfigDict(config.to_dict())


# big_vision ViT widths by variant name: (width, depth, mlp_dim, heads) (decode_variant).
BIG_VISION_VARIANTS = {
    "mu": (32, 1, 128, 2), "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8), "B": (768, 12, 3072, 12), "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16), "H": (1280, 32, 5120, 16), "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16), "G": (1664, 48, 8192, 16), "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}
# big_vision pool_type -> our classifier ('tok' = class token; '0' = first patch token).
BIG_VISION_POOL = {"tok": "token", "gap": "gap", "map": "map", "0": "first", "none": "unpooled"}


def from_big_vision(variant: str, *, pool_type: str = "gap", posemb: str = "learn",
                    rep_size: Any = False, head_zeroinit: bool = True
                    ) -> ml_collections.ConfigDict:
  """Our config for a big_vision `vit.Model(variant=..., pool_type=..., posemb=..., rep_size=...)`.

  variant: 'So400m/14', 'B/16', ... (big_vision's names; the patch size is required).
  The defaults are big_vision's (pool_type 'gap', learned posemb, no pre_logits); the
  result feeds `model_from_fields` / `VisionTransformer(num_classes=..., **config)`.
  """
  name, _, patch = str(variant).partition("/")
  if name not in BIG_VISION_VARIANTS or not patch.isdigit():
    raise ValueError(f"big_vision variant {variant!r} is not known; use '<name>/<patch>' with "
                     f"name in {sorted(BIG_VISION_VARIANTS)}, e.g. 'So400m/14'.")
  if pool_type not in BIG_VISION_POOL:
    raise ValueError(f"big_vision pool_type {pool_type!r} is not known; use one of "
                     f"{sorted(BIG_VISION_POOL)}.")
  width, depth, mlp, heads = BIG_VISION_VARIANTS[name]
  c = vit(int(patch), width, mlp, heads, depth, classifier=BIG_VISION_POOL[pool_type])
  c.representation_size = (width if rep_size is True else int(rep_size)) if rep_size else None
  c.model_name = f"ViT-{name}_{patch}"
  c.posemb = posemb
  c.head_zeroinit = bool(head_zeroinit)
  return c


def is_mixer(config_or_name: Any) -> bool:
  """True when a config (or registered name) describes an MLP-Mixer: the one family test."""
  config = get_model_config(config_or_name) if isinstance(config_or_name, str) else config_or_name
  return "num_blocks" in config


def merge_fields(base: dict, overrides: Mapping[str, Any], *, skip_unset: bool = False) -> dict:
  """`base` with `overrides` merged in, recursively into nested dicts (a new dict).

  skip_unset: None values in `overrides` mean "keep the base value" (config.model's
  placeholders); otherwise None is a value like any other (e.g. representation_size=None).
  """
  out = dict(base)
  for key, value in overrides.items():
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    if isinstance(value, Mapping):
      merged = merge_fields(out[key] if isinstance(out.get(key), dict) else {}, value,
                            skip_unset=skip_unset)
      if merged or not skip_unset:
        out[key] = merged
    elif value is not None or not skip_unset:
      out[key] = value
  return out


def run_model_config(config) -> ml_collections.ConfigDict:
  """MODEL_CONFIGS[config.model_name] with the set fields of a run config's `model` applied."""
  name = config.model_name
  if name not in MODEL_CONFIGS:
    raise ValueError(f"config.model_name={name!r} is unknown; valid names: "
                     f"{sorted(MODEL_CONFIGS)}.")
  overrides = config.get("model", None) or {}
  return ml_collections.ConfigDict(
      merge_fields(MODEL_CONFIGS[name].to_dict(), overrides, skip_unset=True))


def model_from_fields(fields: Mapping[str, Any], num_classes: Optional[int]):
  """The one model factory: VisionTransformer or MlpMixer from a complete field dict.

  A dtype given by name ('bfloat16') becomes a NumPy dtype; a field the family does not
  take (e.g. scan_layers for a Mixer) is one clear error naming the valid fields.
  """
  fields = dict(fields.to_dict() if hasattr(fields, "to_dict") else fields)
  if isinstance(fields.get("dtype"), str):
    fields["dtype"] = jnp.dtype(fields["dtype"])
  cls = MlpMixer if is_mixer(fields) else VisionTransformer
  valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
  unknown = sorted(set(fields) - valid)
  if unknown:
    raise ValueError(f"{cls.__name__} ({fields.get('model_name')}) has no field(s) {unknown}; "
                     f"valid fields: {sorted(valid)}. Remove them from the config "
                     "(config.model.<field> or the overrides).")
  return cls(num_classes=num_classes, **fields)


def create_model(name: str, num_classes: Optional[int], **overrides: Any):
  """VisionTransformer or MlpMixer for registry `name`, with fields replaced by `overrides`.

  Nested fields are overridden by passing a dict, e.g. transformer=dict(dropout_rate=0.1).
  """
  return model_from_fields(merge_fields(get_model_config(name).to_dict(), overrides), num_classes)


def model_from_run_config(config, num_classes: int):
  """The Flax module a run config describes (config.model_name + config.model overrides)."""
  return model_from_fields(run_model_config(config), num_classes)


def get_model(name: str, **kwargs: Any):
  """The image model by registered name: `get_model('ViT-B_16', num_classes=1000)` is the
  VisionTransformer (or MlpMixer) of MODEL_CONFIGS[name] with `kwargs` as module fields.
  Google's `vit_jax.models.get_model` also takes the LiT names (google_compat/lit.py)."""
  if name.startswith("LiT-"):
    raise ValueError(f"{name} is an image-text model: build it with vit_jax.models.get_model "
                     f"({name!r}) or vit_jax.models.LitModel(**LIT_CONFIGS[{name!r}]).")
  config = MODEL_CONFIGS[canonical_name(name)]
  cls = MlpMixer if is_mixer(config) else VisionTransformer
  return cls(**config, **kwargs)
