"""The run's log file in its workdir: console lines (no progress-bar redraws), library
warnings and tracebacks, appended across restarts.

Process 0 writes `<workdir>/train.log`, process i > 0 `<workdir>/train.process<i>.log`
(each process's watchdog stacks land in its own file). A workdir on a remote filesystem
(gs://...) cannot be appended to, so its log goes to `$TMPDIR/vit_jax_logs/<name>/` and the
first line on the console says where. One log is active per process (`open_log`);
`write` is a no-op when none is.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Optional, TextIO

_ACTIVE: Optional["RunLog"] = None


def log_path(workdir: str, process_index: int) -> str:
  """Where process `process_index` of a run in `workdir` writes its log."""
  name = "train.log" if process_index == 0 else f"train.process{process_index}.log"
  if "://" in str(workdir):
    base = os.path.basename(str(workdir).rstrip("/")) or "run"
    return os.path.join(tempfile.gettempdir(), "vit_jax_logs", base, name)
  return os.path.join(os.path.abspath(workdir), name)


class RunLog:
  """An append-only, line-buffered text file; also the target of Python logging."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self.file: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # pylint: disable=consider-using-with
    self._handler = logging.StreamHandler(self.file)
    self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(self._handler)

  def write(self, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for line in str(text).splitlines() or [""]:
      self.file.write(f"{stamp} {line}\n")

  def close(self) -> None:
    logging.getLogger().removeHandler(self._handler)
    self.file.close()


def open_log(workdir: str, process_index: int = 0) -> RunLog:
  """Opens (appending) and activates this process's log for `workdir`."""
  global _ACTIVE
  close()
  _ACTIVE = RunLog(log_path(workdir, process_index))
  return _ACTIVE


def active() -> Optional[RunLog]:
  return _ACTIVE


def write(text: str) -> None:
  """Appends `text` (each line timestamped) to the active log, if any."""
  if _ACTIVE is not None:
    _ACTIVE.write(text)


def close() -> None:
  global _ACTIVE
  if _ACTIVE is not None:
    _ACTIVE.close()
    _ACTIVE = None
