"""vit_jax: Vision Transformers and MLP-Mixers in JAX/Flax — models, official checkpoints, training."""
import os as _os

# TensorFlow is only the TFDS reader here (images are decoded with PIL, models run in JAX); its
# C++ start-up lines (oneDNN, CPU instruction sets, GCS credential probes) are noise for a
# vit_jax user. Errors still show; the user's own settings win.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
