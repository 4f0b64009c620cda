"""Fast restarts: the persistent compilation cache of a run, and whether its step came from it.

`config.compilation_cache_dir`: None (the default) = `<workdir>/compilation_cache`, a path
(local or gs://) = that directory, '' or 'none' = off. A cache the user chose for JAX
(JAX_COMPILATION_CACHE_DIR, jax.config.update) wins over all of these. The JAX options are set
by runtime_defaults.enable_compilation_cache, which also says what JAX does with several
processes and hosts (one writer: process 0; every process reads).

  * `setup(config, workdir)` — before the run's first compile, on every process; returns the
    line to log ("Compilation cache: ...").
  * `watch(what, log)` — around one compile (the train step): logs whether it was loaded from
    the cache or compiled (and written), from JAX's monitoring events.
  * `setup_dry_run(config, topology)` — the dry run (no workdir): the configured directory only;
    with --topology none, since JAX cannot load abstract-device compiles (a note says so).
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import warnings
from typing import Any, Callable, Iterator, Optional

from vit_jax import runtime_defaults

SUBDIR = "compilation_cache"
OFF_VALUES = ("", "none")
HITS, WRITES = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
# JAX's warning when an entry is there but does not load (compiler.py), naming the program.
_READ_ERROR = r"Error reading persistent compilation cache entry for '([^']+)'"
_counts = threading.local()  # Per thread: JAX reports an event on the thread that compiles.
_listening = False
_listener_lock = threading.Lock()


def cache_dir(value: Optional[str], workdir: Optional[str]) -> Optional[str]:
  """The directory config.compilation_cache_dir=`value` asks for in `workdir` (None: off)."""
  if value is None:
    if not workdir:
      return None
    root = str(workdir).rstrip("/")
    if "://" not in root:
      root = os.path.abspath(root)
    return f"{root}/{SUBDIR}"
  if str(value).strip().lower() in OFF_VALUES:
    return None
  return str(value)


def describe(directory: Optional[str], chosen_by: str, value: Optional[str]) -> str:
  """The log line for a cache in `directory` chosen by `chosen_by` (enable_compilation_cache)."""
  if chosen_by == "vit_jax":
    if directory is None:
      return f"Compilation cache: off (config.compilation_cache_dir={value!r})."
    return (f"Compilation cache: {directory} (a restart loads the compiled programs from it; "
            "--config.compilation_cache_dir=none turns it off).")
  ignored = "" if value is None else f"; config.compilation_cache_dir={value!r} not used"
  return f"Compilation cache: {directory or 'off'} (set by {chosen_by}{ignored})."


def setup(config: Any, workdir: Optional[str]) -> str:
  """Turns the run's cache on (or off) before its first compile; returns the line to log."""
  _listen()
  value = config.compilation_cache_dir
  directory, chosen_by = runtime_defaults.enable_compilation_cache(cache_dir(value, workdir))
  return describe(directory, chosen_by, value)


def setup_dry_run(config: Any, topology: Optional[str]) -> Optional[str]:
  """The dry run's cache (only a configured one, never with --topology); returns a line or None."""
  value = config.compilation_cache_dir
  if value is None or cache_dir(value, None) is None:
    return None
  if topology:
    return ("Note: with --topology, JAX's compilation cache is off (it writes compiles for "
            "abstract TPU devices but cannot load them back); the planner keeps each compile's "
            "figures in config.compilation_cache_dir/dry_run instead, so a repeat is read, not "
            "recompiled (planning/compile_memo.py).")
  return setup(config, None)


def _listen() -> None:
  """Registers, once per process, the JAX event listener that counts cache hits and writes."""
  global _listening
  with _listener_lock:
    if _listening:
      return
    import jax  # pylint: disable=g-import-not-at-top

    def on_event(event: str, **_: Any) -> None:
      if event in (HITS, WRITES):
        counts = getattr(_counts, "value", None)
        if counts is not None:
          counts[event] = counts.get(event, 0) + 1

    jax.monitoring.register_event_listener(on_event)
    _listening = True


@contextlib.contextmanager
def watch(what: str, log: Callable[[str], None]) -> Iterator[None]:
  """Logs whether the compile inside this block was loaded from the cache or compiled."""
  _listen()
  outer = getattr(_counts, "value", None)
  _counts.value = counts = {}
  caught: list[warnings.WarningMessage] = []
  start = time.perf_counter()
  try:
    with warnings.catch_warnings(record=True) as caught:  # The user's filters still apply.
      yield
  finally:
    _counts.value = outer
    if outer is not None:
      for key, n in counts.items():
        outer[key] = outer.get(key, 0) + n
    for w in caught:  # Shown as they would have been.
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  seconds = time.perf_counter() - start
  broken = [m.group(1) for w in caught if (m := re.match(_READ_ERROR, str(w.message)))]
  log(summary(what, seconds, counts.get(HITS, 0), counts.get(WRITES, 0),
              broken[0] if broken else None))


def summary(what: str, seconds: float, hits: int, writes: int,
            unreadable: Optional[str] = None) -> str:
  """One line: `what` loaded from the persistent cache, or compiled (and written or not)."""
  import jax  # pylint: disable=g-import-not-at-top
  if hits:
    return f"{what}: loaded from the compilation cache ({seconds:.1f} s)."
  if unreadable:  # JAX never rewrites an existing entry: a broken one costs every start.
    return (f"{what}: compiled in {seconds:.1f} s: its entry in the compilation cache could "
            "not be loaded (warning above) and JAX does not replace it; delete "
            f"{jax.config.jax_compilation_cache_dir}/{unreadable}-*-cache so the next start "
            "writes it again.")
  if writes:
    return f"{what}: compiled in {seconds:.1f} s and written to the compilation cache."
  if not runtime_defaults.compilation_cache_in_effect():
    return f"{what}: compiled in {seconds:.1f} s (no compilation cache)."
  why = ("only process 0 writes" if jax.process_index() else "compiles under "
         f"{jax.config.jax_persistent_cache_min_compile_time_secs:g} s are not written")
  return f"{what}: compiled in {seconds:.1f} s, not written to the compilation cache ({why})."
