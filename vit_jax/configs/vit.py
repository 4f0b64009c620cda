r"""Google's fine-tune config in Google's layout, for its README command (`<model>,<dataset>`):

  python -m vit_jax.main --workdir=/tmp/vit --config=$(pwd)/vit_jax/configs/vit.py:b16,cifar10 \
      --config.pretrained_dir=gs://vit_models/imagenet21k

`<model>` is a configs.models function suffix (b16, l16, r50_b16, mixer_b16, testing, ...);
`<dataset>` one of common.DATASET_PRESETS. The run reads {pretrained_dir}/{model_name}.npz.
Our own presets (our layout, more options) are configs/vit.py at the repository root.
"""
import ml_collections

from vit_jax.configs import common, models


def get_config(model_dataset: str) -> ml_collections.ConfigDict:
  """Google's settings for fine-tuning `model` on `dataset` ('b16,cifar10')."""
  model, _, dataset = model_dataset.partition(",")
  if not dataset:
    raise ValueError(f"vit.py:{model_dataset}: pass '<model>,<dataset>', e.g. vit.py:b16,cifar10.")
  config = common.with_dataset(common.get_config(), dataset)
  getter = getattr(models, f"get_{model}_config", None)
  if getter is None:
    raise ValueError(f"vit.py: no model {model!r}; choose one of "
                     f"{sorted(n[4:-7] for n in models.GETTERS)}.")
  config.model = getter()
  config.model_type = "Mixer" if models.is_mixer(config.model) else "ViT"
  if model == "b16" and dataset == "cifar10":
    config.base_lr = 0.01  # Google's setting for this pair.
  return config
