"""timm and transformers (PyTorch) state-dict layouts → our parameter tree (flat '/' keys).

Owns the key tables and tensor conversions for the Hugging Face Hub copies of
Google's weights: timm ViT ('blocks.{i}.attn.qkv.weight' fused (3D, D) q/k/v,
'patch_embed.proj.weight' OIHW, transposed Linear weights, cls_token, pos_embed,
norm, head, pre_logits.fc, attn_pool MAP head), timm R+ViT hybrids
('patch_embed.backbone.*'), timm Mixer ('blocks.{i}.mlp_tokens/mlp_channels'),
and transformers ViT ('vit.embeddings...', 'vit.encoder.layer.{i}.attention.attention.query',
..., 'classifier'). Splitting attention weights into heads needs `num_heads`; when
not given it is guessed by `guess_num_heads` (published widths table, else head dim 64).
"""
from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

# Published ViT widths -> heads (Ti, S, B, L, H, g, G); other widths assume head dim 64.
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}
_BLK = "Transformer/encoderblock_{0}/"
_ATT = _BLK + "MultiHeadDotProductAttention_0/"


def guess_num_heads(width: int) -> int:
  """Heads of a ViT of hidden size `width`: the published table, else width // 64."""
  if width in _HEADS_BY_WIDTH:
    return _HEADS_BY_WIDTH[width]
  if width % 64 == 0:
    return width // 64
  raise ValueError(f"cannot tell the number of attention heads of a width-{width} checkpoint; "
                   "pass num_heads=... to checkpoint.load.")


def detect(flat: dict) -> Optional[str]:
  """'timm', 'transformers' or None for a flat PyTorch-style ('.'-joined) state dict."""
  keys = list(flat)
  if any(k.startswith(("vit.", "embeddings.patch_embeddings")) for k in keys):
    return "transformers"
  if any(k.startswith(("patch_embed.", "stem.proj", "blocks.0.")) for k in keys):
    return "timm"
  return None


def _dense(w):
  return w.T


def _conv(w):
  return np.transpose(w, (2, 3, 1, 0))


def _same(w):
  return w


# (regex on the torch key, our key template, converter). 'H' converters split heads later.
_TIMM_RULES: list[tuple[str, str, Callable]] = [
    (r"cls_token", "cls", _same),
    (r"pos_embed", "Transformer/posembed_input/pos_embedding", _same),
    (r"patch_embed\.proj\.weight", "embedding/kernel", _conv),
    (r"patch_embed\.proj\.bias", "embedding/bias", _same),
    (r"blocks\.(\d+)\.norm1\.weight", _BLK + "LayerNorm_0/scale", _same),
    (r"blocks\.(\d+)\.norm1\.bias", _BLK + "LayerNorm_0/bias", _same),
    (r"blocks\.(\d+)\.norm2\.weight", _BLK + "LayerNorm_1/scale", _same),
    (r"blocks\.(\d+)\.norm2\.bias", _BLK + "LayerNorm_1/bias", _same),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", _ATT + "qkv/{1}", _same),
    (r"blocks\.(\d+)\.attn\.proj\.weight", _ATT + "out/kernel", _dense),
    (r"blocks\.(\d+)\.attn\.proj\.bias", _ATT + "out/bias", _same),
    (r"blocks\.(\d+)\.mlp\.fc1\.weight", _BLK + "MlpBlock_0/Dense_0/kernel", _dense),
    (r"blocks\.(\d+)\.mlp\.fc1\.bias", _BLK + "MlpBlock_0/Dense_0/bias", _same),
    (r"blocks\.(\d+)\.mlp\.fc2\.weight", _BLK + "MlpBlock_0/Dense_1/kernel", _dense),
    (r"blocks\.(\d+)\.mlp\.fc2\.bias", _BLK + "MlpBlock_0/Dense_1/bias", _same),
    # Mixer.
    (r"stem\.proj\.weight", "stem/kernel", _conv),
    (r"stem\.proj\.bias", "stem/bias", _same),
    (r"blocks\.(\d+)\.mlp_tokens\.fc(\d)\.weight", "MixerBlock_{0}/token_mixing/Dense_{1m}/kernel",
     _dense),
    (r"blocks\.(\d+)\.mlp_tokens\.fc(\d)\.bias", "MixerBlock_{0}/token_mixing/Dense_{1m}/bias",
     _same),
    (r"blocks\.(\d+)\.mlp_channels\.fc(\d)\.weight",
     "MixerBlock_{0}/channel_mixing/Dense_{1m}/kernel", _dense),
    (r"blocks\.(\d+)\.mlp_channels\.fc(\d)\.bias", "MixerBlock_{0}/channel_mixing/Dense_{1m}/bias",
     _same),
    # Heads and final norms ('norm' is resolved to encoder_norm or pre_head_layer_norm below).
    (r"norm\.weight", "{final_norm}/scale", _same),
    (r"norm\.bias", "{final_norm}/bias", _same),
    (r"pre_logits\.fc\.weight", "pre_logits/kernel", _dense),
    (r"pre_logits\.fc\.bias", "pre_logits/bias", _same),
    (r"head\.weight", "head/kernel", _dense),
    (r"head\.bias", "head/bias", _same),
    # MAP head (attention pooling).
    (r"attn_pool\.latent", "MAPHead_0/probe", _same),
    (r"attn_pool\.q\.(weight|bias)", "MAPHead_0/MultiHeadDotProductAttention_0/q/{0}", _same),
    (r"attn_pool\.kv\.(weight|bias)", "MAPHead_0/MultiHeadDotProductAttention_0/kv/{0}", _same),
    (r"attn_pool\.proj\.weight", "MAPHead_0/MultiHeadDotProductAttention_0/out/kernel", _dense),
    (r"attn_pool\.proj\.bias", "MAPHead_0/MultiHeadDotProductAttention_0/out/bias", _same),
    (r"attn_pool\.norm\.weight", "MAPHead_0/LayerNorm_0/scale", _same),
    (r"attn_pool\.norm\.bias", "MAPHead_0/LayerNorm_0/bias", _same),
    (r"attn_pool\.mlp\.fc(\d)\.weight", "MAPHead_0/MlpBlock_0/Dense_{0m}/kernel", _dense),
    (r"attn_pool\.mlp\.fc(\d)\.bias", "MAPHead_0/MlpBlock_0/Dense_{0m}/bias", _same),
    # R+ViT hybrid backbone (timm ResNetV2 without pre-activation).
    (r"patch_embed\.backbone\.(?:stem\.)?conv\.weight", "conv_root/kernel", _conv),
    (r"patch_embed\.backbone\.(?:stem\.)?norm\.weight", "gn_root/scale", _same),
    (r"patch_embed\.backbone\.(?:stem\.)?norm\.bias", "gn_root/bias", _same),
    (r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.conv(\d)\.weight",
     "block{0p}/unit{1p}/conv{2}/kernel", _conv),
    (r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\.(weight|bias)",
     "block{0p}/unit{1p}/gn{2}/{3}", _same),
    (r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.weight",
     "block{0p}/unit{1p}/conv_proj/kernel", _conv),
    (r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.downsample\.norm\.(weight|bias)",
     "block{0p}/unit{1p}/gn_proj/{2}", _same),
]

