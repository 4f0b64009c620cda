"""A trainer you can leave running: exit statuses, one-line errors, the run log, the workdir
lock, the hang watchdog, pre-flight checks, honest resume, disk full, and the
quickstart-style export read back by the inference CLI.

The command-line cases run real `python -m vit_jax.main` processes on the tiny run of
test_resume.TINY_FLAGS (one layer, width 16, 8x8 digits); the watchdog case runs two
processes through launch/local.sh with a hang injected into process 1's input pipeline.
"""
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import (  # pylint: disable=g-bad-import-order
  REPO,
  TINY_FLAGS,  # pylint: disable=g-bad-import-order
  latest_step,
  tiny_config,
)

from vit_jax import exits
from vit_jax.run import loop, run_state, watchdog, workdir_lock

pytestmark = pytest.mark.slow  # real `vit_jax.main` processes, some of several processes


def _main(workdir, data_dir, *flags, timeout=240):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  args = TINY_FLAGS + [f"--workdir={workdir}", f"--config.tfds_data_dir={data_dir}", *flags]
  return subprocess.run([sys.executable, "-m", "vit_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc) -> str:
  """The error line of a failed run; fails unless it is one `error:` line with no traceback."""
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


# --- exit statuses, the log file, honest resume ---------------------------------------------

def test_finish_rerun_and_config_change(tmp_path, data_dir):
  workdir = tmp_path / "run"
  done = _main(workdir, data_dir, "--config.total_steps=4", "--config.checkpoint_every=4")
  assert done.returncode == exits.FINISHED, done.stderr[-3000:]
  assert "Done: step 4; eval accuracy" in done.stdout
  log = (workdir / "train.log").read_text()
  assert "Training from scratch." in log and "Done: step 4" in log and "\r" not in log
  recorded = json.loads((workdir / "results.json").read_text())["evals"]
  assert [e["step"] for e in recorded] == [4]

  # A finished run asked to run again reports its evaluation, trains nothing.
  again = _main(workdir, data_dir, "--config.total_steps=4", "--config.checkpoint_every=4")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already finished at step 4" in again.stdout
  accuracy = f"{recorded[0]['accuracy']:.2%}"
  assert f"Done: step 4; eval accuracy {accuracy}" in again.stdout

  # A changed learning rate is refused with the difference, on one line, nothing rewritten.
  stored = (workdir / "config.json").read_text()
  changed = _main(workdir, data_dir, "--config.total_steps=6", "--config.base_lr=0.5")
  assert changed.returncode == exits.BAD_INPUT
  line = _one_line_error(changed)
  assert "base_lr: 0.003 -> 0.5" in line and "allow_config_change" in line
  assert (workdir / "config.json").read_text() == stored
  assert "Traceback" in (workdir / "train.log").read_text()  # The trace went to the log.

  # Allowed: it continues (total_steps may change anyway) and the log records the change.
  allowed = _main(workdir, data_dir, "--config.total_steps=6", "--config.base_lr=0.5",
                  "--config.allow_config_change=True")
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert "Done: step 6" in allowed.stdout
  assert "Config changed on resume (allow_config_change): base_lr: 0.003 -> 0.5" in (
      workdir / "train.log").read_text()


def test_nan_stop_exits_3(tmp_path, data_dir):
  proc = _main(tmp_path / "nan", data_dir, "--config.base_lr=1e30", "--config.grad_norm_clip=0",
               "--config.warmup_steps=0", "--config.optimizer=sgd", "--config.log_every=1",
               "--config.total_steps=6")
  assert proc.returncode == exits.NAN_STOP == 3, proc.stderr[-3000:]
  assert "last good checkpoint is kept" in _one_line_error(proc)


def test_exit_statuses_of_exceptions():
  assert exits.status_for(FloatingPointError("x")) == exits.NAN_STOP
  assert exits.status_for(exits.UserError("x")) == exits.BAD_INPUT
  assert exits.status_for(RuntimeError("x")) == exits.ERROR
  full = OSError(errno.ENOSPC, "No space left on device")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = full
  assert exits.is_disk_full(wrapped) and exits.one_line(wrapped).startswith("error: disk full")
  assert exits.one_line(ValueError("a\n  b\n")) == "error: a | b"
  assert len(set(exits.RETRYABLE + (exits.FINISHED, exits.ERROR, exits.BAD_INPUT,
                                    exits.NAN_STOP))) == 6


# --- pre-flight checks ------------------------------------------------------------------------

def test_preflight_class_count_is_one_line_before_compiling(tmp_path, data_dir):
  start = time.monotonic()
  proc = _main(tmp_path / "pf", data_dir, "--config.num_classes=100")
  assert proc.returncode == exits.BAD_INPUT
  line = _one_line_error(proc)
  assert "num_classes=100" in line and "has 10 classes" in line
  assert "--config.num_classes=10" in line
  assert not (tmp_path / "pf" / "checkpoints").exists()
  print(f"pre-flight failure after {time.monotonic() - start:.1f} s")


def test_unknown_dataset_suggests_the_closest_names(tmp_path, data_dir):
  proc = _main(tmp_path / "ds", data_dir, "--config.dataset=cifar1O")
  assert proc.returncode != 0
  line = _one_line_error(proc)
  assert "Did you mean 'cifar10'" in line and len(line) < 400


def test_a_missing_image_folder_is_named_as_a_folder(tmp_path, run_config):
  from vit_jax.datasets import sources  # pylint: disable=g-import-not-at-top
  config = run_config(dataset=str(tmp_path / "no_such_folder"), num_classes=None)
  with pytest.raises(ValueError, match="looks like a folder but does not exist"):
    sources.open_source(config, "train")


def test_bad_input_statuses():
  from absl import app  # pylint: disable=g-import-not-at-top
  assert exits.status_for(ValueError("bad config")) == exits.BAD_INPUT
  assert exits.status_for(FileNotFoundError("no checkpoint")) == exits.BAD_INPUT
  assert exits.status_for(app.UsageError("--workdir is required")) == exits.BAD_INPUT


def _folder(root, classes_by_split):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, classes in classes_by_split.items():
    for c in classes:
      (root / split / c).mkdir(parents=True)
      for k in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(root / split / c / f"{k}.png")
  return str(root)


def test_preflight_on_image_folders(tmp_path, run_config):
  extra = _folder(tmp_path / "extra", {"train": ["a", "b"], "test": ["a", "b", "c"]})
  with pytest.raises(ValueError, match=r"classes \['c'\] that are not in"):
    loop.train_and_evaluate(run_config(dataset=extra, num_classes=None),
                             str(tmp_path / "w1"))
  fewer = _folder(tmp_path / "fewer", {"train": ["a", "b", "c"], "test": ["a", "b", "c"]})
  with pytest.raises(exits.UserError, match="has 3 classes"):
    loop.train_and_evaluate(run_config(dataset=fewer, num_classes=10),
                             str(tmp_path / "w2"))
  broken = _folder(tmp_path / "broken", {"train": ["a"], "test": ["a"]})
  for png in (tmp_path / "broken" / "test" / "a").glob("*.png"):
    png.write_bytes(png.read_bytes()[:40])  # Header intact enough to list, data cut.
  with pytest.raises(ValueError, match="unreadable|cannot decode"):
    loop.train_and_evaluate(run_config(dataset=broken, num_classes=None),
                             str(tmp_path / "w3"))
  assert not (tmp_path / "w3" / "checkpoints").exists()


# --- workdir lock -----------------------------------------------------------------------------

def _holder_record(path, host, pid):
  path.mkdir(parents=True, exist_ok=True)
  (path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"host": host, "pid": pid, "token": "other", "started": "earlier"}))


