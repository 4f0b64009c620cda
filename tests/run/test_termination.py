"""SIGTERM at any moment of `python -m vit_jax.main` ends the run with 75 (never the default
143): during imports, during the train step's compilation (the main thread inside XLA), during
a checkpoint save and during an evaluation (a checkpoint at the next step boundary)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY_FLAGS, latest_step  # pylint: disable=g-bad-import-order

from vit_jax import exits
from vit_jax.run import workdir_lock

pytestmark = pytest.mark.slow  # real `vit_jax.main` processes

# Runs vit_jax.main with a marker line printed when the named phase starts (and that phase made
# 2 s slower for 'save' / 'eval', so the signal lands inside it).
MARKED_MAIN = r"""
import os, sys, time
from vit_jax.run import termination
termination.install()
from vit_jax import main
from vit_jax.run import run_state
from vit_jax.evaluators import runner
from vit_jax.training import train_step
phase = os.environ["MARK_PHASE"]

def marked(original, name, slow):
  def wrapper(*args, **kwargs):
    if name == phase:
      print(f"PHASE {name}", flush=True)
      if slow:
        time.sleep(2.0)
    return original(*args, **kwargs)
  return wrapper

train_step.compile_train_step = marked(train_step.compile_train_step, "compile", False)
original_save = run_state.Checkpointer.save
def save(self, step, *args, **kwargs):
  if phase == "save" and step == 4:
    print("PHASE save", flush=True)
    time.sleep(2.0)
  return original_save(self, step, *args, **kwargs)
run_state.Checkpointer.save = save
runner.Runner.run = marked(runner.Runner.run, "eval", True)
main.run()
"""


def _start(tmp_path, data_dir, phase, *flags):
  (tmp_path / "marked_main.py").write_text(MARKED_MAIN)
  env = dict(os.environ, MARK_PHASE=phase, PYTHONPATH=str(REPO))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  args = TINY_FLAGS + [f"--workdir={tmp_path / 'run'}", f"--config.tfds_data_dir={data_dir}",
                       "--config.total_steps=100000", "--config.log_every=1", *flags]
  return subprocess.Popen([sys.executable, str(tmp_path / "marked_main.py"), *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _term_at(proc, marker: str) -> str:
  """Sends SIGTERM when `marker` starts a line of the output; returns the whole output."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(marker):
      proc.send_signal(signal.SIGTERM)
      break
  else:
    pytest.fail("ended before " + marker + ":\n" + "".join(lines[-40:]))
  rest, _ = proc.communicate(timeout=120)
  return "".join(lines) + rest


def test_sigterm_during_imports_exits_75_at_once(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.Popen([sys.executable, "-m", "vit_jax.main", *TINY_FLAGS,
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(0.3)  # Python is importing absl / ml_collections / vit_jax.
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == exits.PREEMPTED, err[-2000:]
  assert "Preempted (SIGTERM) during start-up, before the first train step" in err
  assert "nothing new to save" in err and "Traceback" not in err


def test_sigterm_during_compilation_exits_75_and_frees_the_lock(tmp_path, data_dir):
  proc = _start(tmp_path, data_dir, "compile")
  out = _term_at(proc, "PHASE compile")
  assert proc.returncode == exits.PREEMPTED, out[-3000:]
  assert "during the train step's compilation, before the first train step" in out
  assert not (tmp_path / "run" / workdir_lock.LOCK_FILE).exists()  # A restart starts at once.
  assert latest_step(tmp_path / "run") is None  # Nothing trained, nothing saved.
  log = (tmp_path / "run" / "train.log").read_text()
  assert "Preempted (SIGTERM) during the train step's compilation" in log


@pytest.mark.parametrize("phase", ["save", "eval"])
def test_sigterm_during_a_save_or_an_evaluation_saves_at_the_next_step(tmp_path, data_dir, phase):
  proc = _start(tmp_path, data_dir, phase, "--config.checkpoint_every=4",
                "--config.eval_every=4")
  out = _term_at(proc, f"PHASE {phase}")
  assert proc.returncode == exits.PREEMPTED, out[-3000:]
  assert "SIGTERM: saving a checkpoint at step 5" in out
  assert "Preempted (SIGTERM) at step 5: checkpoint saved" in out
  assert latest_step(tmp_path / "run") == 5
  assert not (tmp_path / "run" / workdir_lock.LOCK_FILE).exists()


FORK_CHILD = r"""
import os, signal, sys, time
from vit_jax.run import termination
termination.install()
pid = os.fork()
if pid == 0:  # A forked input worker that its parent stops with SIGTERM.
  time.sleep(30)
  os._exit(0)
time.sleep(0.5)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
time.sleep(0.5)  # Time for the parent's watcher to (wrongly) act on the child's signal.
print("child", os.waitstatus_to_exitcode(status), "parent requested", termination.requested())
"""


def test_a_forked_workers_sigterm_is_not_the_parents(tmp_path):
  script = tmp_path / "fork_child.py"
  script.write_text(FORK_CHILD)
  proc = subprocess.run([sys.executable, str(script)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "child -15 parent requested False" in proc.stdout
