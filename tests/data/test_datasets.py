"""Tests of vit_jax.datasets: the offline 'digits' TFDS builder, image folders, source errors."""
import collections
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax.datasets import image_folder, sources


def _config(dataset, data_dir=None, **kw):
  c = ml_collections.ConfigDict(dict(dataset=dataset, tfds_data_dir=data_dir,
                                     tfds_manual_dir=None,
                                     input=dict(skip_bad_examples=False, image_column=None,
                                                label_column=None)))
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_digits_builder_prepares_offline_and_matches_sklearn(digits_dir):
  from sklearn.datasets import load_digits
  sources.clear_cache()
  train, info = sources.open_source(_config("digits", digits_dir), "train")
  test, _ = sources.open_source(_config("digits", digits_dir), "test")
  assert (len(train), len(test)) == (1500, 297)
  assert info.num_classes == 10 and info.class_names == tuple(str(i) for i in range(10))
  assert os.path.isdir(os.path.join(digits_dir, "digits", "1.0.0"))
  got = collections.Counter()
  labels = collections.Counter()
  for src, split in ((train, "train"), (test, "test")):
    for i in range(len(src)):
      ex = src[i]
      img = np.asarray(Image.open(__import__("io").BytesIO(ex["image"])))
      assert img.shape == (32, 32, 3)
      got[(img[::4, ::4, 0].tobytes(), int(ex["label"]))] += 1
      labels[(split, int(ex["label"]))] += 1
  bunch = load_digits()  # Independent reference: sklearn's arrays, scaled by 255/16.
  ref = collections.Counter(
      (np.round(im * 255 / 16).astype(np.uint8).tobytes(), int(t))
      for im, t in zip(bunch.images, bunch.target))
  assert got == ref
  for c in range(10):  # Stratified: each class ~16.5% of the test split.
    assert abs(labels[("test", c)] / 297 - labels[("train", c)] / 1500) < 0.02


def _write(path, arr, fmt="PNG"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path, fmt)


def test_image_folder_sorted_classes_and_labels(tmp_path):
  for cls, n in (("zebra", 2), ("ant", 3)):
    for i in range(n):
      _write(str(tmp_path / "train" / cls / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
  _write(str(tmp_path / "train" / "ant" / "x.jpg"), np.zeros((8, 8, 3), np.uint8), "JPEG")
  (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
  src = image_folder.ImageFolderSource(str(tmp_path), "train")
  assert src.class_names == ("ant", "zebra")
  assert [src[i]["label"] for i in range(len(src))] == [0, 0, 0, 0, 1, 1]
  assert src[3]["path"].endswith("x.jpg")
  sliced, info = sources.open_source(_config(str(tmp_path)), "train[:50%]")
  assert len(sliced) == 3 and info.num_classes == 2


def test_image_folder_errors(tmp_path):
  _write(str(tmp_path / "train" / "a" / "0.png"), np.zeros((4, 4, 3), np.uint8))
  os.makedirs(tmp_path / "train" / "empty")
  with pytest.raises(ValueError, match="empty.*has no images"):
    image_folder.ImageFolderSource(str(tmp_path), "train")
  os.rmdir(tmp_path / "train" / "empty")
  (tmp_path / "train" / "a" / "bad.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="(?s)1 unreadable image.*bad.jpg"):
    image_folder.ImageFolderSource(str(tmp_path), "train")
  with pytest.raises(ValueError, match="does not exist"):
    image_folder.ImageFolderSource(str(tmp_path), "test", check_images=False)
  _write(str(tmp_path / "test" / "b" / "0.png"), np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="not in"):
    image_folder.ImageFolderSource(str(tmp_path), "test")
  with pytest.raises(ValueError, match="no <split>/<class>"):
    image_folder.class_names(str(tmp_path / "nothing"))


def test_unknown_dataset_name_error():
  with pytest.raises(ValueError, match="neither an existing image folder nor a TFDS"):
    sources.open_source(_config("no_such_dataset_xyz"), "train")


def test_missing_manual_dataset_says_how_to_prepare(tmp_path):
  sources.clear_cache()
  with pytest.raises(FileNotFoundError) as e:
    sources.open_source(_config("imagenet2012", str(tmp_path)), "train")
  msg = str(e.value)
  assert "not prepared" in msg and "tfds build imagenet2012" in msg
  assert "tfds_manual_dir" in msg and "ILSVRC2012" in msg


def test_offline_downloadable_dataset_fails_fast_with_instructions(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def offline(*args, **kwargs):
    raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
  sources.clear_cache()
  with pytest.raises(FileNotFoundError) as e:
    sources.open_source(_config("cifar100", str(tmp_path)), "train")
  msg = str(e.value)
  assert "ConnectionError" in msg and "not prepared" in msg
  assert f"tfds build cifar100 --data_dir={tmp_path} --file_format=array_record" in msg
  assert f"--config.tfds_data_dir={tmp_path}" in msg and "manual" not in msg
