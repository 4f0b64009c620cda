"""Image-folder datasets: `<root>/<split>/<class>/<image>` as a random-access source.

Images are the files with a suffix of datasets/image_files.py (jpg, jpeg, png, bmp, gif, webp,
tif, tiff, ppm, in any case: the files folder prediction reads too); the input pipeline
decodes them all with Pillow (image_ops.open_image) and converts them to RGB.

Classes are the sorted sub-folder names of `<root>/train` (the same list for every split;
a split may lack some classes but must not add new ones); files are listed in sorted order,
so indices are stable across processes and runs.

Unreadable-image policy: fail fast. Opening a split reads every file's header (threads, no
full decode) and raises one ValueError listing the unreadable files, so a long run never dies
or silently drops data hours in. A file that passes the header check but is corrupt later
raises an error naming the file when it is decoded.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Optional

from vit_jax.datasets import image_files

IMAGE_EXTENSIONS = image_files.IMAGE_SUFFIXES  # The name this module had.


def class_names(root: str) -> tuple[str, ...]:
  """Sorted class folders of `<root>/train` (or of the first split folder present)."""
  for split in ("train", "test", "val", "validation"):
    folder = os.path.join(root, split)
    if os.path.isdir(folder):
      names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
      if names:
        return tuple(names)
  raise ValueError(f"image folder {root!r} has no <split>/<class>/ sub-folders; lay it out as "
                   f"{root}/train/<class>/<image>.jpg and {root}/test/<class>/<image>.jpg.")


def _header_ok(path: str) -> Optional[str]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      img.verify()
    return None
  except Exception as e:  # pylint: disable=broad-except
    return f"{path}: {e}"


def list_split(root: str, split: str, names: tuple[str, ...]) -> tuple[list[str], list[int]]:
  """Sorted (paths, labels) of `<root>/<split>`; errors on empty classes and unknown classes."""
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise ValueError(f"image folder split {folder!r} does not exist; create it with one "
                     "sub-folder per class, or set config.train_split / config.eval_split.")
  present = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
  unknown = sorted(set(present) - set(names))
  if unknown:
    raise ValueError(f"{folder} has classes {unknown} that are not in {root}/train; every split "
                     "must use the train split's class folders.")
  paths, labels = [], []
  for label, name in enumerate(names):
    class_dir = os.path.join(folder, name)
    if not os.path.isdir(class_dir):
      continue
    files = sorted(f for f in os.listdir(class_dir) if image_files.is_image(f))
    if not files:
      raise ValueError(f"class folder {class_dir!r} has no images ({image_files.describe()}); "
                       "add images or remove the folder.")
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  return paths, labels


def check_readable(paths: list[str], threads: int = 16) -> None:
  """Raises one ValueError listing files whose image header cannot be read."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    bad = [msg for msg in pool.map(_header_ok, paths) if msg]
  if bad:
    shown = "\n  ".join(bad[:10])
    raise ValueError(f"{len(bad)} unreadable image file(s) in the image folder (first ones:\n  "
                     f"{shown}\n); delete or re-encode them (e.g. as JPEG or PNG) and run again, "
                     "or set --config.input.skip_bad_examples=True to skip them (each is "
                     "counted and logged).")


@dataclasses.dataclass
class ImageFolderSource:
  """Random-access source over one split: item i → {'image': encoded bytes, 'label': int}."""
  root: str
  split: str
  check_images: bool = True

  def __post_init__(self):
    self.class_names = class_names(self.root)
    self.paths, self.labels = list_split(self.root, self.split, self.class_names)
    if self.check_images:
      check_readable(self.paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.paths[index]
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise ValueError(f"cannot read image {path!r} ({e}); fix or delete it.") from e
    return {"image": data, "label": self.labels[index], "path": path}
