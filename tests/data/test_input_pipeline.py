"""Tests of vit_jax.datasets.pipeline: shapes, one global order whatever the process count,
masked eval, exact O(1) resume (also onto another process count).

Coverage tests use a generated PNG folder whose image k is the constant grey level k, so the
example id is read back from the batch itself (independent of the pipeline's bookkeeping).
"""
import collections
import json
import os
import time

import numpy as np
import pytest
from helpers import id_image_folder
from PIL import Image

from vit_jax.configs import base
from vit_jax.datasets import mixing, pipeline, sources

N_TRAIN, N_TEST = 50, 23


def _config(dataset, **kw):
  """configs/base.defaults() (where every key has its one default) shrunk for tests."""
  c = base.defaults()
  c.update_from_flattened_dict(dict(
      seed=0, dataset=dataset, train_split="train", eval_split="test", batch=12, batch_eval=12,
      **{"pp.crop": 8, "pp.resize": 8, "pp.flip": False, "input.num_workers": 0,
         "input.prefetch": 2, "input.device_prefetch": 2}))
  c.update_from_flattened_dict(kw)
  return c


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
  """train: ids 0..49, test: ids 100..122; 3 classes; 8x8 PNGs of constant grey = id."""
  return id_image_folder(tmp_path_factory.mktemp("ids"), range(N_TRAIN),
                         range(100, 100 + N_TEST))


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("jpegs")
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for k in range(10):
      folder = root / split / ("cat" if k % 2 else "dog")
      os.makedirs(folder, exist_ok=True)
      arr = rng.integers(0, 256, (37, 50, 3), np.uint8)
      Image.fromarray(arr).save(folder / f"{k}.jpg", "JPEG")
  return str(root)


def _ids(images: np.ndarray) -> np.ndarray:
  """Grey level of each image (the example id), read back from [-1, 1] floats."""
  levels = np.round((images + 1.0) * 127.5)
  assert np.all(levels == levels[:, :1, :1, :1])  # Constant images survive exactly.
  return levels[:, 0, 0, 0].astype(int)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_cifar10_mock_shapes_ranges_dtypes():
  import tensorflow_datasets as tfds
  sources.clear_cache()
  c = _config("cifar10", **{"pp.crop": 16, "pp.resize": 20, "pp.train": "inception_crop",
                            "pp.flip": True, "batch": 8, "batch_eval": 8})
  with tfds.testing.mock_data(num_examples=20):
    info = pipeline.get_dataset_info(c)
    batch = next(pipeline.create_train_iterator(c, process_index=0, process_count=1))
    evals = list(pipeline.create_eval_iterator(c, process_index=0, process_count=1))
  sources.clear_cache()
  assert info.num_classes == 10 and len(info.class_names) == 10
  assert info.num_train_examples == 20
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8, 10) and batch["label"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].std() > 0.1
  np.testing.assert_array_equal(batch["label"].sum(-1), 1.0)
  assert len(evals) == 3 and evals[-1]["mask"].tolist() == [1] * 4 + [0] * 4
  assert all(e["image"].shape == (8, 16, 16, 3) for e in evals)


def test_jpeg_folder_train_and_eval(jpeg_folder):
  c = _config(jpeg_folder, **{"pp.crop": 16, "pp.resize": 24, "batch": 4, "batch_eval": 4,
                              "pp.label_smoothing": 0.2})
  info = pipeline.get_dataset_info(c)
  assert info.class_names == ("cat", "dog") and info.num_train_examples == 10
  batch = next(pipeline.create_train_iterator(c, process_index=0, process_count=1))
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
  np.testing.assert_allclose(np.sort(batch["label"], -1), [[0.1, 0.9]] * 4, atol=1e-6)
  masks = [e["mask"] for e in pipeline.create_eval_iterator(c, process_index=0,
                                                                    process_count=1)]
  assert sum(m.sum() for m in masks) == 10 and len(masks) == 3


