"""Classifying image files: reading them, class names, batched softmax, top-k rows and files.

Used by `python -m vit_jax.inference` and the notebook; an image-text (LiT) model ranks
given texts instead of classes (`text_embeddings`, `zero_shot_apply`). Images are read with
PIL, converted to RGB, resized to R x R (bilinear) and scaled to [-1, 1]. Class names: the
ImageNet-1k list for 1000-class heads and Google's ImageNet-21k list (21843 classes) shipped in
vit_jax/labels/, or a file (one name per line, optionally 'wnid<TAB>name'); otherwise
'class <i>'. A folder stands for every image under it (recursively, sorted): the suffixes of
datasets/image_files.py, the same files an image-folder dataset reads.
"""
from __future__ import annotations

import csv
import importlib.resources
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vit_jax.datasets import image_files, naflex
from vit_jax.datasets.image_files import IMAGE_SUFFIXES  # noqa: F401  (the name predict had)
from vit_jax.evaluators import zeroshot
from vit_jax.training import train_step

LABEL_FILES = {1000: "imagenet1k.txt", 21843: "imagenet21k.txt"}


def expand_images(paths: Sequence[str]) -> list[str]:
  """Image files of `paths`: files as given, folders walked recursively (sorted)."""
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names if image_files.is_image(name))
      if not found:
        raise ValueError(f"folder {path!r} holds no image files ({image_files.describe()}).")
      out.extend(found)
    else:
      out.append(path)
  return out


def top_k_rows(paths: Sequence[str], probs: np.ndarray, labels: Sequence[str],
               k: int) -> list[dict]:
  """[{'path', 'top_k': [{'label', 'index', 'probability'}, ...]}] most probable first."""
  rows = []
  for path, p in zip(paths, probs):
    order = np.argsort(-p, kind="stable")[:k]
    rows.append({"path": path, "top_k": [{"label": labels[i], "index": int(i),
                                          "probability": float(p[i])} for i in order]})
  return rows


def write_predictions(path: str, rows: list[dict]) -> None:
  """rows as .json (a list) or .csv (one row per image); other suffixes are an error.

  CSV columns: path, then label_i, index_i, probability_i for i = 1..k.
  """
  if path.endswith(".json"):
    with open(path, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
    return
  if not path.endswith(".csv"):
    raise ValueError(f"--output {path!r}: use a .csv or .json file name.")
  k = max((len(r["top_k"]) for r in rows), default=0)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["path"] + [f"{c}_{i + 1}" for i in range(k)
                                for c in ("label", "index", "probability")])
    for r in rows:
      writer.writerow([r["path"]] + [v for t in r["top_k"]
                                     for v in (t["label"], t["index"], f"{t['probability']:.6f}")])


def load_labels(num_classes: int, path: Optional[str] = None) -> list[str]:
  """Class names for a head of `num_classes` outputs (from `path` or the shipped lists)."""
  if path:
    with open(path, encoding="utf-8") as f:
      lines = [line.rstrip("\n") for line in f if line.strip()]
  elif num_classes in LABEL_FILES:
    text = importlib.resources.files("vit_jax").joinpath("labels", LABEL_FILES[num_classes])
    lines = text.read_text(encoding="utf-8").splitlines()
  else:
    return [f"class {i}" for i in range(num_classes)]
  names = [line.split("\t", 1)[-1] for line in lines]
  if len(names) != num_classes:
    raise ValueError(f"label file {path or LABEL_FILES[num_classes]} has {len(names)} names but "
                     f"the model has {num_classes} classes; pass a matching --labels file.")
  return names


