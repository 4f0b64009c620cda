"""Fitting a canonical checkpoint tree to a model: scan layout, head, pre_logits, posemb, checks.

Owns `adapt_to_model(restored, init)` used by checkpoint.load_pretrained (with the
`LoadReport` of what it changed, printed once at a fine-tune start), and the
per-layer <-> scanned conversions `stack_layers` / `unstack_layers`
(`Transformer/encoderblock_{i}/...` <-> `Transformer/encoderblock/...` with a
leading layer axis). Every key and shape is validated against the model's
init tree; each mismatch raises one ValueError naming the key, both shapes and the fix.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Optional, Sequence

import numpy as np

from vit_jax import param_tree
from vit_jax.checkpoint import layouts
from vit_jax.checkpoint.posemb import interpolate_posemb, square_grid

POSEMB = param_tree.POSEMB
_BLOCK_RE = re.compile(r"^encoderblock_(\d+)$")


@dataclasses.dataclass
class LoadReport:
  """What fitting a checkpoint to a model changed (checkpoint.load_pretrained(report=True))."""
  source: str
  arrays_loaded: int = 0              # checkpoint arrays used as they are
  head: str = "none"                  # 'kept' | 'replaced' | 'none' (no head in model or file)
  head_classes: tuple[int, int] = (0, 0)  # (checkpoint's, model's) class count
  pre_logits_dropped: bool = False
  posemb_grid: Optional[tuple[tuple[int, int], tuple[int, int]]] = None  # (old, new) if resized
  layout: str = ""                    # scan conversion done, if any

  def lines(self) -> list[str]:
    """The report as text lines (the trainer prints them once)."""
    out = [f"Loaded {self.source}: {self.arrays_loaded} arrays taken as they are."]
    old, new = self.head_classes
    if self.head == "replaced":
      out.append(f"  head: replaced ({old} -> {new} classes); the new head starts at the "
                 "model's initial value (zero: the published fine-tune recipe).")
    elif self.head == "kept":
      out.append(f"  head: kept ({old} classes).")
    if self.pre_logits_dropped:
      out.append("  pre_logits: dropped (the model has no representation layer).")
    if self.posemb_grid:
      (oh, ow), (nh, nw) = self.posemb_grid
      out.append(f"  position embeddings: resized from the {oh}x{ow} to the {nh}x{nw} patch "
                 "grid (bilinear).")
    else:
      out.append("  position embeddings: kept (same patch grid).")
    if self.layout:
      out.append(f"  layout: {self.layout}.")
    return out


def _stack(leaves):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack_layers(params: dict) -> dict:
  """Per-layer `Transformer/encoderblock_{i}` subtrees -> one scanned `encoderblock` subtree."""
  import jax  # pylint: disable=g-import-not-at-top
  transformer = params.get("Transformer") if isinstance(params, dict) else None
  if not transformer:
    return params
  indices = sorted(int(m.group(1)) for k in transformer if (m := _BLOCK_RE.match(k)))
  if not indices:
    return params
  if indices != list(range(len(indices))):
    raise ValueError(f"encoder blocks {indices} are not numbered 0..{len(indices) - 1}.")
  blocks = [transformer[f"encoderblock_{i}"] for i in indices]
  rest = {k: v for k, v in transformer.items() if not _BLOCK_RE.match(k)}
  rest["encoderblock"] = jax.tree.map(lambda *xs: _stack(list(xs)), *blocks)
  return {**params, "Transformer": rest}


def unstack_layers(params: dict) -> dict:
  """Scanned `Transformer/encoderblock` (leading layer axis) -> `encoderblock_{i}` subtrees."""
  import jax  # pylint: disable=g-import-not-at-top
  transformer = params.get("Transformer") if isinstance(params, dict) else None
  if not transformer or "encoderblock" not in transformer:
    return params
  stacked = transformer["encoderblock"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in transformer.items() if k != "encoderblock"}
  for i in range(num_layers):
    rest[f"encoderblock_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return {**params, "Transformer": rest}


def _match_scan(restored: dict, init: dict) -> dict:
  scanned = "encoderblock" in init.get("Transformer", {})
  return stack_layers(restored) if scanned else unstack_layers(restored)


def _fit_posemb(flat: dict, init: dict, source: str, old_grid, new_grid):
  """Resizes flat's posemb to init's grid; returns (old grid, new grid) or None if kept."""
  if POSEMB not in flat or POSEMB not in init or flat[POSEMB].shape == init[POSEMB].shape:
    return None
  old, new = flat[POSEMB].shape, init[POSEMB].shape
  if old[-1] != new[-1]:
    return None  # A width mismatch: reported by the shape check.
  prefix = 1 if "cls" in flat else 0
  grid = tuple(new_grid) if new_grid else square_grid(new[1] - prefix, "model's")
  before = tuple(old_grid) if old_grid else square_grid(old[1] - prefix, "checkpoint's")
  logging.info("Resizing position embeddings of %s from %s to %s (grid %s).", source, old, new,
               grid)
  flat[POSEMB] = interpolate_posemb(flat[POSEMB], grid, num_prefix_tokens=prefix,
                                    old_grid=old_grid)
  return before, grid


def _check_mixer_resolution(flat: dict, init: dict) -> None:
  have, want = param_tree.mixer_tokens(flat), param_tree.mixer_tokens(init)
  if have is not None and want is not None and have != want:
    key = param_tree.MIXER_TOKEN_KERNEL
    raise ValueError(
        f"checkpoint key {key!r} has shape {flat[key].shape}; the model expects {init[key].shape}: "
        f"this Mixer checkpoint was trained on {have} tokens and the model sees {want}. An "
        "MLP-Mixer's token-mixing weights are tied to the token count, so its resolution "
        "cannot change; feed images of the checkpoint's resolution.")


def _fit_head(flat: dict, init: dict, replace_head: Optional[bool], source: str) -> bool:
  """Takes the model's own (init) head when asked or when the class count differs."""
  if "head/kernel" not in init or "head/kernel" not in flat:
    return False
  differs = flat["head/kernel"].shape != init["head/kernel"].shape
  if replace_head is None and flat["head/kernel"].shape[:-1] != init["head/kernel"].shape[:-1]:
    differs = True  # pre_logits dropped / width changed: the old head cannot be used either.
  if replace_head or (replace_head is None and differs):
    logging.info("Replacing the %s-class head of %s with the model's %s-class head.",
                 flat["head/kernel"].shape[-1], source, init["head/kernel"].shape[-1])
    flat["head/kernel"], flat["head/bias"] = init["head/kernel"], init["head/bias"]
    return True
  return False


