"""The project's ArrayRecord datasets: what `python -m vit_jax.datasets.convert` writes and
`config.dataset=DIR` reads back as a random-access source.

DIR/dataset.json (written last: its presence means the conversion finished and was verified):
  {"format": FORMAT, "source": ..., "num_classes": C, "class_names": [...],
   "captions": bool, "splits": {split: {"num_examples": N, "shards": [file, ...]}}}
DIR/<split>-<i>-of-<n>.array_record: one record per example, group size 1 (random access),
each record = a 4-byte little-endian header length, a JSON header ({"label": y} or
{"captions": [...]}, and "path": the example's id in the source) and the encoded image bytes
as the source held them (nothing re-encoded).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Optional

FORMAT = "vit_jax.array_record-1"
INDEX = "dataset.json"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: each read decodes one record


def is_array_record_dir(path: str) -> bool:
  """Whether `path` is a finished conversion (its dataset.json names this format)."""
  index = os.path.join(path, INDEX)
  if not os.path.isfile(index):
    return False
  with open(index) as f:
    return json.load(f).get("format") == FORMAT


def read_index(path: str) -> dict:
  with open(os.path.join(path, INDEX)) as f:
    return json.load(f)


def encode(element: dict, image_key: str = "image", label_key: Optional[str] = "label",
           captions: Optional[list] = None) -> bytes:
  """One record of a source element (module doc)."""
  header: dict[str, Any] = {"path": str(element.get("path", ""))}
  if captions is not None:
    header["captions"] = [str(c) for c in captions]
  else:
    header["label"] = int(element[label_key])
  image = element[image_key]
  if hasattr(image, "tobytes") and getattr(image, "dtype", None) is not None and \
      image.dtype.kind == "O":
    image = image.item()
  if not isinstance(image, (bytes, bytearray)):
    raise ValueError(f"{header['path'] or 'an example'}: the image is not encoded bytes "
                     f"({type(image).__name__}); convert reads encoded images only.")
  head = json.dumps(header).encode()
  return struct.pack("<I", len(head)) + head + bytes(image)


def decode(record: bytes) -> dict:
  """A record back as {'image': bytes, 'label' | 'captions', 'path'}."""
  (size,) = struct.unpack_from("<I", record)
  header = json.loads(record[4:4 + size])
  return {**header, "image": record[4 + size:]}


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


class ArrayRecordSource:
  """Random-access examples of one split of a converted dataset (grain's ArrayRecord data
  source underneath; picklable, reopened in each worker)."""

  def __init__(self, root: str, split: str):
    index = read_index(root)
    if split not in index["splits"]:
      raise ValueError(f"{root} (converted) has the splits {sorted(index['splits'])}, not "
                       f"{split!r}.")
    self.root, self.split = root, split
    self.files = [os.path.join(root, f) for f in index["splits"][split]["shards"]]
    self.num_examples = int(index["splits"][split]["num_examples"])
    self._source = None

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_source": None}

  def _open(self) -> Any:
    if self._source is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._source = grain.sources.ArrayRecordDataSource(self.files)
    return self._source

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    return decode(self._open()[int(index)])
