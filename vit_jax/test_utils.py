"""Google's `vit_jax.test_utils.create_checkpoint`: a fake pre-trained checkpoint for tests, in
the official .npz layout (its tests and Colab-style notebooks call it)."""
from __future__ import annotations

import os
from typing import Any


def create_checkpoint(model_config: Any, path: str) -> None:
  """Initialises the model `model_config` describes (one class, 16 px) and saves its params."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax.models import registry
  fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  model = registry.model_from_fields(fields, 1)
  size = max(16, *tuple(fields.get("patches", {}).get("size", (16, 16))))
  variables = model.init(jax.random.PRNGKey(0), jnp.ones([1, size, size, 3], jnp.float32),
                         train=False)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  checkpoint.save(checkpoint.to_host(variables["params"]), path)
