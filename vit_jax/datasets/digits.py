"""The embedded offline dataset 'digits': a TFDS builder over scikit-learn's bundled digits.

scikit-learn ships the UCI handwritten digits (1797 grey 8x8 images, 16 ink levels, 10
classes) inside its wheel, so preparing this dataset needs no network. Each image is scaled
to 0..255 (ink bright on dark), upsampled ×4 by pixel repetition to 32x32 and stored as RGB
PNG; preprocessing resizes it to the model's input size. Splits are stratified by class and
fixed (train 1500, test 297; `sklearn.model_selection.train_test_split`, random_state=0).

Importing vit_jax.datasets registers the builder; `tfds.builder('digits', data_dir=...)
.download_and_prepare(file_format='array_record')` writes it (input_pipeline does this
automatically).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 297
UPSAMPLE = 4


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as uint8 (N, 32, 32, 3) images and int64 labels, in sklearn's order."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  bunch = sk_datasets.load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
  images = images.repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
  return np.repeat(images[..., None], 3, axis=-1), bunch.target.astype(np.int64)


def split_indices() -> dict[str, np.ndarray]:
  """Stratified, fixed train/test indices into digits_arrays()."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  _, labels = digits_arrays()
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST, random_state=0, stratify=labels)
  return {"train": np.sort(train), "test": np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, upsampled to 32x32 RGB (offline, no download)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (sklearn digits, 32x32 RGB, 1500/297 split)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

  def _generate_examples(self, indices):
    images, labels = digits_arrays()
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


def write_pngs(directory: str, split: str = "test", count: int = 3) -> list[str]:
  """Writes the first `count` images of `split` as PNGs named '<split>_<index>_label<y>.png'."""
  import os  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top
  images, labels = digits_arrays()
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in split_indices()[split][:count]:
    path = os.path.join(directory, f"{split}_{int(i):04d}_label{int(labels[i])}.png")
    Image.fromarray(images[i]).save(path)
    paths.append(path)
  return paths


if __name__ == "__main__":
  # python -m vit_jax.datasets.digits OUT_DIR [COUNT]: digit images to try a model on.
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) not in (2, 3):
    sys.exit("usage: python -m vit_jax.datasets.digits OUT_DIR [COUNT]")
  print("\n".join(write_pngs(sys.argv[1], count=int(sys.argv[2]) if len(sys.argv) == 3 else 3)))