def test_global_stream_epochs_are_reshuffled_permutations(id_folder):
  c = _config(id_folder, batch=10)  # 50 examples: 5 batches an epoch.
  it = pipeline.create_train_iterator(c, process_index=0, process_count=1)
  stream = np.concatenate([_ids(b["image"]) for b in _take(it, 15)])
  epochs = stream.reshape(3, N_TRAIN)
  for epoch in epochs:
    assert sorted(epoch) == list(range(N_TRAIN))  # Every epoch is a permutation of the split...
  assert not np.array_equal(epochs[0], epochs[1])  # ...shuffled afresh.
  assert not np.array_equal(epochs[1], epochs[2])


# Augmentations that use the per-example RNG (crop, flip, RandAugment) and, with mixup, the
# per-batch RNG; label smoothing to check labels bit for bit too.
_AUGMENTED = {"pp.randaugment_layers": 2, "pp.randaugment_magnitude": 9, "pp.flip": True,
              "pp.resize": 10, "pp.label_smoothing": 0.1}
# The timm / DeiT recipe pieces on top: mixup or CutMix (switch), sometimes neither, random
# erasing (per-element boxes and noise seeds applied in the batch transform), repeated aug.
_TIMM = {"pp.mixup_alpha": 0.8, "pp.cutmix_alpha": 1.0, "pp.mixup_switch_prob": 0.5,
         "pp.mixup_prob": 0.9, "pp.random_erase_prob": 0.5, "pp.random_erase_count": 2,
         "input.repeated_aug": 3}
_MIXES = {"no_mixup": {}, "mixup": {"pp.mixup_alpha": 0.5}, "timm": _TIMM}


