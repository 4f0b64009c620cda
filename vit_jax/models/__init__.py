"""Pure Flax models: VisionTransformer (incl. R+ViT hybrids), MlpMixer and LiT's towers.

`from vit_jax import models; models.VisionTransformer(num_classes=10, **cfg)` as in
Google's vit_jax (which also exposes the building blocks below). No I/O, no TensorFlow.

Google's `models.LitModel`, `models.get_model` (which also builds 'LiT-...' models) and
`models.model_configs` are resolved on first use from Google's API layer
(vit_jax/google_compat/lit.py, vit_jax/configs/models.py): LiT's loading and tokenizer methods
need the checkpoint layer and TensorFlow, which this package must not import. This lookup is
the one upward reference of the package (docs/architecture.md, "Packages").
"""
from typing import Any

from vit_jax import runtime_defaults as _runtime_defaults

_runtime_defaults.apply_at_first_use()  # Before JAX starts a backend (runtime_defaults.py).

# pylint: disable=wrong-import-position
from vit_jax.models.attention import MultiHeadDotProductAttention
from vit_jax.models.mixer import MixerBlock, MlpMixer
from vit_jax.models.transformer import AddPositionEmbs, Encoder, Encoder1DBlock, MAPHead, MlpBlock
from vit_jax.models.vit import CLASSIFIERS, VisionTransformer

__all__ = ["get_model", "VisionTransformer", "MlpMixer", "LitModel", "AddPositionEmbs",
           "MlpBlock", "Encoder1DBlock", "Encoder", "MAPHead", "MixerBlock",
           "MultiHeadDotProductAttention", "CLASSIFIERS", "model_configs"]


def __getattr__(name: str) -> Any:
  """Google's LitModel / get_model / model_configs, imported on first use (module doc)."""
  if name in ("LitModel", "get_model"):
    from vit_jax.google_compat import lit  # pylint: disable=g-import-not-at-top
    return getattr(lit, name)
  if name == "model_configs":
    from vit_jax.configs import models as model_configs  # pylint: disable=g-import-not-at-top
    return model_configs
  raise AttributeError(f"module 'vit_jax.models' has no attribute {name!r}")
