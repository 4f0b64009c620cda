"""The checkpoint a Google-style caller looks for: `<workdir>/checkpoint_<step>`, Flax msgpack of
`(params, opt_state, step)` — what `flax.training.checkpoints.restore_checkpoint(workdir,
(params, opt_state, step))` reads. Written beside our Orbax run state (which stays the one the
trainer resumes from)."""
from __future__ import annotations

import os
from typing import Any

PREFIX = "checkpoint_"


def path(workdir: str, step: int) -> str:
  return os.path.join(workdir, f"{PREFIX}{int(step)}")


def write(workdir: str, params: Any, opt_state: Any, step: int) -> str:
  """Writes (params, opt_state, step) as host arrays, atomically; returns the file's path."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  host = (checkpoint.to_host(params), checkpoint.to_host(opt_state), int(step))
  data = serialization.to_bytes(host)
  target = path(workdir, step)
  if jax.process_index() == 0:
    checkpoint.files.write_atomic(target, lambda f: f.write(data))
  return target


def read(workdir: str, target: Any, step: int) -> Any:
  """The (params, opt_state, step) tuple of checkpoint_<step>, restored into `target`'s tree."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  with open(path(workdir, step), "rb") as f:
    return serialization.from_bytes(target, f.read())
