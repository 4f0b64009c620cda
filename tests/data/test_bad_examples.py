"""Undecodable images (config.input.skip_bad_examples): by default one error naming the file
and the fix; skipped, a train image is replaced by its source's next one (deterministically),
counted and logged, an eval image is left out of the metrics."""
import logging

import numpy as np
import pytest
from helpers import id_image_folder, tiny_config

from vit_jax.datasets import bad_examples, pipeline, sources
from vit_jax.run import loop


@pytest.fixture
def folder(tmp_path):
  root = id_image_folder(tmp_path / "data", range(0, 24), range(24, 30))
  bad = tmp_path / "data" / "train" / "class1" / "007.png"
  bad.write_bytes(bad.read_bytes()[:20])              # a truncated file
  (tmp_path / "data" / "test" / "class1" / "025.png").write_bytes(b"not an image at all")
  sources.clear_cache()
  return root


def _config(tmp_path, folder, **overrides):
  config = tiny_config(tmp_path / "tfds", **overrides)
  with config.unlocked():
    config.dataset, config.tfds_data_dir, config.num_classes = folder, None, None
    config.batch, config.batch_eval, config.pp.flip = 24, 8, False
    config.input.num_workers = 0
  return config


def test_an_undecodable_train_image_stops_the_run_with_its_path_and_the_fix(tmp_path, folder):
  with pytest.raises(ValueError, match=r"(?s)007\.png.*skip_bad_examples=True"):
    next(pipeline.create_train_iterator(_config(tmp_path, folder)))


def test_skipped_train_images_are_replaced_counted_and_logged(tmp_path, folder, caplog):
  config = _config(tmp_path, folder, **{"input.skip_bad_examples": True})
  it = pipeline.create_train_iterator(config)
  with caplog.at_level(logging.WARNING):
    batch = next(it)
  ids = np.round((batch["image"][:, 0, 0, 0] + 1) * 127.5).astype(int).tolist()
  assert 7 not in ids and len(ids) == 24
  assert sorted(set(range(24)) - set(ids)) == [7]      # one image twice instead: its successor
  assert it.skipped_examples == 1
  state = it.get_state()
  assert state["skipped_examples"] == 1  # the data state carries it (process 0 restores it)
  resumed = pipeline.create_train_iterator(config)
  resumed.set_state(state)
  assert resumed.skipped_examples == 1
  other = pipeline.create_train_iterator(config, process_index=1, process_count=2)
  other.set_state(state)
  assert other.skipped_examples == 0
  # Runs that stop on bad input keep the data state they had.
  assert bad_examples.with_count({"step": 3}, _config(tmp_path, folder), 0) == {"step": 3}
  assert set(batch) == {"image", "label"}                # the counts stay on the host
  assert any("007.png" in r.getMessage() for r in caplog.records)
  again = next(pipeline.create_train_iterator(config))  # deterministic
  np.testing.assert_array_equal(again["image"], batch["image"])


def test_a_skipped_eval_image_is_left_out(tmp_path, folder):
  config = _config(tmp_path, folder, **{"input.skip_bad_examples": True})
  masks = np.concatenate([b["mask"] for b in pipeline.create_eval_iterator(config)])
  assert masks.sum() == 5 and len(masks) == 8
  with pytest.raises(ValueError, match=r"025\.png"):
    list(pipeline.create_eval_iterator(_config(tmp_path, folder)))


def test_too_many_in_a_row_is_an_error():
  class Broken:
    def __len__(self):
      return 100

    def __getitem__(self, i):
      return {"image": b"x", "path": f"{i}.jpg"}

  element = bad_examples.WithFallback(Broken())[3]
  with pytest.raises(ValueError, match="16 undecodable examples in a row from '3.jpg'"):
    bad_examples.decode_or_skip(element, lambda e: 1 / 0, skip=True)


def test_a_run_reports_what_it_skipped_also_across_a_resume(tmp_path, folder, capfd):
  """A batch is the whole 24-image split, so each step skips the one truncated image: the count
  is the steps trained on (not the batches prefetched beyond them), and a run resumed at step 2
  reports the 4 of the whole run."""
  config = _config(tmp_path, folder, total_steps=4, checkpoint_every=2,
                   **{"input.skip_bad_examples": True})
  result = loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert result["skipped_examples"] == 4
  assert result["eval"]["examples"] == 5
  assert "Skipped 4 undecodable train examples" in "".join(capfd.readouterr())
  first = _config(tmp_path, folder, total_steps=2, checkpoint_every=2,
                  **{"input.skip_bad_examples": True})
  assert loop.train_and_evaluate(first, str(tmp_path / "r"))["skipped_examples"] == 2
  assert loop.train_and_evaluate(config, str(tmp_path / "r"))["skipped_examples"] == 4


def test_a_progressive_schedule_carries_the_count_across_its_stages_and_a_resume(tmp_path,
                                                                                 folder):
  """Stage 1 reads the 24-image split once a step, stage 2 half of it: 2 + 1 skips in 4 steps,
  in the state at the stage change's far side and in an iterator restored from it."""
  config = _config(tmp_path, folder, **{"input.skip_bad_examples": True})
  with config.unlocked():
    config.resolution_schedule = ((0, 8, 24), (2, 16, 12))
  it = pipeline.create_train_iterator(config)
  for _ in range(4):
    next(it)
  state = it.get_state()
  assert state["skipped_examples"] == it.skipped_examples == 3
  resumed = pipeline.create_train_iterator(config)
  resumed.set_state(state)
  assert resumed.skipped_examples == 3
  for _ in range(2):
    next(it), next(resumed)
  assert resumed.skipped_examples == it.skipped_examples == 4
