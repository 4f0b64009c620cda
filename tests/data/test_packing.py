"""The packer (datasets/packing.py) and the packed input pipeline (datasets/naflex.py): token
accounting on random shapes (no image dropped, the budget respected, aspect ratios kept),
patches and coordinates, and the pipeline's contract (processes, resume, eval padding)."""
import math

import numpy as np
import pytest
from helpers import mixed_aspect_folder, tiny_packed_config

from vit_jax.datasets import naflex, packing, pipeline
from vit_jax.models import factory


def test_fit_grid_keeps_the_aspect_within_the_budget():
  assert packing.fit_grid(224, 224, 196, 16) == (14, 14)
  assert packing.fit_grid(100, 400, 64, 16) == (4, 16)      # 1:4 at 64 tokens
  assert packing.fit_grid(10, 1000, 16, 8) == (1, 16)       # a side never below one patch
  assert packing.fit_grid(37, 23, 1, 16) == (1, 1)


@pytest.mark.parametrize("seed", range(4))
def test_layout_token_accounting_on_random_shapes(seed):
  rng = np.random.default_rng(seed)
  for _ in range(60):
    k = int(rng.integers(1, 7))
    seq_len = int(rng.integers(k, 400))
    patch = int(rng.choice([4, 8, 16]))
    sizes = [(int(rng.integers(1, 600)), int(rng.integers(1, 600))) for _ in range(k)]
    shares = rng.uniform(0.2, 1.0, k)
    drop = float(rng.choice([0.0, 0.0, 0.3, 0.5]))
    cap = int(rng.choice([0, seq_len // 2 + 1]))
    grids = packing.pack_layout(sizes, seq_len, patch, weights=shares, drop_rate=drop,
                                max_tokens=cap or None)
    assert len(grids) == k                                   # no image dropped
    assert all(r >= 1 and c >= 1 for r, c in grids)          # each has a token
    kept = [packing.kept_tokens(r * c, drop) for r, c in grids]
    assert sum(kept) <= seq_len                               # the budget respected
    if cap:
      assert all(r * c <= cap for r, c in grids)
    for (h, w), (r, c) in zip(sizes, grids):  # the aspect ratio, to one patch a side
      scale = math.sqrt(r * c / (h * w))
      assert r <= math.ceil(h * scale) + 1 and c <= math.ceil(w * scale) + 1


def test_mixed_aspect_packs_have_little_padding():
  rng = np.random.default_rng(0)
  used = []
  for _ in range(200):
    sizes = [(int(rng.integers(64, 512)), int(rng.integers(64, 512))) for _ in range(4)]
    grids = packing.pack_layout(sizes, 256, 16)
    used.append(sum(r * c for r, c in grids))
  assert 1 - np.mean(used) / 256 < 0.05


def test_pack_layout_refuses_more_images_than_tokens():
  with pytest.raises(ValueError, match="at least one"):
    packing.pack_layout([(8, 8)] * 5, 4, 4)


def test_pack_and_token_drop():
  image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
  patches = packing.patchify(image, 4)
  assert patches.shape == (6, 48)
  np.testing.assert_array_equal(patches[4].reshape(4, 4, 3), image[4:8, 4:8])  # row 1, col 1
  coords = packing.grid_coords(2, 3)
  assert coords[4].tolist() == [1, 1]
  keep = packing.keep_indices(6, 0.5, np.random.default_rng(0))
  assert len(keep) == 3 and np.all(np.diff(keep) > 0)
  out = packing.pack([patches[keep], patches], [coords[keep], coords], [(2, 3), (2, 3)], 12, 3)
  assert out["segment_ids"].tolist() == [1] * 3 + [2] * 6 + [0] * 3
  assert out["image_grid"].tolist() == [[2, 3], [2, 3], [0, 0]]
  np.testing.assert_array_equal(out["coords"][:3], coords[keep])
  assert packing.padding_fraction(out["segment_ids"]) == 0.25
  with pytest.raises(ValueError, match="do not fit"):
    packing.pack([patches] * 3, [coords] * 3, [(2, 3)] * 3, 12, 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return mixed_aspect_folder(tmp_path_factory.mktemp("mixed"), n_train=30, n_test=7)


def _config(folder, **overrides):
  return factory.with_pipeline_settings(tiny_packed_config(folder, **overrides))


def test_packed_train_batches_processes_and_resume(folder):
  config = _config(folder, **{"naflex.token_drop": 0.25})
  it = pipeline.create_train_iterator(config)
  batches = [next(it) for _ in range(3)]
  b = batches[0]
  assert b["image"]["patches"].shape == (8, 48, 48) and b["label"].shape == (8, 3, 3)
  assert b["image"]["patches"].dtype == np.float32
  assert -1 <= b["image"]["patches"].min() and b["image"]["patches"].max() <= 1
  for seg in b["image"]["segment_ids"]:
    assert set(np.unique(seg)) - {0} == {1, 2, 3}           # three images in every pack
  grids = b["image"]["image_grid"]
  counts = [[int(np.sum(s == k + 1)) for k in range(3)] for s in b["image"]["segment_ids"]]
  np.testing.assert_array_equal(  # token drop keeps ceil(3/4) of each image's patches
      counts, [[packing.kept_tokens(r * c, 0.25) for r, c in g] for g in grids])
  assert np.mean(b["image"]["segment_ids"] == 0) < 0.1
  # Two processes concatenate to one; a restored state gives the same next batch.
  parts = [next(pipeline.create_train_iterator(config, process_index=p, process_count=2))
           for p in range(2)]
  for key in b["image"]:
    np.testing.assert_array_equal(np.concatenate([p["image"][key] for p in parts]),
                                  b["image"][key])
  resumed = pipeline.create_train_iterator(config)
  resumed.set_state(it.get_state() | {"step": 2})
  np.testing.assert_array_equal(next(resumed)["image"]["patches"], batches[2]["image"]["patches"])


def test_packed_eval_is_one_image_per_sequence_with_padding_masked(folder):
  config = _config(folder, **{"naflex.eval_seq_len": 16})
  batches = list(pipeline.create_eval_iterator(config))
  assert len(batches) == 1
  b = batches[0]
  assert b["image"]["patches"].shape == (16, 16, 48)
  assert b["image"]["image_grid"].shape == (16, 1, 2)
  assert b["mask"].tolist() == [1.0] * 7 + [0.0] * 9
  assert np.all(b["image"]["segment_ids"][7:] == 0)
  rows, cols = b["image"]["image_grid"][:7, 0].T
  assert np.all(rows * cols <= 16) and np.all(rows * cols >= 9)  # the budget, nearly filled


def test_packed_settings_errors(folder):
  with pytest.raises(ValueError, match="config.pp.mixup_alpha"):
    naflex.settings_from_config(_config(folder, **{"pp.mixup_alpha": 0.2}))
  with pytest.raises(ValueError, match="images_per_pack=49"):
    naflex.settings_from_config(_config(folder, **{"naflex.images_per_pack": 49}))
  with pytest.raises(ValueError, match="square patches|a plain ViT"):
    factory.with_pipeline_settings(tiny_packed_config(folder, model_name="Mixer-B_16"))
