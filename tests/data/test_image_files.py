"""One list of image suffixes (vit_jax/datasets/image_files.py): an image-folder dataset and
folder prediction read the same files, in any case, with the pixels Pillow decodes.
"""
import os

import numpy as np
import pytest
from PIL import Image

from vit_jax import predict
from vit_jax.configs import base
from vit_jax.datasets import image_files, image_folder, pipeline, sources

R = 16
# (suffix, Pillow format, save options, lossless: the written array comes back exactly).
FORMATS = [(".jpg", "JPEG", {}, False), (".jpeg", "JPEG", {}, False), (".png", "PNG", {}, True),
           (".bmp", "BMP", {}, True), (".gif", "GIF", {}, False),
           (".webp", "WEBP", {"lossless": True}, True), (".tif", "TIFF", {}, True),
           (".tiff", "TIFF", {}, True), (".ppm", "PPM", {}, True)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """<root>/train/{a,b}/: every suffix in lower and upper case (18 images), plus a text file.
  Returns (root, {path: the array written})."""
  root = tmp_path_factory.mktemp("suffixes")
  rng = np.random.default_rng(0)
  written = {}
  for i, (suffix, fmt, options, _) in enumerate(FORMATS):
    for case, name in (("a", suffix), ("b", suffix.upper())):
      arr = rng.integers(0, 256, (R, R, 3), np.uint8)
      path = root / "train" / case / f"{i:02d}{name}"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(arr).save(path, fmt, **options)
      written[str(path)] = arr
  (root / "train" / "a" / "notes.txt").write_text("not an image")
  sources.clear_cache()
  yield str(root), written
  sources.clear_cache()


def _pil(path):
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"))


def _levels(images):
  """uint8 levels back from [-1, 1] model inputs (exact for unresized images)."""
  return np.round((np.asarray(images, np.float64) + 1.0) * 127.5).astype(np.int64)


def test_dataset_and_prediction_read_every_suffix_with_pils_pixels(folder):
  root, written = folder
  train = os.path.join(root, "train")
  listed = predict.expand_images([train])
  dataset = image_folder.ImageFolderSource(root, "train")
  assert len(listed) == len(dataset) == len(written) == 2 * len(FORMATS)
  assert sorted(listed) == sorted(dataset.paths) == sorted(written)
  assert dataset.class_names == ("a", "b") and sorted(set(dataset.labels)) == [0, 1]

  config = base.defaults()
  config.update_from_flattened_dict({
      "seed": 0, "dataset": root, "train_split": "train", "eval_split": "train",
      "batch": 6, "batch_eval": 6, "pp.crop": R, "pp.resize": R, "pp.flip": False,
      "input.num_workers": 0, "input.prefetch": 2, "input.device_prefetch": 2})
  seen = {}
  for batch in pipeline.create_eval_iterator(config, process_index=0, process_count=1):
    for image, index, mask in zip(batch["image"], batch["index"], batch["mask"]):
      if mask:
        seen[dataset.paths[int(index)]] = _levels(image)
  assert sorted(seen) == sorted(written)

  lossless = {s for s, _, _, exact in FORMATS if exact}
  for path, arr in written.items():
    reference = _pil(path)
    predicted = _levels(predict.load_image(path, R))
    np.testing.assert_array_equal(seen[path], reference, err_msg=path)
    np.testing.assert_array_equal(predicted, reference, err_msg=path)
    if os.path.splitext(path)[1].lower() in lossless:
      np.testing.assert_array_equal(reference, arr, err_msg=path)


def test_one_list_any_case_and_the_errors_name_it(tmp_path):
  assert predict.IMAGE_SUFFIXES is image_files.IMAGE_SUFFIXES
  assert image_folder.IMAGE_EXTENSIONS is image_files.IMAGE_SUFFIXES
  assert {s for s, *_ in FORMATS} == set(image_files.IMAGE_SUFFIXES)
  assert image_files.is_image("x.JPG") and image_files.is_image("y.Tiff")
  assert not image_files.is_image("notes.txt") and not image_files.is_image("jpg")
  empty = tmp_path / "train" / "a"
  empty.mkdir(parents=True)
  (empty / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match=r"has no images \(\.jpg, .*\.webp.*\(any case\)"):
    image_folder.list_split(str(tmp_path), "train", ("a",))
  with pytest.raises(ValueError, match=r"holds no image files \(\.jpg, .*\.ppm \(any case\)"):
    predict.expand_images([str(empty)])
