"""Random-access sources for the input pipeline: `open_source(config, split)`.

config.dataset is either an existing folder (image folder, see image_folder.py; image-text
folder or WebDataset tars, see captions.py, chosen per split by what <folder>/<split>/ holds)
or a TFDS name read with `tfds.data_source` (array_record files in config.tfds_data_dir) with the
image left encoded (decoded by preprocess.py in the workers). A TFDS dataset that is not
prepared is prepared here when possible ('digits' always: it needs no network); otherwise
one error says how to prepare it (`tfds build`, `--config.tfds_manual_dir` for manual
downloads such as imagenet2012). Split strings take TFDS slicing (`train[:98%]`), for
folders too. A folder written by `python -m vit_jax.datasets.convert` (its dataset.json)
is read as its ArrayRecord shards (array_records.py). `hf:PATH` is a Hugging Face dataset
saved on disk (hf_datasets.py). Caption datasets (captions.py, TFDS coco_captions) have
num_classes 0 and SourceInfo.captions_key.
"""
from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Optional

from vit_jax.datasets import array_records, hf_datasets

_CACHE: dict[tuple, tuple[Any, "SourceInfo"]] = {}


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """Labels of a source and the feature keys holding the image and the label (or captions)."""
  num_classes: int
  class_names: tuple[str, ...]
  keys: tuple[str, str] = ("image", "label")
  multilabel_key: Optional[str] = None  # a Sequence(ClassLabel) of label sets (ReaL)
  # Image-text sources (num_classes 0): the '/'-separated path of an element's captions,
  # read with captions.element_captions ('captions', 'captions/text' for coco_captions).
  captions_key: Optional[str] = None


def caption_info(captions_key: str, image_key: str = "image") -> SourceInfo:
  """The SourceInfo of an image-text source whose captions are at `captions_key`."""
  return SourceInfo(0, (), (image_key, captions_key.split("/", 1)[0]), captions_key=captions_key)


@dataclasses.dataclass
class SlicedSource:
  """Examples [start, stop) of `source`, itself random access (picklable)."""
  source: Any
  start: int
  stop: int

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index: int):
    return self.source[self.start + index]


def open_source(config, split: str, dataset: Optional[str] = None) -> tuple[Any, SourceInfo]:
  """(random-access source of `split` of `dataset` (default config.dataset), SourceInfo);
  cached per dataset/split in this process. A folder's image headers are checked when it is
  opened, unless config.input.skip_bad_examples (then undecodable images are skipped when
  read, datasets/bad_examples.py)."""
  dataset = str(config.dataset if dataset is None else dataset)
  data_dir = config.tfds_data_dir
  manual_dir = config.tfds_manual_dir
  check = not config.input.skip_bad_examples
  key = (dataset, data_dir, manual_dir, split) + (() if check else ("unchecked",))
  if dataset.startswith("hf:"):
    key += (config.input.image_column, config.input.label_column)
  if key not in _CACHE:
    if dataset.startswith("hf:"):
      _CACHE[key] = _hf_source(dataset[len("hf:"):], split, config.input.image_column,
                               config.input.label_column)
    elif os.path.isdir(dataset) and array_records.is_array_record_dir(dataset):
      _CACHE[key] = _array_record_source(dataset, split)
    elif os.path.isdir(dataset):
      _CACHE[key] = _folder_source(dataset, split, check)
    elif dataset.startswith(("/", "./", "../", "~")) or os.sep + os.sep in dataset:
      raise ValueError(f"config.dataset={dataset!r} looks like a folder but does not exist on "
                       "this machine; pass an image folder laid out as <folder>/train/<class>/"
                       "<image> (and <folder>/test/...), or a TFDS name such as 'cifar10'.")
    else:
      _CACHE[key] = _tfds_source(dataset, split, data_dir, manual_dir)
  return _CACHE[key]


def clear_cache() -> None:
  """Forgets opened sources (tests; after preparing data in another process)."""
  _CACHE.clear()


def _open_folder(root: str, name: str, check: bool = True) -> tuple[Any, SourceInfo]:
  """Split `name` of a folder: captions file → caption folder, *.tar → WebDataset shards,
  else class sub-folders (image folder)."""
  from vit_jax.datasets import captions, image_folder  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, name)
  if any(os.path.isfile(os.path.join(folder, f)) for f in captions.CAPTION_FILES):
    return captions.CaptionFolderSource(root, name, check), caption_info("captions")
  shards = (".tar",) + captions.COMPRESSED_TARS  # Compressed ones: refused with advice.
  if os.path.isdir(folder) and any(f.endswith(shards) and os.path.isfile(os.path.join(folder, f))
                                   for f in os.listdir(folder)):
    return captions.WebDatasetSource(root, name), caption_info("captions")
  source = image_folder.ImageFolderSource(root, name, check)
  return source, SourceInfo(len(source.class_names), tuple(source.class_names))


