"""Google's input-pipeline functions (`get_data_from_tfds(config=, mode=)` & co.) on our pipeline.

The batches are Google's shape — `{'image': float32 [local_devices, b/local_devices, crop,
crop, 3] in [-1, 1], 'label': float32 one-hot [local_devices, b/local_devices, classes]}`
— ready for `jax.pmap`; the examples come from vit_jax.datasets.pipeline (grain, the same
decoding and augmentation as the trainer: Google's inception crop + flip for 'train', resize
to the crop for 'test'). 'train' repeats forever; 'test' is one pass of full batches (the
last partial batch is dropped, as Google's `drop_remainder=True`; our trainer's own
evaluation counts every example).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional

import numpy as np

from vit_jax import batching
from vit_jax.configs import base
from vit_jax.datasets import pipeline
from vit_jax.datasets.sources import open_source
from vit_jax.google_compat import schema

MODES = ("train", "test")


def _source_config(dataset: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """A run config (its defaults) naming the dataset, as sources.open_source reads one."""
  c = base.defaults()
  c.dataset, c.tfds_data_dir, c.tfds_manual_dir = str(dataset), data_dir, manual_dir
  return c


def _info(source, info, examples_glob: Optional[str]) -> dict[str, Any]:
  names = tuple(info.class_names)
  int2str = lambda i: names[int(i)] if names else str(int(i))
  return dict(num_examples=len(source), num_classes=int(info.num_classes), int2str=int2str,
              examples_glob=examples_glob)


def get_tfds_info(dataset: str, split: str, data_dir: Optional[str] = None) -> dict[str, Any]:
  """Google's dataset info for a TFDS dataset (see get_dataset_info)."""
  return _info(*open_source(_source_config(dataset, data_dir), split), None)


def get_directory_info(directory: str) -> dict[str, Any]:
  """Google's dataset info for one split folder `<root>/<split>` of class sub-folders."""
  directory = os.path.normpath(directory)
  root, split = os.path.dirname(directory), os.path.basename(directory)
  return _info(*open_source(_source_config(root), split), f"{directory}/*/*")


def get_dataset_info(dataset, split: Optional[str] = None):
  """{num_examples, num_classes, int2str, examples_glob} of `split` of a TFDS name or folder.

  Called with one run config (the form of our pipeline), returns its DatasetInfo instead.
  """
  if split is None and not isinstance(dataset, str):
    return pipeline.get_dataset_info(dataset)
  split = split or "train"
  directory = os.path.join(str(dataset), str(split))
  if os.path.isdir(directory):
    return get_directory_info(directory)
  return get_tfds_info(dataset, split)


class PmapDataset:
  """Google-shaped batches of one mode; iterable again and again like a tf.data.Dataset."""

  def __init__(self, config, mode: str):
    if mode not in MODES:
      raise ValueError(f"mode={mode!r}: use 'train' or 'test'.")
    self.config, self.mode = schema.data_config(config), mode

  def _batches(self) -> Iterator[dict]:
    if self.mode == "train":
      it = pipeline.create_train_iterator(self.config)
      try:
        while True:
          yield next(it)
      finally:
        it.close()
    else:
      for batch in pipeline.create_eval_iterator(self.config):
        if batch["mask"].all():
          yield {"image": batch["image"], "label": batch["label"]}

  def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.local_device_count()
    for batch in self._batches():
      rows = len(batch["image"])
      if rows % devices:
        raise ValueError(f"a batch of {rows} rows on this process cannot be split over its "
                         f"{devices} local devices; make config.batch / batch_eval a multiple.")
      yield {k: np.asarray(v).reshape((devices, rows // devices) + v.shape[1:])
             for k, v in batch.items()}

  __iter__ = as_numpy_iterator

  def cardinality(self):
    """Batches per pass (a tf int64 scalar, as tf.data); -1 (infinite) for 'train'."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self.mode == "train":
      return tf.constant(-1, tf.int64)
    import jax  # pylint: disable=g-import-not-at-top
    info = get_dataset_info(self.config.dataset, self.config.eval_split)
    lo, hi = pipeline.shard_range(info["num_examples"], jax.process_index(),
                                        jax.process_count())
    local = batching.local_batch_size(int(self.config.batch_eval), jax.process_count(),
                                      "batch_eval")
    return tf.constant((hi - lo) // local, tf.int64)

  def __repr__(self) -> str:
    return f"PmapDataset({self.config.dataset!r}, mode={self.mode!r})"


def get_data_from_tfds(*, config, mode: str) -> PmapDataset:
  """Batches of TFDS dataset config.dataset, split config.pp[mode] ('train' or 'test')."""
  return PmapDataset(config, mode)


def get_data_from_directory(*, config, directory: str, mode: str) -> PmapDataset:
  """Batches of the image folder `directory` (= <config.dataset>/<split>)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  directory = os.path.normpath(directory)
  copy = ml_collections.ConfigDict(config.to_dict())  # Google's configs are ConfigDicts.
  copy.dataset = os.path.dirname(directory)
  copy.pp = ml_collections.ConfigDict(dict(copy.pp or {}, **{mode: os.path.basename(directory)}))
  return PmapDataset(copy, mode)


def get_datasets(config) -> tuple[PmapDataset, PmapDataset]:
  """(train, test) batches of config.dataset: an image folder with train/ and test/, or TFDS."""
  dataset = str(config.dataset)
  if os.path.isdir(dataset):
    train_dir, test_dir = os.path.join(dataset, "train"), os.path.join(dataset, "test")
    if not os.path.isdir(train_dir):
      raise ValueError(f"image folder {dataset!r} has no train/ sub-folder; lay it out as "
                       f"{train_dir}/<class>/<image>.jpg and {test_dir}/<class>/<image>.jpg.")
    return (get_data_from_directory(config=config, directory=train_dir, mode="train"),
            get_data_from_directory(config=config, directory=test_dir, mode="test"))
  return (get_data_from_tfds(config=config, mode="train"),
          get_data_from_tfds(config=config, mode="test"))


def prefetch(dataset, n_prefetch: int) -> Iterator[Any]:
  """Numpy batches of `dataset`; with n_prefetch, put on the local devices that many ahead
  (flax.jax_utils.prefetch_to_device: axis 0 over the devices, for pmap)."""
  iterator = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else iter(dataset)
  iterator = map(lambda batch: {k: np.asarray(v) for k, v in batch.items()}, iterator)
  if n_prefetch:
    from flax import jax_utils  # pylint: disable=g-import-not-at-top
    iterator = jax_utils.prefetch_to_device(iterator, n_prefetch)
  return iterator
