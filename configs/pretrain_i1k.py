r"""Pretrain ViT from scratch on ImageNet-1k with the AugReg recipe (Steiner et al. 2021).

Preset: `pretrain_i1k.py:<model>[,<aug>]`, model in ti16 s16 s32 b16 b32 l16 h14 g14 G14 e14
22b14 (the last five for planning pod jobs with --dry_run --topology; docs/scaling.md), aug in
none light1 light2 medium1 medium2 strong1 strong2 (default medium1 = RandAugment 2x15 +
mixup 0.2). Recipe: AdamW (b1 0.9, b2 0.999), lr 1e-3, decoupled weight decay 0.1 (paper
convention: multiplied by the lr schedule), linear warmup 10k steps then cosine, 300 epochs,
batch 4096, inception crop 224 + flip, dropout 0.1 and stochastic depth 0.1, grad clip 1;
evaluation as big_vision's vit_i1k config: shorter side to 256, central 224 crop
(`pp.eval='resize_small'`).

  python -m vit_jax.main --workdir=gs://bucket/i1k-s16 --config=configs/pretrain_i1k.py:s16
  python -m vit_jax.main --dry_run --config=configs/pretrain_i1k.py:l16 [--topology=v5p-64]

Expected result: the AugReg paper's ImageNet-1k-only, 300-epoch models reach roughly 79-81%
ImageNet top-1 for B/16 at 224px with medium augmentation and 0.1 regularisation (S/16: ~78%).
Takes on the order of a day on a TPU v3-32 / 8xA100 for B/16.
"""
from vit_jax.configs import base

# level: (randaugment_layers, randaugment_magnitude, mixup_alpha)
AUGMENTATION = {
    "none": (0, 0, 0.0), "light1": (2, 10, 0.0), "light2": (2, 10, 0.2),
    "medium1": (2, 15, 0.2), "medium2": (2, 15, 0.5), "strong1": (2, 20, 0.5),
    "strong2": (2, 20, 0.8),
}
MODELS = {"ti16": "ViT-Ti_16", "s16": "ViT-S_16", "s32": "ViT-S_32", "b16": "ViT-B_16",
          "b32": "ViT-B_32", "l16": "ViT-L_16", "h14": "ViT-H_14", "g14": "ViT-g_14",
          "G14": "ViT-G_14", "e14": "ViT-e_14", "22b14": "ViT-22B_14"}


def pretrain_config(arg: str, dataset: str, weight_decay: float, regularization: float,
                    default_aug: str):
  """The AugReg pretraining recipe for `dataset` (shared with pretrain_i21k.py)."""
  model, _, aug = (arg or "b16").partition(",")
  model, aug = model.strip(), (aug.strip() or default_aug)
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}.")
  if aug not in AUGMENTATION:
    raise ValueError(f"unknown augmentation {aug!r}; choose from {sorted(AUGMENTATION)}.")
  c = base.defaults()
  c.model_name = MODELS[model]
  base.set_dataset(c, dataset)
  c.train_split = "train[:99%]" if dataset == "imagenet2012" else "full[102400:]"
  c.eval_split = "train[99%:]" if dataset == "imagenet2012" else "full[:102400]"
  c.batch, c.batch_eval, c.accum_steps = 4096, 4096, 1
  c.total_steps, c.total_epochs, c.warmup_steps = 0, 300.0, 10_000
  c.optimizer, c.base_lr, c.b1, c.b2 = "adamw", 1e-3, 0.9, 0.999
  c.weight_decay, c.optim_dtype, c.grad_norm_clip = weight_decay, "bfloat16", 1.0
  c.decay_type = "cosine"
  # Eval as big_vision's vit_i1k config (the AugReg numbers): shorter side 256, central 224.
  c.pp.crop, c.pp.train, c.pp.eval, c.pp.flip = 224, "inception_crop", "resize_small", True
  layers, magnitude, mixup = AUGMENTATION[aug]
  c.pp.randaugment_layers, c.pp.randaugment_magnitude, c.pp.mixup_alpha = layers, magnitude, mixup
  c.model.transformer.dropout_rate = regularization
  c.model.stochastic_depth = regularization
  c.model.representation_size = None
  c.mesh = (("data", -1),)
  c.log_every, c.eval_every, c.checkpoint_every, c.keep_period = 100, 5000, 2000, 50_000
  c.lock()
  return c


def get_config(arg: str = "b16"):
  """`arg` = '<model>[,<aug>]'."""
  return pretrain_config(arg, "imagenet2012", weight_decay=0.1, regularization=0.1,
                         default_aug="medium1")
