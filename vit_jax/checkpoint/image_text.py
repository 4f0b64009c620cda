"""Image-text (LiT, two-tower) checkpoints: both towers of a file, and the vocabulary beside it.

`load_image_text(path)` reads a LiT / two-tower `.npz` (local, gs://, https://) whole:
{'img': the image tower in our canonical per-layer layout (as `checkpoint.load` gives it),
 'txt': the text tower as written (flaxformer's BERT names, or the text transformer's, a
 scanned big_vision encoder unstacked to encoderblock_{i}), 't' (log temperature) and, where
 present, 'b' (SigLIP's bias)}.
`vocab_location(path, tokenizer_name)` is where a published LiT file keeps its tokenizer:
the same name with `.txt` (BERT wordpiece vocabulary) or `.model` (sentencepiece) instead of
`.npz`; `fetch_vocab` brings a remote one into the cache like the weights (`fetch`: any path or URI
to a local file, the network code imported only for a URI).
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from vit_jax.checkpoint import files, layouts
from vit_jax.checkpoint.adapt import unstack_layers

VOCAB_EXTENSIONS = {"bert": ".txt", "sentencepiece": ".model"}
_PREFIXES = ("params/", "opt/target/", "target/")
_URI = re.compile(r"^(gs|https?|hf|file)://", re.IGNORECASE)


def _strip(key: str) -> str:
  for prefix in _PREFIXES:
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


def fetch(path: str, *, cache_dir: Optional[str] = None, sha256: Optional[str] = None) -> str:
  """A local file for a path or URI; the network code is imported only for a URI."""
  path = os.fspath(path)
  if _URI.match(path) or sha256:
    from vit_jax.checkpoint import sources  # pylint: disable=g-import-not-at-top
    return sources.fetch(path, cache_dir=cache_dir, sha256=sha256)
  if not os.path.isfile(os.path.expanduser(path)):
    raise FileNotFoundError(f"{path} does not exist; give the path of a LiT .npz (or a gs:// / "
                            "https:// URI) and keep its vocabulary file beside it.")
  return os.path.expanduser(path)


def load_image_text(path: str, *, cache_dir: Optional[str] = None,
                    sha256: Optional[str] = None) -> dict:
  """Both towers of an image-text checkpoint (module doc); one ValueError if it is not one."""
  flat = {_strip(k): np.asarray(v) for k, v in files.read_flat(
      fetch(path, cache_dir=cache_dir, sha256=sha256)).items()}
  roots = sorted({k.split("/")[0] for k in flat})
  if "img" not in roots or "txt" not in roots:
    raise ValueError(f"{os.fspath(path)!r} is not an image-text checkpoint: it has no 'img/' and "
                     f"'txt/' towers (top-level keys {roots[:8]}). For an image model use "
                     "vit_jax.checkpoint.load.")
  image = {k[4:]: v for k, v in flat.items() if k.startswith("img/")}
  tree = {"img": unstack_layers(layouts.canonicalize(
              image, source=f"image tower of {os.fspath(path)!r}")),
          "txt": unstack_text_layers(layouts.unflatten(
              {k[4:]: v for k, v in flat.items() if k.startswith("txt/")}))}
  for key, value in flat.items():
    if "/" not in key:
      tree[key] = value
  return tree


def unstack_text_layers(txt: dict) -> dict:
  """A scanned text encoder (`Encoder_0/encoderblock`, leading layer axis, big_vision's
  scan=True) -> `encoderblock_{i}`; big_vision's old files with a second `pos_embedding`
  inside Encoder_0 get it added to the tower's (as big_vision's loader does)."""
  encoder = txt.get("Encoder_0")
  if isinstance(encoder, dict) and "pos_embedding" in encoder and "pos_embedding" in txt:
    encoder = dict(encoder)
    txt = {**txt, "pos_embedding": txt["pos_embedding"] + encoder.pop("pos_embedding"),
           "Encoder_0": encoder}
  return unstack_layers(txt, encoder="Encoder_0")


def vocab_location(path: str, tokenizer_name: str) -> str:
  """The vocabulary published beside checkpoint `path` (X.npz -> X.txt / X.model)."""
  if tokenizer_name not in VOCAB_EXTENSIONS:
    raise ValueError(f"tokenizer {tokenizer_name!r} is not known; use one of "
                     f"{sorted(VOCAB_EXTENSIONS)}.")
  path = os.fspath(path)
  stem = path[:-len(".npz")] if path.endswith(".npz") else path
  return stem + VOCAB_EXTENSIONS[tokenizer_name]


def fetch_vocab(path: str, tokenizer_name: str, *, cache_dir: Optional[str] = None) -> str:
  """A local copy of the vocabulary beside `path` (fetched into the cache when remote)."""
  return fetch(vocab_location(path, tokenizer_name), cache_dir=cache_dir)
