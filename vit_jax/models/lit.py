"""LiT image-text models (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
Tuning"): a ViT image tower and a text tower mapping into one embedding space.

Owns the pure Flax modules and the five published configurations (LIT_CONFIGS, Google's
names and numbers). The parameter tree is that of Google's `gs://vit_models/lit/*.npz`:

  img/...   our VisionTransformer (no head when out_dim[0] is None, else `head` to out_dim[0])
  txt/...   `bert`: BertEncoder_0/... (flaxformer's layout, models/bert.py) + head, reading the
            first ([CLS]) token; `text_transformer`: Embed_0, pos_embedding, Encoder_0/... (our
            ViT encoder without its position embedding) + head, reading the LAST token (or
            big_vision's other poolings, MAPHead_0 for 'map')
  t         the log of the temperature: out['t'] = exp(t) multiplies the cosine similarities
  b         (bias_init set: big_vision's SigLIP) the learned bias of the sigmoid loss's logits

Loading files, tokenizers and image preprocessing need I/O and TensorFlow: they are methods
of Google's `LitModel` (vit_jax/google_compat/lit.py), a subclass of this one. No I/O here.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax.models.axes import logical
from vit_jax.models.bert import bert_encoder
from vit_jax.models.registry import from_big_vision, get_model_config
from vit_jax.models.transformer import Encoder, MAPHead
from vit_jax.models.vit import VisionTransformer

TEXT_MODELS = ("bert", "text_transformer")
_NORM_EPS = 1e-8  # Keeps a zero embedding finite when normalising (as Google's towers).


def _head(features: int) -> nn.Dense:
  return nn.Dense(features, kernel_init=logical(nn.initializers.lecun_normal(), "embed", "repr"),
                  bias_init=logical(nn.initializers.zeros, "repr"), name="head")


class BertModel(nn.Module):
  """BERT encoder; the [CLS] (first) token, projected by `head` when num_classes is set.

  config: 'base' / 'large' (Google's) or a dict of BertEncoder size fields."""
  config: Any
  num_classes: Optional[int] = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    batch, length = tokens.shape
    out = {}
    x = out["transformed"] = bert_encoder(self.config, dropout_rate=self.dropout_rate)(
        tokens, jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
        jnp.zeros((batch, length), jnp.int32), tokens != 0, train=train)
    x = out["pre_logits"] = x[:, 0]
    if self.num_classes:
      x = out["logits"] = _head(self.num_classes)(x)
    return x, out


TEXT_POOLS = ("last", "first", "mean", "max", "map")


class TextTransformer(nn.Module):
  """Token embedding, learned position embedding, ViT encoder, pooling, `head`.

  pool_type (big_vision's text tower): 'last' (LiT's; the EOS-padded last position), 'first',
  'mean', 'max' or 'map' (a MAPHead_0 over the tokens). num_classes None: no head."""
  num_classes: Optional[int]
  width: int = 512
  num_layers: int = 12
  mlp_dim: int = 2048
  num_heads: int = 8
  dropout_rate: float = 0.0
  vocab_size: int = 32_000
  pool_type: str = "last"

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = {}
    x = out["embedded"] = nn.Embed(
        self.vocab_size, self.width,
        embedding_init=logical(nn.linear.default_embed_init, "vocab", "embed"),
        name="Embed_0")(tokens)
    _, length, width = x.shape
    x = x + self.param("pos_embedding",
                       logical(nn.initializers.normal(stddev=1 / jnp.sqrt(width)),
                               None, "posemb", "embed"), (1, length, width), jnp.float32)
    x = Encoder(num_layers=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                dropout_rate=self.dropout_rate, attention_dropout_rate=0.0,
                add_position_embedding=False, name="Encoder_0")(x, train=train)
    if self.pool_type not in TEXT_POOLS:
      raise ValueError(f"text pool_type={self.pool_type!r} is not known; use one of "
                       f"{TEXT_POOLS}.")
    if self.pool_type == "last":  # As the published LiT and SigLIP text towers were trained.
      x = x[:, -1]
    elif self.pool_type == "first":
      x = x[:, 0]
    elif self.pool_type == "mean":
      x = jnp.mean(x, axis=1)
    elif self.pool_type == "max":
      x = jnp.max(x, axis=1)
    else:
      x = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim, name="MAPHead_0")(x)
    out["pre_logits"] = x
    if self.num_classes:
      x = out["logits"] = _head(self.num_classes)(x)
    return x, out


