"""Checkpoint layouts: every published key naming → our in-memory tree, and back to vit_models.

Owns `canonicalize(flat, num_heads=...)`, the ONE entry point that turns a flat
{key: array} dict of any supported layout into our nested parameter tree
(docs/architecture.md, "Checkpoint naming"):
  * vit_models .npz (pre-Linen numbering inside ViT blocks: MultiHeadDotProductAttention_1,
    LayerNorm_0/LayerNorm_2, MlpBlock_3), Mixer and R+ViT files, legacy (1,1,1,C) GroupNorm;
  * big_vision .npz (Linen numbering, 'params/' or 'opt/target/' prefix, top-level
    `pos_embedding` without a class slot or none at all (posemb='sincos2d'), scanned
    `encoderblock`, MAPHead_0); two-tower files (SigLIP, LiT: `img/` beside `txt/`, `t`,
    `b`) give their image tower, or the sub-tree a `subtree` names (big_vision's
    'file.npz:img');
  * our own tree (per-layer or scanned);
  * timm and transformers state dicts (see torch_layouts.py).
`to_vit_models(flat)` renames our Linen block names back to the vit_models ones;
`to_big_vision(flat)` writes a ViT in big_vision's vit.Model layout (the inverse of the
big_vision branch above: canonicalize(to_big_vision(flat)) is flat again, see its doc).
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from vit_jax.checkpoint import torch_layouts

# Inside a ViT encoder block: pre-Linen (vit_models files) name -> Linen (in-memory) name.
PRE_LINEN_TO_LINEN = {
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_0": "LayerNorm_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}
LINEN_TO_PRE_LINEN = {v: k for k, v in PRE_LINEN_TO_LINEN.items()}
_PREFIXES = ("opt/target/", "params/", "target/")
_BLOCK = re.compile(r"^(Transformer/encoderblock(?:_\d+)?)/([^/]+)/(.*)$")
_KNOWN_ROOTS = ("embedding", "cls", "Transformer", "head", "pre_logits", "stem", "conv_root",
                "gn_root", "pre_head_layer_norm", "MAPHead_0", "pos_embedding")


def canonicalize(flat: dict[str, np.ndarray], *, num_heads: Optional[int] = None,
                 source: str = "checkpoint", subtree: Optional[str] = None,
                 notes: Optional[list] = None) -> dict:
  """Nested params in our layout from a flat dict of any supported layout.

  subtree: the part of a multi-model file to read ('img' of a SigLIP file); without it a
  two-tower file gives its image tower. What is left out is appended to `notes`.
  """
  if not flat:
    raise ValueError(f"{source} holds no arrays; it is not a ViT/Mixer checkpoint.")
  if subtree is None and all("/" not in k for k in flat) and torch_layouts.detect(flat):
    flat = torch_layouts.to_ours(flat, num_heads=num_heads, source=source)
  else:
    flat = _from_flax_layout(flat, source, subtree, notes if notes is not None else [])
  return unflatten(flat)


def _select_tower(flat: dict[str, np.ndarray], source: str, subtree: Optional[str],
                  notes: list) -> dict[str, np.ndarray]:
  """The sub-tree `subtree` of a (prefix-stripped) flat dict, or the image tower of a
  two-tower file; other flat dicts as they are."""
  roots = {k.split("/")[0] for k in flat}
  if subtree is None:
    if not ("img" in roots and not roots & set(_KNOWN_ROOTS)):
      return flat
    subtree = "img"
  prefix = subtree.strip("/") + "/"
  picked = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  if not picked:
    raise ValueError(f"{source} has no sub-tree {subtree!r}; its top-level keys are "
                     f"{sorted(roots)[:8]}.")
  left = sorted({k.split("/")[0] for k in flat if not k.startswith(prefix)})
  if left:
    counts = ", ".join(f"{r}/ ({sum(k.startswith(r + '/') for k in flat)} arrays)"
                       if any(k.startswith(r + "/") for k in flat) else r for r in left)
    what = "image tower" if subtree == "img" else f"sub-tree {subtree!r}"
    notes.append(f"multi-model checkpoint: loaded its {what} ({prefix}, {len(picked)} arrays); "
                 f"ignored {counts}" + (" (both towers: checkpoint.load_image_text)."
                                        if subtree == "img" else "."))
  return picked


def _from_flax_layout(flat: dict[str, np.ndarray], source: str, subtree: Optional[str],
                      notes: list) -> dict[str, np.ndarray]:
  flat = {_strip_prefix(k): np.asarray(v) for k, v in flat.items()}
  flat = _select_tower(flat, source, subtree, notes)
  flat = {_strip_prefix(k): v for k, v in flat.items()}
  roots = {k.split("/")[0] for k in flat}
  if not roots & set(_KNOWN_ROOTS) or not any(k.endswith(("kernel", "scale")) for k in flat):
    raise ValueError(
        f"{source} does not look like a ViT/Mixer checkpoint (top-level keys {sorted(roots)[:8]}); "
        "expected vit_models/big_vision .npz keys such as 'embedding/kernel', or a timm / "
        "transformers safetensors state dict.")
  flat = _rename_pre_linen(flat)
  flat = _big_vision_posemb(flat)
  return {k: _legacy_group_norm(k, v) for k, v in flat.items()}


def _strip_prefix(key: str) -> str:
  for prefix in _PREFIXES:
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


def _rename_pre_linen(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Pre-Linen block names -> Linen ones, only in blocks that use the pre-Linen numbering."""
  pre_linen_blocks = {m.group(1) for k in flat if (m := _BLOCK.match(k))
                      and m.group(2) == "MultiHeadDotProductAttention_1"}
  out = {}
  for key, value in flat.items():
    m = _BLOCK.match(key)
    if m and m.group(1) in pre_linen_blocks:
      key = f"{m.group(1)}/{PRE_LINEN_TO_LINEN.get(m.group(2), m.group(2))}/{m.group(3)}"
    out[key] = value
  return out


