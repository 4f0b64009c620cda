r"""Google's Mixer-B/16 on cifar10 config in Google's layout, for its README command:

  python -m vit_jax.main --workdir=/tmp/vit \
      --config=$(pwd)/vit_jax/configs/mixer_base16_cifar10.py \
      --config.pretrained_dir=gs://mixer_models/imagenet21k
"""
import ml_collections

from vit_jax.configs import common, models


def get_config() -> ml_collections.ConfigDict:
  """Mixer-B/16 fine-tuned on cifar10 at 224 px for 10k steps (Google's settings)."""
  config = common.get_config()
  config.model_type = "Mixer"
  config.model = models.get_mixer_b16_config()
  config.dataset = "cifar10"
  config.total_steps = 10_000
  config.pp = ml_collections.ConfigDict(dict(train="train[:98%]", test="test", crop=224))
  return config
