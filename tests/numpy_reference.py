"""Independent NumPy (float64) forward passes of ViT, R+ViT hybrids and MLP-Mixer: the test oracle.

Written from the published model descriptions (ViT paper eqs. 1-4, Mixer paper,
BiT's StdConv/GroupNorm ResNet-v2 root as used by Google's hybrids), not from
vit_jax.models: convolutions are im2col matmuls with TF 'SAME' padding computed
here, attention is a per-head loop, GELU is the tanh formula. Parameters are
taken from the nested dict in the official in-memory layout.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

LN_EPS = 1e-6


def as_f64(tree: Any) -> Any:
  """Nested dict of arrays -> same structure of float64 numpy arrays."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: as_f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, p: dict, eps: float = LN_EPS) -> np.ndarray:
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p.get("bias", 0.0)  # ViT-22B: no bias


def dense(x: np.ndarray, p: dict) -> np.ndarray:
  return x @ p["kernel"] + p["bias"]


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
  """TF/XLA 'SAME' padding (low, high) for one spatial dim."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: str) -> np.ndarray:
  """NHWC x HWIO convolution by explicit patch extraction (im2col)."""
  kh, kw = w.shape[:2]
  if padding == "SAME":
    (t, b), (left, r) = same_pads(x.shape[1], kh, stride), same_pads(x.shape[2], kw, stride)
    x = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))
  n, h, wd, c = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  cols = np.empty((n, oh, ow, kh, kw, c), x.dtype)
  for i in range(oh):
    for j in range(ow):
      cols[:, i, j] = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
  return cols.reshape(n, oh, ow, kh * kw * c) @ w.reshape(kh * kw * c, -1)


def max_pool_same(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
  (t, b), (left, r) = same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s)
  x = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), constant_values=-np.inf)
  n, h, w, c = x.shape
  oh, ow = (h - k) // s + 1, (w - k) // s + 1
  out = np.empty((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      out[:, i, j] = x[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
  return out


def group_norm(x: np.ndarray, p: dict, groups: int = 32, eps: float = 1e-6) -> np.ndarray:
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mu = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mu) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  g = (g - mu) / np.sqrt(var + eps)
  return g.reshape(n, h, w, c) * p["scale"].reshape(-1) + p["bias"].reshape(-1)


def std_conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
  mu = w.mean(axis=(0, 1, 2), keepdims=True)
  sd = np.sqrt(((w - mu) ** 2).mean(axis=(0, 1, 2), keepdims=True))
  return conv2d(x, (w - mu) / (sd + 1e-5), stride, "SAME")


def bottleneck(x: np.ndarray, p: dict, stride: int) -> np.ndarray:
  relu = lambda v: np.maximum(v, 0.0)
  shortcut = x
  if "conv_proj" in p:
    shortcut = group_norm(std_conv(x, p["conv_proj"]["kernel"], stride), p["gn_proj"])
  y = relu(group_norm(std_conv(x, p["conv1"]["kernel"], 1), p["gn1"]))
  y = relu(group_norm(std_conv(y, p["conv2"]["kernel"], stride), p["gn2"]))
  y = group_norm(std_conv(y, p["conv3"]["kernel"], 1), p["gn3"])
  return relu(shortcut + y)


def resnet_root(x: np.ndarray, params: dict, num_layers: tuple[int, ...]) -> np.ndarray:
  x = np.maximum(group_norm(std_conv(x, params["conv_root"]["kernel"], 2), params["gn_root"]), 0)
  x = max_pool_same(x)
  for s, units in enumerate(num_layers):
    for u in range(units):
      stride = 2 if (s > 0 and u == 0) else 1
      x = bottleneck(x, params[f"block{s + 1}"][f"unit{u + 1}"], stride)
  return x


def patch_embed(x: np.ndarray, p: dict) -> np.ndarray:
  """Non-overlapping patches flattened (ph, pw, c) and projected: (B, tokens, D)."""
  ph, pw, c, d = p["kernel"].shape
  n, h, w, _ = x.shape
  x = x.reshape(n, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (h // ph) * (w // pw), ph * pw * c) @ p["kernel"].reshape(-1, d) + p["bias"]


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def attention(xq: np.ndarray, xkv: np.ndarray, p: dict) -> np.ndarray:
  """Multi-head attention, one head at a time."""
  _, heads, head_dim = p["query"]["kernel"].shape
  out = np.zeros(xq.shape[:2] + (xq.shape[-1],))
  for h in range(heads):
    q = xq @ p["query"]["kernel"][:, h] + (p["query"]["bias"][h] if "bias" in p["query"] else 0)
    k = xkv @ p["key"]["kernel"][:, h] + (p["key"]["bias"][h] if "bias" in p["key"] else 0)
    v = xkv @ p["value"]["kernel"][:, h] + (p["value"]["bias"][h] if "bias" in p["value"] else 0)
    if "query_norm" in p:  # ViT-22B: LayerNorm over the head dimension of queries and keys
      q, k = layer_norm(q, p["query_norm"]), layer_norm(k, p["key_norm"])
    a = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(head_dim))
    out += (a @ v) @ p["out"]["kernel"][h]
  return out + p["out"]["bias"]


def mlp(x: np.ndarray, p: dict, gelu=gelu_tanh) -> np.ndarray:
  return dense(gelu(dense(x, p["Dense_0"])), p["Dense_1"])


def encoder_block(x: np.ndarray, p: dict, gelu=gelu_tanh) -> np.ndarray:
  y = layer_norm(x, p["LayerNorm_0"])
  if "LayerNorm_1" not in p:  # ViT-22B parallel block: one LayerNorm feeds both branches
    return x + attention(y, y, p["MultiHeadDotProductAttention_0"]) + mlp(y, p["MlpBlock_0"], gelu)
  x = x + attention(y, y, p["MultiHeadDotProductAttention_0"])
  return x + mlp(layer_norm(x, p["LayerNorm_1"]), p["MlpBlock_0"], gelu)


def vit_forward(params: dict, images: np.ndarray, *, classifier: str = "token",
                resnet_layers: Optional[tuple[int, ...]] = None, gelu=gelu_tanh) -> np.ndarray:
  """Logits (or features when there is no head) of a ViT / R+ViT in float64."""
  params = as_f64(params)
  x = np.asarray(images, np.float64)
  if resnet_layers is not None:
    x = resnet_root(x, params, resnet_layers)
  x = patch_embed(x, params["embedding"])
  if classifier in ("token", "token_unpooled"):
    x = np.concatenate([np.broadcast_to(params["cls"], (x.shape[0], 1, x.shape[2])), x], axis=1)
  t = params["Transformer"]
  x = x + t["posembed_input"]["pos_embedding"]
  i = 0
  while f"encoderblock_{i}" in t:
    x = encoder_block(x, t[f"encoderblock_{i}"], gelu)
    i += 1
  x = layer_norm(x, t["encoder_norm"])
  if classifier == "token":
    x = x[:, 0]
  elif classifier == "gap":
    x = x.mean(axis=1)
  elif classifier == "map":
    m = params["MAPHead_0"]
    probe = np.broadcast_to(m["probe"], (x.shape[0], 1, x.shape[2]))
    y = attention(probe, x, m["MultiHeadDotProductAttention_0"])
    x = (y + mlp(layer_norm(y, m["LayerNorm_0"]), m["MlpBlock_0"], gelu))[:, 0]
  if "pre_logits" in params:
    x = np.tanh(dense(x, params["pre_logits"]))
  return dense(x, params["head"]) if "head" in params else x


def mixer_forward(params: dict, images: np.ndarray) -> np.ndarray:
  """Logits of an MLP-Mixer in float64."""
  params = as_f64(params)
  x = patch_embed(np.asarray(images, np.float64), params["stem"])
  i = 0
  while f"MixerBlock_{i}" in params:
    b = params[f"MixerBlock_{i}"]
    y = layer_norm(x, b["LayerNorm_0"]).transpose(0, 2, 1)
    x = x + mlp(y, b["token_mixing"]).transpose(0, 2, 1)
    x = x + mlp(layer_norm(x, b["LayerNorm_1"]), b["channel_mixing"])
    i += 1
  x = layer_norm(x, params["pre_head_layer_norm"]).mean(axis=1)
  return dense(x, params["head"]) if "head" in params else x


def bert_forward(p: dict, tokens: np.ndarray, num_heads: int) -> np.ndarray:
  """(batch, length, D) outputs of a post-LN BERT encoder (Devlin et al.) in flaxformer's
  parameter naming; padding (id 0) is excluded as a key, and a padding query attends to all
  positions alike (its row is masked everywhere)."""
  p = as_f64(p)
  e = p["embedder"]
  batch, length = tokens.shape
  x = (e["embedders_token_ids"]["embedding"][tokens]
       + e["embedders_position_ids"]["embedding"][np.arange(length)][None]
       + e["embedders_segment_ids"]["embedding"][np.zeros_like(tokens)])
  x = layer_norm(x, p["layer_norm"], eps=1e-12)
  valid = tokens != 0
  layers = p["encoder_block"]["layer_sequence"]
  for i in range(len(layers)):
    block = layers[f"layers_{i}"]
    a = block["attention_block"]
    width = x.shape[-1]
    head_dim = width // num_heads
    q, k, v = (dense(x, a["attention_layer"][n]) for n in ("query", "key", "value"))
    heads_out = np.zeros_like(x)
    for b in range(batch):
      for h in range(num_heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        logits = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(head_dim)
        for r in range(length):
          if valid[b, r]:
            logits[r, ~valid[b]] = -np.inf
          else:
            logits[r, :] = 0.0  # Every key masked: the softmax is uniform.
        heads_out[b, :, sl] = softmax(logits) @ v[b, :, sl]
    x = layer_norm(x + dense(heads_out, a["dense_layer"]), a["layer_norm"], eps=1e-12)
    m = block["mlp_block"]
    y = dense(gelu_tanh(dense(x, m["mlp"]["dense_layer"])), m["dense_layer"])
    x = layer_norm(x + y, m["layer_norm"], eps=1e-12)
  return x


def text_transformer_forward(p: dict, tokens: np.ndarray, pool: str = "last") -> np.ndarray:
  """LiT's / big_vision's text tower: token embedding + learned position embedding, pre-LN
  ViT encoder blocks, final LayerNorm, pooling (the LAST position by default; 'first', 'mean',
  'max', 'map'), head (if any)."""
  p = as_f64(p)
  x = p["Embed_0"]["embedding"][tokens] + p["pos_embedding"]
  enc = p["Encoder_0"]
  i = 0
  while f"encoderblock_{i}" in enc:
    x = encoder_block(x, enc[f"encoderblock_{i}"])
    i += 1
  x = layer_norm(x, enc["encoder_norm"])
  if pool == "map":
    m = p["MAPHead_0"]
    probe = np.broadcast_to(m["probe"], (x.shape[0], 1, x.shape[2]))
    y = attention(probe, x, m["MultiHeadDotProductAttention_0"])
    x = (y + mlp(layer_norm(y, m["LayerNorm_0"]), m["MlpBlock_0"]))[:, 0]
  else:
    x = {"last": x[:, -1], "first": x[:, 0], "mean": x.mean(1), "max": x.max(1)}[pool]
  return dense(x, p["head"]) if "head" in p else x


def unit(x: np.ndarray) -> np.ndarray:
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)
