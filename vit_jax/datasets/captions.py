"""Image-text (caption) sources for two-tower (LiT / SigLIP) training, random access.

config.dataset = <root>, a folder; each split is <root>/<split>/ in one of two layouts:

  Caption folder: images (suffixes of image_files.py, in sub-folders too) and one captions
  file, <root>/<split>/captions.jsonl or <root>/<split>/captions.csv:
    captions.jsonl  one JSON object a line, the image path relative to <root>/<split>/:
                    {"image": "dogs/1.jpg", "caption": "a dog on a sofa."}
                    {"image": "dogs/1.jpg", "captions": ["a brown dog.", "a sleepy dog."]}
    captions.csv    a header row naming the columns `image` and `caption` (or `captions`,
                    or `text`), then one row per caption: dogs/1.jpg,"a dog, on a sofa."
  Lines (rows) naming the same image merge into one example with all their captions.
  Examples are the captioned images, sorted by relative path. An image named in the file
  but missing, or a malformed line, is an error naming the line; images on disk that no line
  names are ignored (one warning with their count).

  WebDataset shards: uncompressed <root>/<split>/*.tar, read in sorted name order. A sample
  is the members sharing a key (member name up to the first '.' of its base name, with its
  directory): an image (.jpg, .jpeg, .png or .webp) and a caption, .txt (UTF-8 text, one
  caption) or .json ({"caption": "..."} or {"captions": ["...", ...]}); .txt wins when a
  sample has both. Samples lacking an image or a caption are skipped (one warning). Opening
  indexes every tar's member headers once; an example is then one read at a known offset.

TFDS caption datasets (coco_captions: captions/text) are opened by sources.py, and
`LabelCaptions` turns a classification source into captions ("a photo of a {}.").
Every element is {"image": encoded bytes, <captions>, "path": str naming the example};
`element_captions(element, info.captions_key)` reads the captions of any of them.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import logging
import os
import posixpath
import tarfile
from typing import Any, Sequence

import numpy as np

from vit_jax.datasets import image_files, image_folder

CAPTION_FILES = ("captions.jsonl", "captions.csv")
CSV_CAPTION_COLUMNS = ("caption", "captions", "text")
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # In this order when a sample has two.
WDS_CAPTION_EXTENSIONS = ("txt", "json")
COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2")  # Refused, with advice.


def element_captions(element: dict, captions_key: str) -> list[str]:
  """The captions of one source element at the '/'-separated `captions_key`, as stripped,
  non-empty Python strings; ValueError (naming the element's 'path') when none is left."""
  where = f" of {element['path']}" if isinstance(element, dict) and "path" in element else ""
  value: Any = element
  for part in captions_key.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise ValueError(f"example{where} has no captions at {captions_key!r} (no {part!r}); "
                       "set the source's captions_key to where its captions are.")
    value = value[part]
  if isinstance(value, np.ndarray):
    items = value.ravel().tolist()
  elif isinstance(value, (str, bytes)):
    items = [value]
  elif isinstance(value, (list, tuple)):
    items = list(value)
  else:
    raise ValueError(f"example{where}: captions at {captions_key!r} are a "
                     f"{type(value).__name__}, not text; store them as strings.")
  captions = []
  for item in items:
    if isinstance(item, bytes):
      try:
        item = item.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"example{where}: a caption is not UTF-8 ({e}); re-encode it as "
                         "UTF-8.") from None
    if not isinstance(item, str):
      raise ValueError(f"example{where}: a caption at {captions_key!r} is a "
                       f"{type(item).__name__}, not text; store captions as strings.")
    if item.strip():
      captions.append(item.strip())
  if not captions:
    raise ValueError(f"example{where} has no non-empty caption at {captions_key!r}; give it "
                     "a caption or remove it.")
  return captions


