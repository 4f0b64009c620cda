"""The dry run's memo of compiled programs, so a repeated `--dry_run` / `--plan` does not recompile.

JAX's persistent compilation cache cannot serve `--topology` compiles: libtpu's compile-only
client writes the executable but cannot load it back ("PjRtCompiler must be constructed with a
Client"). What the planner needs from a compile is text and numbers (the optimised HLO, the
memory analysis, XLA's static cost, or the compiler's out-of-memory message), so this module
keeps exactly those, keyed by the lowered program (StableHLO text, which covers the model,
optimizer, shardings and shapes), the target devices and the jax / libtpu versions. It is used
when `--config.compilation_cache_dir` names a directory (entries go to `<dir>/dry_run/`), and
an entry is written once, atomically (a temporary file renamed), so concurrent planners on one
directory at worst compute the same entry twice.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import uuid
from typing import Any, Optional, Sequence

VERSION = 1  # Bump when what is stored changes.


def directory(config) -> Optional[str]:
  """`<compilation_cache_dir>/dry_run`, or None when the config names no cache directory."""
  value = config.compilation_cache_dir
  if not value or str(value).strip().lower() == "none":
    return None
  return os.path.join(str(value), "dry_run")


def key(lowered_text: str, devices: Sequence[Any]) -> str:
  """The entry name of one lowered program compiled for `devices`."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    import libtpu  # pylint: disable=g-import-not-at-top
    tpu = getattr(libtpu, "__version__", "?")
  except ImportError:
    tpu = "-"
  targets = [(getattr(d, "device_kind", ""), getattr(d, "slice_index", None) or 0,
              getattr(d, "process_index", 0)) for d in devices]
  digest = hashlib.sha256()
  for part in (str(VERSION), jax.__version__, tpu, json.dumps(targets), lowered_text):
    digest.update(part.encode())
    digest.update(b"\0")
  return digest.hexdigest()


def _path(root: str, name: str) -> str:
  return os.path.join(root, f"{name}.json.gz")


def load(root: Optional[str], name: str) -> Optional[dict[str, Any]]:
  """The stored figures of `name`, or None (no directory, no entry, or an unreadable one)."""
  if not root:
    return None
  from etils import epath  # pylint: disable=g-import-not-at-top  (local or gs://)
  path = epath.Path(_path(root, name))
  try:
    return json.loads(gzip.decompress(path.read_bytes()).decode())
  except (FileNotFoundError, OSError, ValueError, EOFError):
    return None


def save(root: Optional[str], name: str, figures: dict[str, Any]) -> None:
  """Writes `figures` under `name` (temporary file, then rename: never a torn entry)."""
  if not root:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  folder = epath.Path(root)
  folder.mkdir(parents=True, exist_ok=True)
  tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
  tmp.write_bytes(gzip.compress(json.dumps(figures).encode(), compresslevel=6))
  tmp.rename(epath.Path(_path(root, name)))