def _global_batches(c, steps, count, state=None):
  """The `steps` global batches of `count` processes: their local batches concatenated."""
  its = [pipeline.create_train_iterator(c, process_index=p, process_count=count)
         for p in range(count)]
  out = []
  for it in its:
    if state is not None:
      it.set_state(state)
  for _ in range(steps):
    local = [next(it) for it in its]
    assert all(b["image"].shape[0] == c.batch // count for b in local)
    out.append({k: np.concatenate([b[k] for b in local]) for k in ("image", "label")})
  return out


@pytest.mark.parametrize("mix", list(_MIXES))
@pytest.mark.parametrize("count", [1, 2, 3])
def test_local_batches_concatenate_to_the_one_process_batch(id_folder, count, mix):
  # Global batch 12 over 50 examples: 10 steps cross two epoch boundaries (mid-batch).
  c = _config(id_folder, batch=12, **dict(_AUGMENTED, **_MIXES[mix]))
  steps = 10
  reference = _global_batches(c, steps, 1)
  if count == 1:  # The reference itself: check it is a real, augmented, shuffled stream.
    assert len({tuple(b["label"].argmax(-1)) for b in reference}) > 1
    if mix != "no_mixup":
      assert not np.allclose(reference[0]["label"].max(-1), 0.1 / 3 + 0.9)
    if mix == "timm":  # 'pixel' erasing: N(0, 1) noise, a third of it outside [-1, 1].
      assert np.mean([np.abs(b["image"]).max() > 1 for b in reference]) > 0.5
  for i, (got, want) in enumerate(zip(_global_batches(c, steps, count), reference)):
    for key in ("image", "label"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"step {i} {key}")


@pytest.mark.parametrize("count", [2, 3])
def test_processes_read_disjoint_rows_and_only_their_own(id_folder, count, monkeypatch):
  """Within an epoch no example is in two processes' batches; each process reads (decodes)
  only the records of its own rows."""
  c = _config(id_folder, batch=12)
  b = 12 // count
  reads = collections.defaultdict(list)
  real_open = pipeline.open_source

  class Recording:
    def __init__(self, source, p):
      self.source, self.p = source, p

    def __len__(self):
      return len(self.source)

    def __getitem__(self, index):
      element = self.source[index]
      reads[self.p].append(int(os.path.basename(element["path"])[:3]))
      return element

  seen = {}
  for p in range(count):
    monkeypatch.setattr(pipeline, "open_source",
                        lambda config, split, p=p: (lambda s, info, p=p: (Recording(s, p), info))(
                            *real_open(config, split)))
    it = pipeline.create_train_iterator(c, process_index=p, process_count=count)
    # Random access to the first 4 local batches (4 × 12 = 48 < 50: all in epoch 0), without
    # the iterator's read-ahead, so the records read are exactly those of these batches.
    local = [it._batches[i] for i in range(4)]  # pylint: disable=protected-access
    ids = np.concatenate([_ids(x["image"]) for x in local])
    assert len(ids) == 4 * b
    assert sorted(reads[p]) == sorted(ids.tolist())  # Read exactly its own rows, once each.
    seen[p] = set(ids.tolist())
  assert sum(len(s) for s in seen.values()) == 48  # Disjoint across processes.
  reference = np.concatenate([_ids(x["image"]) for x in _global_batches(c, 4, 1)])
  assert set().union(*seen.values()) == set(reference.tolist())


@pytest.mark.parametrize("mix", ["mixup", "timm"])
@pytest.mark.parametrize("saved_count,restored_count", [(2, 3), (3, 1), (1, 2)])
def test_restore_at_step_k_onto_another_process_count(id_folder, saved_count, restored_count,
                                                      mix):
  c = _config(id_folder, batch=12, **dict(_AUGMENTED, **_MIXES[mix]))
  k, steps = 5, 9
  reference = _global_batches(c, steps, 1)
  saver = pipeline.create_train_iterator(c, process_index=saved_count - 1,
                                               process_count=saved_count)
  _take(saver, k)
  state = json.loads(json.dumps(saver.get_state()))  # As a checkpoint stores it.
  assert state["step"] == k and "process_count" not in state
  resumed = _global_batches(c, steps - k, restored_count, state=state)
  for i, (got, want) in enumerate(zip(resumed, reference[k:]), start=k):
    for key in ("image", "label"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"step {i} {key}")


def test_mixup_pairs_rows_2m_and_2m_plus_1():
  images = np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2)
  labels = np.eye(4, dtype=np.float32)
  x, y, lam = mixing.mixup(images, labels, 1.0, np.random.default_rng(0))
  partner = [1, 0, 3, 2]
  np.testing.assert_allclose(x, lam * images + (1 - lam) * images[partner], rtol=1e-6)
  np.testing.assert_allclose(y, lam * labels + (1 - lam) * labels[partner], rtol=1e-6)
  np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)


def test_mixup_needs_an_even_per_process_batch(id_folder):
  c = _config(id_folder, batch=9, **{"pp.mixup_alpha": 0.2})
  with pytest.raises(ValueError, match="must be even"):
    pipeline.create_train_iterator(c, process_index=0, process_count=3)
  # Without mixup an odd per-process batch is fine.
  batch = next(pipeline.create_train_iterator(_config(id_folder, batch=9),
                                                    process_index=0, process_count=3))
  assert batch["image"].shape[0] == 3


@pytest.mark.parametrize("count", [1, 2, 3])
def test_eval_counts_every_example_exactly_once(id_folder, count):
  c = _config(id_folder, batch_eval=4 * count)
  seen, lengths = collections.Counter(), set()
  for p in range(count):
    batches = list(pipeline.create_eval_iterator(c, process_index=p, process_count=count))
    lengths.add(len(batches))
    for b in batches:
      assert b["image"].shape[0] == 4 and b["mask"].dtype == np.float32
      ids = _ids(b["image"])
      seen.update(ids[b["mask"] == 1].tolist())
      assert np.all(b["image"][b["mask"] == 0] == -1.0)
  assert len(lengths) == 1  # Same number of batches on every process.
  assert seen == collections.Counter(range(100, 100 + N_TEST))