def _read(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise ValueError(f"cannot read image {path!r} ({e}); fix or delete it.") from e


def _jsonl_rows(path: str):
  """(line number, image, [captions], how to fix a bad line) of each non-blank line of a
  captions.jsonl."""
  fix = ('; write one JSON object a line: {"image": "relative/path.jpg", "caption": "..."} '
         'or "captions": ["...", ...]')
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not valid JSON ({e}){fix}.") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{number}: a JSON {type(row).__name__}, not an object{fix}.")
      captions = [row["caption"]] if "caption" in row else []
      if isinstance(row.get("captions"), list):
        captions += row["captions"]
      elif "captions" in row:
        captions = [None]  # Reported below.
      yield number, row.get("image"), captions, fix


def _csv_rows(path: str):
  """(line number, image, [caption], how to fix a bad row) of each row of a captions.csv
  after its header."""
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    column = next((name for name in CSV_CAPTION_COLUMNS if name in header), None)
    if "image" not in header or column is None:
      raise ValueError(f"{path}:1: the header row {header} must name an 'image' column and a "
                       f"caption column ({' or '.join(map(repr, CSV_CAPTION_COLUMNS))}).")
    fix = f"; each row is image,{column} (quote captions that contain commas)"
    for row in reader:
      if None in row or None in row.values():
        more = "more" if None in row else "fewer"
        raise ValueError(f"{path}:{reader.line_num}: the row has {more} fields than the "
                         f"header{fix}.")
      yield reader.line_num, row["image"], [row[column]], fix


def _images_on_disk(folder: str) -> set[str]:
  """Relative paths (with '/') of the image files under `folder`, at any depth."""
  found = set()
  for parent, _, files in os.walk(folder):
    rel = os.path.relpath(parent, folder)
    found.update(posixpath.normpath(posixpath.join(rel.replace(os.sep, "/"), f))
                 for f in files if image_files.is_image(f))
  return found


