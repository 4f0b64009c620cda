"""Progressive resolution (config.resolution_schedule): stages read one stream, the model
interpolates its position embedding, the lr follows the stage batch, resume is exact across a
stage change."""
import shutil

import jax
import numpy as np
import pytest

from vit_jax import batching
from vit_jax.datasets import pipeline
from vit_jax.run import loop
from vit_jax.training import optim

SCHEDULE = ((0, 8, 32), (4, 16, 16))


def test_stages_offsets_and_errors(run_config):
  stages = batching.resolution_stages(run_config(resolution_schedule=SCHEDULE + ((9, 12, 8),)))
  assert [(s.start, s.resolution, s.batch, s.offset) for s in stages] == [
      (0, 8, 32, 0), (4, 16, 16, 128), (9, 12, 8, 208)]
  assert batching.stage_at(stages, 3).resolution == 8
  assert batching.stage_at(stages, 4).resolution == 16 and batching.stage_at(stages, 99).batch == 8
  for bad in (((1, 8, 32),), ((0, 8, 32), (0, 16, 16)), ((0, 0, 32),)):
    with pytest.raises(ValueError, match="increasing start steps"):
      batching.resolution_stages(run_config(resolution_schedule=bad))


def test_batches_change_shape_at_the_stage_and_resume_in_the_stage(run_config):
  config = run_config(resolution_schedule=SCHEDULE)
  it = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  batches = [next(it) for _ in range(6)]
  assert [b["image"].shape[:2] for b in batches] == [(32, 8)] * 4 + [(16, 16)] * 2
  resumed = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(dict(it.get_state(), step=5))
  np.testing.assert_array_equal(next(resumed)["image"], batches[5]["image"])
  two = [pipeline.create_train_iterator(config, process_index=p, process_count=2) for p in (0, 1)]
  for i in range(6):
    parts = [next(t) for t in two]
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]),
                                  batches[i]["label"])
  # Stage 2 starts where stage 1 stopped: its first batch is the stream's elements 128..143,
  # the labels of one stream read at 16 px throughout.
  flat = batching.stage_config(config, batching.Stage(0, 16, 16, 0))
  with flat.unlocked():
    flat.resolution_schedule = ()
  whole = pipeline.create_train_iterator(flat, process_index=0, process_count=1)
  later = [next(whole) for _ in range(10)]
  np.testing.assert_array_equal(batches[4]["label"], later[8]["label"])
  for t in [it, resumed, whole, *two]:
    t.close()


def test_the_lr_scales_with_the_stage_batch_when_asked(run_config):
  config = run_config(resolution_schedule=SCHEDULE, resolution_schedule_scale_lr=True)
  _, schedule = optim.make_optimizer(config, 12, None)
  plain = optim.make_schedule(config, 12)
  assert float(schedule(3)) == pytest.approx(float(plain(3)))          # batch 32 = config.batch
  assert float(schedule(6)) == pytest.approx(float(plain(6)) * 16 / 32)


def test_a_run_resumed_inside_the_second_stage_equals_the_unbroken_run(tmp_path, run_config):
  config = run_config(resolution_schedule=SCHEDULE, total_steps=8, checkpoint_every=2)
  with config.unlocked():
    config.pp.crop, config.pp.resize = 16, 16   # evaluated at the last stage's resolution
  unbroken = loop.train_and_evaluate(config, str(tmp_path / "a"))
  assert unbroken["train"]["resolution"] == 16
  interrupted = tmp_path / "b"
  loop.train_and_evaluate(config, str(interrupted))
  expected = jax.tree.leaves(jax.device_get(unbroken["state"].params))
  for dropped in (("8",), ("8", "6")):  # killed after the save at step 6; at step 4 (the boundary)
    for step in dropped:
      shutil.rmtree(interrupted / "checkpoints" / step)
    resumed = loop.train_and_evaluate(config, str(interrupted))
    assert resumed["step"] == 8 and not resumed.get("already_finished")
    for a, b in zip(expected, jax.tree.leaves(jax.device_get(resumed["state"].params))):
      np.testing.assert_array_equal(a, b)


def test_the_dry_run_plans_the_stage_of_the_most_pixels(run_config):
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  config = run_config(resolution_schedule=((0, 8, 64), (4, 16, 32)), mesh=(("data", 1),))
  r = dry_run.analyse(config, jax.devices()[:1])
  assert (r["crop"], r["batch"], r["resolution_stage"]) == (16, 32, (4, 16, 32))
  assert "progressive resolution" in dry_run.format_report(r)


def test_throughput_counts_each_steps_own_batch_and_flops():
  import time  # pylint: disable=g-import-not-at-top

  from vit_jax.run import metrics  # pylint: disable=g-import-not-at-top
  meter = metrics.Throughput(64, 2, 1e9, 1e10)
  meter.step_done(images=64, flops=1e9)     # a stage at batch 64 ...
  meter.step_done(images=16, flops=4e9)     # ... then one at batch 16, 4x the FLOPs
  meter.start = time.perf_counter() - 10.0  # 10 s of steps
  out = meter.summary()
  assert out["img_per_sec"] == pytest.approx(80 / 10, rel=1e-3)
  assert out["img_per_sec_per_device"] == pytest.approx(4.0, rel=1e-3)
  assert out["mfu"] == pytest.approx(5e9 / 10 / 1e10, rel=1e-3)
  meter.step_done()                         # the defaults: the global batch, the given FLOPs
  meter.start = time.perf_counter() - 1.0
  assert meter.summary()["img_per_sec"] == pytest.approx(64, rel=1e-3)
