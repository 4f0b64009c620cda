"""Google's `vit_jax.train`: `train_and_evaluate(config, workdir)` on either config layout, and
`make_update_fn` (update.py). Our loop is vit_jax.run.loop; this only translates Google's config
(schema.py) and, as Google's trainer does, writes `<workdir>/checkpoint_<step>` and returns the
final params as host arrays."""
from __future__ import annotations

from typing import Any

from vit_jax import checkpoint
from vit_jax.google_compat import checkpoint as google_checkpoint, schema
from vit_jax.google_compat.update import make_update_fn  # noqa: F401  (Google's train API)
from vit_jax.run import loop


def train_and_evaluate(config, workdir: str) -> Any:
  """Google's layout: trains the translated run and returns its params; ours: loop's result."""
  if not schema.is_google_config(config):
    return loop.train_and_evaluate(config, workdir)
  result = loop.train_and_evaluate(schema.to_run_config(config), workdir)
  state = result["state"]
  google_checkpoint.write(workdir, state.params, state.opt_state, result["step"])
  return checkpoint.to_host(state.params)
