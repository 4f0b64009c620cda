"""Tests for --dry_run (vit_jax.dry_run): memory per device, FLOPs, through main.py too."""
import math
import os
import subprocess
import sys

import jax
import pytest

from test_train import REPO, tiny_config  # pylint: disable=g-bad-import-order
from test_resume import TINY_FLAGS  # pylint: disable=g-bad-import-order
from vit_jax import dry_run


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_dry_run_reports_memory_and_flops(tmp_path):
  config = tiny_config(tmp_path, num_classes=10)
  replicated = dry_run.analyse(config)
  with config.unlocked():
    config.mesh = (("fsdp", 4), ("model", 2))
  sharded = dry_run.analyse(config)
  # Independent count: the model's parameters, float32, all on one device when replicated.
  from vit_jax import model_configs  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = model_configs.model_from_run_config(config, 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                             train=False))
  total = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(shapes["params"]))
  assert replicated["params_bytes"] == total
  assert sharded["params_bytes"] < total
  assert replicated["opt_state_bytes"] >= total  # AdamW: two moments (+ a count).
  assert replicated["temp_bytes"] > 0 and replicated["peak_bytes"] > replicated["params_bytes"]
  assert replicated["flops_per_device"] > 0
  assert sharded["mesh"] == {"data": 1, "fsdp": 4, "model": 2}
  text = dry_run.format_report(replicated, config)
  for needle in ("params per device", "optimizer state per device", "activations/temp", "FLOPs",
                 "MFU omitted"):
    assert needle in text, text


def test_main_dry_run_prints_and_exits(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "vit_jax.main", "--dry_run", *TINY_FLAGS,
                         f"--workdir={tmp_path}/never", "--config.total_steps=10",
                         "--config.mesh=(('data',2),('fsdp',4))"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "peak memory per device" in proc.stdout and "FLOPs per step" in proc.stdout
  assert not (tmp_path / "never").exists()