def _folder_source(root: str, split: str, check: bool = True) -> tuple[Any, SourceInfo]:
  name = split.split("[", 1)[0]
  whole = (root, None, None, name) + (() if check else ("unchecked",))  # listed, checked once
  if whole not in _CACHE:
    _CACHE[whole] = _open_folder(root, name, check)
  source, info = _CACHE[whole]
  return _sliced(source, split), info


def _hf_source(root: str, split: str, image_column: Optional[str],
               label_column: Optional[str]) -> tuple[Any, SourceInfo]:
  """A Hugging Face dataset saved on disk or named on the Hub (datasets/hf_datasets.py), sliced
  as TFDS slices."""
  name = split.split("[", 1)[0]
  source = hf_datasets.HFSource(hf_datasets.local_root(root, name), name, image_column,
                                label_column)
  info = SourceInfo(hf_datasets.num_classes(source), source.class_names)
  return _sliced(source, split), info


def _array_record_source(root: str, split: str) -> tuple[Any, SourceInfo]:
  """A dataset converted by `python -m vit_jax.datasets.convert` (array_records.py)."""
  index = array_records.read_index(root)
  source = array_records.ArrayRecordSource(root, split.split("[", 1)[0])
  if index.get("captions"):
    return _sliced(source, split), caption_info("captions")
  info = SourceInfo(int(index["num_classes"]), tuple(index.get("class_names") or ()))
  return _sliced(source, split), info


def _sliced(source: Any, split: str) -> Any:
  """`source` (a whole split) cut as `split`'s TFDS slice says ('train[:98%]'), if it has one."""
  if "[" not in split:
    return source
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sizes = {split.split("[", 1)[0]: types.SimpleNamespace(num_examples=len(source))}
  parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
  if len(parts) != 1:
    raise ValueError(f"split {split!r}: folders take one slice of one split, "
                     "e.g. 'train[:98%]'.")
  start, stop, _ = slice(parts[0].from_, parts[0].to).indices(len(source))
  return SlicedSource(source, start, stop)