def _mismatch_message(key: str, found: Sequence[int], want: Sequence[int]) -> str:
  msg = f"checkpoint key {key!r} has shape {tuple(found)}; the model expects {tuple(want)}. "
  if key.startswith("head/"):
    return msg + (f"Pass num_classes={found[-1]} to the model, or let load_pretrained replace "
                  "the head (replace_head=None or True).")
  return msg + ("The checkpoint was made for a different architecture: pick the model config "
                "that matches it (hidden size, MLP size, heads, patch size, classifier).")


def _validate(flat: dict, init: dict, source: str) -> None:
  missing = sorted(set(init) - set(flat))
  unexpected = sorted(set(flat) - set(init))
  if missing or unexpected:
    raise ValueError(
        f"checkpoint {source!r} does not fit the model: "
        f"missing keys (model has, checkpoint lacks): {missing[:10]}"
        f"{' ...' if len(missing) > 10 else ''}; unexpected keys (checkpoint has, model lacks): "
        f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}. Use the model config the "
        "checkpoint was trained with (number of layers, classifier, representation_size, "
        "hybrid ResNet).")
  for key in sorted(init, key=lambda k: k.endswith("/bias")):  # Kernels first: clearer message.
    want = init[key]
    if tuple(flat[key].shape) != tuple(want.shape):
      raise ValueError(_mismatch_message(key, flat[key].shape, want.shape))


def adapt_to_model(restored: dict, init: dict, *, source: str,
                   replace_head: Optional[bool] = None, old_grid=None, new_grid=None
                   ) -> tuple[dict, LoadReport]:
  """(params shaped like `init`, LoadReport of what changed) from a canonical tree."""
  report = LoadReport(source=source)
  scanned_file = "encoderblock" in restored.get("Transformer", {})
  scanned_model = "encoderblock" in init.get("Transformer", {})
  if scanned_file != scanned_model:
    report.layout = ("per-layer blocks stacked for the scanned model" if scanned_model
                     else "scanned blocks unstacked to per-layer")
  restored = _match_scan(restored, init)
  flat, init_flat = param_tree.flat_view(restored), param_tree.flat_view(init)
  if "pre_logits/kernel" in flat and "pre_logits/kernel" not in init_flat:
    logging.info("Dropping pre_logits of %s: the model has no representation layer.", source)
    flat = {k: v for k, v in flat.items() if not k.startswith("pre_logits/")}
    report.pre_logits_dropped = True
  _check_mixer_resolution(flat, init_flat)
  report.posemb_grid = _fit_posemb(flat, init_flat, source, old_grid, new_grid)
  if "head/kernel" in flat and "head/kernel" in init_flat:
    report.head_classes = (int(flat["head/kernel"].shape[-1]), int(init_flat["head/kernel"].shape[-1]))
  replaced = _fit_head(flat, init_flat, replace_head, source)
  if "head/kernel" in flat and "head/kernel" in init_flat:
    report.head = "replaced" if replaced else "kept"
  _validate(flat, init_flat, source)
  out = {k: np.asarray(flat[k]).astype(init_flat[k].dtype, copy=False) for k in init_flat}
  changed = {POSEMB} if report.posemb_grid else set()
  if replaced:
    changed |= {"head/kernel", "head/bias"}
  report.arrays_loaded = len(set(out) - changed)
  return layouts.unflatten(out), report
