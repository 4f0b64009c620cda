r"""SigLIP: a two-tower image-text model trained from scratch with the sigmoid loss.

Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (arXiv:2303.15343):

  python -m vit_jax.main --config=configs/siglip.py:B16,DATASET --workdir=W \
      --config.pp.vocab=VOCAB.model

Hyper-parameters, and where each comes from:
  * model 'SigLIP-B_16' (vit_jax/models/lit.py): B/16 image tower with MAP pooling, B text
    transformer, 64 tokens, 32k sentencepiece vocabulary, temperature 10 and bias -10 at init
    -- the paper (Sec. 3.3: t' = log 10, b = -10) and big_vision's SigLIP demo model config;
  * loss 'sigmoid_contrastive': the paper's chunked sigmoid loss (texts passed around the
    devices, the global batch is the contrastive batch);
  * batch 32768 (the paper's default batch for its main models), Adam(W) lr 1e-3, weight
    decay 1e-4, cosine decay, gradient clipping 1.0 -- the paper's "training setup" section;
    the warmup (5% of the steps) is ours;
  * images resized to 224 px with no other augmentation (the paper's WebLI pre-processing,
    big_vision's `decode|resize(224)|value_range(-1, 1)`).
  The dataset: a caption dataset (TFDS coco_captions, a folder with captions.jsonl / .csv,
  WebDataset .tar shards; vit_jax/datasets/captions.py).

`configs/siglip.py:digits` -- the offline example of the README: configs/quickstart.py's run
as a tiny two-tower (its width-64 ViT as the image tower, a width-64 text tower) trained from
scratch on the embedded 'digits' dataset, whose captions are generated from the labels ("a
photo of the number three."), then evaluated zero-shot on the 297 held-out digits with the
same prompts.

  python -m vit_jax.main --config=configs/siglip.py:digits --workdir=workdirs/siglip_digits

Measured 2026-12-07 on a 2-core x86 CPU (one JAX device): 96.97% zero-shot top-1 (288 of 297)
after 600 steps, 81 s for the whole command (README, "Train an image-text model").
"""
import os

import ml_collections

from vit_jax.configs import base

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a photo of the number {}.", "a handwritten {}.", "the digit {}.",
                   "a picture of a {}.")
DIGITS_VOCAB = os.path.join(os.path.dirname(base.__file__), os.pardir, "datasets",
                            "digits_captions_vocab.txt")


def get_config(arg: str = "B16"):
  """SigLIP from scratch: 'B16[,DATASET]' (the paper's recipe) or 'digits' (offline, tiny)."""
  name, _, dataset = (arg or "B16").partition(",")
  if name == "digits":
    return _digits()
  if name != "B16":
    raise ValueError(f"configs/siglip.py:{arg}: use 'B16[,DATASET]' or 'digits'.")
  c = base.defaults()
  c.model_name = "SigLIP-B_16"
  c.loss = "sigmoid_contrastive"
  c.dataset = dataset or "coco_captions"
  c.train_split, c.eval_split = "train", "val"
  c.batch, c.batch_eval = 32_768, 1024
  # vit_finetune with resize = crop: the whole image resized to 224 (a crop of all of it).
  c.pp.crop, c.pp.resize, c.pp.flip = 224, 224, False
  c.pp.train, c.pp.eval = "vit_finetune", "resize"
  c.pp.tokenizer, c.pp.max_len = "sentencepiece", 64
  c.optimizer, c.base_lr, c.weight_decay = "adamw", 1e-3, 1e-4
  c.decay_type, c.grad_norm_clip = "cosine", 1.0
  c.total_steps, c.warmup_steps = 100_000, 5_000
  c.lock()
  return c


def _digits() -> ml_collections.ConfigDict:
  """The quickstart run (its image tower, data and training settings) as a two-tower."""
  quickstart = base.load_config_file(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  c = quickstart.get_config()
  c.model.image_model, c.model_name = c.model_name, "SigLIP-testing"
  c.num_classes = None  # the towers' widths are out_dim; no classification head
  c.model.text.width, c.model.text.num_layers = 64, 2
  c.model.text.mlp_dim, c.model.text.num_heads, c.model.text.vocab_size = 128, 4, 64
  c.model.out_dim = (64, 64)
  c.loss = "sigmoid_contrastive"
  c.input.caption_templates = DIGIT_TEMPLATES
  c.input.caption_classnames = DIGIT_NAMES
  c.pp.tokenizer, c.pp.vocab, c.pp.max_len = "bert", os.path.normpath(DIGITS_VOCAB), 8
  return c