def test_lock_live_holder_refuses_dead_holder_is_taken_over(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _holder_record(tmp_path, socket.gethostname(), sleeper.pid)
    with pytest.raises(workdir_lock.WorkdirLocked) as info:
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    assert f"pid {sleeper.pid}" in str(info.value) and socket.gethostname() in str(info.value)
  finally:
    sleeper.kill()
    sleeper.wait()
  warnings = []
  lock = workdir_lock.WorkdirLock(str(tmp_path), warn=warnings.append)
  lock.acquire()  # The holder is dead now.
  assert warnings and f"pid {sleeper.pid} is not running" in warnings[0]
  assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / "lock.json").exists()


def test_lock_of_another_host_goes_stale_after_the_timeout(tmp_path):
  _holder_record(tmp_path, "some-other-host", 1)
  with pytest.raises(workdir_lock.WorkdirLocked, match="some-other-host"):
    workdir_lock.WorkdirLock(str(tmp_path), timeout=60).acquire()
  old = time.time() - 120
  os.utime(tmp_path / "lock.json", (old, old))  # Not refreshed for 2 minutes.
  warnings = []
  lock = workdir_lock.WorkdirLock(str(tmp_path), timeout=60, warn=warnings.append)
  lock.acquire()
  assert "not refreshed for 12" in warnings[0] and "> lock timeout 60 s" in warnings[0]
  lock.release()


