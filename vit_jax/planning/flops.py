"""Model FLOPs by formula (the numerator of MFU and the planner's reference for compiled
FLOPs): a plain ViT's forward per image; a training step is 3x (forward + backward)."""
from __future__ import annotations

from typing import Any

from vit_jax.models import fields


def tokens_per_image(cfg: Any, resolution: int) -> int:
  """Encoder sequence length of a plain ViT at `resolution`: patches plus the class token."""
  return fields.sequence_length(cfg["patches"], cfg.get("classifier", "token"), resolution,
                                resolution, bool(cfg.get("distilled", False)))


def formula_flops_per_image(cfg: Any, resolution: int, num_classes: int) -> float:
  """Forward FLOPs of one image by the standard formula (2 x matmul multiply-adds).

  Patch embedding, per layer the four attention projections, the two MLP matmuls and the
  two (tokens x tokens) attention matmuls, and the head. Plain ViT only (0 for hybrids and
  Mixers).
  """
  if "transformer" not in cfg or cfg.get("resnet") is not None:
    return 0.0
  ph, pw = tuple(cfg["patches"]["size"])
  d, t = cfg["hidden_size"], cfg["transformer"]
  tokens = tokens_per_image(cfg, resolution)
  per_layer = 2 * tokens * (4 * d * d + 2 * d * t["mlp_dim"]) + 2 * 2 * tokens * tokens * d
  embed = 2 * (resolution // ph) * (resolution // pw) * ph * pw * 3 * d
  heads = 2 if cfg.get("distilled") else 1  # DeiT's distillation head beside the class head.
  return float(embed + t["num_layers"] * per_layer + heads * 2 * d * num_classes)


def formula_flops_per_sequence(cfg: Any, seq_len: int, images: int, num_classes: int) -> float:
  """Forward FLOPs of one packed sequence (config.naflex) of `seq_len` patch tokens holding
  `images` images, by formula_flops_per_image's terms: a class token per image with
  classifier 'token', the (tokens x tokens) attention matmuls counted dense (as they execute:
  the block-diagonal mask removes no work), one head per image."""
  if "transformer" not in cfg or cfg.get("resnet") is not None:
    return 0.0
  ph, pw = tuple(cfg["patches"]["size"])
  d, t = cfg["hidden_size"], cfg["transformer"]
  tokens = seq_len + (images if cfg.get("classifier", "token") == "token" else 0)
  per_layer = 2 * tokens * (4 * d * d + 2 * d * t["mlp_dim"]) + 2 * 2 * tokens * tokens * d
  embed = 2 * seq_len * ph * pw * 3 * d
  return float(embed + t["num_layers"] * per_layer + images * 2 * d * num_classes)


def formula_flops_per_pair(fields: Any, resolution: int) -> float:
  """Forward FLOPs of one (image, text) pair of an image-text model (factory.run_model_config
  fields): the image tower by formula_flops_per_image (its projection as the head), the text
  transformer the same way over its max_len tokens (no patch embedding: a lookup), its
  projection. 0 when a tower has no formula here (a BERT text tower, a hybrid image tower)."""
  dims = fields["out_dim"]
  image_dim, text_dim = (dims, dims) if isinstance(dims, int) else tuple(dims)
  image = formula_flops_per_image(fields["image"], resolution, int(image_dim or 0))
  if fields["text_model"] != "text_transformer" or not image:
    return 0.0
  t = dict(fields["text"])
  d, mlp = int(t.get("width", 512)), int(t.get("mlp_dim", 2048))  # TextTransformer defaults
  tokens = int(fields["pp"]["max_len"])
  per_layer = 2 * tokens * (4 * d * d + 2 * d * mlp) + 2 * 2 * tokens * tokens * d
  return float(image + int(t.get("num_layers", 12)) * per_layer + 2 * d * int(text_dim or 0))
