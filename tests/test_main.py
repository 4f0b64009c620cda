"""Tests for vit_jax.main: cluster detection, multi-host flag errors, init timeout message."""
import os
import socket
import subprocess
import sys

import pytest
from helpers import REPO  # pylint: disable=g-bad-import-order

from vit_jax import main


@pytest.mark.parametrize("env,want", [
    ({}, None),
    ({"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, "SLURM"),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, None),
    ({"SLURM_NTASKS": "4"}, None),  # sbatch script itself, not an srun step.
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU pod slice"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
])
def test_detected_cluster(env, want):
  assert main.detected_cluster(env) == want


def _run_main(*flags, timeout=120):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  return subprocess.run([sys.executable, "-m", "vit_jax.main", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_config_key_fails_listing_valid_keys(tmp_path):
  proc = _run_main("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.bogus=1")
  assert proc.returncode != 0
  assert "Unknown config key(s) ['bogus']" in proc.stderr and "base_lr" in proc.stderr


def test_coordinator_needs_process_flags(tmp_path):
  proc = _run_main("--config=configs/quickstart.py", f"--workdir={tmp_path}",
                   "--coordinator_address=127.0.0.1:1")
  assert proc.returncode != 0 and "--num_processes and --process_id" in proc.stderr


def test_unreachable_coordinator_times_out_with_clear_message(tmp_path):
  with socket.socket() as s:  # A free port nobody listens on.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = _run_main("--config=configs/quickstart.py", f"--workdir={tmp_path}",
                   f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
                   "--distributed_init_timeout=3", timeout=90)
  assert proc.returncode != 0
  assert "Multi-host start-up failed" in proc.stderr, proc.stderr[-2000:]
  assert "reachable" in proc.stderr, proc.stderr[-2000:]


def test_summary_line_reports_accuracy_and_workdir():
  from vit_jax import main  # pylint: disable=g-import-not-at-top
  line = main.summary_line({"step": 600, "eval": {"accuracy": 288 / 297, "loss": 0.11784,
                                                  "examples": 297.0}}, "/w", 61.4)
  assert line == ("Done: step 600; eval accuracy 96.97% on 297 examples, eval loss 0.1178; "
                  "61 s in this process; checkpoints and TensorBoard logs in /w.")
