"""Google's vit_jax `utils` names: the learning-rate schedule and gradient accumulation its
Colab calls (vit_jax/google_compat/update.py). Our trainer's own are in optim.py / train_step.py."""
from vit_jax.google_compat.update import accumulate_gradient, create_learning_rate_schedule  # noqa: F401

__all__ = ["create_learning_rate_schedule", "accumulate_gradient"]
