r"""Train DeiT from scratch on ImageNet-1k (Touvron et al. 2021, "Training data-efficient image
transformers & distillation through attention", arXiv:2012.12877): `deit.py:<model>[,<dataset>]`.

Models ti16 s16 (default) b16 = DeiT-Ti/S/B (ViT-Ti/S/B_16, no representation layer); dataset
default imagenet2012 (any TFDS name or folder; then set total_epochs and warmup_steps to its
size). The recipe (the DeiT repository's defaults):
  AdamW (b1 0.9, b2 0.999), lr 5e-4 x batch / 512 = 1e-3 at batch 1024, decoupled weight decay
    0.05 (torch AdamW's convention, ours too: p -= lr x wd x p; kernels only), 300 epochs,
    linear warmup 5 epochs (6255 steps of 1024 ImageNet images) then cosine to 1e-5, no
    gradient clipping;
  inception crop 224 + flip; RandAugment rand-m9-mstd0.5-inc1 -> randaugment_layers=2,
    randaugment_magnitude=9 (timm's RandAugment applies 2 ops; its magnitude noise std 0.5 and
    the "increasing" op variants have no counterpart in our RandAugment, which applies every
    op at the fixed magnitude 9 of 10); mixup 0.8 and CutMix 1.0 per batch, switch
    probability 0.5, mixed every batch (mixup_prob 1.0); random erasing 0.25 (per-pixel normal
    fill, one box); label smoothing 0.1; repeated augmentation x3 (input.repeated_aug);
  stochastic depth 0.1, dropout 0; EMA of the weights, decay 0.99996 per step (evaluated as
    'ema/...'; the paper's numbers are the raw weights');
  eval: shorter side to 256, central 224 crop (resize_small, crop_pct 0.875).
Models ti16_distilled s16_distilled b16_distilled = the paper's "⚗" rows: the same recipe
with DeiT's distillation token (config.model.distilled: tokens [cls, dist, patches], a second
head; evaluated on the mean of the two heads' logits, as timm) and hard distillation,
loss = 0.5 x CE(class head, smoothed / mixed labels) + 0.5 x CE(distillation head, the
teacher's argmax) (distill.mode 'hard', weight 0.5). The paper's teacher is RegNetY-16GF
(82.9% top-1), which is not a model here: the teacher is any architecture of the registry
with ImageNet-1k weights at the student's 224 px (distill.path: any location the checkpoint
loader reads, AugReg names included; distill.model_name: its architecture), e.g. AugReg's
ViT-B/16 fine-tuned on ImageNet-1k at 224 px. These presets refuse to start without one
(distill.require_teacher). Without the token (ti16/s16/b16 with --config.distill.path=...,
distill.mode='hard') the loss is the hard distillation through the class token.

  python -m vit_jax.main --workdir=gs://bucket/deit-s --config=configs/deit.py:s16
  TEACHER=B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224
  python -m vit_jax.main --workdir=gs://bucket/deit-s-dist --config=configs/deit.py:s16_distilled \
    --config.distill.path=$TEACHER --config.distill.model_name=ViT-B_16

Expected result (published: DeiT paper, ImageNet-1k top-1 at 224 px, 300 epochs): DeiT-Ti
72.2%, DeiT-S 79.8%, DeiT-B 81.8%; with the distillation token and the RegNetY-16GF teacher
DeiT-Ti⚗ 74.5%, DeiT-S⚗ 81.2%, DeiT-B⚗ 83.4% (another teacher gives other numbers).
"""
from vit_jax.configs import base

MODELS = {"ti16": "ViT-Ti_16", "s16": "ViT-S_16", "b16": "ViT-B_16"}
DISTILLED = "_distilled"  # '<model>_distilled': the distillation token and hard distillation.
IMAGENET_TRAIN_IMAGES = 1_281_167
BATCH = 1024


def get_config(arg: str = "s16"):
  """`arg` = '<model>[,<dataset>]' (see the module docstring)."""
  model, _, dataset = (arg or "s16").partition(",")
  model, dataset = model.strip(), (dataset.strip() or "imagenet2012")
  distilled = model.endswith(DISTILLED)
  model = model[:-len(DISTILLED)] if distilled else model
  if model not in MODELS:
    raise ValueError(f"deit.py: unknown model {model!r}; choose from {sorted(MODELS)}, each "
                     f"also as <model>{DISTILLED}.")
  c = base.defaults()
  c.model_name = MODELS[model]
  base.set_dataset(c, dataset)
  c.train_split = "train"
  c.eval_split = "validation" if dataset == "imagenet2012" else "test"
  c.batch, c.batch_eval, c.accum_steps = BATCH, 1024, 1
  c.total_steps, c.total_epochs = 0, 300.0
  c.warmup_steps = 5 * (IMAGENET_TRAIN_IMAGES // BATCH)  # 5 epochs of ImageNet-1k.
  c.optimizer, c.b1, c.b2, c.optim_dtype = "adamw", 0.9, 0.999, "float32"
  c.base_lr = 5e-4 * BATCH / 512
  c.end_lr, c.decay_type = 1e-5, "cosine"
  c.weight_decay, c.grad_norm_clip = 0.05, 0.0
  c.pp.crop, c.pp.train, c.pp.flip = 224, "inception_crop", True
  c.pp.eval, c.pp.crop_pct = "resize_small", 0.875
  c.pp.randaugment_layers, c.pp.randaugment_magnitude = 2, 9
  c.pp.mixup_alpha, c.pp.cutmix_alpha = 0.8, 1.0
  c.pp.mixup_prob, c.pp.mixup_switch_prob = 1.0, 0.5
  c.pp.random_erase_prob, c.pp.random_erase_mode, c.pp.random_erase_count = 0.25, "pixel", 1
  c.pp.label_smoothing = 0.1
  c.input.repeated_aug = 3
  c.model.stochastic_depth = 0.1
  c.model.transformer.dropout_rate = 0.0
  c.model.representation_size = None
  c.ema.decay, c.ema.warmup, c.ema.every = 0.99996, False, 1
  if distilled:  # The DeiT repository's --distillation-type hard, alpha 0.5, tau 1.
    c.model.distilled = True
    c.distill.mode, c.distill.weight, c.distill.temperature = "hard", 0.5, 1.0
    c.distill.require_teacher = True
  c.mesh = (("data", -1),)
  c.log_every, c.eval_every, c.checkpoint_every, c.keep_period = 100, 5000, 2000, 50_000
  c.lock()
  return c
