"""Fitting a canonical checkpoint tree to a model: scan layout, head, pre_logits, posemb, checks.

Owns `adapt_to_model(restored, init)` used by checkpoint.load_pretrained (with the
`LoadReport` of what it changed, printed once at a fine-tune start): big_vision's
`dont_load` regexes (full match on 'a/b/c' parameter names of the model's layout; those
parameters keep the model's initial value), a new head when the class count differs or the
file has none, pre_logits dropped, the position-embedding grid resized and, when asked, the
patch-embedding kernel PI-resized to the model's patch size (patch_embed.py). Also the
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
from vit_jax.checkpoint.patch_embed import resize_patch_kernel
from vit_jax.checkpoint.posemb import interpolate_posemb, square_grid

POSEMB = param_tree.POSEMB
_BLOCK_RE = re.compile(r"^encoderblock_(\d+)$")
PATCH_KERNEL = "embedding/kernel"


@dataclasses.dataclass
class LoadReport:
  """What fitting a checkpoint to a model changed (checkpoint.load_pretrained(report=True))."""
  source: str
  arrays_loaded: int = 0              # checkpoint arrays used as they are
  head: str = "none"                  # 'kept' | 'replaced' | 'new' (file has none) | 'none'
                                      # | 'dropped' (model has none) | 'not loaded' (dont_load)
  head_classes: tuple[int, int] = (0, 0)  # (checkpoint's, model's) class count
  pre_logits_dropped: bool = False
  posemb_grid: Optional[tuple[tuple[int, int], tuple[int, int]]] = None  # (old, new) if resized
  layout: str = ""                    # scan conversion done, if any
  patch_size: Optional[tuple[tuple[int, int], tuple[int, int]]] = None  # (old, new) if resized
  not_loaded: tuple[str, ...] = ()    # parameters left at the model's init value (dont_load)
  notes: tuple[str, ...] = ()         # what the file held beyond the model (e.g. a text tower)

  def lines(self) -> list[str]:
    """The report as text lines (the trainer prints them once)."""
    out = [f"Loaded {self.source}: {self.arrays_loaded} arrays taken as they are."]
    old, new = self.head_classes
    if self.head == "replaced":
      out.append(f"  head: replaced ({old} -> {new} classes); the new head starts at the "
                 "model's initial value (zero: the published fine-tune recipe).")
    elif self.head == "kept":
      out.append(f"  head: kept ({old} classes).")
    elif self.head == "new":
      out.append(f"  head: new ({new} classes; the checkpoint has none), starting at the "
                 "model's initial value.")
    elif self.head == "dropped":
      out.append(f"  head: dropped ({old} classes; the model has no head).")
    elif self.head == "not loaded":
      out.append(f"  head: not loaded (dont_load), {new} classes at the model's initial value.")
    if self.pre_logits_dropped:
      out.append("  pre_logits: dropped (the model has no representation layer).")
    if self.posemb_grid:
      (oh, ow), (nh, nw) = self.posemb_grid
      out.append(f"  position embeddings: resized from the {oh}x{ow} to the {nh}x{nw} patch "
                 "grid (bilinear).")
    else:
      out.append("  position embeddings: kept (same patch grid).")
    if self.patch_size:
      (oh, ow), (nh, nw) = self.patch_size
      out.append(f"  patch embedding: resized from {oh}x{ow} to {nh}x{nw} patches "
                 "(FlexiViT pseudo-inverse).")
    if self.not_loaded:
      shown = ", ".join(self.not_loaded[:6]) + (" ..." if len(self.not_loaded) > 6 else "")
      out.append(f"  not loaded (dont_load): {len(self.not_loaded)} arrays at the model's "
                 f"initial value: {shown}.")
    if self.layout:
      out.append(f"  layout: {self.layout}.")
    out.extend(f"  {note}" for note in self.notes)
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


def unstack_layers(params: dict, encoder: str = "Transformer") -> dict:
  """Scanned `<encoder>/encoderblock` (leading layer axis) -> `encoderblock_{i}` subtrees
  (`encoder`: 'Transformer' in a ViT, 'Encoder_0' in a text tower)."""
  import jax  # pylint: disable=g-import-not-at-top
  transformer = params.get(encoder) if isinstance(params, dict) else None
  if not transformer or "encoderblock" not in transformer:
    return params
  stacked = transformer["encoderblock"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in transformer.items() if k != "encoderblock"}
  for i in range(num_layers):
    rest[f"encoderblock_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return {**params, encoder: rest}


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
  prefix = int("cls" in flat) + int("dist_token" in flat)  # DeiT: [cls, dist, patches].
  if prefix != int("cls" in init) + int("dist_token" in init):
    return None  # Another token layout (a distillation token or not): the key check says so.
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


def _fit_head(flat: dict, init: dict, replace_head: Optional[bool], source: str) -> str:
  """The head outcome for the report: the model's own (init) head is taken when asked, when
  the class count differs, or when the file has none ('replaced' / 'new'), else 'kept'."""
  if "head/kernel" not in init:
    if "head/kernel" in flat:  # A feature extractor (num_classes None) from a classifier file.
      for key in ("head/kernel", "head/bias"):
        flat.pop(key, None)
      return "dropped"
    return "none"
  if "head/kernel" not in flat:
    if replace_head is False:
      raise ValueError(f"checkpoint {source!r} has no classification head (e.g. an image tower "
                       "or a feature extractor) but replace_head=False asks to keep it; let "
                       "load_pretrained add a new head (replace_head=None or True).")
    flat["head/kernel"], flat["head/bias"] = init["head/kernel"], init["head/bias"]
    _take_dist_head(flat, init)
    return "new"
  differs = flat["head/kernel"].shape != init["head/kernel"].shape
  if replace_head is None and flat["head/kernel"].shape[:-1] != init["head/kernel"].shape[:-1]:
    differs = True  # pre_logits dropped / width changed: the old head cannot be used either.
  if replace_head or (replace_head is None and differs):
    logging.info("Replacing the %s-class head of %s with the model's %s-class head.",
                 flat["head/kernel"].shape[-1], source, init["head/kernel"].shape[-1])
    flat["head/kernel"], flat["head/bias"] = init["head/kernel"], init["head/bias"]
    _take_dist_head(flat, init)
    return "replaced"
  return "kept"


def _take_dist_head(flat: dict, init: dict) -> None:
  """A distilled model's (DeiT) distillation head goes with its class head: init's too."""
  for key in ("head_dist/kernel", "head_dist/bias"):
    if key in init:
      flat[key] = init[key]


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
  if missing == [POSEMB] and not unexpected:
    raise ValueError(
        f"checkpoint {source!r} has no position embedding ({POSEMB!r}; big_vision files call it "
        "'pos_embedding'): it was trained with fixed sin-cos position embeddings. Build the "
        "model with posemb='sincos2d' (--config.model.posemb=sincos2d).")
  if unexpected == [POSEMB] and not missing:
    raise ValueError(
        f"checkpoint {source!r} has learned position embeddings ({POSEMB!r}) but the model uses "
        "fixed ones (posemb='sincos2d'); build it with posemb='learn', or pass "
        f"dont_load=[{POSEMB!r}] to drop them.")
  token = "model has" if "dist_token" in missing else (
      "checkpoint has" if "dist_token" in unexpected else None)
  if token:
    raise ValueError(
        f"checkpoint {source!r} does not fit the model: the {token} DeiT's distillation token "
        "(dist_token, head_dist) and the other does not; build the model with the checkpoint's "
        f"distilled={'dist_token' in unexpected} (--config.model.distilled=...).")
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


def _classes(flat: dict) -> int:
  return int(flat["head/kernel"].shape[-1]) if "head/kernel" in flat else 0


def _apply_dont_load(flat: dict, init: dict, patterns: Sequence[str]) -> tuple[str, ...]:
  """Drops checkpoint arrays whose name fully matches a pattern (the model's init value is used
  for those the model has); returns the model parameters so left at init. A pattern that
  matches nothing, or is not a valid regex, is an error (a typo would silently load all)."""
  if not patterns:
    return ()
  if isinstance(patterns, str):
    patterns = (patterns,)
  compiled = []
  for pattern in patterns:
    try:
      compiled.append((pattern, re.compile(pattern)))
    except re.error as e:
      raise ValueError(f"dont_load pattern {pattern!r} is not a valid regular expression: {e}."
                       ) from e
  names = sorted(set(flat) | set(init))
  matched = set()
  for pattern, regex in compiled:
    hits = [n for n in names if regex.fullmatch(n)]
    if not hits:
      example = next((n for n in names if "encoderblock" in n), names[0] if names else "")
      raise ValueError(f"dont_load pattern {pattern!r} matches no parameter name (it must match "
                       f"a whole name, e.g. 'head/.*' or {example!r}).")
    matched.update(hits)
  for name in matched:
    if name in init:
      flat[name] = init[name]
    else:
      flat.pop(name, None)
  return tuple(sorted(n for n in matched if n in init))


def _fit_patch_size(flat: dict, init: dict, resize: bool, source: str):
  """PI-resizes the patch-embedding kernel to the model's patch size when asked; returns
  (old, new) patch size or None. A differing size without `resize` is one clear error."""
  if PATCH_KERNEL not in flat or PATCH_KERNEL not in init:
    return None
  have, want = tuple(flat[PATCH_KERNEL].shape), tuple(init[PATCH_KERNEL].shape)
  if have[:2] == want[:2] or have[2:] != want[2:]:
    return None  # Same patch size, or a channel/width mismatch for the shape check.
  if not resize:
    raise ValueError(
        f"checkpoint {source!r} has {have[0]}x{have[1]} patches and the model "
        f"{want[0]}x{want[1]}: pass resize_patch_embedding=True "
        "(--config.resize_patch_embedding=True) to resize the patch-embedding kernel "
        "(FlexiViT's pseudo-inverse resize), or use the checkpoint's patch size.")
  logging.info("Resizing the patch embedding of %s from %s to %s.", source, have, want)
  flat[PATCH_KERNEL] = resize_patch_kernel(flat[PATCH_KERNEL], want[:2])
  return tuple(have[:2]), tuple(want[:2])


def adapt_to_model(restored: dict, init: dict, *, source: str,
                   replace_head: Optional[bool] = None, old_grid=None, new_grid=None,
                   dont_load: Sequence[str] = (), resize_patch_embedding: bool = False,
                   notes: Sequence[str] = ()) -> tuple[dict, LoadReport]:
  """(params shaped like `init`, LoadReport of what changed) from a canonical tree."""
  report = LoadReport(source=source, notes=tuple(notes))
  scanned_file = "encoderblock" in restored.get("Transformer", {})
  scanned_model = "encoderblock" in init.get("Transformer", {})
  if scanned_file != scanned_model:
    report.layout = ("per-layer blocks stacked for the scanned model" if scanned_model
                     else "scanned blocks unstacked to per-layer")
  restored = _match_scan(restored, init)
  flat, init_flat = param_tree.flat_view(restored), param_tree.flat_view(init)
  report.not_loaded = _apply_dont_load(flat, init_flat, dont_load)
  if "pre_logits/kernel" in flat and "pre_logits/kernel" not in init_flat:
    logging.info("Dropping pre_logits of %s: the model has no representation layer.", source)
    flat = {k: v for k, v in flat.items() if not k.startswith("pre_logits/")}
    report.pre_logits_dropped = True
  _check_mixer_resolution(flat, init_flat)
  report.patch_size = _fit_patch_size(flat, init_flat, resize_patch_embedding, source)
  report.posemb_grid = _fit_posemb(flat, init_flat, source, old_grid, new_grid)
  report.head_classes = (_classes(flat), _classes(init_flat))
  report.head = _fit_head(flat, init_flat, replace_head, source)
  if "head/kernel" in report.not_loaded:
    report.head = "not loaded"
  _validate(flat, init_flat, source)
  out = {k: np.asarray(flat[k]).astype(init_flat[k].dtype, copy=False) for k in init_flat}
  changed = set(report.not_loaded) | ({POSEMB} if report.posemb_grid else set())
  if report.head in ("replaced", "new"):
    changed |= {"head/kernel", "head/bias"} | ({"head_dist/kernel", "head_dist/bias"} & set(out))
  if report.patch_size:
    changed.add(PATCH_KERNEL)
  report.arrays_loaded = len(set(out) - changed)
  return layouts.unflatten(out), report