def test_resume_at_step_k_is_bit_identical(id_folder):
  c = _config(id_folder, **{"pp.randaugment_layers": 2, "pp.randaugment_magnitude": 9,
                            "pp.mixup_alpha": 0.5, "pp.label_smoothing": 0.1, "pp.flip": True,
                            "pp.resize": 10, "batch": 8})
  it = pipeline.create_train_iterator(c, process_index=1, process_count=2)
  batches, states = [], []
  for _ in range(12):  # 12 global batches of 8 over 50 examples: crosses epochs.
    batches.append(next(it))
    states.append(it.get_state())
  k = 5
  state = json.loads(json.dumps(states[k - 1]))  # Small and JSON-serialisable.
  assert len(json.dumps(state)) < 300 and state["step"] == k
  assert (state["epoch"], state["position"]) == divmod(k * 8, N_TRAIN)  # In the global stream.
  resumed = pipeline.create_train_iterator(c, process_index=1, process_count=2)
  resumed.set_state(state)
  for i in range(k, 12):
    b = next(resumed)
    for key in ("image", "label"):
      np.testing.assert_array_equal(b[key], batches[i][key])
  np.testing.assert_allclose(batches[3]["label"].sum(-1), 1.0, atol=1e-6)
  # Multi-host checkpoints keep process 0's state; it must restore process 1 exactly too.
  it0 = pipeline.create_train_iterator(c, process_index=0, process_count=2)
  _take(it0, k)
  other = pipeline.create_train_iterator(c, process_index=1, process_count=2)
  other.set_state(it0.get_state())
  np.testing.assert_array_equal(next(other)["image"], batches[k]["image"])


def test_resume_is_o1(id_folder):
  c = _config(id_folder)
  it = pipeline.create_train_iterator(c, process_index=0, process_count=1)
  state = dict(it.get_state(), step=10**9)
  it.set_state(state)
  t0 = time.perf_counter()
  batch = next(it)
  assert time.perf_counter() - t0 < 2.0 and batch["image"].shape == (12, 8, 8, 3)
  assert it.get_state()["step"] == 10**9 + 1


