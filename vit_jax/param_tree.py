"""Facts read off a parameter tree in the official naming (docs/architecture.md, "Checkpoint
naming").

One home for the rules that several layers need: how many attention heads a tree (or a model
/ Hugging Face config) has, and how many patch tokens its weights were made for (ViT position
embeddings; an MLP-Mixer's token-mixing MLP, which ties a Mixer to one resolution). Works on
nested dicts (ours) and on flat '/'-joined dicts alike; NumPy only, no JAX.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

POSEMB = "Transformer/posembed_input/pos_embedding"
QUERY_KERNEL = "MultiHeadDotProductAttention_0/query/kernel"
MIXER_TOKEN_KERNEL = "MixerBlock_0/token_mixing/Dense_0/kernel"


def flat_view(tree: Mapping[str, Any]) -> dict[str, Any]:
  """'{a: {b: x}}' -> {'a/b': x} (the .npz key convention); a flat dict comes back unchanged.

  Any value with `.items()` (dict, FrozenDict, ConfigDict) is a subtree.
  """
  out: dict[str, Any] = {}

  def walk(node: Mapping[str, Any], prefix: str) -> None:
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}/")
      else:
        out[prefix + str(key)] = value
  walk(tree, "")
  return out


def _shape(x: Any) -> tuple[int, ...]:
  value = getattr(x, "value", x)  # A boxed tree a user built by hand carries arrays in .value.
  return tuple(np.shape(value) if not hasattr(value, "shape") else value.shape)


def num_heads(tree: Optional[Mapping[str, Any]] = None,
              config: Optional[Mapping[str, Any]] = None) -> Optional[int]:
  """Attention heads of a param tree (its first query kernel, (D, H, D/H)) or else of a config.

  `config` may be one of our model configs (transformer.num_heads) or a Hugging Face
  config.json (num_attention_heads / num_heads / model_args.num_heads, timm and
  transformers). None when neither says (e.g. a Mixer, or a fused timm file without config).
  """
  if tree:
    for key, value in flat_view(tree).items():
      if key.endswith(QUERY_KERNEL) and len(_shape(value)) == 3:
        return int(_shape(value)[-2])
  if not config or not hasattr(config, "get"):
    return None
  transformer = config.get("transformer")
  if hasattr(transformer, "get") and isinstance(transformer.get("num_heads"), int):
    return int(transformer.get("num_heads"))
  for key in ("num_attention_heads", "num_heads"):
    if isinstance(config.get(key), int):
      return int(config[key])
  args = config.get("model_args")
  if hasattr(args, "get") and isinstance(args.get("num_heads"), int):
    return int(args.get("num_heads"))
  return None


def mixer_tokens(tree: Mapping[str, Any]) -> Optional[int]:
  """Tokens an MLP-Mixer tree's token-mixing weights take (None when it is not a Mixer tree)."""
  kernel = flat_view(tree).get(MIXER_TOKEN_KERNEL)
  return int(_shape(kernel)[0]) if kernel is not None else None


def patch_tokens(tree: Mapping[str, Any]) -> Optional[int]:
  """Patch tokens (class token excluded) a ViT or Mixer tree was made for; None if it cannot
  tell."""
  flat = flat_view(tree)
  posemb = flat.get(POSEMB)
  if posemb is not None:
    has_cls = any(k == "cls" or k.startswith("cls/") for k in flat)
    return int(_shape(posemb)[1]) - (1 if has_cls else 0)
  return mixer_tokens(flat)
