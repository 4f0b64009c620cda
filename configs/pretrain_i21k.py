r"""Pretrain ViT from scratch on ImageNet-21k with the AugReg recipe (Steiner et al. 2021).

Preset: `pretrain_i21k.py:<model>[,<aug>]` (see pretrain_i1k.py for the names). Recipe:
AdamW (b1 0.9, b2 0.999), lr 1e-3, decoupled weight decay 0.03, warmup 10k steps, cosine,
300 epochs, batch 4096, inception crop 224, RandAugment 2x10 (light1 default; medium1 =
2x15 + mixup 0.2), no dropout / stochastic depth (i21k is large enough).

Data: the fall 2011 release (21,841 synsets) through our TFDS builder
(vit_jax/datasets/imagenet21k.py) from image-net.org's fall11_whole.tar in the manual folder,
written once as ArrayRecord; its validation split (5 images of each class, chosen by file-name
hash, ~109k) is the held-out set, as AugReg holds out 102,400 images.

  python -m vit_jax.main --workdir=gs://bucket/i21k-b16 \
      --config=configs/pretrain_i21k.py:b16,medium1 \
      --config.tfds_manual_dir=/data/imagenet21k --config.tfds_data_dir=gs://bucket/tfds

Expected result: the AugReg paper's i21k 300-epoch B/16 (medium1) fine-tuned to ImageNet-1k
at 384px reaches about 85.5% top-1 (fine-tune with configs/vit.py:b16,imagenet2012 and
--config.pretrained_path=<exported .npz>). Several days on a TPU v3-64 class slice.
"""
import os

from vit_jax.configs import base

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = "b16"):
  """`arg` = '<model>[,<aug>]'."""
  i1k = base.load_config_file(os.path.join(_HERE, "pretrain_i1k.py"))
  c = i1k.pretrain_config(arg, "imagenet21k/fall11", weight_decay=0.03, regularization=0.0,
                          default_aug="light1")
  c.train_split, c.eval_split = "train", "validation"
  return c
