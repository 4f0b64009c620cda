"""Hang watchdog: a run whose train steps stop finishing dumps every thread's stack and exits.

A hung collective (a dead host, a stuck NCCL/ICI link, a blocked input worker) otherwise
keeps a pod job alive and idle until its time limit. The train loop hands each step's
metrics (device arrays) to `StepWatchdog.step_dispatched`; a daemon thread polls which of
them are ready (`jax.Array.is_ready`, no blocking), so what is timed is the device finishing
the step, not Python dispatching it. When no step finishes for
`max(min_seconds, factor x median step time)` — `first_step_seconds` before the first step,
which includes compiling, and `min_seconds` until a step time is known — every thread's
Python stack is written (faulthandler) to stderr and to the run's log file, and the process
exits with exits.HUNG (76), so a launcher restarts
it from the last checkpoint. With several processes, process 0 (which hosts JAX's
coordination service: its exit aborts every other process at once) waits
min(min_seconds, PEER_REPORT_SECONDS) before exiting, so the other processes' watchdogs, which
fire at about the same time, get to write their stacks too: the hung host's are the ones
that say what hung.

Evaluations and checkpoint saves have no step rhythm; each runs inside `phase(name, floor)`,
which has a bound of its own: `max(floor, factor x median duration of that phase so far)`
(the floor alone the first time: it includes compiling the eval step). A peer host that dies
(powered off, partitioned: no connection reset) during a save or an evaluation otherwise
blocks the others inside the phase's collective or barrier for ever. The clock of the steps
restarts after a phase. The final save and the wait for the async writes are phases too.
factor=0 disables the watchdog.
"""
from __future__ import annotations

import collections
import contextlib
import faulthandler
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax

from vit_jax import exits
from vit_jax.run import run_log

PEER_REPORT_SECONDS = 10.0  # the longest process 0 waits for its peers' reports


class StepWatchdog:
  """See the module docstring. `on_hang` (tests) replaces the dump-and-exit."""

  def __init__(self, *, factor: float, min_seconds: float, first_step_seconds: float,
               poll_seconds: float = 0.5, on_hang: Optional[Callable[[str], None]] = None):
    self.factor = float(factor)
    self.min_seconds = float(min_seconds)
    self.first_step_seconds = float(first_step_seconds)
    self._poll = poll_seconds
    self._on_hang = on_hang or (lambda message: dump_and_exit(
        message, min(self.min_seconds, PEER_REPORT_SECONDS)))
    self._pending: collections.deque = collections.deque()
    self._times: collections.deque = collections.deque(maxlen=100)
    self._lock = threading.Lock()
    self._last = time.monotonic()
    self._finished = 0
    self._phase: Optional[tuple[str, float, float]] = None  # (name, limit, start)
    self._phase_times: dict[str, list[float]] = collections.defaultdict(list)
    self._stop = threading.Event()
    self._thread = None
    if self.factor > 0:
      self._thread = threading.Thread(target=self._watch, name="vit_jax-watchdog", daemon=True)
      self._thread.start()

  @property
  def steps_finished(self) -> int:
    return self._finished

  def limit(self) -> float:
    """Seconds without a finished step after which the run counts as hung."""
    if not self._finished:  # The first step compiles: its own bound.
      return self.first_step_seconds if self.first_step_seconds > 0 else float("inf")
    if not self._times:  # Steps finished, none timed yet (all seen in one poll): the floor.
      return self.min_seconds
    return max(self.min_seconds, self.factor * statistics.median(self._times))

  def step_dispatched(self, outputs: Any) -> None:
    """Registers one step's outputs (any pytree of jax.Arrays); it counts when they are ready."""
    if self._thread is None:
      return
    leaf = jax.tree.leaves(outputs)[0]
    with self._lock:
      self._pending.append(leaf)

  def phase_limit(self, name: str, floor: float) -> float:
    """Seconds phase `name` may run: max(floor, factor x its median duration so far)."""
    times = self._phase_times.get(name)
    if not times:
      return float(floor)
    return max(float(floor), self.factor * statistics.median(times))

  @contextlib.contextmanager
  def phase(self, name: str, floor: float) -> Iterator[None]:
    """Runs the body under phase `name`'s own bound (see the module docstring); phases do not
    nest. The step clock restarts after it."""
    if self._thread is None:
      yield
      return
    start = time.monotonic()
    with self._lock:
      if self._phase is not None:
        raise RuntimeError(f"watchdog phase {name!r} inside {self._phase[0]!r}")
      self._phase = (name, self.phase_limit(name, floor), start)
    try:
      yield
    finally:
      now = time.monotonic()
      with self._lock:
        self._phase = None
        self._phase_times[name].append(now - start)
        self._last = now

  def _collect(self, now: float) -> None:
    done = 0
    while self._pending and _ready(self._pending[0]):
      self._pending.popleft()
      done += 1
    if done:
      if self._finished and self._phase is None:  # The first step's time includes compiling.
        per_step = (now - self._last) / done
        self._times.extend([per_step] * min(done, self._times.maxlen))
      self._finished += done
      self._last = now

  def _watch(self) -> None:
    while not self._stop.wait(self._poll):
      now = time.monotonic()
      with self._lock:
        self._collect(now)
        phase = self._phase
        if phase is None:
          idle, limit = now - self._last, self.limit()
      if phase is not None:
        name, limit, start = phase
        if now - start > limit:
          self._on_hang(
              f"hang watchdog: the {name} has not finished for {now - start:.4g} s (limit "
              f"{limit:.4g} s = max(its floor, watchdog.factor={self.factor:g} x its median "
              f"duration so far); {self._finished} steps finished in this process). A peer "
              "process may have died inside it. Python stacks of every thread follow; exiting "
              "so the launcher restarts from the last checkpoint.")
          return
        continue
      if idle > limit:
        median = statistics.median(self._times) if self._times else float("nan")
        self._on_hang(
            f"hang watchdog: no train step finished for {idle:.0f} s (limit {limit:.0f} s = "
            f"max(watchdog.min_seconds={self.min_seconds:g}, watchdog.factor={self.factor:g} x "
            f"median step {median:.3g} s); {self._finished} steps finished in this process). "
            "Python stacks of every thread follow; exiting so the launcher restarts from the "
            "last checkpoint.")
        return

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)


def _ready(array) -> bool:
  try:
    return bool(array.is_ready())
  except AttributeError:  # Not a jax.Array (numpy): ready.
    return True
  except Exception:  # pylint: disable=broad-except  # Deleted/failed buffers: not a hang.
    return True


def dump_and_exit(message: str, peer_seconds: float = 0.0) -> None:
  """Writes `message` and all stacks to stderr and the run log, then exits with HUNG (process
  0 of several first waits `peer_seconds` for the other processes to report)."""
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
  log = run_log.active()
  if log is not None:
    log.write(message)
    log.file.flush()
    faulthandler.dump_traceback(file=log.file, all_threads=True)
    log.file.flush()
  if peer_seconds > 0 and jax.process_count() > 1 and jax.process_index() == 0:
    sys.stderr.write(f"hang watchdog: exiting in {peer_seconds:.0f} s, after the other "
                     "processes have written their stacks.\n")
    sys.stderr.flush()
    time.sleep(peer_seconds)
  os._exit(exits.HUNG)  # pylint: disable=protected-access  # Threads may be stuck in C++.
