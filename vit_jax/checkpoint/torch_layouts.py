"""timm and transformers (PyTorch) state-dict layouts → our parameter tree (flat '/' keys).

Owns the key tables and tensor conversions for the Hugging Face Hub copies of
Google's weights: timm ViT ('blocks.{i}.attn.qkv.weight' fused (3D, D) q/k/v,
'patch_embed.proj.weight' OIHW, transposed Linear weights, cls_token, pos_embed,
norm, head, pre_logits.fc, attn_pool MAP head; DeiT's dist_token and head_dist), timm R+ViT hybrids
('patch_embed.backbone.*'), timm Mixer ('blocks.{i}.mlp_tokens/mlp_channels'),
and transformers ViT ('vit.embeddings...', 'vit.encoder.layer.{i}.attention.attention.query',
..., 'classifier'). Splitting attention weights into heads needs `num_heads`; when
not given it is guessed by `guess_num_heads` (published widths table, else head dim 64).

`from_ours(flat, layout)` is the inverse of `to_ours` (our tree -> a timm or transformers
state dict, for vit_jax.export_formats), computed from the same rule tables: each rule's
torch regex read as a key template and its key template read as a regex, so a key name is
written down once, here.
"""
from __future__ import annotations

import itertools
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


def _conv_to_torch(w):
  return np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW, the inverse of _conv.


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
    # DeiT's distillation token and head (timm's VisionTransformerDistilled).
    (r"dist_token", "dist_token", _same),
    (r"head_dist\.weight", "head_dist/kernel", _dense),
    (r"head_dist\.bias", "head_dist/bias", _same),
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


# ------------------------------------------------------------------ ours -> torch ----------

_INVERSE = {_dense: _dense, _conv: _conv_to_torch, _same: _same}
_SLOT = re.compile(r"\{(\d)([mp]?)\}")


def _torch_template(pattern: str) -> str:
  """A torch-key regex of the tables as a template: 'blocks\\.(\\d+)\\.norm1' -> 'blocks.{0}.norm1'
  (capturing groups numbered in order; an optional '(?:stem\\.)?' part kept)."""
  text = re.sub(r"\(\?:([^()]*)\)\?", r"\1", pattern)
  count = itertools.count()
  text = re.sub(r"\([^()]*\)", lambda m: "{%d}" % next(count), text).replace("\\.", ".")
  if re.search(r"[\\()|?*+\[\]]", text):
    raise AssertionError(f"torch_layouts rule {pattern!r} cannot be read as a key template")
  return text


def _weight_leaf(key: str) -> str:
  """'.../scale' and '.../kernel' -> '.../weight' (`_leaf_name` undone, both sides alike)."""
  return re.sub(r"/(scale|kernel)$", "/weight", key)


def _inverse_rules(rules, final_norm: str) -> list:
  """(regex on our key, torch template, slots, forward regex, our template, converter) per rule."""
  out = []
  for pattern, template, fn in rules:
    ours = _weight_leaf(template.replace("{final_norm}", final_norm))
    regex, slots = "", []
    for part in re.split(r"(\{\d[mp]?\})", ours):
      m = _SLOT.fullmatch(part)
      if m:
        regex += r"([^/]+)"
        slots.append((int(m.group(1)), m.group(2)))
      else:
        regex += re.escape(part)
    out.append((re.compile(regex + "$"), _torch_template(pattern), slots,
                re.compile(pattern + "$"), template, _INVERSE[fn]))
  return out


def _torch_key(key: str, inverse: list, final_norm: str):
  """(torch key, converter) of our (attention-merged) key by the first rule that round-trips."""
  norm_key = _weight_leaf(key)
  for regex, torch_template, slots, forward, template, fn in inverse:
    m = regex.match(norm_key)
    if not m:
      continue
    values = {}
    try:
      for (index, suffix), value in zip(slots, m.groups()):
        values[index] = (str(int(value) + 1) if suffix == "m" else
                         str(int(value) - 1) if suffix == "p" else value)
      candidate = torch_template.format(*[values[i] for i in range(len(values))])
    except (ValueError, KeyError, IndexError):
      continue
    back = forward.match(candidate)
    if back and _weight_leaf(_format(template, back.groups(), final_norm)) == norm_key:
      return candidate, fn
  return None, None