def test_seeded_determinism(id_folder):
  make = lambda seed: pipeline.create_train_iterator(
      _config(id_folder, seed=seed, **{"pp.mixup_alpha": 1.0}), process_index=0,
      process_count=1)
  a, b, c = _take(make(0), 3), _take(make(0), 3), _take(make(1), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not all(np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


@pytest.mark.parametrize("mix", ["mixup", "timm"])
def test_batches_do_not_depend_on_worker_count(id_folder, mix):
  mixes = dict(_MIXES[mix], **{"pp.mixup_alpha": 1.0})  # timm: workers unpickle RepeatedStream
  base = _take(pipeline.create_train_iterator(
      _config(id_folder, **mixes), process_index=0, process_count=1), 3)
  it = pipeline.create_train_iterator(
      _config(id_folder, **dict(mixes, **{"input.num_workers": 2})),
      process_index=0, process_count=1)
  try:
    for x, y in zip(base, _take(it, 3)):
      np.testing.assert_array_equal(x["image"], y["image"])
      np.testing.assert_array_equal(x["label"], y["label"])
  finally:
    it.close()


def test_batch_must_divide_over_processes(id_folder):
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    pipeline.create_train_iterator(_config(id_folder, batch=10), process_index=0,
                                         process_count=3)


def test_set_state_rejects_another_seed(id_folder):
  it = pipeline.create_train_iterator(_config(id_folder), process_index=0, process_count=1)
  with pytest.raises(ValueError, match="same --config.seed"):
    it.set_state(dict(it.get_state(), seed=7))


def test_digits_labels_match_images(tmp_path_factory):
  """Images and labels stay paired: a linear classifier on pipeline batches generalises."""
  from sklearn.linear_model import LogisticRegression
  sources.clear_cache()
  c = _config("digits", tfds_data_dir=str(tmp_path_factory.mktemp("tfds")), batch=100,
              batch_eval=100, **{"pp.crop": 16, "pp.resize": 16})
  info = pipeline.get_dataset_info(c)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (1500, 297, 10)
  it = pipeline.create_train_iterator(c, process_index=0, process_count=1)
  train = _take(it, 15)
  x = np.concatenate([b["image"][..., 0].reshape(100, -1) for b in train])
  y = np.concatenate([b["label"].argmax(-1) for b in train])
  clf = LogisticRegression(max_iter=300).fit(x, y)
  correct = total = 0
  for b in pipeline.create_eval_iterator(c, process_index=0, process_count=1):
    pred = clf.predict(b["image"][..., 0].reshape(100, -1))
    correct += ((pred == b["label"].argmax(-1)) * b["mask"]).sum()
    total += b["mask"].sum()
  assert total == 297 and correct / total > 0.9


_RELEASE_SCRIPT = """
import sys
from configs import quickstart
from vit_jax.datasets import pipeline
if __name__ == "__main__":  # grain's workers are spawned: they re-import this file
  it = pipeline.create_train_iterator(quickstart.get_config())  # 1 worker process
  batches = [next(it) for _ in range(3)]
  it.close()
  del batches
  pipeline.release_shared_memory()
  print("released")
"""


def test_release_shared_memory_leaves_nothing_for_the_resource_tracker(tmp_path):
  # Without the release, grain's pending asynchronous unlinks are dropped at exit and Python
  # warns about "leaked shared_memory objects" (seen at the end of every quickstart run).
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from helpers import REPO  # pylint: disable=g-import-not-at-top
  script = tmp_path / "release.py"
  script.write_text(_RELEASE_SCRIPT)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and "released" in proc.stdout, proc.stderr[-2000:]
  assert "leaked shared_memory" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("recipe", ["inception_crop", "vit_finetune"])
def test_the_trainers_uint8_batches_are_the_float_batches_before_their_last_pass(jpeg_folder,
                                                                                 recipe):
  """create_train_iterator(uint8_images=True): the same crops, uint8 (read back exactly from
  the default iterator's floats); x / 127.5 - 1 in float64 matches those to float32 rounding."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import batching  # pylint: disable=g-import-not-at-top
  c = _config(jpeg_folder, **{"pp.crop": 16, "pp.resize": 24, "batch": 4, "pp.flip": True,
                              "pp.train": recipe, "pp.label_smoothing": 0.2})
  floats = _take(pipeline.create_train_iterator(c, process_index=0, process_count=1), 3)
  raw = _take(pipeline.create_train_iterator(c, process_index=0, process_count=1,
                                             uint8_images=True), 3)
  for f, u in zip(floats, raw):
    assert u["image"].dtype == np.uint8 and f["image"].dtype == np.float32
    np.testing.assert_array_equal(np.round((f["image"] + 1.0) * 127.5), u["image"])
    np.testing.assert_allclose(u["image"] / 127.5 - 1.0, f["image"], rtol=0, atol=2e-7)
    # What the train step computes from them is the host's float32 batch (XLA may fuse the
    # multiply-add: within one float32 step of 1.0).
    np.testing.assert_allclose(jax.jit(batching.float_values)(u["image"]), f["image"], rtol=0,
                               atol=1.2e-7)
    np.testing.assert_array_equal(u["label"], f["label"])


@pytest.mark.parametrize("pp", [
    {"pp.mixup_alpha": 0.5}, {"pp.cutmix_alpha": 1.0}, {"pp.random_erase_prob": 0.5},
    {"pp.train": "decode|resize(24)|random_crop(16)|value_range(-1, 1)"}])
def test_batches_that_need_floats_on_the_host_stay_float_for_the_trainer(jpeg_folder, pp):
  from vit_jax import batching  # pylint: disable=g-import-not-at-top
  c = _config(jpeg_folder, **{"pp.crop": 16, "pp.resize": 24, "batch": 4, **pp})
  assert not batching.uint8_train_images(c.pp)
  batch = next(pipeline.create_train_iterator(c, process_index=0, process_count=1,
                                              uint8_images=True))
  assert batch["image"].dtype == np.float32
