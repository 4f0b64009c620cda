"""One live run per workdir: `<workdir>/lock.json` names the run that holds it.

The holder writes its host, pid, start time and a random token, and refreshes the file's
modification time every `heartbeat` seconds from a daemon thread. A second run finds the
file and exits with one line naming the holder, unless the lock is stale:
  * same host: the holder's pid is not alive (a kill -9, a crash, a reboot);
  * another host (shared filesystem): the file was not refreshed for `timeout` seconds.
A stale lock is taken over with a warning. Multi-host runs take the lock from process 0
only and tell the other processes the outcome (`acquire_for_run`). The lock is removed at the
end of the run when it is still this run's.

Runs started together must not both win. On a local or shared POSIX filesystem the record is
written to a private file first and hard-linked to lock.json (`os.link` is atomic and fails
when the name exists), so a reader never sees a half-written lock; taking over a stale lock
happens under an flock of lock.json.takeover, and re-checks the record there, so of several
runs that find the same stale lock only one removes it. Object stores (gs://...) have neither:
there the record is written, then read back after a pause (best effort).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Optional

from vit_jax import exits
from vit_jax.run import termination

LOCK_FILE = "lock.json"
# A lock file that cannot be parsed is being written (object stores) or was left
# half-written by a crash; younger than this it counts as live.
UNREADABLE_GRACE_SECONDS = 10.0


class WorkdirLocked(exits.UserError):
  """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  try:  # A zombie (exited, not yet reaped) is not a live holder.
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
  except OSError:
    return True