def _normalized(z: jax.Array, prefix: str, out: dict[str, jax.Array]) -> jax.Array:
  out[f"{prefix}/norm"] = jnp.linalg.norm(z, axis=1, keepdims=True)
  out[f"{prefix}/normalized"] = z = z / (out[f"{prefix}/norm"] + _NORM_EPS)
  return z


class LitModel(nn.Module):
  """Image tower `img` (ViT config `image`), text tower `txt` (`text_model` with fields `text`).

  out_dim: (image, text) projection sizes (None: no projection; an int: both).
  pp: the tokenizer / image settings the model was trained with (tokenizer_name, max_len,
  size). `apply(variables, images=..., tokens=...)` -> (zimg, ztxt, out): unit-norm
  embeddings (None for a tower not given) and `out` with 't' (the temperature), the norms
  and each tower's intermediate values ('img/...', 'txt/...').
  big_vision's two-tower options (defaults: Google's LiT): temperature_init (t starts at its
  log) and bias_init (not None: SigLIP's learned bias `b`, in out['b']).
  """
  image: Any
  text_model: str
  text: Any
  pp: Any
  out_dim: Union[int, tuple[Optional[int], Optional[int]]]
  model_name: str
  temperature_init: float = 1.0
  bias_init: Optional[float] = None

  def init_inputs(self, image_shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """Dummy keyword inputs for `init`: images of `image_shape` and pp.max_len tokens."""
    return {"images": jnp.zeros(image_shape, jnp.float32),
            "tokens": jnp.zeros((image_shape[0], int(self.pp["max_len"])), jnp.int32)}

  def _out_dims(self) -> tuple[Optional[int], Optional[int]]:
    dims = self.out_dim
    return (dims, dims) if isinstance(dims, int) else tuple(dims)

  @nn.compact
  def __call__(self, *, images: Optional[jax.Array] = None, tokens: Optional[jax.Array] = None,
               train: bool = False
               ) -> tuple[Optional[jax.Array], Optional[jax.Array], dict[str, jax.Array]]:
    image_dim, text_dim = self._out_dims()
    zimg = ztxt = None
    out: dict[str, jax.Array] = {}
    if tokens is not None:
      if self.text_model not in TEXT_MODELS:
        raise ValueError(f"text_model={self.text_model!r} is not known; use one of "
                         f"{TEXT_MODELS}.")
      tower = BertModel if self.text_model == "bert" else TextTransformer
      ztxt, txt_out = tower(**{"num_classes": text_dim, **dict(self.text or {})}, name="txt")(
          tokens, train=train)
      out.update({f"txt/{k}": v for k, v in txt_out.items()})
      ztxt = _normalized(ztxt, "txt", out)
    if images is not None:
      # A zero projection would give zero embeddings, whose normalisation has no gradient
      # (NaN): the image tower's head starts random, as big_vision's two towers do.
      zimg = VisionTransformer(**{**dict(self.image), "num_classes": image_dim,
                                  "head_zeroinit": False}, name="img")(images, train=train)
      zimg = _normalized(zimg, "img", out)
    log_t = math.log(self.temperature_init)
    t = self.param("t", logical(nn.initializers.constant(log_t), None), (1,), jnp.float32)
    out["t"] = jnp.exp(t)
    if self.bias_init is not None:
      out["b"] = self.param("b", logical(nn.initializers.constant(self.bias_init), None), (1,),
                            jnp.float32)
    return zimg, ztxt, out


def _lit(name: str, image: Any, out_dim: tuple[Optional[int], Optional[int]], text_model: str,
         text: dict[str, Any], tokenizer: str, size: int = 224, max_len: int = 16,
         **two_tower: float) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model_name = name
  c.out_dim = out_dim
  c.image = get_model_config(image) if isinstance(image, str) else image
  c.text_model = text_model
  c.text = text
  c.pp = dict(tokenizer_name=tokenizer, size=size, max_len=max_len)
  for key, value in two_tower.items():  # temperature_init, bias_init (big_vision's SigLIP)
    c[key] = value
  return c.lock()


# Google's five published LiT models (vit_jax configs.models; the checkpoints of
# gs://vit_models/lit/ with their vocabularies beside them).
LIT_CONFIGS: dict[str, ml_collections.ConfigDict] = {
    "LiT-B16B": _lit("LiT-B16B", "ViT-B_16", (768, 768), "bert", dict(config="base"), "bert"),
    "LiT-B16B_2": _lit("LiT-B16B_2", "ViT-B_16", (None, 768), "bert", dict(config="base"),
                       "bert"),
    "LiT-L16L": _lit("LiT-L16L", "ViT-L_16", (None, 1024), "bert", dict(config="large"),
                     "bert"),
    "LiT-L16S": _lit("LiT-L16S", "ViT-L_16", (None, 1024), "text_transformer",
                     dict(width=384, num_layers=12, mlp_dim=1536, num_heads=6,
                          vocab_size=16_000), "sentencepiece"),
    "LiT-L16Ti": _lit("LiT-L16Ti", "ViT-L_16", (None, 1024), "text_transformer",
                      dict(width=192, num_layers=12, mlp_dim=768, num_heads=3,
                           vocab_size=16_000), "sentencepiece"),
}
GOOGLE_LIT_NAMES = tuple(LIT_CONFIGS)
# Ours, not Google's: a tiny LiT (the 'testing' ViT, a 1-layer BERT of width 16 over a
# 64-piece vocabulary, 32 px images) for offline examples and tests.
LIT_CONFIGS["LiT-testing"] = _lit(
    "LiT-testing", "testing", (16, 16), "bert",
    dict(config=dict(hidden_size=16, intermediate_dim=32, num_hidden_layers=1,
                     num_attention_heads=2, vocab_size=64, max_length=16, num_segments=2)),
    "bert", size=32, max_len=8)
# big_vision's SigLIP B/16 (Zhai et al. 2023; its SigLIP demo's model config for the English
# WebLI B/16 checkpoints): a MAP-pooled B/16 image tower without projection, a B text
# transformer (32k sentencepiece vocabulary, 64 tokens, last-token pooling) projected to 768,
# temperature 10 and bias -10 at init.
LIT_CONFIGS["SigLIP-B_16"] = _lit(
    "SigLIP-B_16", from_big_vision("B/16", pool_type="map"), (None, 768), "text_transformer",
    dict(width=768, num_layers=12, mlp_dim=3072, num_heads=12, vocab_size=32_000),
    "sentencepiece", size=224, max_len=64, temperature_init=10.0, bias_init=-10.0)
# Ours: a tiny SigLIP-style two-tower (the 'testing' ViT, a 1-layer text transformer of width
# 16 over 64 word pieces, 8 tokens) for offline examples and tests.
LIT_CONFIGS["SigLIP-testing"] = _lit(
    "SigLIP-testing", "testing", (16, 16), "text_transformer",
    dict(width=16, num_layers=1, mlp_dim=32, num_heads=2, vocab_size=64, pool_type="first"),
    "bert", size=32, max_len=8, temperature_init=10.0, bias_init=-10.0)
IMAGE_TEXT_NAMES = tuple(LIT_CONFIGS)


def is_lit(model_config_or_name: Any) -> bool:
  """True for an image-text name (LIT_CONFIGS: 'LiT-...', 'SigLIP-...'), a LitModel, or a
  config with LiT's fields (text_model + image): the one test of "is this an image-text
  model"."""
  if isinstance(model_config_or_name, str):
    return model_config_or_name in LIT_CONFIGS or model_config_or_name.startswith("LiT-")
  if isinstance(model_config_or_name, nn.Module):
    return isinstance(model_config_or_name, LitModel)
  return "text_model" in model_config_or_name and "image" in model_config_or_name


def get_lit_config(name: str) -> ml_collections.ConfigDict:
  """An unlocked copy of LIT_CONFIGS[name]; one KeyError naming the valid names otherwise."""
  if name not in LIT_CONFIGS:
    raise KeyError(f"unknown LiT model {name!r}; valid names: {sorted(LIT_CONFIGS)}.")
  return ml_collections.ConfigDict(LIT_CONFIGS[name].to_dict())