def _big_vision_posemb(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """big_vision's top-level pos_embedding (no class slot) -> ours (a zero slot for cls)."""
  if "pos_embedding" not in flat:
    return flat
  flat = dict(flat)
  posemb = flat.pop("pos_embedding")
  if "cls" in flat:  # big_vision adds the class token after the position embedding.
    posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
  flat["Transformer/posembed_input/pos_embedding"] = posemb
  return flat


def _legacy_group_norm(key: str, value: np.ndarray) -> np.ndarray:
  parts = key.split("/")
  if (len(parts) >= 2 and parts[-2].startswith("gn") and parts[-1] in ("scale", "bias")
      and value.ndim == 4 and value.shape[:3] == (1, 1, 1)):
    return value.reshape(value.shape[-1])
  return value


def to_vit_models(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our flat per-layer keys -> vit_models keys (pre-Linen numbering inside ViT blocks)."""
  out = {}
  for key, value in flat.items():
    m = _BLOCK.match(key)
    if m and m.group(1) != "Transformer/encoderblock":
      key = f"{m.group(1)}/{LINEN_TO_PRE_LINEN.get(m.group(2), m.group(2))}/{m.group(3)}"
    out[key] = value
  return out


# Top-level names of big_vision's vit.Model (scan=False): all that to_big_vision writes.
BIG_VISION_VIT_ROOTS = ("embedding", "pos_embedding", "cls", "Transformer", "MAPHead_0",
                        "pre_logits", "head")
_OUR_POSEMB = "Transformer/posembed_input/pos_embedding"


def to_big_vision(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our flat per-layer ViT keys -> big_vision's vit.Model keys (Linen names as ours).

  The position embedding moves to the top level without its class-token slot: big_vision
  adds it to the patch tokens before it prepends `cls`, so the slot's value is added to `cls`
  (the same model; canonicalize then gives that sum as `cls` and a zero slot). One ValueError
  for a tree big_vision's ViT has no names for (hybrid root, distillation token, scanned)."""
  out = dict(flat)
  posemb = out.pop(_OUR_POSEMB, None)
  if posemb is not None:
    posemb = np.asarray(posemb)
    if "cls" in out:
      out["cls"] = np.asarray(out["cls"]) + posemb[:, :1]
      posemb = posemb[:, 1:]
    out["pos_embedding"] = posemb
  extra = sorted({k.split("/")[0] for k in out} - set(BIG_VISION_VIT_ROOTS))
  scanned = any(k.startswith("Transformer/encoderblock/") for k in out)
  if extra or scanned:
    what = f"top-level keys {extra}" if extra else "a scanned Transformer/encoderblock"
    raise ValueError(f"big_vision's ViT (vit.Model) has no place for {what}; it holds "
                     f"{list(BIG_VISION_VIT_ROOTS)} with per-layer encoderblock_{{i}} (unstack "
                     "scanned params with checkpoint.unstack_layers).")
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree
