"""Pure Flax models: VisionTransformer (incl. R+ViT hybrids) and MlpMixer.

`from vit_jax import models; models.VisionTransformer(num_classes=10, **cfg)` as in
Google's vit_jax (which also exposes the building blocks below). No I/O, no TensorFlow.
"""
from vit_jax import runtime_defaults as _runtime_defaults

_runtime_defaults.apply_at_first_use()  # Before JAX starts a backend (runtime_defaults.py).

# pylint: disable=wrong-import-position
from vit_jax.models.attention import MultiHeadDotProductAttention
from vit_jax.models.mixer import MixerBlock, MlpMixer
from vit_jax.models.registry import get_model
from vit_jax.models.transformer import AddPositionEmbs, Encoder, Encoder1DBlock, MAPHead, MlpBlock
from vit_jax.models.vit import CLASSIFIERS, VisionTransformer

__all__ = ["get_model", "VisionTransformer", "MlpMixer", "AddPositionEmbs", "MlpBlock",
           "Encoder1DBlock", "Encoder", "MAPHead", "MixerBlock", "MultiHeadDotProductAttention",
           "CLASSIFIERS"]
