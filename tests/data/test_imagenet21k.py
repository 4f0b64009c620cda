"""The ImageNet-21k TFDS builder (datasets/imagenet21k.py) on tiny synthetic files of the
released layouts: a tar of per-synset tars (fall11 / winter21) and the extracted ImageNet-21K-P
folders; classes, the deterministic validation carve, ArrayRecord for the pipeline."""
import io
import os
import tarfile

import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image

from vit_jax.datasets import imagenet21k, pipeline, sources

COUNTS = {"n00000003": 20, "n00000001": 12, "n00000002": 31}


def _jpeg(k):
  buf = io.BytesIO()
  Image.fromarray(np.full((10, 12, 3), k % 256, np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def whole_tar(path):
  """image-net.org's layout: one tar of <wnid>.tar, each of <wnid>_<n>.JPEG."""
  with tarfile.open(path, "w") as outer:
    for wnid, n in COUNTS.items():
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for i in range(n):
          _add(inner, f"{wnid}_{i}.JPEG", _jpeg(i))
      _add(outer, f"{wnid}.tar", buf.getvalue())


def _config(tmp_path, dataset, manual):
  config = tiny_config(tmp_path / "tfds")
  with config.unlocked():
    config.dataset, config.num_classes = dataset, None
    config.tfds_manual_dir = str(manual)
    config.train_split, config.eval_split = "train", "validation"
    config.batch, config.input.num_workers = 8, 0
  return config


def test_the_whole_release_tar_builds_with_a_deterministic_validation_carve(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  whole_tar(manual / "fall11_whole.tar")
  config = _config(tmp_path, "imagenet21k/fall11", manual)
  train, info = sources.open_source(config, "train")
  val, _ = sources.open_source(config, "validation")
  assert info.class_names == ("n00000001", "n00000002", "n00000003") and info.num_classes == 3
  assert len(train) == 63 - 6 and len(val) == 6          # min(5, n // 10) per class: 1, 3, 2
  names = lambda s: {bytes(s[i]["file_name"]).decode() if isinstance(s[i]["file_name"], bytes)
                     else str(s[i]["file_name"]) for i in range(len(s))}
  held = names(val)
  assert not held & names(train) and len(held | names(train)) == 63
  for wnid, n in COUNTS.items():
    expected = imagenet21k.validation_names([f"{wnid}_{i}.JPEG" for i in range(n)])
    assert {h for h in held if h.startswith(wnid)} == expected
  labels = {int(train[i]["label"]) for i in range(len(train))}
  assert labels == {0, 1, 2}
  batch = next(pipeline.create_train_iterator(config))     # the images decode for training
  assert batch["image"].shape == (8, 8, 8, 3)


def test_the_processed_release_keeps_its_own_split(tmp_path):
  manual = tmp_path / "manual"
  for split, n in (("imagenet21k_train", 4), ("imagenet21k_val", 2)):
    for wnid in ("n00000002", "n00000001"):
      folder = manual / split / wnid
      folder.mkdir(parents=True)
      for i in range(n):
        (folder / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(i))
  config = _config(tmp_path, "imagenet21k/processed", manual)
  train, info = sources.open_source(config, "train")
  val, _ = sources.open_source(config, "validation")
  assert (len(train), len(val), info.class_names) == (8, 4, ("n00000001", "n00000002"))


def test_a_missing_download_says_what_to_fetch(tmp_path):
  config = _config(tmp_path, "imagenet21k/winter21", tmp_path / "empty")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="winter21_whole.tar"):
    sources.open_source(config, "train")
