"""Pure Flax models: VisionTransformer (incl. R+ViT hybrids) and MlpMixer.

`from vit_jax import models; models.VisionTransformer(num_classes=10, **cfg)` as in
Google's vit_jax (which also exposes the building blocks below). No I/O, no TensorFlow.
"""
from vit_jax import runtime_defaults as _runtime_defaults

_runtime_defaults.apply_at_first_use()  # Before JAX starts a backend (runtime_defaults.py).

# pylint: disable=wrong-import-position
from vit_jax.models.attention import MultiHeadDotProductAttention
from vit_jax.models.mixer import MixerBlock, MlpMixer
from vit_jax.models.transformer import AddPositionEmbs, Encoder, Encoder1DBlock, MAPHead, MlpBlock
from vit_jax.models.vit import CLASSIFIERS, VisionTransformer



def get_model(name: str, **kwargs):
  """The model registered as `name` (vit_jax.configs.models.MODEL_CONFIGS), Google's factory:
  `get_model('ViT-B_16', num_classes=1000)`. LiT models are not provided here."""
  from vit_jax import model_configs  # pylint: disable=g-import-not-at-top  (it imports models)
  if name.startswith("LiT-"):
    raise ValueError(model_configs.LIT_OUT_OF_SCOPE)
  config = model_configs.MODEL_CONFIGS[model_configs.canonical_name(name)]
  cls = MlpMixer if model_configs.is_mixer(config) else VisionTransformer
  return cls(**config, **kwargs)


__all__ = ["get_model", "VisionTransformer", "MlpMixer", "AddPositionEmbs", "MlpBlock", "Encoder1DBlock",
           "Encoder", "MAPHead", "MixerBlock", "MultiHeadDotProductAttention", "CLASSIFIERS"]
