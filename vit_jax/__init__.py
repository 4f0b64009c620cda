"""vit_jax: Vision Transformers and MLP-Mixers in JAX/Flax — models, official checkpoints, training.

Importing the package applies the runtime start-up defaults (vit_jax.runtime_defaults; opt out
with VIT_JAX_NO_XLA_DEFAULTS=1), so library users get the speed the CLI gets.
"""

__version__ = "0.1.0"

from vit_jax import runtime_defaults as _runtime_defaults

_runtime_defaults.apply_at_import()
