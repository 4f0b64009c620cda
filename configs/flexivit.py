r"""FlexiViT (Beyer et al. 2023, "FlexiViT: One Model for All Patch Sizes"): one ViT trained at
ten patch sizes, usable at any of them afterwards.

  python -m vit_jax.main --config=configs/flexivit.py:B,DATASET --workdir=W

Hyper-parameters, and where each comes from (big_vision's FlexiViT supervised ImageNet-21k
config, configs/proj/flexivit/i21k_sup.py, run here on any dataset):
  * a B model whose underlying patch-embedding kernel is 8x8 and whose learned position
    embedding is a 7x7 grid, both resized on the fly to each step's patch size;
  * 240 px; patch sizes 48, 40, 30, 24, 20, 16, 15, 12, 10, 8 (grids 5x5 .. 30x30), drawn
    uniformly per step;
  * class token; sigmoid cross-entropy loss with the head bias at -10; batch 4096, 90 epochs;
  * Adam lr 1e-3, weight decay 1e-4, 10k warmup steps, cosine decay, gradient clipping 1.0;
  * inception crop, flip, RandAugment(2, 10), mixup 0.2; eval resize 274 + central crop 240;
  * evaluated at patch sizes 8, 16, 30 and 48 (config.evals entries with patch_size).
"""
import ml_collections

from vit_jax.configs import base

PATCH_SIZES = (48, 40, 30, 24, 20, 16, 15, 12, 10, 8)


def get_config(arg: str = "B"):
  """FlexiViT: 'B[,DATASET]' (default dataset imagenet2012)."""
  variant, _, dataset = (arg or "B").partition(",")
  names = {"S": "ViT-S_16", "B": "ViT-B_16", "L": "ViT-L_16"}
  if variant not in names:
    raise ValueError(f"configs/flexivit.py:{arg}: use 'S', 'B' or 'L' [,DATASET].")
  c = base.defaults()
  c.model_name = names[variant]
  c.model.patches = ml_collections.ConfigDict({"size": (8, 8)})
  c.model.classifier = "token"
  c.flexi.patch_sizes = PATCH_SIZES
  c.flexi.posemb_grid = (7, 7)
  base.set_dataset(c, dataset or "imagenet2012")
  c.train_split, c.eval_split = "train[:99%]", "train[99%:]"
  c.loss, c.model.head_bias_init = "sigmoid_xent", -10.0
  c.batch, c.batch_eval = 4096, 1024
  c.total_epochs, c.total_steps, c.warmup_steps = 90.0, 0, 10_000
  c.optimizer, c.base_lr, c.weight_decay = "adamw", 1e-3, 1e-4
  c.decay_type, c.grad_norm_clip = "cosine", 1.0
  c.pp.crop, c.pp.resize, c.pp.train, c.pp.eval = 240, 274, "inception_crop", "resize_small"
  c.pp.flip, c.pp.randaugment_layers, c.pp.randaugment_magnitude = True, 2, 10
  c.pp.mixup_alpha = 0.2
  c.evals = ml_collections.ConfigDict({
      f"p{p}": {"type": "classification", "patch_size": p} for p in (8, 16, 30, 48)})
  c.lock()
  return c
