r"""LiT: locked-image tuning -- a pretrained image tower kept frozen, a text tower trained to
match it (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning").

  python -m vit_jax.main --config=configs/lit.py --workdir=W \
      --config.pretrained_path=IMAGE_CHECKPOINT.npz --config.pp.vocab=VOCAB.txt

`configs/lit.py:B16,DATASET[,softmax]` -- the image checkpoint is any image classifier of the
model's image tower (a gs://vit_models or AugReg B/16 file, a big_vision ViT; its head is
dropped) or a two-tower file (both towers load). The text tower and the temperature / bias
start from scratch; the vocabulary is a BERT WordPiece file (the one published beside the
LiT / BERT checkpoints, or text.write_wordpiece_vocab for your captions).

Hyper-parameters, and where each comes from (big_vision's SigLIP-on-COCO LiT example config,
configs/proj/image_text/siglip_lit_coco.py, unless said otherwise):
  * model 'LiT-B16B_2' (Google's LiT B16B_2 layout: a B/16 image tower without projection,
    BERT-base text tower projected to 768), 16 tokens, 224 px;
  * every `img/` parameter frozen (param_groups 'freeze': no update, no optimizer slots);
  * loss: sigmoid (temperature 10, bias -2.71 at init), or `softmax` (LiT's original
    contrastive loss; temperature 10);
  * batch 512, 5000 steps, Adam (weight decay 0.01) lr 1e-3, cosine decay, warmup 3% of the
    steps (at least 100), gradient clipping 1.0;
  * train images: `resize(224)` (no crop), horizontal flip, RandAugment(2, 10).

`--config.input.image_embeddings=True` embeds every train image once with the locked tower
(the eval preprocessing: no flip or RandAugment) and trains the text tower against those rows,
as the LiT paper notes a locked tower allows: no image decode or image forward per step.
"""
from vit_jax.configs import base


def get_config(arg: str = "B16"):
  """LiT tuning: 'B16[,DATASET[,softmax]]' (default dataset coco_captions, sigmoid loss)."""
  parts = (arg or "B16").split(",")
  name, dataset = parts[0], parts[1] if len(parts) > 1 and parts[1] else "coco_captions"
  loss = parts[2] if len(parts) > 2 else "sigmoid"
  if name != "B16" or loss not in ("sigmoid", "softmax"):
    raise ValueError(f"configs/lit.py:{arg}: use 'B16[,DATASET[,sigmoid|softmax]]'.")
  c = base.defaults()
  c.model_name = "LiT-B16B_2"
  c.model.temperature_init = 10.0
  if loss == "sigmoid":
    c.loss, c.model.bias_init = "sigmoid_contrastive", -2.71
  else:
    c.loss = "softmax_contrastive"
  c.param_groups = (("img/.*", "freeze"),)
  c.require_pretrained = True
  c.dataset = dataset
  c.train_split, c.eval_split = "train", "val"
  c.batch, c.batch_eval = 512, 512
  # vit_finetune with resize = crop: the whole image resized to 224 (a crop of all of it).
  c.pp.crop, c.pp.resize, c.pp.train, c.pp.eval = 224, 224, "vit_finetune", "resize"
  c.pp.flip, c.pp.randaugment_layers, c.pp.randaugment_magnitude = True, 2, 10
  c.pp.tokenizer, c.pp.max_len = "bert", 16
  c.total_steps = 5_000
  c.warmup_steps = max(int(0.03 * c.total_steps), 100)
  c.optimizer, c.base_lr, c.weight_decay = "adamw", 1e-3, 0.01
  c.decay_type, c.grad_norm_clip = "cosine", 1.0
  c.lock()
  return c
