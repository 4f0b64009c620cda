"""SIGTERM from the first moment of `python -m vit_jax.main` to its end: exit 75, never 143.

A launcher (GKE JobSet pod failure policy, SLURM requeue, launch/local.sh --max_restarts)
restarts a run that exits 75 and fails the job on anything else, so a SIGTERM must not reach
Python's default action (death by signal, status 143) at any point: not during imports,
dataset preparation or a compile that holds the main thread in C++ for minutes.

`install()` (main.py, first thing) sets a Python handler and routes the signal through
`signal.set_wakeup_fd` to a watcher thread, which runs even while the main thread is inside
XLA. Before this process has dispatched a train step there is nothing new to save: the
watcher writes one line, runs the registered cleanups (the workdir lock) and exits 75 at
once. From the first step on it only sets the flag the train loop polls at every step
boundary (run/loop.py: a checkpoint is saved, then exit 75). Multi-process runs: after
`jax.distributed.initialize` JAX's own preemption notifier takes SIGTERM, and every process
stops at the same step (loop.Preemption).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from vit_jax import exits

_REQUESTED = threading.Event()
_GUARD = threading.Lock()
_STATE = {"installed": False, "training": False, "exiting": False, "phase": "start-up"}
_CLEANUPS: list[Callable[[], None]] = []


def installed() -> bool:
  """True once install() ran in this process (the command line), False in library use."""
  return _STATE["installed"]


def requested() -> bool:
  """True once a SIGTERM arrived."""
  return _REQUESTED.is_set()


def set_phase(phase: str) -> None:
  """Names what the run is doing, for the line a SIGTERM before the first step prints."""
  _STATE["phase"] = phase


def on_exit(cleanup: Callable[[], None]) -> Callable[[], None]:
  """Registers `cleanup` to run when a SIGTERM ends the process early; returns a function
  that unregisters it."""
  _CLEANUPS.append(cleanup)

  def remove() -> None:
    if cleanup in _CLEANUPS:
      _CLEANUPS.remove(cleanup)
  return remove


def training_started() -> None:
  """Called before this process dispatches its first train step: from now on a SIGTERM is
  handled at the next step boundary (checkpoint, then 75). Never returns if a SIGTERM is
  already ending the process."""
  with _GUARD:
    if _STATE["exiting"]:
      threading.Event().wait()  # The watcher is exiting the process: do not start a step.
    _STATE["training"] = True


def install() -> None:
  """Takes SIGTERM for the rest of the process (main thread only; idempotent)."""
  if _STATE["installed"] or threading.current_thread() is not threading.main_thread():
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  signal.signal(signal.SIGTERM, lambda *_: _REQUESTED.set())
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_watch, args=(read_fd,), name="vit_jax-sigterm", daemon=True).start()
  os.register_at_fork(after_in_child=_forget_in_child)
  _STATE["installed"] = True


def _forget_in_child() -> None:
  """A forked worker (input pipeline) must not write its own SIGTERM into this process's
  pipe: it gets the default handler back."""
  signal.set_wakeup_fd(-1)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _STATE["installed"] = False


def _watch(read_fd: int) -> None:
  while True:
    try:
      data = os.read(read_fd, 64)
    except OSError:
      return
    if not data:
      return
    if signal.SIGTERM in data:  # The wakeup fd gets the number of every handled signal.
      _REQUESTED.set()
      _maybe_exit_now()


def _maybe_exit_now() -> None:
  with _GUARD:
    if _STATE["training"] or _STATE["exiting"]:
      return  # The loop saves at the next step boundary.
    _STATE["exiting"] = True
  message = (f"Preempted (SIGTERM) during {_STATE['phase']}, before the first train step of "
             "this process: nothing new to save. Rerun the same command to continue (exit "
             f"status {exits.PREEMPTED}).")
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  from vit_jax.run import run_log  # pylint: disable=g-import-not-at-top
  log = run_log.active()
  if log is not None:
    log.write(message)
    log.file.flush()
  for cleanup in list(_CLEANUPS):
    try:
      cleanup()
    except Exception:  # pylint: disable=broad-except  # Exiting anyway; the lock goes stale.
      pass
  os._exit(exits.PREEMPTED)  # pylint: disable=protected-access  # The main thread may be in XLA.

