"""Published-checkpoint I/O: load any ViT/Mixer layout, save the vit_models layout, fine-tune loads.

Public API (mirrors Google's vit_jax.checkpoint where it overlaps):
  load(path, *, num_heads=None) -> the canonical tree: nested numpy params in our in-memory
      per-layer layout (`Transformer/encoderblock_{i}`, also for scanned files), from a local
      .npz / .safetensors / Hugging Face snapshot directory or a gs:// https:// hf:// URI;
      'file.npz:img' reads one sub-tree (big_vision's syntax), two-tower files their image tower.
  load_image_text(path) -> both towers of a LiT / two-tower file ({'img', 'txt', 't'[, 'b']});
      vocab_location / fetch_vocab: the tokenizer file published beside it (image_text.py).
  save(params, path) -> vit_models flat .npz (pre-Linen block names, per-layer), atomically.
  load_pretrained(*, pretrained_path, init_params, model_config, **options) -> params ready for
      `model.apply`: validated keys/shapes, new head, posemb resized, scan layout matched
      (the one place a scanned model gets its stacked layout; `stack_layers` for others).
  load_from(location, loader) -> (where it was read, loader's result): the one home of the
      pretrained-weights fallback (the trainer, the distillation teacher and vit_jax.artifacts
      use it): candidate_locations(location) -> the one rule for where a checkpoint is read
      from (a path or URI as given; an AugReg name or file name -> its known copies, the
      Hugging Face one first), load_first(locations, loader) -> the fallback between them.
  to_host(params) -> unboxed numpy copy of a (sharded, possibly multi-host) params tree.
  interpolate_posemb, stack_layers, unstack_layers.
The package: byte formats in files.py, key layouts in layouts.py / torch_layouts.py, the
scan / head / posemb fitting in adapt.py and posemb.py, remote sources in sources.py and
the AugReg index in augreg.py (both imported lazily: no network code on the local path, which
docs/architecture.md and tests/test_architecture.py hold).
See docs/architecture.md, "Checkpoint naming".
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np

from vit_jax import param_tree
from vit_jax.checkpoint import files, layouts
from vit_jax.checkpoint.adapt import LoadReport, adapt_to_model, stack_layers, unstack_layers
from vit_jax.checkpoint.image_text import fetch_vocab, load_image_text, vocab_location
from vit_jax.checkpoint.patch_embed import resize_patch_kernel
from vit_jax.checkpoint.posemb import interpolate_posemb

__all__ = ["load", "save", "load_pretrained", "interpolate_posemb", "stack_layers",
           "unstack_layers", "CheckpointFormatError", "candidate_locations", "load_first",
           "load_from", "to_host", "LoadReport", "resize_patch_kernel", "split_subtree",
           "load_image_text", "vocab_location", "fetch_vocab"]

CheckpointFormatError = files.CheckpointFormatError
_REMOTE = re.compile(r"^(gs|https?|hf)://", re.IGNORECASE)
_SUBTREE = re.compile(r"^(.+\.npz):(\w+(?:/\w+)*)$")


def _is_uri(path: str) -> bool:
  """A location the sources layer fetches (gs://, http(s)://, hf://, file://), not a local path."""
  return bool(_REMOTE.match(path)) or path.startswith("file://")


def _resolve(path: str, cache_dir: Optional[str], sha256: Optional[str]
             ) -> tuple[str, Optional[dict]]:
  """(local weights file, HF config dict or None) for a path or URI."""
  path = os.fspath(path)
  config = None
  if _is_uri(path):
    # Lazy: the local path imports no network code (module doc).
    from vit_jax.checkpoint import sources  # pylint: disable=g-import-not-at-top
    local = sources.fetch(path, cache_dir=cache_dir, sha256=sha256)
    if path.lower().startswith("hf://") and not local.endswith(".npz"):
      config = sources.fetch_hf_config(path, cache_dir=cache_dir)
    path = local
  if os.path.isdir(path):
    config = files.read_hf_config(path)
    path = files.weights_file_in(path)
  elif config is None and os.path.isfile(path) and path.endswith(".safetensors"):
    config = files.read_hf_config(os.path.dirname(os.path.abspath(path)))
  return path, config


def split_subtree(path: str) -> tuple[str, Optional[str]]:
  """('file.npz', 'img') for big_vision's 'file.npz:img' (one model of a multi-model file)."""
  path = os.fspath(path)
  m = _SUBTREE.match(path)
  if m and not os.path.exists(path):
    return m.group(1), m.group(2)
  return path, None


def load(path: str, *, num_heads: Optional[int] = None, cache_dir: Optional[str] = None,
         sha256: Optional[str] = None) -> dict:
  """The canonical tree: nested np.ndarray in our per-layer layout, from any source and layout.

  Every supported layout gives the same tree: vit_models, big_vision (per-layer or scanned:
  a stacked `Transformer/encoderblock` is unstacked to `encoderblock_{i}`), timm,
  transformers, our own exports. A two-tower file (SigLIP, LiT) gives its image tower
  (`load_image_text` gives both towers), and
  'file.npz:<name>' its sub-tree <name>; what is ignored is logged once. A model built with
  scan_layers=True takes the result through load_pretrained (or stack_layers).
  num_heads is only needed for timm/transformers files (fused or 2-D attention weights); when
  None it comes from the snapshot's config.json, else from the published widths table
  (192:3, 384:6, 768:12, 1024/1280/1408/1664:16), else hidden_size // 64.
  """
  tree, notes = _load(path, num_heads=num_heads, cache_dir=cache_dir, sha256=sha256)
  _log_notes(path, notes)
  return tree


def _log_notes(path: str, notes: list[str]) -> None:
  for note in notes:
    logging.warning("%s: %s", os.fspath(path), note)


def _load(path: str, *, num_heads: Optional[int], cache_dir: Optional[str],
          sha256: Optional[str]) -> tuple[dict, list[str]]:
  """(canonical tree, notes on what the file held beyond the model)."""
  location, subtree = split_subtree(path)
  local, config = _resolve(location, cache_dir, sha256)
  flat = files.read_flat(local)
  notes: list[str] = []
  tree = layouts.canonicalize(flat, num_heads=num_heads or param_tree.num_heads(config=config),
                              source=f"checkpoint {os.fspath(path)!r}", subtree=subtree,
                              notes=notes)
  return unstack_layers(tree), notes


def to_host(params: Any) -> dict:
  """Unboxed, host (numpy) copy of a params tree, gathering multi-host arrays if needed.

  Abstract leaves (jax.ShapeDtypeStruct, e.g. from jax.eval_shape) become zeros.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax.linen import meta  # pylint: disable=g-import-not-at-top
  params = meta.unbox(params)

  def to_numpy(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return np.zeros(x.shape, x.dtype)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(to_numpy, params)


def save(params: Any, path: str) -> None:
  """Writes params as a vit_models .npz (pre-Linen block names, per-layer, float32), atomically."""
  params = to_host(params)
  params = unstack_layers(params)
  flat = layouts.to_vit_models(param_tree.flat_view(params))
  flat = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
          for k, v in flat.items()}
  files.write_npz_atomic(flat, os.fspath(path))


def load_pretrained(*, pretrained_path: str, init_params: Any, model_config: Any = None,
                    **options: Any) -> dict:
  """Checkpoint params adapted to the model that produced `init_params` (a plain nested dict).

  `init_params` gives the expected names and shapes and the new head's initial values; it may
  be abstract (jax.eval_shape output), in which case a replaced head starts at zero, as in
  the published fine-tuning recipe.

  Options: replace_head (None: when the class count differs or the file has no head;
  True/False to force), dont_load (regexes, full match on 'a/b/c' names in the model's
  layout, as big_vision's: those parameters keep their `init_params` value — pass concrete
  init params for anything but a zero-initialised head), resize_patch_embedding (True:
  PI-resize a kernel of another patch size, FlexiViT), old_grid / new_grid ((gh, gw) when
  a position-embedding grid is not square), num_heads, cache_dir, sha256, report (True:
  return (params, LoadReport) — head replaced / kept / new, pre_logits dropped, posemb grid
  and patch size resized, parameters not loaded, towers ignored, arrays loaded). Raises
  ValueError naming the key and shapes on any mismatch.
  """
  known = {"replace_head", "old_grid", "new_grid", "num_heads", "cache_dir", "sha256", "report",
           "dont_load", "resize_patch_embedding"}
  unknown = sorted(set(options) - known)
  if unknown:
    raise TypeError(f"load_pretrained got unknown options {unknown}; valid: {sorted(known)}.")
  init_flat = param_tree.flat_view(to_host(init_params))
  heads = options.get("num_heads") or param_tree.num_heads(init_flat, model_config)
  restored, notes = _load(pretrained_path, num_heads=heads, cache_dir=options.get("cache_dir"),
                          sha256=options.get("sha256"))
  if not options.get("report"):  # With report=True the notes are in the report's lines.
    _log_notes(pretrained_path, notes)
  adapted, report = adapt_to_model(
      restored, layouts.unflatten(init_flat), source=str(pretrained_path),
      replace_head=options.get("replace_head"), old_grid=options.get("old_grid"),
      new_grid=options.get("new_grid"), dont_load=tuple(options.get("dont_load") or ()),
      resize_patch_embedding=bool(options.get("resize_patch_embedding")), notes=notes)
  head = adapted.get("head", {}).get("kernel") if isinstance(adapted.get("head"), dict) else None
  if head is not None and head.size and not np.any(head) and report.head == "kept":
    warnings.warn(
        f"the head of {pretrained_path!r} is all zeros (ImageNet-21k pre-training checkpoints "
        "ship zero heads): its logits are useless for inference until the model is fine-tuned.",
        stacklevel=2)
  logging.info("Loaded %s into the model.", pretrained_path)
  return (adapted, report) if options.get("report") else adapted


T = TypeVar("T")


def candidate_locations(location: str) -> tuple[str, ...]:
  """Where to read `location` from, in order of preference.

  An existing local path or a URI (gs://, http(s)://, hf://, file://) is taken as given. An
  AugReg file name ('B_16-i21k-300ep-...[.npz]', no index read) or AugReg model name ('B/16',
  'ViT-B_16'; the recommended run, from the AugReg index) becomes its known copies: the
  Hugging Face one first (no credentials needed), then gs://vit_models/augreg/.
  """
  location = os.fspath(location)
  # Lazy: the AugReg index module is network code (module doc).
  from vit_jax.checkpoint import augreg  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.expanduser(split_subtree(location)[0])) or _is_uri(location):
    return (location,)
  if augreg.is_filename(location):
    return augreg.parse_filename(location).uris
  if augreg.looks_like_model_name(location):
    return augreg.resolve(location).uris
  return (location,)  # A missing local file: the loader says so.


def load_first(locations: Sequence[str], loader: Callable[[str], T]) -> tuple[str, T]:
  """(location, loader(location)) for the first location that can be fetched.

  A FetchError (unreachable, access denied, missing) moves on to the next location; every
  other error (a corrupt file, a shape mismatch) is raised at once. When all fail, one
  FileNotFoundError lists each location with its cause.
  """
  # Lazy: the local path imports no network code (module doc).
  from vit_jax.checkpoint import sources  # pylint: disable=g-import-not-at-top
  locations = list(locations)
  errors = []
  for location in locations:
    try:
      return location, loader(location)
    except sources.FetchError as e:
      if len(locations) == 1:
        raise
      errors.append(f"{location}: {e}")
  raise FileNotFoundError("could not fetch the checkpoint from any of its copies:\n  "
                          + "\n  ".join(errors))


def load_from(location: str, loader: Callable[[str], T]) -> tuple[str, T]:
  """(location read, loader(it)): `location`'s candidate_locations tried in order (load_first).

  The pretrained-weights fallback of every reader (trainer, teacher, command lines) in one place.
  """
  return load_first(candidate_locations(os.fspath(location)), loader)