def _tfds_captions_key(features, label_key: str) -> Optional[str]:
  """Where a TFDS dataset's captions are: a text label, a `captions` Sequence of text or of
  dicts with `text` (coco_captions: 'captions/text'), or a text `caption`/`captions`/`text`
  (text: a Text feature or a scalar string Tensor, as coco_captions' `text`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  text = lambda f: (isinstance(f, tfds.features.Tensor) and tuple(f.shape) == ()
                    and np.dtype(f.np_dtype).kind in "OSU")
  if text(features[label_key] if label_key in features else None):
    return label_key
  captions = features["captions"] if "captions" in features else None
  if isinstance(captions, tfds.features.Sequence):
    inner = captions.feature
    if text(inner):
      return "captions"
    if isinstance(inner, tfds.features.FeaturesDict) and "text" in inner and text(inner["text"]):
      return "captions/text"
  return next((k for k in ("caption", "captions", "text") if k in features and text(features[k])),
              None)


def _tfds_info(builder) -> SourceInfo:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = builder.info
  keys = tuple(info.supervised_keys[:2]) if info.supervised_keys else ("image", "label")
  feature = info.features[keys[1]] if keys[1] in info.features else None
  if (isinstance(feature, tfds.features.Sequence)
      and isinstance(feature.feature, tfds.features.ClassLabel)):  # label sets, e.g. ReaL
    single = next((k for k, f in info.features.items()
                   if isinstance(f, tfds.features.ClassLabel)), None)
    if single is None:
      raise ValueError(f"TFDS dataset {builder.name!r} has label sets ({keys[1]!r}) but no single "
                       "ClassLabel; only image classification datasets are supported.")
    names = tuple(feature.feature.names)
    return SourceInfo(feature.feature.num_classes, names, (keys[0], single), keys[1])
  if not isinstance(feature, tfds.features.ClassLabel):
    captions_key = _tfds_captions_key(info.features, keys[1])
    image_key = keys[0] if keys[0] in info.features else "image"
    if captions_key is not None and image_key in info.features:
      return caption_info(captions_key, image_key)
    raise ValueError(f"TFDS dataset {builder.name!r}: label feature {keys[1]!r} is not a "
                     "ClassLabel and no captions were found; only image classification and "
                     "image-caption datasets are supported.")
  return SourceInfo(feature.num_classes, tuple(feature.names), keys)


def _tfds_source(name: str, split: str, data_dir: Optional[str],
                 manual_dir: Optional[str]) -> tuple[Any, SourceInfo]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from vit_jax.datasets import digits, imagenet21k  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  created = _new_dirs(data_dir, name)  # Before tfds.builder, which may create data_dir.
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(unknown_dataset_message(name, tfds.list_builders())) from None
  if not builder.is_prepared():
    _prepare(builder, name, data_dir, manual_dir, created)
    # The prepared info: a builder may learn its classes from the files (imagenet21k).
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  info = _tfds_info(builder)
  decoders = {info.keys[0]: tfds.decode.SkipDecoding()}
  read = lambda: tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                  decoders=decoders)
  try:
    return read(), info
  except (NotImplementedError, AssertionError, KeyError) as e:  # Prepared, not array_record.
    if builder.is_prepared():
      raise ValueError(
          f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
          f"{builder.info.file_format}, but the input pipeline reads array_record (random "
          "access, O(1) resume). Convert it once: `tfds convert_format --root_data_dir="
          f"{data_dir or '~/tensorflow_datasets'} --out_file_format=array_record` (or rebuild "
          f"with `tfds build {name} --file_format=array_record`).") from e
    raise


def unknown_dataset_message(name: str, catalogue) -> str:
  """One line for a config.dataset that is neither a folder nor a TFDS name, with the closest
  names of `catalogue` (TFDS builder names)."""
  import difflib  # pylint: disable=g-import-not-at-top
  base = name.split(":", 1)[0].split("/", 1)[0]
  names = sorted(set(catalogue) | {"digits"})
  close = difflib.get_close_matches(base.lower(), names, n=3, cutoff=0.6)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  folder = (" (no such folder either: an image folder must exist on this machine)"
            if "/" in name or name.startswith(".") else "")
  return (f"config.dataset={name!r} is neither an existing image folder nor a TFDS dataset "
          f"name{folder}.{hint} 'digits' is the embedded offline dataset; "
          "`tfds.list_builders()` lists the others.")


def _new_dirs(data_dir: Optional[str], name: str) -> list[str]:
  """The folders a TFDS prepare of `name` would create in data_dir that do not exist yet."""
  root = os.path.expanduser(data_dir or os.path.join("~", "tensorflow_datasets"))
  candidates = [root, os.path.join(root, name.split(":", 1)[0].split("/", 1)[0]),
                os.path.join(root, "downloads")]
  return [d for d in candidates if not os.path.exists(d)]


def _remove_if_empty(folders: list[str]) -> None:
  """Deletes each folder of `folders` (deepest first) that holds no file at any depth."""
  for folder in sorted(folders, key=len, reverse=True):
    if not os.path.isdir(folder):
      continue
    if any(files for _, _, files in os.walk(folder)):
      continue
    for sub, _, _ in sorted(os.walk(folder), key=lambda w: len(w[0]), reverse=True):
      try:
        os.rmdir(sub)
      except OSError:
        pass


def _prepare(builder, name: str, data_dir: Optional[str], manual_dir: Optional[str],
             created: list[str]) -> None:
  """download_and_prepare (array_record); on failure one error saying how to prepare it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  where = data_dir or "~/tensorflow_datasets"
  # TFDS retries each URL 10 times with exponential backoff (~3.5 min offline before any
  # error); 3 retries keep transient-error tolerance and fail an offline host in seconds.
  saved_retries = getattr(downloader, "MAX_RETRIES", None)
  if saved_retries is not None:
    downloader.MAX_RETRIES = min(saved_retries, 3)
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # pylint: disable=broad-except
    fresh = tfds.builder(name, data_dir=data_dir)
    if fresh.is_prepared():  # Another process (same shared data_dir) finished it first.
      return
    _remove_if_empty(created)  # A failed attempt leaves no empty folders behind.
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    hint = (f" {name!r} needs a manual download: {' '.join(str(manual).split())} Put those "
            "files in a folder and pass --config.tfds_manual_dir=FOLDER "
            "(`tfds build ... --manual_dir=FOLDER`)." if manual else "")
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {where} and could not be prepared here "
        f"({type(e).__name__}: {str(e)[:300]}). Prepare it once where the data can be reached: "
        f"`tfds build {name} --data_dir={where} --file_format=array_record`, then pass "
        f"--config.tfds_data_dir={where}.{hint}") from e
  finally:
    if saved_retries is not None:
      downloader.MAX_RETRIES = saved_retries
