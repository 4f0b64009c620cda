"""The workdir lock under contention: of runs started together on one workdir exactly one holds
it, whether the workdir is fresh or holds a stale lock, and the others are refused naming the
holder (the `vit_jax.main` case exits 2 with one line)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY_FLAGS  # pylint: disable=g-bad-import-order

from vit_jax import exits
from vit_jax.run import workdir_lock

pytestmark = pytest.mark.slow  # 8 processes at once

CONTENDER = r"""
import json, os, sys, time
from vit_jax.run import workdir_lock
base, start, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
out = []
for r in range(rounds):
  t = start + r * 1.0
  while time.time() < t:  # Spin, not sleep: all contenders leave at the same instant.
    pass
  lock = workdir_lock.WorkdirLock(os.path.join(base, str(r)), warn=lambda m: None)
  try:
    lock.acquire()
    out.append("held")
    time.sleep(0.7)  # Hold past the others' attempts, then let the next round start clean.
    lock.release()
  except workdir_lock.WorkdirLocked as e:
    out.append("refused" if "in use by another run" in str(e) or "being locked" in str(e)
               else "other: " + str(e))
print(json.dumps(out))
"""

ROUNDS = 8


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_eight_contenders_one_holder_fresh_and_stale(tmp_path):
  """Even rounds start on an empty workdir, odd ones on a stale lock of a dead pid; each round
  has exactly one holder (the old O_EXCL-then-write lock let two win when a contender read
  the still-empty file as stale, and two takers of one stale lock could both win)."""
  dead = _dead_pid()
  for r in range(1, ROUNDS, 2):
    (tmp_path / str(r)).mkdir()
    (tmp_path / str(r) / workdir_lock.LOCK_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead, "token": "gone", "started": "earlier"}))
  script = tmp_path / "contender.py"
  script.write_text(CONTENDER)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  start = time.time() + 8  # Every contender has imported by then, even on 2 loaded cores.
  procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(start),
                             str(ROUNDS)], env=env, stdout=subprocess.PIPE, text=True)
           for _ in range(8)]
  results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
  for r in range(ROUNDS):
    outcomes = [res[r] for res in results]
    assert outcomes.count("held") == 1, (r, outcomes)
    assert outcomes.count("refused") == 7, (r, outcomes)
    assert not (tmp_path / str(r) / workdir_lock.LOCK_FILE).exists()  # released at the end
    leftovers = [p.name for p in (tmp_path / str(r)).iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_an_unreadable_lock_is_live_while_young_and_stale_when_old(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text("")  # A run between create and write.
  with pytest.raises(workdir_lock.WorkdirLocked, match="being locked by another run"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - 2 * workdir_lock.UNREADABLE_GRACE_SECONDS
  os.utime(tmp_path / workdir_lock.LOCK_FILE, (old, old))
  warnings = []
  lock = workdir_lock.WorkdirLock(str(tmp_path), warn=warnings.append)
  lock.acquire()
  assert "cannot be read" in warnings[0]
  lock.release()


def test_eight_runs_started_together_one_trains_the_rest_exit_2(tmp_path, data_dir):
  workdir = tmp_path / "shared"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  args = TINY_FLAGS + [f"--workdir={workdir}", f"--config.tfds_data_dir={data_dir}",
                       "--config.total_steps=30", "--config.checkpoint_every=0"]
  procs = [subprocess.Popen([sys.executable, "-m", "vit_jax.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(8)]
  outs = [p.communicate(timeout=600) for p in procs]
  statuses = [p.returncode for p in procs]
  assert sorted(statuses) == [exits.FINISHED] + [exits.BAD_INPUT] * 7, (
      statuses, [err[-1500:] for _, err in outs])
  winner = procs[statuses.index(exits.FINISHED)]
  assert "Done: step 30" in outs[statuses.index(exits.FINISHED)][0]
  for proc, (_, err) in zip(procs, outs):
    if proc is winner:
      continue
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"in use by another run (host {socket.gethostname()}, pid {winner.pid}" in errors[0]
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