_HF_RULES: list[tuple[str, str, Callable]] = [
    (r"embeddings\.cls_token", "cls", _same),
    (r"embeddings\.position_embeddings", "Transformer/posembed_input/pos_embedding", _same),
    (r"embeddings\.patch_embeddings\.projection\.weight", "embedding/kernel", _conv),
    (r"embeddings\.patch_embeddings\.projection\.bias", "embedding/bias", _same),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", _BLK + "LayerNorm_0/{1}", _same),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", _BLK + "LayerNorm_1/{1}", _same),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)",
     _ATT + "{1}/{2}", _same),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.weight", _ATT + "out/kernel", _dense),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.bias", _ATT + "out/bias", _same),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.weight", _BLK + "MlpBlock_0/Dense_0/kernel",
     _dense),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.bias", _BLK + "MlpBlock_0/Dense_0/bias", _same),
    (r"encoder\.layer\.(\d+)\.output\.dense\.weight", _BLK + "MlpBlock_0/Dense_1/kernel", _dense),
    (r"encoder\.layer\.(\d+)\.output\.dense\.bias", _BLK + "MlpBlock_0/Dense_1/bias", _same),
    # The same, as transformers >= 5 names the modules in memory (state_dict()).
    (r"layers\.(\d+)\.layernorm_before\.(weight|bias)", _BLK + "LayerNorm_0/{1}", _same),
    (r"layers\.(\d+)\.layernorm_after\.(weight|bias)", _BLK + "LayerNorm_1/{1}", _same),
    (r"layers\.(\d+)\.attention\.q_proj\.(weight|bias)", _ATT + "query/{1}", _same),
    (r"layers\.(\d+)\.attention\.k_proj\.(weight|bias)", _ATT + "key/{1}", _same),
    (r"layers\.(\d+)\.attention\.v_proj\.(weight|bias)", _ATT + "value/{1}", _same),
    (r"layers\.(\d+)\.attention\.o_proj\.weight", _ATT + "out/kernel", _dense),
    (r"layers\.(\d+)\.attention\.o_proj\.bias", _ATT + "out/bias", _same),
    (r"layers\.(\d+)\.mlp\.fc(\d)\.weight", _BLK + "MlpBlock_0/Dense_{1m}/kernel", _dense),
    (r"layers\.(\d+)\.mlp\.fc(\d)\.bias", _BLK + "MlpBlock_0/Dense_{1m}/bias", _same),
    (r"layernorm\.(weight|bias)", "Transformer/encoder_norm/{0}", _same),
    (r"pooler\.dense\.weight", "pre_logits/kernel", _dense),
    (r"pooler\.dense\.bias", "pre_logits/bias", _same),
    (r"classifier\.weight", "head/kernel", _dense),
    (r"classifier\.bias", "head/bias", _same),
]