@dataclasses.dataclass
class CaptionFolderSource:
  """<root>/<split>/ with captions.jsonl or .csv: item i → {'image': encoded bytes,
  'captions': [str, ...], 'path': absolute image path}, images sorted by relative path."""
  root: str
  split: str
  check_images: bool = True

  def __post_init__(self):
    folder = os.path.join(self.root, self.split)
    present = [f for f in CAPTION_FILES if os.path.isfile(os.path.join(folder, f))]
    if len(present) != 1:
      raise ValueError(f"caption folder split {folder!r} must hold exactly one of "
                       f"{' or '.join(CAPTION_FILES)} (found {present or 'neither'}); see "
                       "vit_jax/datasets/captions.py for the layout.")
    self.captions_file = os.path.join(folder, present[0])
    rows = _jsonl_rows if present[0].endswith(".jsonl") else _csv_rows
    on_disk = _images_on_disk(folder)
    merged: dict[str, list[str]] = {}
    missing = []
    for number, image, captions, fix in rows(self.captions_file):
      where = f"{self.captions_file}:{number}"
      if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}: no image path{fix}.")
      rel = posixpath.normpath(image.strip().replace("\\", "/"))
      if posixpath.isabs(rel):
        raise ValueError(f"{where}: image {image!r} is an absolute path; write it relative to "
                         f"{folder}.")
      if not image_files.is_image(rel):
        raise ValueError(f"{where}: {image!r} is not an image file ({image_files.describe()}).")
      if not captions or not all(isinstance(text, str) and text.strip() for text in captions):
        raise ValueError(f"{where}: the caption is missing, empty or not a string{fix}.")
      if rel not in on_disk and not os.path.isfile(os.path.join(folder, rel)):
        missing.append(f"{number} ({image})")
      merged.setdefault(rel, []).extend(text.strip() for text in captions)
    if missing:
      raise ValueError(f"{self.captions_file}: {len(missing)} image(s) named there do not exist "
                       f"under {folder} (line {', line '.join(missing[:5])}); add the images or "
                       "delete those lines.")
    if not merged:
      raise ValueError(f"{self.captions_file} names no image; add a line per image caption.")
    uncaptioned = len(on_disk - set(merged))
    if uncaptioned:
      logging.warning("%d image(s) under %s have no caption in %s and are not used.",
                      uncaptioned, folder, self.captions_file)
    order = sorted(merged)
    self.paths = [os.path.abspath(os.path.join(folder, rel)) for rel in order]
    self.captions = [tuple(merged[rel]) for rel in order]
    if self.check_images:
      image_folder.check_readable(self.paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.paths[index]
    return {"image": _read(path), "captions": list(self.captions[index]), "path": path}


def _member_key(name: str) -> tuple[str, str]:
  """(sample key, lower-case extension) of a tar member name, WebDataset's convention."""
  directory, base = posixpath.split(name)
  stem, _, extension = base.partition(".")
  return posixpath.join(directory, stem), extension.lower()


def _index_tar(path: str) -> tuple[list[tuple], int, int]:
  """Sorted (key, image (offset, size), caption extension, caption (offset, size)) samples of
  one tar, and the counts of samples without an image and without a caption."""
  members: dict[str, dict[str, tuple[int, int]]] = {}
  try:
    with tarfile.open(path, "r:") as tar:
      for info in tar:
        if info.isfile():
          key, extension = _member_key(info.name)
          members.setdefault(key, {})[extension] = (info.offset_data, info.size)
  except tarfile.TarError as e:
    raise ValueError(f"{path} is not an uncompressed tar ({e}); WebDataset shards are read "
                     "by offset, so decompress them (e.g. `gunzip`) or re-create them.") from e
  samples, no_image, no_caption = [], 0, 0
  for key in sorted(members):
    parts = members[key]
    image = next((parts[e] for e in WDS_IMAGE_EXTENSIONS if e in parts), None)
    caption = next((e for e in WDS_CAPTION_EXTENSIONS if e in parts), None)
    no_image += image is None
    no_caption += image is not None and caption is None
    if image is not None and caption is not None:
      samples.append((key, image, caption, parts[caption]))
  return samples, no_image, no_caption


def _pread(handle, size: int, offset: int) -> bytes:
  if hasattr(os, "pread"):  # One call, no shared file position: safe across threads.
    return os.pread(handle.fileno(), size, offset)
  with open(handle.name, "rb") as f:
    f.seek(offset)
    return f.read(size)


class WebDatasetSource:
  """<root>/<split>/*.tar WebDataset shards: item i → {'image': encoded bytes, 'captions':
  [str, ...], 'path': '<tar path>:<key>'}; tars by name, samples by key within a tar."""

  def __init__(self, root: str, split: str, threads: int = 16):
    self.root, self.split = root, split
    folder = os.path.join(root, split)
    tars = sorted(f for f in os.listdir(folder) if f.endswith(".tar")) if os.path.isdir(
        folder) else []
    if not tars:
      packed = [f for f in os.listdir(folder) if f.endswith(COMPRESSED_TARS)] if os.path.isdir(
          folder) else []
      hint = (f" ({len(packed)} compressed ones: shards are read by offset, so decompress them, "
              "e.g. `gunzip`, to .tar)" if packed else "")
      raise ValueError(f"WebDataset split {folder!r} holds no .tar shards{hint}; put the "
                       "split's <key>.jpg + <key>.txt samples in tar files there.")
    self.tars = [os.path.join(folder, t) for t in tars]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      indexed = list(pool.map(_index_tar, self.tars))
    self.keys: list[str] = []
    tar_ids, image_at, caption_at, caption_json = [], [], [], []
    for tar_id, (samples, _, _) in enumerate(indexed):
      for key, image, extension, caption in samples:
        self.keys.append(key)
        tar_ids.append(tar_id)
        image_at.append(image)
        caption_at.append(caption)
        caption_json.append(extension == "json")
    no_image = sum(i[1] for i in indexed)
    no_caption = sum(i[2] for i in indexed)
    if no_image or no_caption:
      logging.warning("%s: skipped %d WebDataset sample(s) without an image (%s) and %d without "
                      "a caption (.txt or .json).", folder, no_image,
                      ", ".join("." + e for e in WDS_IMAGE_EXTENSIONS), no_caption)
    if not self.keys:
      raise ValueError(f"the tars in {folder!r} hold no sample with both an image "
                       f"({', '.join(WDS_IMAGE_EXTENSIONS)}) and a caption (txt, json) member "
                       "of the same key (e.g. 000001.jpg + 000001.txt).")
    self.tar_ids = np.asarray(tar_ids, np.int32)
    self.image_at = np.asarray(image_at, np.int64).reshape(-1, 2)  # (offset, size)
    self.caption_at = np.asarray(caption_at, np.int64).reshape(-1, 2)
    self.caption_json = np.asarray(caption_json, bool)
    self._handles: dict[int, Any] = {}
    self._pid = os.getpid()

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_handles"] = {}  # Open files stay in their process; reopened on first read.
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._pid = os.getpid()

  def __len__(self) -> int:
    return len(self.keys)

  def _bytes(self, tar_id: int, offset: int, size: int) -> bytes:
    if self._pid != os.getpid():  # A forked child: its own handles.
      self._handles, self._pid = {}, os.getpid()
    handle = self._handles.get(tar_id)
    if handle is None:
      handle = self._handles[tar_id] = open(self.tars[tar_id], "rb", buffering=0)
    data = _pread(handle, size, offset)
    if len(data) != size:
      raise ValueError(f"{self.tars[tar_id]} is shorter than when it was indexed; it changed "
                       "during the run, restart it.")
    return data

  def __getitem__(self, index: int) -> dict[str, Any]:
    tar_id = int(self.tar_ids[index])
    path = f"{self.tars[tar_id]}:{self.keys[index]}"
    image = self._bytes(tar_id, *map(int, self.image_at[index]))
    raw = self._bytes(tar_id, *map(int, self.caption_at[index]))
    try:
      text = raw.decode("utf-8")
      if not self.caption_json[index]:
        captions = [text]
      else:
        meta = json.loads(text)
        value = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
        captions = [value] if isinstance(value, str) else value
        if not isinstance(captions, list):
          raise ValueError('it holds neither "caption" (a string) nor "captions" (a list)')
    except (UnicodeDecodeError, ValueError) as e:
      kind = ".json" if self.caption_json[index] else ".txt"
      raise ValueError(f"{path}: unreadable {kind} caption ({e}); write UTF-8 text, or JSON "
                       '{"caption": "..."} / {"captions": ["...", ...]}.') from None
    captions = [text.strip() for text in captions if isinstance(text, str) and text.strip()]
    return {"image": image, "captions": captions, "path": path}


@dataclasses.dataclass
class LabelCaptions:
  """A classification source whose labels read as captions: item i = the wrapped item with
  'captions' = [template.format(class name) for each template] ('_' in a name reads ' ')."""
  source: Any
  class_names: Sequence[str]
  templates: Sequence[str]
  label_key: str = "label"

  def __post_init__(self):
    if isinstance(self.templates, str):
      self.templates = [self.templates]
    self.class_names = tuple(self.class_names)
    self.templates = tuple(self.templates)
    if not self.templates:
      raise ValueError("LabelCaptions needs at least one template such as 'a photo of a {}.'.")
    for template in self.templates:
      try:
        ok = "{}" in template and bool(template.format("x"))
      except (IndexError, KeyError, ValueError):
        ok = False
      if not ok:
        raise ValueError(f"caption template {template!r} must hold one '{{}}' where the class "
                         "name goes (and no other braces), e.g. 'a photo of a {}.'.")

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    element = dict(self.source[index])
    label = int(element[self.label_key])
    if not 0 <= label < len(self.class_names):
      raise ValueError(f"example {element.get('path', index)}: label {label} is outside the "
                       f"{len(self.class_names)} class names given to LabelCaptions.")
    name = self.class_names[label].replace("_", " ")
    element["captions"] = [t.format(name) for t in self.templates]
    element.setdefault("path", f"example {index}")
    return element
