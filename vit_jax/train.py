"""Google's `vit_jax.train` path: `train_and_evaluate(config, workdir)` and `make_update_fn`
(vit_jax/google_compat/train.py). Our training loop is vit_jax.run.loop."""
from vit_jax.google_compat.train import make_update_fn, train_and_evaluate  # noqa: F401

__all__ = ["train_and_evaluate", "make_update_fn"]
