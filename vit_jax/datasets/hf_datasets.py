"""Hugging Face `datasets` data as a random-access source: `config.dataset=hf:PATH_OR_NAME`.

PATH is a local folder in one of the layouts the `datasets` library writes, read with pyarrow
(no `datasets` import); a NAME (`org/name[@revision]`, no such folder here) is a dataset repo
on the Hub whose Parquet files of the split are downloaded once into the Hugging Face cache
(local_root; $HF_HUB_CACHE, $HF_ENDPOINT and $HF_HUB_OFFLINE are honoured). Layouts:
  * `save_to_disk` of a DatasetDict: PATH/dataset_dict.json and PATH/<split>/ holding
    state.json (its Arrow files), dataset_info.json (its features) and data-*.arrow;
    of one Dataset: PATH/state.json (read as the split 'train');
  * Parquet, as the Hub stores datasets: PATH/**/<split>-*.parquet or PATH/**/<split>/*.parquet
    (the features from the files' 'huggingface' schema metadata).
Arrow files are memory-mapped, so any row is read in O(1) without loading the split; Parquet
files are read a row group at a time (the last few kept per file), fine for shuffled reads
of small and medium sets. For a pod, convert to ArrayRecord first.

Columns: the image column holds an Image feature ({'bytes', 'path'} structs) or encoded
bytes, the label column ints with ClassLabel names; by default the first Image and the first
ClassLabel feature (else the columns named 'image' / 'img' and 'label' / 'labels'),
config.input.image_column / label_column name others.
"""
from __future__ import annotations

import bisect
import collections
import glob
import json
import os
import re
from typing import Any, Optional

import numpy as np

PREFIX = "hf:"


def is_hf(dataset: str) -> bool:
  """Whether config.dataset names Hugging Face data (hf:PATH)."""
  return str(dataset).startswith(PREFIX)


# A Hub dataset repo id with an optional revision: org/name[@revision] (or a legacy bare name).
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")


def split_patterns(split: str) -> list[str]:
  """The Parquet file names of `split` in a Hub dataset repo (those _split_files reads)."""
  return [f"{split}-*.parquet", f"*/{split}-*.parquet", f"{split}/*.parquet",
          f"*/{split}/*.parquet", f"{split}.parquet", f"*/{split}.parquet"]


def local_root(name: str, split: str) -> str:
  """The local folder of hf:NAME for `split`: NAME when it is a folder here, else the snapshot
  of the Hub dataset repo NAME[@revision] holding the split's Parquet files (downloaded once,
  then read from the Hugging Face cache, also offline)."""
  if os.path.isdir(name):
    return name
  local_hint = (f"hf:{name}: no such folder here. hf: reads a Hugging Face dataset saved on "
                "this machine (save_to_disk's folder, or the Hub's Parquet files fetched with "
                f"`hf download ORG/NAME --repo-type dataset --local-dir DIR`)")
  if not HUB_NAME.fullmatch(name) or name.startswith((".", "~")):
    raise ValueError(local_hint + ", or a Hub dataset named org/name[@revision].")
  repo_id, _, revision = name.partition("@")
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors as hf_errors  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(local_hint + "; reading a Hub dataset by name needs huggingface_hub: "
                     "pip install huggingface_hub.") from None
  from vit_jax.checkpoint import sources as checkpoint_sources  # pylint: disable=g-import-not-at-top
  settings = checkpoint_sources.hub_settings()
  offline = settings["local_files_only"]
  try:
    path = huggingface_hub.snapshot_download(
        repo_id, repo_type="dataset", revision=revision or None,
        allow_patterns=split_patterns(split), **settings)
  except (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError, OSError) as e:
    where = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
    problems = (  # the first class that matches says what to do (errors subclass each other)
        (hf_errors.GatedRepoError, f"the Hub dataset {repo_id!r} is gated: accept its terms on "
         "the Hub and run `hf auth login`, then rerun."),
        (hf_errors.RepositoryNotFoundError, f"{local_hint}, and the Hub has no dataset repo "
         f"{repo_id!r} (or it is private: run `hf auth login`)."),
        (hf_errors.RevisionNotFoundError, f"the Hub dataset {repo_id!r} has no revision "
         f"{revision!r}."),
        (hf_errors.LocalEntryNotFoundError, f"hf:{name}: {where} and the dataset is not in the "
         "local Hugging Face cache; connect once (or unset HF_HUB_OFFLINE), or download it "
         "elsewhere with `hf download` and pass --config.dataset=hf:DIR."),
        (Exception, f"hf:{name}: downloading the split {split!r} from the Hub failed ({e}); "
         "rerun (finished files are kept), or pass a local copy as hf:DIR."))
    raise ValueError(next(text for kind, text in problems if isinstance(e, kind))) from None
  if not any(glob.glob(os.path.join(path, pattern)) for pattern in split_patterns(split)):
    raise ValueError(f"the Hub dataset {repo_id!r} has no Parquet files of the split {split!r} "
                     f"(named {split}-*.parquet or {split}/*.parquet); name a split it has "
                     "with --config.train_split / eval_split (datasets built by a loading "
                     "script, without Parquet files, are not read).")
  return path


