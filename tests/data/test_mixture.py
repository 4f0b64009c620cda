"""Dataset mixtures (config.input.data, datasets/mixture.py): the interleaving is exact and O(1),
the mixed stream keeps the pipeline's contract (processes, resume), label spaces are checked,
and a mixture run resumes exactly."""
import shutil

import jax
import numpy as np
import pytest
from helpers import id_image_folder, tiny_config

from vit_jax.datasets import mixture, pipeline, sources
from vit_jax.run import loop


def test_the_schedule_interleaves_by_weight_exactly_in_o1():
  schedule = mixture.Schedule.from_weights([0.7, 0.2, 0.1])
  assert schedule.shares == (7, 2, 1) and schedule.cycle == 10
  located = [schedule.locate(t) for t in range(1000)]
  for s in range(3):  # every source read in order, each element once
    assert [i for src, i in located if src == s] == list(range(sum(1 for x in located
                                                                   if x[0] == s)))
  for t in (0, 3, 10, 517, 1000):
    assert schedule.consumed(t) == tuple(sum(1 for src, _ in located[:t] if src == s)
                                         for s in range(3))
  assert schedule.consumed(1000) == (700, 200, 100)
  # Spread over the cycle: the heavy source never gives more than 3 elements in a row.
  runs = "".join(str(s) for s, _ in located[:10])
  assert "0000" not in runs
  assert schedule.locate(10**15 + 3) == (schedule.order[3], 10**14 * 7 + schedule.rank[3])
  assert mixture.integer_shares([1, 1]) == (1, 1)
  assert mixture.integer_shares([0.999, 0.001]) == (999, 1)


def _config(tmp_path, data, **overrides):
  config = tiny_config(tmp_path / "tfds", **overrides)
  with config.unlocked():
    config.dataset, config.tfds_data_dir = data[0][0], None
    config.num_classes = None
    config.input.data = tuple(data)
    config.batch = 12
  return config


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("mix")
  a = id_image_folder(root / "a", range(0, 30), range(30, 36))      # grey levels 0..35
  b = id_image_folder(root / "b", range(100, 110), range(110, 113))  # grey levels 100..112
  return a, b


def _ids(batch):  # the grey level each image was written with (see id_image_folder)
  return np.round((batch["image"][:, 0, 0, 0] + 1) * 127.5).astype(int)


def test_mixed_batches_follow_the_weights_processes_and_resume(tmp_path, folders):
  a, b = folders
  config = _config(tmp_path, [(a, "train", 2.0), (b, "train", 1.0)],
                   **{"pp.flip": False})
  it = pipeline.create_train_iterator(config)
  batches = [next(it) for _ in range(3)]
  ids = np.concatenate([_ids(x) for x in batches])
  from_b = ids >= 100
  assert from_b.sum() == 12 and (~from_b).sum() == 24                 # 2:1 of 36 elements
  assert len(set(ids[from_b].tolist())) == 10                         # b's 10 images, then again
  schedule = mixture.Schedule.from_weights([2.0, 1.0])
  assert [bool(x) for x in from_b] == [schedule.locate(t)[0] == 1 for t in range(36)]
  labels = np.argmax(np.concatenate([x["label"] for x in batches]), -1)
  np.testing.assert_array_equal(labels, ids % 3)                      # labels kept
  parts = [next(pipeline.create_train_iterator(config, process_index=p, process_count=2))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]),
                                batches[0]["image"])
  resumed = pipeline.create_train_iterator(config)
  resumed.set_state(it.get_state() | {"step": 2})
  np.testing.assert_array_equal(next(resumed)["image"], batches[2]["image"])
  lines = pipeline.mixture_summary(config, 3)
  assert "24 elements" in lines[1] and "12 elements" in lines[2]
  info = pipeline.get_dataset_info(config)
  assert info.num_train_examples == 40 and info.num_classes == 3


def test_label_spaces_must_agree_or_be_mapped(tmp_path, folders):
  a, _ = folders
  two = id_image_folder(tmp_path / "two", [0, 1, 3, 4], [5])          # classes class0, class1
  bad = _config(tmp_path, [(a, "train", 1.0), (two, "train", 1.0)])
  with pytest.raises(ValueError, match="has 2 classes and the run 3"):
    pipeline.create_train_iterator(bad)
  mapped = _config(tmp_path, [(a, "train", 1.0), (two, "train", 1.0, 1)])
  batch = next(pipeline.create_train_iterator(mapped))
  ids, labels = _ids(batch), np.argmax(batch["label"], -1)
  small = np.isin(ids, [0, 1, 3, 4]) & (np.arange(12) % 2 == 1)      # the second source's rows
  np.testing.assert_array_equal(labels[small], ids[small] % 3 + 1)
  with pytest.raises(ValueError, match="past the run's 3 classes"):
    pipeline.create_train_iterator(_config(tmp_path, [(a, "train", 1.0),
                                                      (two, "train", 1.0, 2)]))
  with pytest.raises(ValueError, match="weight must be > 0"):
    mixture.sources(_config(tmp_path, [(a, "train", 0.0)]))
  sources.clear_cache()


def test_a_mixture_run_logs_its_sources_and_resumes_exactly(tmp_path, data_dir, capfd):
  config = tiny_config(data_dir, total_steps=8, checkpoint_every=4)
  with config.unlocked():
    config.input.data = (("digits", "train", 3.0), ("digits", "train[:50%]", 1.0))
  unbroken = loop.train_and_evaluate(config, str(tmp_path / "a"))
  log = "".join(capfd.readouterr())
  assert "Data mixture of 2 sources, 256 elements read" in log
  assert "digits:train[:50%]: weight 1 -> 1/4 of each cycle (25.0%); 64 elements" in log
  work = tmp_path / "b"
  loop.train_and_evaluate(config, str(work))
  shutil.rmtree(work / "checkpoints" / "8")
  resumed = loop.train_and_evaluate(config, str(work))
  for x, y in zip(jax.tree.leaves(jax.device_get(unbroken["state"].params)),
                  jax.tree.leaves(jax.device_get(resumed["state"].params))):
    np.testing.assert_array_equal(x, y)
