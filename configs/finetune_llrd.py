r"""Fine-tune with layer-wise lr decay (BEiT / MAE recipe): `finetune_llrd.py:<model>[,<dataset>]`.

For self-supervised (MAE, BEiT) or other pretrained ViTs: pass the weights with
--config.pretrained_path=... (any location the loader reads). Models b16 (default), l16, h14;
dataset default imagenet2012. The recipe (MAE's FINETUNE.md, facebookresearch/mae):
  AdamW (b1 0.9, b2 0.999), lr = blr x batch / 256 at batch 1024 (blr 5e-4 for ViT-B -> 2e-3;
    1e-3 for ViT-L / H -> 4e-3), decoupled weight decay 0.05 (kernels only), layer-wise lr decay
    0.65 (ViT-B) / 0.75 (ViT-L, ViT-H) (config.layer_decay: lr x decay^(L + 1 - depth), depth 0
    the embeddings, i + 1 block i, L + 1 the head), 100 epochs (ViT-B) / 50 (ViT-L, ViT-H),
    linear warmup 5 epochs then cosine to 1e-6, no gradient clipping;
  stochastic depth 0.1 (B) / 0.2 (L) / 0.3 (H); inception crop 224 + flip; RandAugment
    rand-m9-mstd0.5-inc1 -> 2 layers, magnitude 9 (see configs/deit.py for the mapping); mixup
    0.8 and CutMix 1.0 (switch 0.5); random erasing 0.25; label smoothing 0.1;
  eval: shorter side to 256, central 224 crop (resize_small, crop_pct 0.875).
MAE fine-tunes with global average pooling and a norm after it; this preset keeps the named
model's classifier (the class token): set --config.model.classifier=gap for a pooled model.

  python -m vit_jax.main --workdir=gs://bucket/ft-b16 --config=configs/finetune_llrd.py:b16 \
      --config.pretrained_path=/path/to/pretrained.npz

Expected result (published: MAE paper, He et al. 2022, "Masked Autoencoders Are Scalable
Vision Learners", ImageNet-1k fine-tuning top-1 at 224 px from MAE pre-training): ViT-B 83.6%,
ViT-L 85.9%, ViT-H 86.9% (FINETUNE.md's reference checkpoints: 83.664 / 85.952 / 86.928).
"""
from vit_jax.configs import base

# model: (name, blr, layer_decay, epochs, stochastic depth)
MODELS = {
    "b16": ("ViT-B_16", 5e-4, 0.65, 100, 0.1),
    "l16": ("ViT-L_16", 1e-3, 0.75, 50, 0.2),
    "h14": ("ViT-H_14", 1e-3, 0.75, 50, 0.3),
}
IMAGENET_TRAIN_IMAGES = 1_281_167
BATCH = 1024


def get_config(arg: str = "b16"):
  """`arg` = '<model>[,<dataset>]' (see the module docstring)."""
  model, _, dataset = (arg or "b16").partition(",")
  model, dataset = model.strip(), (dataset.strip() or "imagenet2012")
  if model not in MODELS:
    raise ValueError(f"finetune_llrd.py: unknown model {model!r}; choose from {sorted(MODELS)}.")
  name, blr, layer_decay, epochs, drop_path = MODELS[model]
  c = base.defaults()
  c.model_name = name
  base.set_dataset(c, dataset)
  c.train_split = "train"
  c.eval_split = "validation" if dataset == "imagenet2012" else "test"
  c.batch, c.batch_eval, c.accum_steps = BATCH, 1024, 1
  c.total_steps, c.total_epochs = 0, float(epochs)
  c.warmup_steps = 5 * (IMAGENET_TRAIN_IMAGES // BATCH)  # 5 epochs of ImageNet-1k.
  c.optimizer, c.b1, c.b2, c.optim_dtype = "adamw", 0.9, 0.999, "float32"
  c.base_lr = blr * BATCH / 256
  c.end_lr, c.decay_type = 1e-6, "cosine"
  c.weight_decay, c.grad_norm_clip = 0.05, 0.0
  c.layer_decay = layer_decay
  c.require_pretrained = True  # A fine-tune: refuse to start without --config.pretrained_path.
  c.pp.crop, c.pp.train, c.pp.flip = 224, "inception_crop", True
  c.pp.eval, c.pp.crop_pct = "resize_small", 0.875
  c.pp.randaugment_layers, c.pp.randaugment_magnitude = 2, 9
  c.pp.mixup_alpha, c.pp.cutmix_alpha = 0.8, 1.0
  c.pp.mixup_prob, c.pp.mixup_switch_prob = 1.0, 0.5
  c.pp.random_erase_prob, c.pp.random_erase_mode, c.pp.random_erase_count = 0.25, "pixel", 1
  c.pp.label_smoothing = 0.1
  c.model.stochastic_depth = drop_path
  c.model.transformer.dropout_rate = 0.0
  c.model.representation_size = None
  c.mesh = (("data", -1),)
  c.log_every, c.eval_every, c.checkpoint_every, c.keep_period = 100, 5000, 2000, 50_000
  c.lock()
  return c
