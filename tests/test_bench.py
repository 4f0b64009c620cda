"""Smoke test of the benchmark suite: every case runs at its smallest settings and reports.

Figures are not checked (they are benchmarks, not tests); this keeps the scripts from rotting.
"""
import json
import subprocess
import sys

from test_train import REPO  # pylint: disable=g-bad-import-order


def test_run_suite_quick_writes_every_case(tmp_path):
  out = tmp_path / "suite.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "bench" / "run_suite.py"), "--quick", "--out", str(out),
       "--only", "train_step,checkpoint"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  suite = json.loads(out.read_text())
  assert suite["machine"]["cores"] >= 1 and suite["machine"]["jax"]
  by_case = {c["case"]: c for c in suite["cases"]}
  assert set(by_case) == {"train_step", "checkpoint"}
  step = by_case["train_step"]["result"]
  assert step  # train_step.py's own dict, with its timings
  ckpt = by_case["checkpoint"]["result"]
  assert ckpt["save_total_s"] >= ckpt["save_blocking_s"] > 0 and ckpt["restore_s"] > 0
  assert ckpt["disk_bytes"] > 0
