"""Exit statuses of the command-line programs, and errors printed as one line.

The statuses a scheduler or launcher acts on (docs/running.md, "Exit statuses"):

  0   FINISHED   the run reached its last step (or the command succeeded)
  1   ERROR      anything else went wrong; the message says what to do
  2   BAD_INPUT  bad flags, config, data or checkpoint (ValueError, FileNotFoundError, ...)
  3   NAN_STOP   the loss or the parameters became non-finite; the last good checkpoint is kept
  75  PREEMPTED  SIGTERM: a checkpoint was saved at a step boundary — rerun to continue
  76  HUNG       the hang watchdog fired (no step finished in time); stacks are in the log —
                 rerun to continue from the last checkpoint

75 is EX_TEMPFAIL of sysexits.h ("try again later"); launch/ requeues on 75 and 76.
"""
from __future__ import annotations

import errno
import sys
import traceback
from typing import Callable, Optional, TextIO

FINISHED = 0
ERROR = 1
BAD_INPUT = 2
NAN_STOP = 3
PREEMPTED = 75
HUNG = 76
RETRYABLE = (PREEMPTED, HUNG)


class UserError(ValueError):
  """Bad input found before any work was done (config, flags, data); exit status BAD_INPUT."""


def is_disk_full(error: BaseException) -> bool:
  """True when `error` or one of its causes is ENOSPC / EDQUOT (no space, quota exceeded)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def status_for(error: BaseException) -> int:
  """The exit status for an exception that ended a command."""
  if isinstance(error, FloatingPointError):
    return NAN_STOP
  # Our checks raise ValueError / FileNotFoundError for bad flags, configs, data and
  # checkpoints (absl's UsageError for missing flags): the input, not the program.
  if isinstance(error, (ValueError, FileExistsError, FileNotFoundError, KeyError)):
    return BAD_INPUT
  if type(error).__name__ == "UsageError":
    return BAD_INPUT
  return ERROR


def one_line(error: BaseException) -> str:
  """'error: <message>' on one line (newlines of multi-line messages joined with ' | ')."""
  if is_disk_full(error) and "disk full" not in str(error).lower():
    message = (f"disk full ({error}); free space and rerun — earlier checkpoints and files are "
               "intact")
  else:
    message = str(error) or type(error).__name__
  parts = [p.strip() for p in message.splitlines() if p.strip()]
  return "error: " + " | ".join(parts)


def report(error: BaseException, *, log: Optional[Callable[[str], None]] = None,
           verbose: bool = False, stream: Optional[TextIO] = None) -> int:
  """Prints `error` as one line (the traceback with `verbose`), sends the traceback to `log`;
  returns its exit status."""
  stream = stream or sys.stderr  # Looked up now: tests and notebooks replace sys.stderr.
  trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
  if log is not None:
    log(trace.rstrip())
  if verbose:
    stream.write(trace)
  stream.write(one_line(error) + "\n")
  stream.flush()
  return status_for(error)


def report_input_error(error: BaseException, *, verbose: bool = False) -> int:
  """`report` for the command lines that read weights and images: a file or checkpoint that
  cannot be read or fetched (an OSError) is bad input (2) there, not an internal error."""
  status = report(error, verbose=verbose)
  return BAD_INPUT if isinstance(error, OSError) and status == ERROR else status
