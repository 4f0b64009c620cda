"""--format=big_vision: an image-text (two-tower) model as a big_vision two_towers .npz.

big_vision (google-research/big_vision, models/proj/image_text/two_towers.py) keeps a two-tower
model as `img/` (its vit.Model), `txt/` (text_transformer.Model, or proj.flaxformer.bert.Model)
and the scalars `t` (log temperature) and `b` (SigLIP's bias); its .npz checkpoints hold them
under `params/`, flattened with '/'. We write the per-layer (scan=False) names:

  img/  embedding, pos_embedding (top level, no class slot), cls (pool 'tok'),
        Transformer/encoderblock_{i}/..., Transformer/encoder_norm, MAPHead_0 (pool 'map'),
        pre_logits (rep_size), head (out_dim[0])  -- layouts.to_big_vision, our image tower
  txt/  Embed_0, pos_embedding, Encoder_0/encoderblock_{i}/..., Encoder_0/encoder_norm,
        MAPHead_0 (pool 'map'), head (out_dim[1]): our TextTransformer's names already; a
        BERT tower: BertEncoder_0/... (flaxformer's names, as ours) + head
  t, b

`unrepresentable(model)` says what big_vision's modules cannot build (a hybrid or distilled
image tower, the ViT-22B block, an exact-GELU MLP, a BERT of another size than 'base' /
'large'); `big_vision_config(model)` is the big_vision `config.model` that loads the file.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from vit_jax import checkpoint, exits, param_tree
from vit_jax.checkpoint import files, layouts
from vit_jax.export_formats import common
from vit_jax.models import bert, lit, registry
from vit_jax.models.fields import config_get, patch_size

TWO_TOWERS = "proj.image_text.two_towers"
TEXT_MODELS = {"text_transformer": "proj.image_text.text_transformer",
               "bert": "proj.flaxformer.bert"}
# Our (pooled) classifiers -> big_vision's vit.Model pool_type.
POOL_TYPES = {ours: bv for bv, ours in registry.BIG_VISION_POOL.items() if ours != "unpooled"}
ALTERNATIVE = "--format=npz (the image tower alone, in the official layout)"


def _out_dims(model: Any) -> tuple[Any, Any]:
  """(image, text) projection widths (None: no projection) of LitModel's out_dim."""
  dims = model.out_dim
  return (dims, dims) if isinstance(dims, int) else tuple(dims)


def _towers(model: Any) -> tuple[Any, Any]:
  """(image tower module, text tower module or None for BERT) built as LitModel builds them."""
  if not lit.is_lit(model):
    raise exits.UserError(f"--format=big_vision writes image-text (two-tower) models; "
                          f"{type(model).__name__} is an image model: use --format=npz.")
  image_dim, text_dim = _out_dims(model)
  fields = {k: v for k, v in dict(model.image).items() if k != "num_classes"}
  image = registry.model_from_fields(fields, image_dim)
  if model.text_model != "text_transformer":
    return image, None
  return image, lit.TextTransformer(**{"num_classes": text_dim, **dict(model.text or {})})


def _bert_size(model: Any) -> str:
  """'base' / 'large' for a BERT text tower of one of those sizes, else ''."""
  config = config_get(model.text, "config")
  if isinstance(config, str):
    return config if config in bert.BERT_CONFIGS else ""
  config = dict(config or {})
  return next((n for n, c in bert.BERT_CONFIGS.items() if config == c), "")


def unrepresentable(model: Any) -> list[str]:
  """Why big_vision's two_towers (vit.Model + its text towers) cannot hold `model`; [] if it can."""
  image, text = _towers(model)
  reasons = []
  if image.resnet is not None:
    reasons.append("an R+ViT hybrid image tower (big_vision's vit.Model has no ResNet root)")
  if image.distilled:
    reasons.append("a DeiT distillation token")
  if image.classifier not in POOL_TYPES:
    reasons.append(f"image classifier {image.classifier!r} (big_vision pools with "
                   f"{sorted(POOL_TYPES.values())})")
  for name in ("parallel_block", "qk_norm"):
    if getattr(image, name):
      reasons.append(f"{name}=True (the ViT-22B block)")
  if not image.use_bias:
    reasons.append("use_bias=False")
  if not image.approximate_gelu:
    reasons.append("approximate_gelu=False (big_vision's MLP blocks use the tanh GELU)")
  if model.text_model not in TEXT_MODELS:
    reasons.append(f"text_model {model.text_model!r}")
  elif model.text_model == "bert" and not _bert_size(model):
    reasons.append(f"a BERT text tower of size {dict(config_get(model.text, 'config') or {})} "
                   "(big_vision's proj.flaxformer.bert builds only 'base' and 'large')")
  if text is not None and text.pool_type not in lit.TEXT_POOLS:
    reasons.append(f"text pool_type {text.pool_type!r}")
  return reasons


