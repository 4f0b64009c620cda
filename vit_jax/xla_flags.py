"""XLA option defaults the library applies before JAX initialises its backends.

Owns `DEFAULT_XLA_FLAGS` (flags measured to speed up ViT training, per platform) and
`apply_defaults()`, which appends them to the XLA_FLAGS environment variable unless the
user already set the same flag (the user's value always wins) or set VIT_JAX_NO_XLA_DEFAULTS=1.
It must run before the first JAX computation (main.py calls it at start-up).
"""
from __future__ import annotations

import os

# Each entry: flag -> value. Measurements and commands: docs/performance.md.
DEFAULT_XLA_FLAGS: dict[str, str] = {}


def apply_defaults(environ=os.environ) -> str:
  """Adds the default flags missing from XLA_FLAGS; returns the resulting XLA_FLAGS."""
  current = environ.get("XLA_FLAGS", "")
  if environ.get("VIT_JAX_NO_XLA_DEFAULTS") == "1":
    return current
  present = {f.split("=", 1)[0] for f in current.split()}
  extra = [f"{k}={v}" for k, v in DEFAULT_XLA_FLAGS.items() if k not in present]
  environ["XLA_FLAGS"] = " ".join([current] + extra).strip()
  return environ["XLA_FLAGS"]