def test_lock_heartbeat_refreshes_the_file(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), timeout=60, heartbeat=0.1)
  lock.acquire()
  try:
    old = time.time() - 100
    os.utime(tmp_path / "lock.json", (old, old))
    time.sleep(0.5)
    assert time.time() - os.stat(tmp_path / "lock.json").st_mtime < 5
  finally:
    lock.release()


def test_second_run_on_a_held_workdir_exits_at_once(tmp_path, data_dir):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _holder_record(tmp_path / "held", socket.gethostname(), sleeper.pid)
    proc = _main(tmp_path / "held", data_dir)
  finally:
    sleeper.kill()
    sleeper.wait()
  assert proc.returncode == exits.BAD_INPUT
  line = _one_line_error(proc)
  assert f"in use by another run (host {socket.gethostname()}, pid {sleeper.pid}" in line
  assert not (tmp_path / "held" / "checkpoints").exists()


# --- hang watchdog ----------------------------------------------------------------------------

class _Step:
  """A stand-in for a step's output array whose readiness the test controls."""

  def __init__(self, ready=True):
    self.ready = ready

  def is_ready(self):
    return self.ready


@contextlib.contextmanager
def _watchdog(**options):
  """(watchdog, list of the hang messages it would have exited with); closed afterwards."""
  fired = []
  wd = watchdog.StepWatchdog(on_hang=fired.append, **options)
  try:
    yield wd, fired
  finally:
    wd.close()


def test_watchdog_fires_on_a_stuck_step_not_during_phases():
  with _watchdog(factor=3, min_seconds=0.3, first_step_seconds=5, poll_seconds=0.02) as (wd, fired):
    for _ in range(5):  # Steady steps of ~20 ms.
      wd.step_dispatched(_Step())
      time.sleep(0.02)
    time.sleep(0.1)
    assert wd.steps_finished == 5 and not fired
    assert wd.limit() == pytest.approx(0.3)  # The floor wins over 3 x ~20 ms.
    with wd.phase("evaluation", floor=2.0):  # A long evaluation within its bound: no hang.
      time.sleep(0.6)
    assert not fired
    stuck = _Step(ready=False)
    wd.step_dispatched(stuck)
    time.sleep(0.8)
    assert len(fired) == 1 and "no train step finished for" in fired[0]


def test_watchdog_bounds_saves_and_evaluations_by_their_own_durations():
  with _watchdog(factor=3, min_seconds=0.2, first_step_seconds=5, poll_seconds=0.02) as (wd, fired):
    assert wd.phase_limit("checkpoint save", 0.3) == 0.3  # Nothing measured: the floor.
    with wd.phase("checkpoint save", floor=0.3):
      time.sleep(0.25)
    with wd.phase("checkpoint save", floor=0.3):
      time.sleep(0.15)
    # max(floor 0.3, 3 x median(0.25, 0.15) = 0.6): the measured durations scale the bound.
    assert wd.phase_limit("checkpoint save", 0.3) == pytest.approx(0.6, abs=0.06)
    assert wd.phase_limit("evaluation", 0.4) == 0.4  # Each phase has its own history.
    assert not fired
    with wd.phase("evaluation", floor=0.4):  # A peer died inside: blocked past the bound.
      time.sleep(0.8)
    assert len(fired) == 1 and "the evaluation has not finished for" in fired[0]
    assert "limit 0 s" not in fired[0] and "A peer process may have died" in fired[0]


