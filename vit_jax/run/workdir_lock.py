"""One live run per workdir: `<workdir>/lock.json` names the run that holds it.

The holder writes its host, pid, start time and a random token, and refreshes the file's
modification time every `heartbeat` seconds from a daemon thread. A second run finds the
file and exits with one line naming the holder, unless the lock is stale:
  * same host: the holder's pid is not alive (a kill -9, a crash, a reboot);
  * another host (shared filesystem): the file was not refreshed for `timeout` seconds.
A stale lock is taken over with a warning. Multi-host runs take the lock from process 0
only and tell the other processes the outcome (`acquire_for_run`). The lock is removed at the
end of the run when it is still this run's.
"""
from __future__ import annotations

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

LOCK_FILE = "lock.json"


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

  def _record(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:500]}

  def holder(self) -> Optional[dict]:
    """The lock file's record (with its age in seconds), or None when there is no lock."""
    try:
      record = json.loads(self.path.read_text())
      age = time.time() - self.path.stat().mtime
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # Half-written or unreadable: treat as a stale lock.
      return {"host": "?", "pid": -1, "age": float("inf")}
    record["age"] = age
    return record

  def stale_reason(self, record: dict) -> Optional[str]:
    """Why `record`'s holder is gone, or None when it looks alive."""
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
    data = json.dumps(self._record(), indent=1)
    if "://" not in self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(data)
      return True
    if self.path.exists():  # Object stores have no exclusive create: write, then read back.
      return False
    self.path.write_text(data)
    time.sleep(0.5)
    return self._owned()

  def _owned(self) -> bool:
    record = self.holder()
    return bool(record) and record.get("token") == self._token

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLocked naming the live holder."""
    for _ in range(3):
      if self._create():
        self._start_heartbeat()
        return
      record = self.holder()
      if record is None:
        continue  # Released in between: try again.
      reason = self.stale_reason(record)
      if reason is None:
        raise WorkdirLocked(
            f"workdir {self.workdir} is in use by another run (host {record.get('host')}, pid "
            f"{record.get('pid')}, started {record.get('started', '?')}). Wait for it to end, "
            f"use another --workdir, or delete {self.path} if that run is gone.")
      self._warn(f"Taking over the stale workdir lock of host {record.get('host')} pid "
                 f"{record.get('pid')} ({reason}).")
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass
    raise WorkdirLocked(f"could not take the lock {self.path}: other runs keep creating it.")

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

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still this run's."""
    self._stop.set()
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
