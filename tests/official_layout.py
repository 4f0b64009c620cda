"""Test helper: the official vit_models .npz layout of a tiny ViT, written out by hand.

The key names below are typed from the published files (gs://vit_models/imagenet21k/
ViT-B_16.npz): pre-Linen numbering inside each encoder block. Nothing here
imports vit_jax, so it is an independent statement of the layout.
"""
from __future__ import annotations

import ml_collections
import numpy as np

# A tiny ViT: 16x16 images, 4x4 patches (4x4 grid + class token), width 16, 2 heads, 2 layers.
IMAGE, PATCH, WIDTH, HEADS, MLP, LAYERS, CLASSES = 16, 4, 16, 2, 32, 2, 5


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """Model config of the tiny ViT above (same fields as MODEL_CONFIGS entries)."""
  cfg = ml_collections.ConfigDict(dict(
      model_name="tiny", patches=dict(size=(PATCH, PATCH)), hidden_size=WIDTH,
      transformer=dict(mlp_dim=MLP, num_heads=HEADS, num_layers=LAYERS,
                       attention_dropout_rate=0.0, dropout_rate=0.0),
      classifier="token", representation_size=None))
  cfg.update(overrides)
  return cfg


def official_vit_shapes(*, tokens: int = (IMAGE // PATCH) ** 2 + 1, classes: int = CLASSES,
                        representation_size=None, layers: int = LAYERS) -> dict:
  """Exact official key -> shape for the tiny ViT (token classifier)."""
  d, h = WIDTH, HEADS
  shapes = {
      "embedding/kernel": (PATCH, PATCH, 3, d), "embedding/bias": (d,), "cls": (1, 1, d),
      "Transformer/posembed_input/pos_embedding": (1, tokens, d),
      "Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,),
  }
  for i in range(layers):
    b = f"Transformer/encoderblock_{i}/"
    for ln in ("LayerNorm_0", "LayerNorm_2"):
      shapes[b + ln + "/scale"] = (d,)
      shapes[b + ln + "/bias"] = (d,)
    for qkv in ("query", "key", "value"):
      shapes[b + f"MultiHeadDotProductAttention_1/{qkv}/kernel"] = (d, h, d // h)
      shapes[b + f"MultiHeadDotProductAttention_1/{qkv}/bias"] = (h, d // h)
    shapes[b + "MultiHeadDotProductAttention_1/out/kernel"] = (h, d // h, d)
    shapes[b + "MultiHeadDotProductAttention_1/out/bias"] = (d,)
    shapes[b + "MlpBlock_3/Dense_0/kernel"] = (d, MLP)
    shapes[b + "MlpBlock_3/Dense_0/bias"] = (MLP,)
    shapes[b + "MlpBlock_3/Dense_1/kernel"] = (MLP, d)
    shapes[b + "MlpBlock_3/Dense_1/bias"] = (d,)
  head_in = d
  if representation_size:
    shapes["pre_logits/kernel"] = (d, representation_size)
    shapes["pre_logits/bias"] = (representation_size,)
    head_in = representation_size
  shapes["head/kernel"] = (head_in, classes)
  shapes["head/bias"] = (classes,)
  return shapes


def random_official_weights(seed: int = 0, **kwargs) -> dict:
  """Random float32 arrays for every official key (LayerNorm scales near 1)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in official_vit_shapes(**kwargs).items():
    value = rng.normal(0.0, 0.3, shape)
    if key.endswith("/scale"):
      value = 1.0 + 0.1 * value
    out[key] = value.astype(np.float32)
  return out


def write_official_npz(path: str, seed: int = 0, **kwargs) -> dict:
  """Writes random official-layout weights to `path` (np.savez); returns them."""
  weights = random_official_weights(seed, **kwargs)
  np.savez(path, **weights)
  return weights


def flatten(tree, prefix: str = "") -> dict:
  """Nested dict -> flat {'a/b/c': np.ndarray} (the .npz key convention), written out here."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = np.asarray(value)
  return out