def check(model: Any) -> None:
  """One error (common.refusal) for a model big_vision cannot hold."""
  reasons = unrepresentable(model)
  if reasons:
    raise common.refusal("big_vision", reasons, ALTERNATIVE)


def big_vision_config(model: Any) -> dict[str, Any]:
  """big_vision's `config.model` for two_towers.Model that builds `model` (architecture only:
  dropout and init settings are big_vision's defaults)."""
  check(model)
  image, text = _towers(model)
  t = image.transformer
  img = {"width": int(image.hidden_size), "depth": int(config_get(t, "num_layers")),
         "mlp_dim": int(config_get(t, "mlp_dim")), "num_heads": int(config_get(t, "num_heads")),
         "patch_size": list(patch_size(image.patches)),
         "pool_type": POOL_TYPES[image.classifier], "posemb": image.posemb,
         "rep_size": int(image.representation_size) if image.representation_size else False}
  if text is None:
    txt = {"config": _bert_size(model)}
  else:
    txt = {"width": int(text.width), "depth": int(text.num_layers), "mlp_dim": int(text.mlp_dim),
           "num_heads": int(text.num_heads), "vocab_size": int(text.vocab_size),
           "pool_type": text.pool_type}
  out = {"image_model": "vit", "image": img, "text_model": TEXT_MODELS[model.text_model],
         "text": txt, "out_dim": list(_out_dims(model)),
         "temperature_init": float(model.temperature_init)}
  if model.bias_init is not None:
    out["bias_init"] = float(model.bias_init)
  return out


def _float32(flat: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
          else np.asarray(v) for k, v in flat.items()}


def to_big_vision_two_tower(params: Mapping[str, Any], model: Any) -> dict[str, np.ndarray]:
  """The flat '/'-keyed arrays of big_vision's two_towers layout (module doc) for our
  LitModel `model`'s params (boxed or not, scanned or per-layer); float32."""
  check(model)
  params = checkpoint.to_host(dict(params))
  missing = sorted({"img", "txt", "t"} - set(params))
  if missing:
    raise ValueError(f"these are not the params of an image-text model: no {missing} (top-level "
                     f"keys {sorted(params)}).")
  img = layouts.to_big_vision(param_tree.flat_view(checkpoint.unstack_layers(params["img"])))
  txt = param_tree.flat_view(checkpoint.unstack_layers(params["txt"], encoder="Encoder_0"))
  flat = {**{f"img/{k}": v for k, v in img.items()}, **{f"txt/{k}": v for k, v in txt.items()},
          "t": params["t"]}
  if "b" in params:
    flat["b"] = params["b"]
  return _float32(flat)


def check_output(path: str, overwrite: bool) -> None:
  """An output big_vision cannot read (its loader takes a name with '.npz') or one that
  exists without `overwrite`: one error before anything is read."""
  path = os.fspath(path)
  if not path.endswith(".npz"):
    raise exits.UserError(f"--format=big_vision writes one .npz file (big_vision reads "
                          f"checkpoints whose name has '.npz'); give --output={path}.npz.")
  if os.path.lexists(path) and not overwrite:
    raise FileExistsError(f"{path!r} already exists; choose another --output or pass "
                          "--overwrite to replace it.")


def write_two_tower(params: Mapping[str, Any], model: Any, path: str,
                    overwrite: bool = False) -> str:
  """Writes the model as big_vision's two-tower .npz (keys under `params/`, as big_vision's
  checkpoints), atomically; an existing `path` is kept unless `overwrite`. Returns the path."""
  path = os.fspath(path)
  check_output(path, overwrite)
  flat = to_big_vision_two_tower(params, model)
  files.write_npz_atomic({f"params/{k}": v for k, v in flat.items()}, path)
  return path
