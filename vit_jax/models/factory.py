"""The model a run config describes: an image model (registry) or an image-text model (lit).

`config.model_name` names either a registered image architecture (registry.MODEL_CONFIGS) or
an image-text one (lit.LIT_CONFIGS: 'LiT-...', 'SigLIP-...'). For an image-text model the
fields of `config.model` that an image model has (dtype, remat, scan_layers, patches, ...)
apply to its image tower, `config.model.image_model` replaces the image tower by any
registered architecture, and the two-tower keys (`text_model`, `text`, `out_dim`,
`temperature_init`, `bias_init`) change the rest; `config.pp.tokenizer` / `config.pp.max_len`
replace the model's tokenizer settings (its `pp`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import ml_collections

from vit_jax import batching
from vit_jax.models import lit, registry

# config.model keys that only an image-text model has.
TWO_TOWER_KEYS = ("image_model", "text_model", "text", "out_dim", "temperature_init",
                  "bias_init")


def _set(overrides: Mapping[str, Any]) -> dict[str, Any]:
  """The overrides that are set (placeholders are None; nested ones keep only set values)."""
  return registry.merge_fields({}, overrides, skip_unset=True)


def run_model_config(config) -> ml_collections.ConfigDict:
  """The complete architecture fields of a run config (module doc)."""
  name = config.model_name
  overrides = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
  two_tower = {k: overrides.pop(k) for k in TWO_TOWER_KEYS if k in overrides}
  if not lit.is_lit(name):
    given = sorted(k for k, v in _set(two_tower).items() if v not in (None, {}))
    if given:
      raise ValueError(f"config.model.{given[0]} is a two-tower (image-text) field, but "
                       f"config.model_name={name!r} is an image model; use an image-text "
                       f"model_name (one of {sorted(lit.LIT_CONFIGS)}) or drop it.")
    return _with_flexi(config, registry.run_model_config(config))
  if name not in lit.LIT_CONFIGS:
    raise ValueError(f"config.model_name={name!r} is unknown; the image-text models are "
                     f"{sorted(lit.LIT_CONFIGS)}.")
  fields = lit.get_lit_config(name).to_dict()
  two_tower = _set(two_tower)
  image_model = two_tower.pop("image_model", None)
  image = (registry.get_model_config(image_model).to_dict() if image_model
           else fields["image"])
  fields["image"] = registry.merge_fields(image, overrides, skip_unset=True)
  if "text" in two_tower:
    fields["text"] = registry.merge_fields(_text_fields(fields["text"]), two_tower.pop("text"))
  fields.update(two_tower)
  if isinstance(fields.get("out_dim"), list):
    fields["out_dim"] = tuple(fields["out_dim"])
  pp = dict(fields["pp"])
  if config.pp.tokenizer:
    pp["tokenizer_name"] = str(config.pp.tokenizer)
  if config.pp.max_len:
    pp["max_len"] = int(config.pp.max_len)
  fields["pp"] = pp
  return ml_collections.ConfigDict(fields)


def _with_flexi(config, fields: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An image model's fields with a fixed position-embedding grid when the run trains at
  several patch sizes (config.flexi.patch_sizes; training/flexi.py), resolutions
  (config.resolution_schedule) or on packed sequences of images at their own grids
  (config.naflex): config.flexi.posemb_grid, else pp.crop's grid at the base patch size
  (interpolated to every other grid in the forward)."""
  if (not tuple(config.flexi.patch_sizes or ()) and not tuple(config.resolution_schedule or ())
      and not batching.packed_run(config)):
    return fields
  if "patches" not in fields or registry.is_mixer(fields) or fields.get("resnet") is not None:
    raise ValueError(f"config.flexi, config.resolution_schedule and config.naflex train a "
                     f"plain ViT at several patch sizes or resolutions; {config.model_name!r} "
                     "is not one (a hybrid or a Mixer).")
  grid = config.flexi.posemb_grid
  if not grid:
    base = tuple(fields["patches"]["size"])
    grid = (int(config.pp.crop) // int(base[0]), int(config.pp.crop) // int(base[1]))
  fields = ml_collections.ConfigDict(fields.to_dict())
  fields.posemb_grid = tuple(int(g) for g in grid)
  return fields


def _text_fields(text: Any) -> dict:
  return dict(text.to_dict() if hasattr(text, "to_dict") else text or {})


def model_from_fields(fields: Mapping[str, Any], num_classes: Optional[int]):
  """LitModel for image-text fields (num_classes unused: the towers' widths are out_dim),
  else registry.model_from_fields."""
  fields = fields.to_dict() if hasattr(fields, "to_dict") else dict(fields)
  if not lit.is_lit(fields):
    return registry.model_from_fields(fields, num_classes)
  fields = dict(fields)
  image = dict(fields.pop("image"))
  image.pop("num_classes", None)
  if isinstance(fields.get("out_dim"), list):
    fields["out_dim"] = tuple(fields["out_dim"])
  # The image tower's dtype given by name, as model_from_fields reads it for image models.
  probe = registry.model_from_fields(image, None)
  image = {k: getattr(probe, k) for k in image}
  return lit.LitModel(image=image, **fields)


def model_from_run_config(config, num_classes: int):
  """The Flax module a run config describes (config.model_name + config.model overrides)."""
  return model_from_fields(run_model_config(config), num_classes)


def is_image_text_run(config) -> bool:
  """True when the run config trains an image-text (two-tower) model."""
  return lit.is_lit(str(config.model_name))


def with_pipeline_settings(config):
  """A copy of a run config with what its input pipeline needs from the model filled in
  where unset (the pipeline cannot build the model): an image-text run's tokenizer settings
  (with_text_settings), a packed-sequence run's config.naflex.patch_size."""
  config = with_text_settings(config)
  if not batching.packed_run(config) or config.naflex.patch_size:
    return config
  fields = run_model_config(config)
  size = tuple(fields["patches"]["size"]) if "patches" in fields else ()
  if len(size) != 2 or size[0] != size[1]:
    raise ValueError(f"packed sequences (config.naflex) need a ViT with square patches; "
                     f"{config.model_name!r} has patches {size or 'none'}.")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.naflex.patch_size = int(size[0])
  return config


def with_text_settings(config):
  """A copy of an image-text run config whose config.pp.tokenizer / max_len are the model's
  where unset (the input pipeline tokenizes with them; it cannot build the model)."""
  if not is_image_text_run(config) or (config.pp.tokenizer and config.pp.max_len):
    return config
  pp = run_model_config(config).pp
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.pp.tokenizer = config.pp.tokenizer or str(pp["tokenizer_name"])
    config.pp.max_len = config.pp.max_len or int(pp["max_len"])
  return config