def load_image(path: str, resolution: int) -> np.ndarray:
  """(resolution, resolution, 3) float32 in [-1, 1] from an image file (PIL, bilinear)."""
  # Lazy: PIL is an optional dependency (setup.cfg's `data` extra), needed only to read files.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      img = img.convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read image {path!r}: {e}") from None
  return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def load_packed(path: str, resolution: int, patch: int) -> dict:
  """One image file as a packed sequence of its own (datasets/naflex.py): its aspect ratio
  kept, at most (resolution // patch)^2 patches; model inputs with a batch axis of 1."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      pixels = np.asarray(img.convert("RGB"), np.uint8)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read image {path!r}: {e}") from None
  return naflex.pack_arrays([pixels], max(int(resolution) // int(patch), 1) ** 2, int(patch))


_APPLY_CACHE: dict[int, tuple[Any, Any]] = {}  # id(model) -> (model, jitted softmax apply)


def _softmax_apply(model):
  """One jitted softmax(apply) per model object, so repeated `predict` calls (a notebook
  classifying image after image) reuse its compilation. Flax modules are not hashable."""
  hit = _APPLY_CACHE.get(id(model))
  if hit is None or hit[0] is not model:
    if len(_APPLY_CACHE) >= 4:
      _APPLY_CACHE.pop(next(iter(_APPLY_CACHE)))
    def probs(p, x):  # packed inputs: one image per sequence (train_step.one_image_per_sequence)
      return jax.nn.softmax(train_step.one_image_per_sequence(
          x, model.apply({"params": p}, x, train=False)))
    hit = (model, jax.jit(probs))
    _APPLY_CACHE[id(model)] = hit
  return hit[1]


def text_embeddings(model, params, tokens: np.ndarray) -> np.ndarray:
  """(T, D) unit text embeddings of an image-text (LiT) model for (T, max_len) tokens."""
  return np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, tokens=t)[1])(
      params, np.asarray(tokens, np.int32)))


def zero_shot_apply(model, ztxt: np.ndarray):
  """jit(params, images) -> (N, T) softmax over the texts `ztxt` (rows: unit embeddings) of
  temperature x cosine similarity: LiT's probabilities that each text describes each image."""
  def probs(p, x):
    zimg, _, out = model.apply({"params": p}, images=x)
    return jax.nn.softmax(zeroshot.logits(zimg, ztxt, out["t"], xp=jnp))
  return jax.jit(probs)


def predict(model, params, images: Any, batch_size: int = 16,
            apply: Optional[Any] = None) -> np.ndarray:
  """Softmax probabilities (N, classes) of `images` (N, H, W, 3) in [-1, 1], or of N packed
  sequences of one image each (a dict, load_packed); `apply` (params, images) ->
  probabilities replaces the model's classifier (zero_shot_apply).

  Runs batches of min(batch_size, N) images; the last one is padded (and the padding's
  outputs dropped), so one compiled shape serves every batch."""
  apply = apply or _softmax_apply(model)
  n = len(jax.tree.leaves(images)[0])
  size = max(1, min(batch_size, n))
  out = []
  for i in range(0, n, size):
    batch = jax.tree.map(lambda x, lo=i: np.asarray(x[lo:lo + size]), images)
    pad = size - len(jax.tree.leaves(batch)[0])
    if pad:
      batch = jax.tree.map(
          lambda x, n=pad: np.concatenate([x, np.zeros((n,) + x.shape[1:], x.dtype)]), batch)
    out.append(np.asarray(apply(params, batch))[:size - pad])
  return np.concatenate(out).astype(np.float64)


def predict_files(model, params, paths: Sequence[str], resolution: int, labels: Sequence[str],
                  k: int, batch_size: int = 16, apply: Optional[Any] = None,
                  keep_aspect_patch: Optional[int] = None) -> list[dict]:
  """top_k_rows of image files, read and classified `batch_size` at a time (a progress bar on
  stderr when there is more than one batch); `apply` as in `predict`. keep_aspect_patch:
  each image packed alone at its own aspect ratio (load_packed) instead of squashed."""
  size = max(1, batch_size)
  chunks = range(0, len(paths), size)
  rows = []
  for start in tqdm(chunks, desc="images", unit="batch", disable=len(chunks) <= 1,
                    file=sys.stderr):
    chunk = paths[start:start + size]
    if keep_aspect_patch:
      packs = [load_packed(p, resolution, keep_aspect_patch) for p in chunk]
      inputs = {key: np.concatenate([x[key] for x in packs]) for key in packs[0]}
    else:
      inputs = np.stack([load_image(p, resolution) for p in chunk])
    probs = predict(model, params, inputs, size, apply)
    rows.extend(top_k_rows(chunk, probs, labels, k))
  return rows


def format_row(row: dict) -> str:
  """'path' then one line '  0.81234  label  [index]' per top_k entry (see top_k_rows)."""
  return row["path"] + "".join(f"\n  {t['probability']:.5f}  {t['label']}  [{t['index']}]"
                               for t in row["top_k"])


def format_top_k(path: str, probs: np.ndarray, labels: Sequence[str], k: int) -> str:
  """'path' then k lines '  0.81234  label  [index]', most probable first."""
  return format_row(top_k_rows([path], [probs], labels, k)[0])
