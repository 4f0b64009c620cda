r"""Google's AugReg fine-tune config in Google's layout, for its README command:

  python -m vit_jax.main --workdir=/tmp/vit --config=$(pwd)/vit_jax/configs/augreg.py:R_Ti_16 \
      --config.dataset=oxford_iiit_pet --config.base_lr=0.01

The argument is an AugReg model name (the best i21k pre-training by validation accuracy is
chosen from {pretrained_dir}/index.csv) or a full AugReg file name without '.npz'.
Our own AugReg presets are configs/augreg.py at the repository root.
"""
import ml_collections

from vit_jax.configs import common, models


def get_config(model_or_filename: str) -> ml_collections.ConfigDict:
  """Google's AugReg fine-tune settings: 500 steps, 100 warmup, lr 0.03, 384 px, no dropout."""
  config = common.get_config()
  config.pretrained_dir = "gs://vit_models/augreg"
  config.model_or_filename = model_or_filename
  model = model_or_filename.split("-")[0]
  if model not in models.AUGREG_CONFIGS:
    raise ValueError(f"augreg.py: unknown AugReg model {model!r}; known: "
                     f"{sorted(models.AUGREG_CONFIGS)}.")
  config.model = models.AUGREG_CONFIGS[model].copy_and_resolve_references()
  with config.model.unlocked():
    config.model.transformer.dropout_rate = 0.0  # No AugReg regularisation when fine-tuning.
  config.base_lr = 0.03
  config.total_steps = 500
  config.warmup_steps = 100
  config.pp = ml_collections.ConfigDict(dict(train="train", test="test", resize=448, crop=384))
  config.dataset = ""  # Must be given on the command line (--config.dataset=...).
  return config
