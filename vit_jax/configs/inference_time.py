r"""Google's `vit_jax/configs/inference_time.py`: the inference-time benchmark's config (the
function lives in vit_jax/google_compat/inference_time.py), for Google's command line:

  python -m vit_jax.main --workdir=/tmp/inference_time \
      --config=$(pwd)/vit_jax/configs/inference_time.py \
      --config.batch=64 --config.num_classes=1000 --config.image_size=224
"""
from vit_jax.google_compat.inference_time import get_config  # noqa: F401

__all__ = ["get_config"]
