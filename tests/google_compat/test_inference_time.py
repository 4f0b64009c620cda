"""Google's inference-time benchmark on our package: `vit_jax.inference_time.inference_time`
with `vit_jax/configs/inference_time.py`, its TensorBoard events read back, the timed runs
counted with a fake clock, its config errors, and Google's command line end to end.

Google's test times the 'testing' model at 224 px; here 32 px keeps it to seconds on 2 cores.
"""
import glob
import os
import statistics
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit_jax import inference_time
from vit_jax.configs import common as common_config, inference_time as config_lib
from vit_jax.google_compat import inference_time as google_inference_time, schema
from vit_jax.planning import timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, "vit_jax", "configs", "inference_time.py")


def _tiny_config(**overrides):
  config = config_lib.get_config()
  config.model_name, config.num_classes, config.image_size = "testing", 10, 32
  config.batch, config.steps, config.initial_steps = 8, 2, 1
  config.update(overrides)
  return config


def _read_events(workdir) -> tuple[dict, set]:
  """({tag: value} of the scalars, plugin names) of the one event file in `workdir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = glob.glob(os.path.join(str(workdir), "events.out.tfevents.*"))
  assert len(files) == 1, files
  scalars, plugins = {}, set()
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for value in event.summary.value:
      plugins.add(value.metadata.plugin_data.plugin_name)
      if value.metadata.plugin_data.plugin_name == "scalars":
        assert event.step == 0
        scalars[value.tag] = float(tf.make_ndarray(value.tensor))
  return scalars, plugins


def test_config_has_googles_keys_and_dispatch_key():
  config = config_lib.get_config()
  assert (config.model_name, config.log_dir, config.steps, config.initial_steps) == (
      "ViT-B_32", ".", 30, 10)
  assert (config.batch, config.num_classes, config.image_size) == (0, 0, 0)
  assert config.train == "inference_time" and config.trainer == "inference_time"
  assert google_inference_time.is_inference_time_config(config)
  assert not google_inference_time.is_inference_time_config(common_config.get_config())


def test_a_mistyped_key_of_the_config_file_lists_the_valid_ones(capsys):
  from vit_jax import main  # pylint: disable=g-import-not-at-top
  main.check_config_overrides([f"--config={CONFIG_FILE}", "--config.batch=8"])
  with pytest.raises(SystemExit) as err:
    main.check_config_overrides([f"--config={CONFIG_FILE}", "--config.image_sise=32"])
  line = capsys.readouterr().err.strip()
  assert err.value.code == 2 and "Did you mean image_size?" in line and "initial_steps" in line


def test_googles_test_pattern_writes_events_read_back(tmp_path):
  config = _tiny_config()
  config.pretrained_dir = str(tmp_path)  # Google's test sets it; the config is not locked.
  result = inference_time.inference_time(config, str(tmp_path))
  scalars, plugins = _read_events(tmp_path)
  names = {f"imgs_sec_core_{s}" for s in ("min", "max", "mean", "std")}
  assert set(scalars) == names and "hparams" in plugins
  assert scalars["imgs_sec_core_min"] > 0 and scalars["imgs_sec_core_std"] >= 0
  assert scalars["imgs_sec_core_min"] <= scalars["imgs_sec_core_mean"] <= (
      scalars["imgs_sec_core_max"])
  for name in names:
    assert scalars[name] == pytest.approx(result[name], rel=1e-6)
  assert result["num_devices"] == jax.local_device_count() and len(result["run_seconds"]) == 2


def test_times_steps_runs_after_initial_steps_with_hand_computed_rates(tmp_path, monkeypatch):
  """Google's loop times `initial_steps` runs; ours the `steps` runs after them."""
  calls = []
  real = timing.forward_on_mesh

  def counting(*args, **kwargs):
    call, images = real(*args, **kwargs)
    return (lambda: calls.append(1) or call()), images

  monkeypatch.setattr(timing, "forward_on_mesh", counting)
  readings = iter([0.0, 0.1, 1.0, 1.3, 5.0, 5.05])  # Runs of 0.1, 0.3 and 0.05 s.
  config = _tiny_config(batch=16, steps=3, initial_steps=2)
  result = inference_time.inference_time(config, str(tmp_path), clock=lambda: next(readings))
  assert len(calls) == 2 + 3  # Untimed, then timed (the compile happened before, ahead of time).
  assert next(readings, None) is None  # Two clock readings per timed run, no more.
  per_device = 16 / jax.local_device_count()
  rates = [per_device / 0.1, per_device / 0.3, per_device / 0.05]
  want = {"imgs_sec_core_min": min(rates), "imgs_sec_core_max": max(rates),
          "imgs_sec_core_mean": sum(rates) / 3, "imgs_sec_core_std": statistics.pstdev(rates)}
  scalars, _ = _read_events(tmp_path)
  for name, value in want.items():
    assert result[name] == pytest.approx(value, rel=1e-6), name
    assert scalars[name] == pytest.approx(value, rel=1e-6), name