class WorkdirLock:
  """The lock of one workdir (local path or any URI etils.epath writes)."""

  def __init__(self, workdir: str, *, timeout: float = 600.0, heartbeat: Optional[float] = None,
               warn: Callable[[str], None] = logging.warning):
    from etils import epath  # pylint: disable=g-import-not-at-top
    self.workdir = str(workdir)
    self.path = epath.Path(workdir) / LOCK_FILE
    self.timeout = float(timeout)
    self.heartbeat = heartbeat if heartbeat is not None else max(1.0, min(60.0, self.timeout / 4))
    self._warn = warn
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._forget_cleanup: Optional[Callable[[], None]] = None

  def _record(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:500]}

  def holder(self) -> Optional[dict]:
    """The lock file's record (with its age in seconds), or None when there is no lock."""
    try:
      age = time.time() - self.path.stat().mtime
    except OSError:  # No lock (or none this process can see).
      return None
    try:
      record = json.loads(self.path.read_text())
      if not isinstance(record, dict):
        raise ValueError("not a record")
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # Unparsable: live while young (being written), else stale.
      return {"host": "?", "pid": -1, "age": age, "unreadable": True}
    record["age"] = age
    return record

  def stale_reason(self, record: dict) -> Optional[str]:
    """Why `record`'s holder is gone, or None when it looks alive."""
    if record.get("unreadable"):
      if record["age"] <= UNREADABLE_GRACE_SECONDS:
        return None
      return f"it cannot be read and is {record['age']:.0f} s old"
    if record.get("host") == socket.gethostname():
      pid = int(record.get("pid", -1))
      if pid == os.getpid() and record.get("token") != self._token:
        return "it was left by an earlier run in this process"
      return None if pid > 0 and _pid_alive(pid) else f"pid {pid} is not running"
    if record.get("age", 0) > self.timeout:
      return (f"it was not refreshed for {record['age']:.0f} s (> lock timeout "
              f"{self.timeout:.0f} s)")
    return None

  def _create(self) -> bool:
    """Creates lock.json holding this run's record; False when the name exists."""
    data = json.dumps(self._record(), indent=1)
    if "://" not in self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
      target = os.fspath(self.path)
      private = f"{target}.{self._token}.tmp"
      with open(private, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      try:
        os.link(private, target)  # Atomic: the lock appears complete or not at all.
        return True
      except FileExistsError:
        return False
      except OSError as e:  # A filesystem without hard links: exclusive create, then write.
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
          raise
        return self._create_exclusive(target, data)
      finally:
        with contextlib.suppress(OSError):
          os.unlink(private)
    if self.path.exists():  # Object stores have no exclusive create: write, then read back.
      return False
    self.path.write_text(data)
    time.sleep(0.5)
    return self._owned()

  @staticmethod
  def _create_exclusive(target: str, data: str) -> bool:
    try:
      fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:  # Readers take the empty file for a young, live lock.
      f.write(data)
    return True

  @contextlib.contextmanager
  def _takeover_guard(self):
    """Serialises stale-lock takeovers of this workdir (flock; a no-op on object stores)."""
    if "://" in self.workdir:
      yield
      return
    import fcntl  # pylint: disable=g-import-not-at-top  # POSIX only.
    with open(os.fspath(self.path) + ".takeover", "a", encoding="utf-8") as guard:
      fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(guard.fileno(), fcntl.LOCK_UN)

  def _owned(self) -> bool:
    record = self.holder()
    return bool(record) and record.get("token") == self._token

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLocked naming the live holder."""
    for _ in range(5):
      if self._create():
        self._start_heartbeat()
        return
      record = self.holder()
      if record is None:
        continue  # Released in between: try again.
      if self.stale_reason(record) is None:
        raise self._locked(record)
      with self._takeover_guard():  # One run at a time re-checks and removes a stale lock.
        record = self.holder()
        if record is None:
          continue
        reason = self.stale_reason(record)
        if reason is None:  # Another run took it over first.
          raise self._locked(record)
        self._warn(f"Taking over the stale workdir lock of host {record.get('host')} pid "
                   f"{record.get('pid')} ({reason}).")
        with contextlib.suppress(FileNotFoundError):
          self.path.unlink()
        if self._create():
          self._start_heartbeat()
          return
    raise WorkdirLocked(f"could not take the lock {self.path}: other runs keep creating it.")

  def _locked(self, record: dict) -> WorkdirLocked:
    if record.get("unreadable"):
      return WorkdirLocked(
          f"workdir {self.workdir} is being locked by another run that is starting now ("
          f"{self.path} is being written). Wait for it to end, or use another --workdir.")
    return WorkdirLocked(
        f"workdir {self.workdir} is in use by another run (host {record.get('host')}, pid "
        f"{record.get('pid')}, started {record.get('started', '?')}). Wait for it to end, "
        f"use another --workdir, or delete {self.path} if that run is gone.")

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(self.heartbeat):
        try:
          if "://" in self.workdir:
            self.path.write_text(self.path.read_text())
          else:
            os.utime(os.fspath(self.path))
        except OSError:
          pass
    self._thread = threading.Thread(target=beat, name="vit_jax-workdir-lock", daemon=True)
    self._thread.start()
    self._forget_cleanup = termination.on_exit(self.release)  # A SIGTERM at start-up frees it.

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still this run's."""
    self._stop.set()
    if self._forget_cleanup is not None:
      self._forget_cleanup()
      self._forget_cleanup = None
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
    try:
      if self._owned():
        self.path.unlink()
    except OSError:
      pass


def acquire_for_run(workdir: str, timeout: float,
                    warn: Callable[[str], None] = logging.warning) -> Optional[WorkdirLock]:
  """Process 0 takes the lock; with several processes every process learns the outcome and
  raises the same kind of error. Returns the lock on process 0, None elsewhere."""
  import jax  # pylint: disable=g-import-not-at-top
  lock, error = None, None
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir, timeout=timeout, warn=warn)
    try:
      lock.acquire()
    except WorkdirLocked as e:
      error, lock = e, None
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      raise WorkdirLocked(f"workdir {workdir} is in use by another run (process 0 could not "
                          "take its lock; its log says by whom).")
  if error is not None:
    raise error
  return lock