def _split_files(root: str, split: str) -> tuple[str, list[str], Optional[dict]]:
  """('arrow' | 'parquet', the split's files, its features (None: read from the files))."""
  if os.path.isfile(os.path.join(root, "dataset_dict.json")):
    with open(os.path.join(root, "dataset_dict.json")) as f:
      splits = json.load(f).get("splits", [])
    if split not in splits:
      raise ValueError(f"hf:{root} has the splits {splits}, not {split!r}; set "
                       "--config.train_split / --config.eval_split to one of them.")
    root = os.path.join(root, split)
  elif os.path.isfile(os.path.join(root, "state.json")) and split != "train":
    raise ValueError(f"hf:{root} is one saved Dataset, read as the split 'train'; it has no "
                     f"split {split!r} (save a DatasetDict, or slice 'train[...]').")
  if os.path.isfile(os.path.join(root, "state.json")):
    with open(os.path.join(root, "state.json")) as f:
      files = [os.path.join(root, d["filename"]) for d in json.load(f)["_data_files"]]
    features = None
    info = os.path.join(root, "dataset_info.json")
    if os.path.isfile(info):
      with open(info) as f:
        features = json.load(f).get("features")
    return "arrow", files, features
  files = sorted(set(glob.glob(os.path.join(root, "**", f"{split}-*.parquet"), recursive=True)
                     + glob.glob(os.path.join(root, "**", split, "*.parquet"), recursive=True)
                     + glob.glob(os.path.join(root, "**", f"{split}.parquet"), recursive=True)))
  if not files:
    raise ValueError(f"hf:{root} holds no {split!r} split: neither save_to_disk's "
                     f"dataset_dict.json / state.json nor Parquet files named {split}-*.parquet "
                     f"or {split}/*.parquet.")
  return "parquet", files, None


def _parquet_features(path: str) -> Optional[dict]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  meta = pq.read_schema(path).metadata or {}
  if b"huggingface" not in meta:
    return None
  return json.loads(meta[b"huggingface"]).get("info", {}).get("features")


def _pick_columns(features: dict, names: list[str], image_column: Optional[str],
                  label_column: Optional[str]) -> tuple[str, str, tuple[str, ...]]:
  """(image column, label column, class names) of a split (module doc)."""
  kind = lambda f: f.get("_type") if isinstance(f, dict) else None  # noqa: E731
  image = image_column or next((n for n, f in features.items() if kind(f) == "Image"), None) \
      or next((n for n in ("image", "img") if n in names), None)
  label = label_column or next((n for n, f in features.items() if kind(f) == "ClassLabel"),
                               None) or next((n for n in ("label", "labels") if n in names), None)
  for what, column, flag in (("image", image, "image_column"), ("label", label, "label_column")):
    if column is None or column not in names:
      raise ValueError(f"no {what} column {column!r} among {names}; name it with "
                       f"--config.input.{flag}.")
  classes = tuple((features.get(label) or {}).get("names") or ()) if isinstance(
      features.get(label), dict) else ()
  return image, label, classes


class HFSource:
  """Random-access rows of one split: item i -> {'image': encoded bytes, 'label': int,
  'path': '<file>#<row>'} (picklable: files are reopened in each worker)."""

  def __init__(self, root: str, split: str, image_column: Optional[str] = None,
               label_column: Optional[str] = None):
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    self.root, self.split = root, split
    self.kind, self.files, features = _split_files(root, split)
    if self.kind == "arrow":
      schemas = [pa.ipc.open_stream(pa.memory_map(f)).schema for f in self.files[:1]]
      counts = [self._arrow_table(f).num_rows for f in self.files]
    else:
      features = features or _parquet_features(self.files[0])
      schemas = [pq.read_schema(self.files[0])]
      counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
    names = list(schemas[0].names)
    self.image_column, self.label_column, self.class_names = _pick_columns(
        features or {}, names, image_column, label_column)
    self.starts = list(np.cumsum([0] + counts[:-1]))
    self.total = int(sum(counts))
    self._open: dict = {}

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "_open"} | {"_open": {}}

  @staticmethod
  def _arrow_table(path: str) -> Any:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    return pa.ipc.open_stream(pa.memory_map(path)).read_all()

  def __len__(self) -> int:
    return self.total

  def _row(self, file_index: int, row: int) -> tuple[Any, Any]:
    path = self.files[file_index]
    columns = [self.image_column, self.label_column]
    if self.kind == "arrow":
      if path not in self._open:
        self._open[path] = self._arrow_table(path).select(columns).combine_chunks()
      table = self._open[path]
      return table.column(0)[row].as_py(), table.column(1)[row].as_py()
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    if path not in self._open:
      meta = pq.ParquetFile(path).metadata
      sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
      self._open[path] = (list(np.cumsum([0] + sizes[:-1])), collections.OrderedDict())
    starts, groups = self._open[path]
    g = bisect.bisect_right(starts, row) - 1
    if g not in groups:
      if len(groups) >= 2:
        groups.popitem(last=False)
      groups[g] = pq.ParquetFile(path).read_row_group(g, columns=columns)
    table = groups[g]
    r = row - starts[g]
    return table.column(0)[r].as_py(), table.column(1)[r].as_py()

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.total:
      raise IndexError(f"row {index} of a split of {self.total}")
    f = bisect.bisect_right(self.starts, index) - 1
    row = index - int(self.starts[f])
    image, label = self._row(f, row)
    if isinstance(image, dict):  # an Image feature: {'bytes': ..., 'path': ...}
      data = image.get("bytes")
      if data is None and image.get("path"):
        with open(os.path.join(self.root, image["path"]), "rb") as fh:
          data = fh.read()
      image = data
    return {"image": image, "label": int(label),
            "path": f"{os.path.basename(self.files[f])}#{row}"}


def num_classes(source: HFSource) -> int:
  """The class count: the ClassLabel names, else the largest label + 1 of the split."""
  if source.class_names:
    return len(source.class_names)
  if source.kind == "arrow":
    tables = [source._arrow_table(f).column(source.label_column) for f in source.files]  # pylint: disable=protected-access
  else:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    tables = [pq.read_table(f, columns=[source.label_column]).column(0) for f in source.files]
  return int(max(int(np.max(t.to_numpy())) for t in tables)) + 1