def test_watchdog_floor_applies_when_the_first_steps_finish_in_one_poll():
  # Fast steps all seen finished in one poll leave no step time: the floor must still hold
  # (in CI the first_step_seconds bound applied instead and a hung run waited 120 s).
  with _watchdog(factor=3, min_seconds=0.3, first_step_seconds=60, poll_seconds=0.2) as (wd, fired):
    for _ in range(4):
      wd.step_dispatched(_Step())  # Ready at once: all four are collected by one poll.
    wd.step_dispatched(_Step(ready=False))
    time.sleep(1.2)
    assert wd.steps_finished == 4 and len(fired) == 1


def test_watchdog_off_with_factor_zero():
  options = dict(factor=0, min_seconds=0, first_step_seconds=0.01, poll_seconds=0.01)
  with _watchdog(**options) as (wd, fired):
    wd.step_dispatched(_Step(ready=False))
    time.sleep(0.1)
  assert not fired


HANG_MAIN = """
import os, sys, time
from vit_jax.datasets import pipeline
from vit_jax import main

HANG_AT = 6
original = pipeline.create_train_iterator


class Hangs:
    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        if self.count == HANG_AT:
            print("injected hang", flush=True)
            time.sleep(600)
        return next(self.inner)


def create(config, **kw):
    it = original(config, **kw)
    import jax
    return Hangs(it) if jax.process_index() == 1 else it


pipeline.create_train_iterator = create
main.run()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="local.sh process groups")
def test_watchdog_ends_a_hung_two_process_run_with_76(tmp_path, data_dir):
  from helpers import gloo_available  # pylint: disable=g-import-not-at-top
  if not gloo_available():
    pytest.skip("this jaxlib has no gloo CPU collectives")
  mods = tmp_path / "mods"
  mods.mkdir()
  (mods / "hang_main.py").write_text(HANG_MAIN)
  workdir = tmp_path / "hung"
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_", "XLA_FLAGS", "OMPI_", "TPU_"))}
  env.update(VIT_JAX_LAUNCH_PYTHON=sys.executable, PYTHONPATH=str(mods))
  cmd = [str(REPO / "launch" / "local.sh"), "--num_processes", "2", "--devices_per_process", "1",
         # kill_grace: both watchdogs fire at about the same time; under load the hung
         # process may report a few seconds after its peer's exit 76 made local.sh stop it.
         "--module", "hang_main", "--timeout", "200", "--kill_grace", "20", "--quiet", "--",
         *TINY_FLAGS, f"--workdir={workdir}", f"--config.tfds_data_dir={data_dir}",
         "--config.total_steps=1000", "--config.checkpoint_every=0", "--config.log_every=1000",
         "--config.watchdog.factor=3", "--config.watchdog.min_seconds=4",
         "--config.watchdog.first_step_seconds=120"]
  start = time.monotonic()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=260)
  elapsed = time.monotonic() - start
  logs = {p.name: p.read_text() for p in (workdir / "launch_logs").glob("*.log")}
  assert proc.returncode == exits.HUNG == 76, proc.stderr[-2000:] + str(logs)[-3000:]
  hung = logs["process_1.log"]
  assert "injected hang" in hung and "hang watchdog: no train step finished" in hung
  assert "most recent call first" in hung  # faulthandler's stacks of every thread
  assert "time.sleep(600)" in hung or "__next__" in hung
  assert "most recent call first" in (workdir / "train.process1.log").read_text()
  print(f"hung 2-process run ended by the watchdog after {elapsed:.0f} s")


# --- broken checkpoints, disk full ------------------------------------------------------------

def test_broken_latest_checkpoint_falls_back_to_the_previous(tmp_path, run_config):
  workdir = tmp_path / "broken"
  loop.train_and_evaluate(run_config(total_steps=8, checkpoint_every=4),
                           str(workdir))
  ckpt_dir = workdir / "checkpoints" / "8"
  victims = [p for p in (ckpt_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 0]
  for path in victims:  # Truncate the array data of the latest checkpoint.
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
  warnings = []
  config = run_config(total_steps=10, checkpoint_every=4)
  ckpt = run_state.Checkpointer(str(workdir))
  try:
    setup = loop.train_state.setup_from_config(config, loop.sharding.mesh_for_config(config),
                                                10, 10)
    step, _, _ = ckpt.restore_latest(setup.abstract_state, warn=warnings.append)
  finally:
    ckpt.close()
  assert step == 4
  assert "step 8 could not be restored" in warnings[0]
  assert (workdir / "checkpoints_broken" / "8").is_dir()  # Kept, not deleted.
  result = loop.train_and_evaluate(config, str(workdir))
  assert result["step"] == 10


def test_disk_full_during_a_checkpoint_save_keeps_the_previous(tmp_path, run_config, monkeypatch):
  workdir = tmp_path / "full"
  loop.train_and_evaluate(run_config(total_steps=4, checkpoint_every=4), str(workdir))
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  def no_space(self, step, *args, **kwargs):
    (self.directory / f"{step}.orbax-checkpoint-tmp").mkdir(exist_ok=True)
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
  with pytest.raises(OSError) as info:
    loop.train_and_evaluate(run_config(total_steps=8, checkpoint_every=8),
                             str(workdir))
  assert info.value.errno == errno.ENOSPC
  message = exits.one_line(info.value)
  assert "disk full" in message and "step 4" in message and "intact" in message
  monkeypatch.undo()
  assert latest_step(workdir) == 4


def test_disk_full_in_orbaxs_async_save_thread_names_the_last_committed(tmp_path, run_config,
                                                                        monkeypatch):
  """The step-8 save fails where the bytes are written: in Orbax's background thread, after
  save() returned. The next save / wait raises the one-line disk-full error naming step 4,
  which restores, and the rerun resumes from it."""
  import threading  # pylint: disable=g-import-not-at-top

  from orbax.checkpoint._src.checkpointers import async_checkpointer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "full_async"
  original = async_checkpointer._background_wait_for_commit_futures  # pylint: disable=protected-access
  failed_in = []

  def no_space(directory, commit_futures, *args, **kwargs):
    if epath_name(directory) == "8":
      failed_in.append(threading.current_thread().name)
      # On a full disk the writes end (failing) before the error reaches this thread; waiting
      # for them keeps late writes out of the folder the rerun's tmp cleanup is deleting.
      for pending in commit_futures:
        pending.result()
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(directory, commit_futures, *args, **kwargs)
  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", no_space)
  with pytest.raises(OSError) as info:
    loop.train_and_evaluate(run_config(total_steps=12, checkpoint_every=4), str(workdir))
  assert failed_in == ["async_save"]  # Orbax's background save thread, not the caller's.
  message = exits.one_line(info.value)
  assert info.value.errno == errno.ENOSPC
  assert "disk full" in message and "last committed checkpoint (step 4) is intact" in message
  monkeypatch.undo()
  assert latest_step(workdir) == 4
  result = loop.train_and_evaluate(run_config(total_steps=12, checkpoint_every=4), str(workdir))
  assert result["step"] == 12


def epath_name(directory) -> str:
  """The step folder's name of an Orbax save directory (`8.orbax-checkpoint-tmp-...`)."""
  return os.path.basename(str(directory).rstrip("/")).split(".")[0]


