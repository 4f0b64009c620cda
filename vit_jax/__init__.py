"""vit_jax: Vision Transformers and MLP-Mixers in JAX/Flax — models, official checkpoints, training."""

__version__ = "0.1.0"
