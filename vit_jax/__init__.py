"""vit_jax: Vision Transformers and MLP-Mixers in JAX/Flax.

Models, official checkpoints, training.
"""
from vit_jax import runtime_defaults as _runtime_defaults

_runtime_defaults.quiet_tensorflow()  # The one import-time effect of the package itself.

__version__ = "0.1.0"