def test_disk_full_during_export_keeps_the_previous_file(tmp_path, trained_workdir, monkeypatch):
  from vit_jax.checkpoint import files  # pylint: disable=g-import-not-at-top
  from vit_jax.export_formats import writers  # pylint: disable=g-import-not-at-top
  workdir = trained_workdir  # read only: the export goes to tmp_path
  out = tmp_path / "model.npz"
  writers.export(str(workdir), str(out))
  before = out.read_bytes()

  def half_then_full(fileobj, flat):
    fileobj.write(b"PK" + b"\0" * 100)
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(files, "_write_npz", half_then_full)
  with pytest.raises(OSError, match="disk full"):
    writers.export(str(workdir), str(out), overwrite=True)
  assert out.read_bytes() == before
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- quickstart-style model: export, then the inference CLI ---------------------------------

def test_modified_architecture_through_export_and_inference(tmp_path, run_config):
  from vit_jax import inference  # pylint: disable=g-import-not-at-top
  from vit_jax.datasets import digits  # pylint: disable=g-import-not-at-top
  from vit_jax.export_formats import writers  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "qs"
  loop.train_and_evaluate(run_config(total_steps=30, checkpoint_every=30,
                                       base_lr=0.01), str(workdir))
  out = tmp_path / "model.npz"
  writers.export(str(workdir), str(out))
  arch = json.loads((tmp_path / "model.json").read_text())
  assert arch["model"]["hidden_size"] == 16 and arch["model"]["transformer"]["num_layers"] == 1
  assert arch["class_names"] == [str(i) for i in range(10)] and arch["resolution"] == 8
  images = digits.write_pngs(str(tmp_path / "digits"), count=2)

  # The registered name alone cannot read it (the bug this fixes) ...
  assert inference.main(["--model", "ViT-Ti_16", "--checkpoint", str(out), images[0]]) != 0
  # ... the export and the workdir both can, and agree.
  outputs = []
  for flags in (["--checkpoint", str(out)], ["--workdir", str(workdir)]):
    proc = subprocess.run([sys.executable, "-m", "vit_jax.inference", *flags, "--top_k", "3",
                           *images], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs.append(proc.stdout)
  assert outputs[0] == outputs[1]
  lines = outputs[0].splitlines()
  assert lines[0] == images[0] and len(lines) == 8
  probs = [float(line.split()[0]) for line in lines[1:4]]
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
  assert all(line.split()[1] in [str(i) for i in range(10)] for line in lines[1:4])
  # Without the sidecar, one line that says what to pass.
  (tmp_path / "model.json").unlink()
  assert inference.main(["--checkpoint", str(out), images[0]]) == exits.BAD_INPUT


def test_export_lists_the_steps_that_exist(tmp_path, run_config):
  from vit_jax.export_formats import writers  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "steps"
  loop.train_and_evaluate(run_config(total_steps=4, checkpoint_every=2), str(workdir))
  with pytest.raises(exits.UserError, match=r"no checkpoint at step 3 .* \[2, 4\]"):
    writers.export(str(workdir), str(tmp_path / "m.npz"), step=3)


def test_sigterm_handler_is_not_left_installed(tmp_path, run_config):
  before = signal.getsignal(signal.SIGTERM)
  loop.train_and_evaluate(run_config(total_steps=2, checkpoint_every=2),
                           str(tmp_path / "sig"))
  assert signal.getsignal(signal.SIGTERM) == before
  assert not (tmp_path / "sig" / "lock.json").exists()  # Released at the end.


def test_failed_prepare_leaves_no_empty_folders(tmp_path):
  from vit_jax.datasets import sources  # pylint: disable=g-import-not-at-top
  data = tmp_path / "tfds"
  config = tiny_config(data, dataset="mnist", num_classes=None)  # Needs a download: offline here.
  with pytest.raises(FileNotFoundError, match="could not be prepared here"):
    sources.open_source(config, "train")
  leftovers = [p for p in data.rglob("*")] if data.exists() else []
  assert not leftovers, leftovers


@pytest.fixture(autouse=True)
def _clean_sources():
  from vit_jax.datasets import sources  # pylint: disable=g-import-not-at-top
  yield
  sources.clear_cache()


def test_log_file_location_for_remote_workdirs():
  from vit_jax.run import run_log  # pylint: disable=g-import-not-at-top
  assert run_log.log_path("/w/run", 0) == "/w/run/train.log"
  assert run_log.log_path("/w/run", 3) == "/w/run/train.process3.log"
  remote = run_log.log_path("gs://bucket/runs/b16", 0)
  assert remote.endswith(os.path.join("vit_jax_logs", "b16", "train.log")) and "://" not in remote

