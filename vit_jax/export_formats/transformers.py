"""--format=transformers: a snapshot `transformers.ViTForImageClassification.from_pretrained`
loads with our logits.

  DIR/config.json               ViTConfig: sizes, image_size, patch_size, layer_norm_eps=1e-6,
                                hidden_act, id2label / label2id from the run's class names
  DIR/model.safetensors         the weights in transformers' layout (torch_layouts.from_ours)
  DIR/preprocessor_config.json  the eval preprocessing for the image processor
  DIR/README.md                 the model card (model_card.py)

ViTForImageClassification classifies the class token after the final LayerNorm with one
linear layer, so it holds exactly our plain ViTs with classifier='token' and no pre_logits
(its pooler is a dense + tanh on the class token, but the classification model has no
pooler). Everything else (hybrids, Mixers, gap / MAP / first / unpooled heads, pre_logits,
sincos posemb, the ViT-22B options) is one error naming --format=timm where timm can.

hidden_act is 'gelu_pytorch_tanh' for our default tanh-approximated GELU (the exact 'gelu'
only when the run set approximate_gelu=False): that is what gives equal logits. The image
processor follows config.pp.eval: 'resize' -> ViTImageProcessor (squash to the crop),
'resize_crop' -> DeiTImageProcessor (squash to resize, central crop), 'resize_small' ->
BitImageProcessor (shorter side to resize, central crop); bilinear (PIL resample 2), mean =
std = 0.5 after rescaling by 1/255, i.e. our [-1, 1].
"""
from __future__ import annotations

import os
from typing import Any, Optional

from vit_jax.export_formats import common

_PIL_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, transformers' `resample`.


def _unrepresentable(source: common.Source) -> list[str]:
  if source.is_mixer:
    return ["it is an MLP-Mixer (transformers has no Mixer model)"]
  f = source.fields
  reasons = []
  if f.get("resnet"):
    reasons.append("it is an R+ViT hybrid (ViTForImageClassification has no ResNet root)")
  if f.get("posemb_grid") is not None:
    reasons.append("a FlexiViT position embedding of a fixed grid (posemb_grid), resized per "
                   "patch size (ViTForImageClassification interpolates only at call time)")
  classifier = f.get("classifier", "token")
  if classifier != "token":
    reasons.append(f"classifier {classifier!r} (ViTForImageClassification classifies the class "
                   "token)")
  if f.get("representation_size"):
    reasons.append("a pre_logits (representation_size) layer (ViTForImageClassification has "
                   "one linear layer on the class token)")
  if f.get("posemb", "learn") != "learn":
    reasons.append(f"posemb {f.get('posemb')!r} (transformers' ViT learns its position "
                   "embeddings)")
  for name in ("parallel_block", "qk_norm"):
    if f.get(name):
      reasons.append(f"{name}=True (the ViT-22B block)")
  if f.get("use_bias") is False:
    reasons.append("use_bias=False")
  if f.get("distilled"):
    reasons.append("a DeiT distillation token (ViTForImageClassification has one head)")
  ph, pw = common.patch_size(f)
  if ph != pw:
    reasons.append(f"non-square patches {ph}x{pw}")
  if not source.num_classes:
    reasons.append("no classification head")
  return reasons


def check(source: common.Source) -> None:
  """One UserError (nothing written) when ViTForImageClassification cannot hold `source`."""
  reasons = _unrepresentable(source)
  if reasons:
    from vit_jax.export_formats import timm  # pylint: disable=g-import-not-at-top
    alternative = ("--format=timm (which can)" if timm.representable(source) else
                   "--format=stablehlo, --format=savedmodel or the default --format=npz")
    raise common.refusal("transformers", reasons, alternative)


def labels(source: common.Source) -> list[str]:
  """Class names, or transformers' own LABEL_i when the run has none."""
  return source.class_names or [f"LABEL_{i}" for i in range(source.num_classes)]


def config(source: common.Source) -> dict[str, Any]:
  """config.json (ViTConfig fields)."""
  f = source.fields
  t = f["transformer"]
  names = labels(source)
  return {
      "architectures": ["ViTForImageClassification"], "model_type": "vit",
      "hidden_size": int(f["hidden_size"]), "num_hidden_layers": int(t["num_layers"]),
      "num_attention_heads": int(t["num_heads"]), "intermediate_size": int(t["mlp_dim"]),
      "hidden_act": "gelu_pytorch_tanh" if f.get("approximate_gelu", True) else "gelu",
      "hidden_dropout_prob": float(t.get("dropout_rate") or 0.0),
      "attention_probs_dropout_prob": float(t.get("attention_dropout_rate") or 0.0),
      "initializer_range": 0.02, "layer_norm_eps": 1e-6,
      "image_size": source.resolution, "patch_size": common.patch_size(f)[0], "num_channels": 3,
      "qkv_bias": True, "encoder_stride": common.patch_size(f)[0],
      "id2label": {str(i): n for i, n in enumerate(names)},
      "label2id": {n: i for i, n in enumerate(names)},
      "problem_type": "single_label_classification", "dtype": "float32",
  }


def preprocessor_config(source: common.Source) -> dict[str, Any]:
  """preprocessor_config.json for the image processor that does our eval preprocessing."""
  pp = common.preprocessing(source.arch)
  out: dict[str, Any] = {"do_resize": True, "resample": _PIL_BILINEAR, "do_rescale": True,
                         "rescale_factor": 1 / 255, "do_normalize": True,
                         "image_mean": list(pp.mean), "image_std": list(pp.std)}
  crop = {"height": pp.crop, "width": pp.crop}
  if pp.mode == "resize":
    out.update(image_processor_type="ViTImageProcessor", size=crop)
  elif pp.mode == "resize_crop":
    out.update(image_processor_type="DeiTImageProcessor", do_center_crop=True, crop_size=crop,
               size={"height": pp.resize, "width": pp.resize})
  else:
    out.update(image_processor_type="BitImageProcessor", do_center_crop=True, crop_size=crop,
               size={"shortest_edge": pp.resize}, do_convert_rgb=True)
  return out


def load_code(location: str) -> str:
  """Python lines that load the export from `location` (a directory or a Hub repo id)."""
  return "\n".join([
      "from transformers import AutoImageProcessor, ViTForImageClassification", "",
      f"model = ViTForImageClassification.from_pretrained({location!r}).eval()",
      f"processor = AutoImageProcessor.from_pretrained({location!r})",
      "logits = model(**processor(images=image, return_tensors='pt')).logits"])


def write(source: common.Source, output: str, *, overwrite: bool = False,
          repo_id: Optional[str] = None) -> common.Written:
  """Writes the transformers snapshot `output` atomically; `repo_id` only shapes the card."""
  from vit_jax.checkpoint import torch_layouts  # pylint: disable=g-import-not-at-top
  from vit_jax.export_formats import model_card  # pylint: disable=g-import-not-at-top
  check(source)
  cfg, processor = config(source), preprocessor_config(source)
  state = torch_layouts.from_ours(source.flat_params(), "transformers", source=source.model_name)
  location = repo_id or os.path.abspath(output)
  card = model_card.card(source, library="transformers", load=load_code(location),
                         architecture_lines=["transformers class: `ViTForImageClassification`"
                                             f" (hidden_act `{cfg['hidden_act']}`)"],
                         notes=[], repo_id=repo_id)

  written = common.write_snapshot(
      output, state, {"config.json": cfg, "preprocessor_config.json": processor}, card, overwrite)
  load = f"transformers.ViTForImageClassification.from_pretrained('{os.path.abspath(output)}')"
  return common.Written(os.path.abspath(output), "transformers", written, load)
