"""A peer process that dies inside a checkpoint save or an evaluation does not leave the
others blocked: the survivor's watchdog ends it with 76 within the phase's bound, stacks in
its log; a peer whose death resets the connections ends the survivor with its error status at
once (not JAX's abort after the heartbeat timeout).

Two real `vit_jax.main` processes on 127.0.0.1 (gloo CPU collectives), started directly so
no launcher stops the survivor. A host that loses power or its network sends no connection
reset: process 1 stops itself with SIGSTOP to play it; SIGKILL plays a crash.
"""
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY_FLAGS, gloo_available  # pylint: disable=g-bad-import-order

from vit_jax import exits

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="SIGSTOP, process groups")]

BOUND = 6.0  # watchdog.save_seconds = watchdog.eval_seconds here
PEER_WAIT = 4.0  # process 0 waits min(watchdog.min_seconds, 10 s) for its peers' reports

DIES_MAIN = r"""
import os, signal
from vit_jax.run import termination
termination.install()
import jax
from vit_jax import main
from vit_jax.run import run_state
from vit_jax.evaluators import runner
phase, how = os.environ["DIE_PHASE"], getattr(signal, os.environ["DIE_SIGNAL"])

def dies(name):
  print(f"PHASE {name} process {jax.process_index()}", flush=True)
  if jax.process_index() == 1:
    os.kill(os.getpid(), how)

original_save = run_state.Checkpointer.save
def save(self, step, *args, **kwargs):
  if phase == "save" and step == 4:
    dies("save")
  return original_save(self, step, *args, **kwargs)
run_state.Checkpointer.save = save
original_run = runner.Runner.run
def run(self, *args, **kwargs):
  if phase == "eval":
    dies("eval")
  return original_run(self, *args, **kwargs)
runner.Runner.run = run
main.run()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(tmp_path, data_dir, phase, how):
  if not gloo_available():
    pytest.skip("this jaxlib has no gloo CPU collectives")
  (tmp_path / "dies_main.py").write_text(DIES_MAIN)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_", "XLA_FLAGS", "OMPI_", "TPU_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONPATH=str(REPO),
             DIE_PHASE=phase, DIE_SIGNAL=how)
  port = _free_port()
  workdir = tmp_path / "run"
  args = TINY_FLAGS + [
      f"--workdir={workdir}", f"--config.tfds_data_dir={data_dir}", "--config.total_steps=40",
      "--config.checkpoint_every=4", "--config.eval_every=4", "--config.log_every=1",
      "--config.watchdog.factor=3", f"--config.watchdog.min_seconds={PEER_WAIT}",
      "--config.watchdog.first_step_seconds=120", f"--config.watchdog.save_seconds={BOUND}",
      f"--config.watchdog.eval_seconds={BOUND}", f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2"]
  peer = subprocess.Popen([sys.executable, str(tmp_path / "dies_main.py"), *args,
                           "--process_id=1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  survivor = subprocess.Popen([sys.executable, str(tmp_path / "dies_main.py"), *args,
                               "--process_id=0"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  lines, entered = [], None
  try:
    for line in survivor.stdout:
      lines.append(line)
      if line.startswith(f"PHASE {phase} process 0"):
        entered = time.monotonic()
        break
    out = "".join(lines) + survivor.communicate(timeout=200)[0]
    ended = time.monotonic()
  finally:
    for proc in (peer, survivor):
      if proc.poll() is None:
        proc.kill()
      proc.wait()
  assert entered is not None, "".join(lines)[-3000:]
  return survivor.returncode, ended - entered, out, workdir


@pytest.mark.parametrize("phase", ["save", "eval"])
def test_a_peer_lost_during_a_save_or_an_evaluation_ends_the_survivor_with_76(
    tmp_path, data_dir, phase):
  status, seconds, out, workdir = _two_processes(tmp_path, data_dir, phase, "SIGSTOP")
  assert status == exits.HUNG, out[-3000:]
  name = "checkpoint save" if phase == "save" else "evaluation"
  assert f"hang watchdog: the {name} has not finished for" in out
  assert BOUND <= seconds < BOUND + PEER_WAIT + 15, seconds
  log = (workdir / "train.log").read_text()
  assert "most recent call first" in log  # every thread's stack, in the survivor's log
  print(f"{phase}: survivor exited 76 {seconds:.1f} s after entering the {name}")


def test_a_peer_that_crashes_during_an_evaluation_ends_the_survivor_with_its_error(
    tmp_path, data_dir):
  status, seconds, out, _ = _two_processes(tmp_path, data_dir, "eval", "SIGKILL")
  assert status == exits.ERROR, out[-3000:]
  assert seconds < 30, seconds  # not after JAX's 100 s heartbeat timeout
  assert "error:" in out and "Fatal Python error" not in out
  print(f"crash: survivor exited {status} {seconds:.1f} s after entering the evaluation")