def _format(template: str, groups: tuple, final_norm: str) -> str:
  """Fills {i} (as is), {im} (torch fc1/fc2 -> Dense_0/1), {ip} (0-based -> 1-based)."""
  def sub(m):
    value, suffix = groups[int(m.group(1))], m.group(2)
    if suffix == "m":
      return str(int(value) - 1)
    if suffix == "p":
      return str(int(value) + 1)
    return value
  out = re.sub(r"\{(\d)([mp]?)\}", sub, template)
  return out.replace("{final_norm}", final_norm)


def _rename(flat: dict, rules, source: str, final_norm: str) -> dict[str, np.ndarray]:
  compiled = [(re.compile(pattern + r"$"), template, fn) for pattern, template, fn in rules]
  out, unknown = {}, []
  for key, value in flat.items():
    for pattern, template, fn in compiled:
      m = pattern.match(key)
      if m:
        out[_leaf_name(_format(template, m.groups(), final_norm))] = fn(np.asarray(value))
        break
    else:
      unknown.append(key)
  if unknown:
    family = "timm" if rules is _TIMM_RULES else "transformers"
    more = " ..." if len(unknown) > 8 else ""
    raise ValueError(f"{source}: unsupported keys in a {family} state dict: {unknown[:8]}{more} "
                     "(e.g. fc_norm, qk-norm or register tokens are not part of the Google "
                     "models).")
  return out


def to_ours(flat: dict, *, num_heads: Optional[int], source: str) -> dict[str, np.ndarray]:
  """Flat our-layout dict from a timm or transformers state dict."""
  layout = detect(flat)
  if layout == "transformers":
    flat = {re.sub(r"^vit\.", "", k): v for k, v in flat.items()}
    out = _rename(flat, _HF_RULES, source, "Transformer/encoder_norm")
  else:
    final_norm = "pre_head_layer_norm" if "stem.proj.weight" in flat else "Transformer/encoder_norm"
    out = _rename(flat, _TIMM_RULES, source, final_norm)
    if final_norm == "pre_head_layer_norm":  # Mixer: blocks.{i}.norm1/2 belong to MixerBlock_i.
      out = {re.sub(r"^Transformer/encoderblock_", "MixerBlock_", k): v for k, v in out.items()}
  width = out["embedding/bias"].shape[0] if "embedding/bias" in out else None
  if width is not None and "embedding/kernel" in out:
    heads = num_heads or guess_num_heads(width)
    out = _split_heads(out, heads, width)
  return out


def _leaf_name(key: str) -> str:
  """A torch 'weight' leaf -> 'scale' under a norm, 'kernel' elsewhere."""
  path, _, leaf = key.rpartition("/")
  if leaf != "weight":
    return key
  module = path.rsplit("/", 1)[-1]
  is_norm = module.startswith(("LayerNorm", "gn")) or module.endswith("norm")
  return f"{path}/{'scale' if is_norm else 'kernel'}"


def _split_heads(out: dict, heads: int, width: int) -> dict[str, np.ndarray]:
  """Fused/2-D q,k,v,out weights -> (D, H, d) / (H, d) / (H, d, D) head-split tensors."""
  if width % heads:
    raise ValueError(f"width {width} is not divisible by num_heads={heads}; pass the right "
                     "num_heads to checkpoint.load.")
  d = width // heads
  res = {}
  for key, value in out.items():
    path, _, leaf = key.rpartition("/")
    parent, _, name = path.rpartition("/")
    if name in ("qkv", "kv") and parent.endswith("MultiHeadDotProductAttention_0"):
      names = ("query", "key", "value") if name == "qkv" else ("key", "value")
      for sub, part in zip(names, np.split(value, len(names), axis=0)):
        res[f"{parent}/{sub}/{leaf}"] = _heads(part, leaf, heads, d)
    elif name in ("query", "key", "value", "q") and parent.endswith("DotProductAttention_0"):
      res[f"{parent}/{'query' if name == 'q' else name}/{leaf}"] = _heads(value, leaf, heads, d)
    elif name == "out" and leaf == "kernel" and parent.endswith("DotProductAttention_0"):
      res[key] = value.reshape(heads, d, value.shape[-1])
    else:
      res[key] = value
  return res


def _heads(value: np.ndarray, leaf: str, heads: int, d: int) -> np.ndarray:
  if leaf == "bias":
    return value.reshape(heads, d)
  return value.T.reshape(value.shape[1], heads, d)  # torch (out, in) -> (in, heads, d)