def _torch_attention(value: np.ndarray, leaf: str) -> np.ndarray:
  """(D, H, d) kernel / (H, d) bias -> torch (H*d, D) / (H*d,), the inverse of `_heads`."""
  if leaf == "bias":
    return value.reshape(-1)
  return value.reshape(value.shape[0], -1).T


def _merge_heads(flat: dict, layout: str) -> dict[str, np.ndarray]:
  """Head-split attention tensors -> the torch-side 2-D ones under the names the rules use:
  timm fuses q/k/v ('qkv'; MAP head: 'q' and 'kv'), transformers keeps them apart. The
  inverse of `_split_heads`."""
  out, groups = {}, {}
  for key, value in flat.items():
    path, _, leaf = key.rpartition("/")
    parent, _, name = path.rpartition("/")
    if parent.endswith("DotProductAttention_0") and name in ("query", "key", "value"):
      groups.setdefault(parent, {})[(name, leaf)] = _torch_attention(np.asarray(value), leaf)
    elif parent.endswith("DotProductAttention_0") and name == "out" and leaf == "kernel":
      out[key] = np.asarray(value).reshape(-1, np.shape(value)[-1])
    else:
      out[key] = value
  for parent, parts in groups.items():
    if layout == "transformers":
      fused = [(n, (n,)) for n in ("query", "key", "value")]
    elif parent.startswith("MAPHead"):
      fused = [("q", ("query",)), ("kv", ("key", "value"))]
    else:
      fused = [("qkv", ("query", "key", "value"))]
    for name, members in fused:
      for leaf in ("kernel", "bias"):
        found = [parts[(m, leaf)] for m in members if (m, leaf) in parts]
        if found:
          out[f"{parent}/{name}/{leaf}"] = np.concatenate(found, axis=0)
  return out


def from_ours(flat: dict, layout: str, *, source: str = "params") -> dict[str, np.ndarray]:
  """A timm or transformers ('layout') state dict from our flat per-layer tree; `to_ours` of
  the result gives `flat` back. Keys the layout has no name for are one ValueError."""
  if layout not in ("timm", "transformers"):
    raise ValueError(f"unknown torch layout {layout!r}; use 'timm' or 'transformers'.")
  mixer = "stem/kernel" in flat
  final_norm = "pre_head_layer_norm" if mixer else "Transformer/encoder_norm"
  if mixer:  # MixerBlock_i/LayerNorm_j is read as blocks.{i}.norm{j+1} (see to_ours).
    flat = {re.sub(r"^MixerBlock_(\d+)/LayerNorm_", r"Transformer/encoderblock_\1/LayerNorm_", k): v
            for k, v in flat.items()}
  inverse = _inverse_rules(_TIMM_RULES if layout == "timm" else _HF_RULES, final_norm)
  out, unknown = {}, []
  for key, value in _merge_heads(flat, layout).items():
    name, fn = _torch_key(key, inverse, final_norm)
    if name is None:
      unknown.append(key)
    else:
      out[name] = np.ascontiguousarray(fn(np.asarray(value)))
  if unknown:
    more = " ..." if len(unknown) > 8 else ""
    raise ValueError(f"{source}: no {layout} name for {sorted(unknown)[:8]}{more}; this "
                     f"architecture is not representable in a {layout} state dict.")
  if layout == "transformers":
    out = {(k if k.startswith("classifier.") else "vit." + k): v for k, v in out.items()}
  elif not any(k.startswith("patch_embed.backbone.stages.") for k in out):
    # A hybrid without ResNet stages: timm's backbone is the stem itself (no 'stem.').
    out = {k.replace("patch_embed.backbone.stem.", "patch_embed.backbone."): v
           for k, v in out.items()}
  return out