def test_forward_splits_the_batch_over_the_devices():
  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  n = jax.local_device_count()
  mesh = sharding.make_mesh(base.DEFAULT_MESH, jax.local_devices())
  call, images = timing.forward_on_mesh(registry.create_model("testing", 10), mesh,
                                        batch=2 * n, image_size=32)
  assert images.shape == (2 * n, 32, 32, 3) and len(images.addressable_shards) == n
  assert {s.data.shape for s in images.addressable_shards} == {(2, 32, 32, 3)}
  assert float(np.asarray(images).min()) == float(np.asarray(images).max()) == 1.0
  out = call()
  assert out.shape == (2 * n, 10) and len(out.addressable_shards) == n
  with pytest.raises(ValueError, match="multiple of"):
    timing.forward_on_mesh(registry.create_model("testing", 10), mesh, batch=n + 1,
                           image_size=32)


def test_time_windows_counts_windows_steps_and_warmup():
  calls, readings = [], iter([0.0, 2.0, 10.0, 13.0])
  out = timing.time_windows(lambda: calls.append(1), 2, 3, warmup=1,
                            clock=lambda: next(readings), cpu_clock=lambda: 0.0)
  assert out == {"window_s": [2.0, 3.0], "cpu_cores_used": 0.0} and len(calls) == 1 + 2 * 3
  with pytest.raises(ValueError, match="windows=0"):
    timing.time_windows(lambda: None, 0)


@pytest.mark.parametrize("overrides,message", [
    (dict(batch=0), "--config.batch (now 0; must be > 0)"),
    (dict(num_classes=0), "--config.num_classes (now 0; must be > 0)"),
    (dict(image_size=0), "--config.image_size (now 0; must be > 0)"),
    (dict(steps=0), "--config.steps (now 0; must be > 0)"),
    (dict(initial_steps=-1), "--config.initial_steps (now -1; must be >= 0)"),
    (dict(model_name="ViT-Q_99"), "--config.model_name: unknown model name 'ViT-Q_99'"),
])
def test_bad_config_is_one_error_naming_the_key(tmp_path, overrides, message):
  with pytest.raises(ValueError) as err:
    inference_time.inference_time(_tiny_config(**overrides), str(tmp_path))
  assert message in str(err.value) and "\n" not in str(err.value)
  assert not glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_googles_defaults_name_all_three_keys_and_a_batch_must_split():
  n = jax.local_device_count()
  with pytest.raises(ValueError) as err:
    google_inference_time.check_config(config_lib.get_config(), n)
  for key in ("batch", "num_classes", "image_size"):
    assert f"--config.{key} (now 0" in str(err.value)
  assert "For example: --config.batch=64" in str(err.value)
  with pytest.raises(ValueError, match=f"--config.batch \\(now {n + 1}; .* multiple of the {n} "):
    google_inference_time.check_config(_tiny_config(batch=n + 1), n)


def test_a_training_config_points_to_the_inference_time_config():
  config = common_config.get_config()
  with pytest.raises(ValueError, match="has no model_name, steps, initial_steps.*inference_time"):
    google_inference_time.check_config(config, 1)
  config = common_config.with_dataset(config, "cifar10")
  from vit_jax.configs import models as models_config  # pylint: disable=g-import-not-at-top
  config.model, config.trainer = models_config.get_testing_config(), "inference_time"
  with pytest.raises(ValueError, match="configs/inference_time.py"):
    schema.to_run_config(config)


def test_main_command_line_on_two_devices(tmp_path):
  """Google's command line, end to end in a fresh process with 2 CPU devices: one line, the
  batch split over both, the events and the run log in the workdir; bad keys: exit 2."""
  workdir = tmp_path / "w"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  flags = ["--config.model_name=testing", "--config.batch=8", "--config.num_classes=10",
           "--config.image_size=32", "--config.steps=2", "--config.initial_steps=1"]
  proc = subprocess.run([sys.executable, "-m", "vit_jax.main", f"--config={CONFIG_FILE}", *flags,
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = proc.stdout.strip().splitlines()[-1]
  assert line.startswith("Inference time: testing at 32 px, batch 8 over 2 device(s), 2 timed")
  scalars, _ = _read_events(workdir)
  assert scalars["imgs_sec_core_mean"] > 0 and (workdir / "train.log").exists()
  assert f"{scalars['imgs_sec_core_mean']:.1f} img/s per device" in line
  proc = subprocess.run([sys.executable, "-m", "vit_jax.main", f"--config={CONFIG_FILE}",
                         "--config.batch=7", "--config.num_classes=10", "--config.image_size=32",
                         f"--workdir={tmp_path / 'bad'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert err == ["error: inference time: set --config.batch (now 7; the global batch must be a "
                 "multiple of the 2 local devices)."], err
