"""Google's `vit_jax.inference_time` path: `inference_time(config, workdir)`
(vit_jax/google_compat/inference_time.py, on our sharded forward and timing loop)."""
from vit_jax.google_compat.inference_time import inference_time  # noqa: F401

__all__ = ["inference_time"]
