"""ImageNet-21k as a TFDS dataset (manual download), written as ArrayRecord for grain:
`--config.dataset=imagenet21k --config.tfds_manual_dir=DIR`.

ImageNet-21k is not in the TFDS catalogue; image-net.org distributes it as one tar of
per-synset tars, which this builder reads as they are:
  * `imagenet21k/winter21` (default): DIR/winter21_whole.tar (or .tar.gz) of
    <wnid>.tar files of <wnid>_<n>.JPEG, the winter 2021 release (19,167 classes);
  * `imagenet21k/fall11`: DIR/fall11_whole.tar, the fall 2011 release (21,841 synsets: the
    ViT / AugReg "21k" upstream);
  * `imagenet21k/processed`: ImageNet-21K-P (Ridnik et al. 2021; 10,450 classes, resized), as
    extracted: DIR/imagenet21k_train/<wnid>/*.JPEG and DIR/imagenet21k_val/<wnid>/*.JPEG (its
    own train / validation split is kept).
Classes: the synset ids found, sorted (label = index; class names = the wnids, which our label
files turn into English names). Validation of the whole releases, carved deterministically:
of each class, the min(5, n // 10) images whose SHA-1 of the file name is smallest: about
109k images of fall11, the size of the 102,400 images AugReg holds out of its 'full' split
(big_vision: the first 51,200); TFDS stores examples in a hashed order, so a slice of either
split ('validation[:51200]') is a sample of all classes. An uncompressed tar is read with
seeks, each image once; a .tar.gz is decompressed on each of the builder's passes (3), so
gunzip it first for speed.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from typing import Iterator

import tensorflow_datasets as tfds

VAL_PER_CLASS = 5
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
WHOLE = {"winter21": ("winter21_whole.tar", "winter21_whole.tar.gz"),
         "fall11": ("fall11_whole.tar", "fall11_whole.tar.gz")}


def validation_names(names: list[str]) -> set[str]:
  """The file names of one class held out for validation (module doc)."""
  k = min(VAL_PER_CLASS, len(names) // 10)
  ranked = sorted(names, key=lambda n: hashlib.sha1(os.path.basename(n).encode()).hexdigest())
  return set(ranked[:k])


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def _whole_tar(manual_dir: str, config: str) -> str:
  for name in WHOLE[config]:
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{' or '.join(WHOLE[config])} is not in {manual_dir}; download it "
                          "from image-net.org into --config.tfds_manual_dir.")


def _synset_tars(path: str) -> Iterator[tuple[str, tarfile.TarFile]]:
  """(wnid, its open tar) for each <wnid>.tar in a tar of per-synset tars, in file order."""
  with tarfile.open(path, "r:*") as outer:
    for member in outer:
      if member.isfile() and member.name.endswith(".tar"):
        wnid = os.path.basename(member.name)[:-len(".tar")]
        with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
          yield wnid, inner


def _images(inner: tarfile.TarFile) -> list[tarfile.TarInfo]:
  return [m for m in inner.getmembers() if m.isfile() and _is_image(m.name)]


def list_whole_tar(path: str) -> dict[str, list[str]]:
  """{wnid: [image file names]} of a tar of per-synset tars."""
  return {wnid: [m.name for m in _images(inner)] for wnid, inner in _synset_tars(path)}


def _whole_examples(path: str, labels: dict[str, int], held_out: dict[str, set[str]],
                    validation: bool) -> Iterator[tuple[str, dict]]:
  for wnid, inner in _synset_tars(path):
    for m in _images(inner):
      if (m.name in held_out[wnid]) == validation:
        yield f"{wnid}/{m.name}", {"image": inner.extractfile(m).read(),
                                   "label": labels[wnid], "file_name": m.name}


class Imagenet21k(tfds.core.GeneratorBasedBuilder):
  """ImageNet-21k from image-net.org's tars (module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Whole winter21 / fall11 tars and the extracted ImageNet-21K-P."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="winter21", description="winter 2021 release, whole tar"),
      tfds.core.BuilderConfig(name="fall11", description="fall 2011 release, whole tar"),
      tfds.core.BuilderConfig(name="processed", description="ImageNet-21K-P, extracted"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download winter21_whole.tar(.gz) or fall11_whole.tar from https://image-net.org (an "
      "account is needed), or extract ImageNet-21K-P's imagenet21k_train/ and imagenet21k_val/, "
      "into the manual folder.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(),  # the wnids, set when the files are listed
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/download-images.php",
    )

  def _split_generators(self, dl_manager):
    manual = dl_manager.manual_dir
    if self.builder_config.name == "processed":
      splits = {"train": "imagenet21k_train", "validation": "imagenet21k_val"}
      listed = {s: self._folder_classes(os.path.join(manual, d)) for s, d in splits.items()}
      wnids = sorted(set(listed["train"]) | set(listed["validation"]))
      self.info.features["label"].names = wnids
      labels = {w: i for i, w in enumerate(wnids)}
      return {s: self._generate_examples(folder=os.path.join(manual, splits[s]),
                                         classes=listed[s], labels=labels) for s in splits}
    path = _whole_tar(manual, self.builder_config.name)
    classes = list_whole_tar(path)
    wnids = sorted(classes)
    self.info.features["label"].names = wnids
    labels = {w: i for i, w in enumerate(wnids)}
    held_out = {w: validation_names(names) for w, names in classes.items()}
    return {split: self._generate_examples(tar=path, labels=labels, held_out=held_out,
                                           validation=split == "validation")
            for split in ("train", "validation")}

  def _generate_examples(self, labels: dict[str, int], tar: str = "", held_out=None,
                         validation: bool = False, folder: str = "", classes=None):
    """A whole release's tar (its train or validation part), or an extracted split folder."""
    if tar:
      return _whole_examples(tar, labels, held_out, validation)
    return self._folder_examples(folder, classes, labels)

  @staticmethod
  def _folder_classes(root: str) -> dict[str, list[str]]:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{root} is missing: extract ImageNet-21K-P there.")
    return {w: sorted(f for f in os.listdir(os.path.join(root, w)) if _is_image(f))
            for w in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, w))}

  @staticmethod
  def _folder_examples(root: str, classes: dict[str, list[str]], labels: dict[str, int]):
    for wnid, names in classes.items():
      for name in names:
        with open(os.path.join(root, wnid, name), "rb") as f:
          yield f"{wnid}/{name}", {"image": f.read(), "label": labels[wnid], "file_name": name}
