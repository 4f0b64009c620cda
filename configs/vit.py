r"""Fine-tune a published ViT / Mixer checkpoint: presets `<model>,<dataset>`.

The published fine-tune recipe (ViT paper, google-research/vision_transformer):
SGD momentum 0.9, global batch 512, lr 0.03 (cifar, imagenet) / 0.01 (pets, flowers)
from the sweep {0.001, 0.003, 0.01, 0.03}, linear warmup 500 steps then cosine decay,
10k steps (imagenet2012: 20k; pets/flowers: 500), grad clip 1, 384px crop, no weight
decay, dropout 0. Evaluation as Google's code: the whole image resized to the crop
(`pp.eval='resize'`; `resize_small` + `crop_pct` give timm/big_vision's central crops).

  python -m vit_jax.main --workdir=/tmp/vit-$(date +%s) --config=configs/vit.py:b16,cifar10 \
      --config.pretrained_path=gs://vit_models/imagenet21k/ViT-B_16.npz

Models: ti16 s16 s32 b8 b16 b32 l16 l32 h14 r50b16 (R50+ViT-B_16) mixer-b16 mixer-l16, and
so400m14 (ViT-So400m_14 with its MAP head: the SigLIP image tower, e.g.
--config.pretrained_path=gs://big_vision/siglip/webli_en_so400m_384_58765454.npz:img).
Patch-14 models train at 378 px (27x27 patches: what a 384 px image gives a /14 patch
embedding, the grid of the 384 px SigLIP and ViT-H/14 files).
Datasets: cifar10 cifar100 imagenet2012 oxford_iiit_pet oxford_flowers102 digits, or any TFDS name
or image folder (then set --config.num_classes and --config.total_steps yourself).
`vit.py:quickstart` is configs/quickstart.py.

Expected results (published, google-research/vision_transformer README, imagenet21k
upstream, this recipe, dropout 0.0; top-1 test accuracy):
  model      cifar10  cifar100  imagenet2012
  ViT-B_16   99.02%   92.06%    84.53%
  ViT-B_32   98.88%   92.31%    81.66%
  ViT-L_16   99.13%   92.91%    84.47%
  ViT-L_32   99.06%   93.29%    81.89%
  R50+ViT-B_16 98.72% 90.88%    83.72%
  Mixer-B/16 (imagenet21k upstream) cifar10 96.82%, Mixer-L/16 98.34%.
"""
import os

from vit_jax.configs import base
from vit_jax.models import registry

_HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    "ti16": "ViT-Ti_16", "s16": "ViT-S_16", "s32": "ViT-S_32", "b8": "ViT-B_8",
    "b16": "ViT-B_16", "b32": "ViT-B_32", "l16": "ViT-L_16", "l32": "ViT-L_32",
    "h14": "ViT-H_14", "r50b16": "R50+ViT-B_16", "mixer-b16": "Mixer-B_16",
    "mixer-l16": "Mixer-L_16", "so400m14": "ViT-So400m_14",
}

# dataset: (total_steps, base_lr, train_split, eval_split) as Google's fine-tune configs.
DATASETS = {
    "cifar10": (10_000, 0.03, "train[:98%]", "test"),
    "cifar100": (10_000, 0.03, "train[:98%]", "test"),
    "imagenet2012": (20_000, 0.03, "train[:99%]", "validation"),
    "oxford_iiit_pet": (500, 0.01, "train[:90%]", "test"),
    "oxford_flowers102": (500, 0.01, "train", "test"),
    "digits": (500, 0.01, "train", "test"),
}


def get_config(arg: str = "b16,cifar10"):
  """`arg` = '<model>,<dataset>' (see the module docstring) or 'quickstart'."""
  if arg == "quickstart":
    return base.load_config_file(os.path.join(_HERE, "quickstart.py")).get_config()
  parts = [p.strip() for p in (arg or "b16,cifar10").split(",")]
  if len(parts) != 2:
    raise ValueError(f"vit.py preset {arg!r}: use '<model>,<dataset>', e.g. 'b16,cifar10'.")
  model, dataset = parts
  if model not in MODELS:
    raise ValueError(f"vit.py: unknown model {model!r}; choose from {sorted(MODELS)}.")
  c = base.defaults()
  c.model_name = MODELS[model]
  base.set_dataset(c, dataset)
  steps, lr, train_split, eval_split = DATASETS.get(dataset, (10_000, 0.03, "train", "test"))
  c.total_steps, c.base_lr, c.train_split, c.eval_split = steps, lr, train_split, eval_split
  c.warmup_steps = min(500, steps // 10) if steps < 5000 else 500
  c.batch, c.batch_eval = 512, 512
  c.accum_steps = 8                      # 64 images per micro-batch (fits a 16 GB GPU at 384px).
  c.optimizer, c.momentum, c.optim_dtype = "sgd", 0.9, "bfloat16"
  c.decay_type, c.grad_norm_clip, c.weight_decay = "cosine", 1.0, 0.0
  patch = registry.get_model_config(c.model_name).patches.size[0]
  c.pp.crop = 384 // patch * patch       # 384, or 378 for /14 (whole patches only).
  c.pp.train, c.pp.eval = "vit_finetune", "resize"
  if dataset == "digits":  # 8x8 images: a tiny input size is enough.
    c.pp.crop, c.batch, c.batch_eval, c.accum_steps = 32, 128, 128, 1
    # Stored at 32 px (8x8 originals upsampled): train on the whole image, as evaluated. A
    # random 32 of 37 px crop is resampled (smooth) while eval 'resize' to 32 is the identity
    # (sharp pixel blocks): 13% vs 90% eval accuracy of one model; and at 100 steps from a
    # ViT-Ti/16 file, resize 37 + eval resize_crop gave 75.4% against 85.2% for this.
    c.pp.resize = 32
  c.model.transformer.dropout_rate = 0.0 if not model.startswith("mixer") else None
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.lock()
  return c
