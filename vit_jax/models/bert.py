"""A BERT encoder (Devlin et al. 2019) whose parameter tree is that of flaxformer's BertEncoder.

LiT's `bert` text towers were trained with flaxformer, so the published LiT files name the
text tower's parameters as flaxformer writes them:

  embedder/embedders_{token_ids,position_ids,segment_ids}/embedding
  layer_norm/{scale,bias}                                  (after the embedding sum)
  encoder_block/layer_sequence/layers_{i}/
      attention_block/attention_layer/{query,key,value}/{kernel (D, D), bias (D,)}
      attention_block/dense_layer/{kernel (D, D), bias}    (heads folded into one axis)
      attention_block/layer_norm
      mlp_block/mlp/dense_layer (D -> intermediate), mlp_block/dense_layer (-> D)
      mlp_block/layer_norm

Post-LN blocks: x = LN(x + Attn(x)), x = LN(x + MLP(x)); tanh-GELU (flax's default, which
flaxformer uses); logits scaled by 1/sqrt(head_dim); a padding token (id 0) is masked as
key and as query with a -1e10 bias. No I/O, no TensorFlow.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.axes import logical

# Google's BertBaseConfig / BertLargeConfig (flaxformer.architectures.bert.configs).
BERT_CONFIGS = {
    "base": dict(hidden_size=768, intermediate_dim=3072, num_hidden_layers=12,
                 num_attention_heads=12, vocab_size=30522, max_length=512, num_segments=2),
    "large": dict(hidden_size=1024, intermediate_dim=4096, num_hidden_layers=24,
                  num_attention_heads=16, vocab_size=30522, max_length=512, num_segments=2),
}
LN_EPS = 1e-12
_MASKED = -1e10
_INIT = nn.initializers.truncated_normal(stddev=0.02)


def _dense(features: int, name: str, axes: tuple[Optional[str], Optional[str]]) -> nn.Dense:
  return nn.Dense(features, kernel_init=logical(_INIT, *axes),
                  bias_init=logical(nn.initializers.zeros, axes[1]), name=name)


def _layer_norm() -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, scale_init=logical(nn.initializers.ones, "embed"),
                      bias_init=logical(nn.initializers.zeros, "embed"), name="layer_norm")


class Embedder(nn.Module):
  """Sum of the token, position and segment embeddings."""
  hidden_size: int
  vocab_size: int
  max_length: int
  num_segments: int

  @nn.compact
  def __call__(self, token_ids: jax.Array, position_ids: jax.Array,
               segment_ids: jax.Array) -> jax.Array:
    def embed(n: int, axis: Optional[str], name: str) -> nn.Embed:
      return nn.Embed(n, self.hidden_size, embedding_init=logical(_INIT, axis, "embed"),
                      name=name)
    return (embed(self.vocab_size, "vocab", "embedders_token_ids")(token_ids)
            + embed(self.max_length, "posemb", "embedders_position_ids")(position_ids)
            + embed(self.num_segments, None, "embedders_segment_ids")(segment_ids))


class SelfAttention(nn.Module):
  """Multi-head self-attention; returns (batch, length, heads * head_dim), not yet projected."""
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.num_heads

    def heads(name: str) -> jax.Array:
      y = _dense(width, name, ("embed", "heads"))(x)
      return jnp.reshape(y, (batch, length, self.num_heads, head_dim))
    q, k, v = heads("query"), heads("key"), heads("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(head_dim).astype(x.dtype), k)
    weights = jax.nn.softmax(logits + bias, axis=-1)
    return jnp.reshape(jnp.einsum("bhqk,bkhd->bqhd", weights, v), (batch, length, width))


class AttentionBlock(nn.Module):
  """LN(x + dropout(dense(attention(x))))."""
  num_heads: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
    y = SelfAttention(self.num_heads, name="attention_layer")(x, bias)
    y = _dense(x.shape[-1], "dense_layer", ("heads", "embed"))(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return _layer_norm()(x + y)


class Mlp(nn.Module):
  """dense_layer (D -> intermediate) then GELU."""
  intermediate_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.gelu(_dense(self.intermediate_dim, "dense_layer", ("embed", "mlp"))(x))


class MlpBlock(nn.Module):
  """LN(x + dropout(dense(mlp(x))))."""
  intermediate_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = Mlp(self.intermediate_dim, name="mlp")(x)
    y = _dense(x.shape[-1], "dense_layer", ("mlp", "embed"))(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return _layer_norm()(x + y)


class EncoderLayer(nn.Module):
  """attention_block then mlp_block."""
  num_heads: int
  intermediate_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
    x = AttentionBlock(self.num_heads, self.dropout_rate, name="attention_block")(
        x, bias, train=train)
    return MlpBlock(self.intermediate_dim, self.dropout_rate, name="mlp_block")(x, train=train)


class LayerSequence(nn.Module):
  """`layers_0` .. `layers_{n-1}`."""
  num_layers: int
  num_heads: int
  intermediate_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, self.intermediate_dim, self.dropout_rate,
                       name=f"layers_{i}")(x, bias, train=train)
    return x


class EncoderBlock(nn.Module):
  """The layer stack, under flaxformer's `layer_sequence` name."""
  num_layers: int
  num_heads: int
  intermediate_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
    return LayerSequence(self.num_layers, self.num_heads, self.intermediate_dim,
                         self.dropout_rate, name="layer_sequence")(x, bias, train=train)


class BertEncoder(nn.Module):
  """Embeds (token, position, segment) ids and encodes them: (batch, length, hidden_size).

  Fields and defaults are flaxformer's BertEncoder's (BERT_CONFIGS holds base and large)."""
  hidden_size: int
  intermediate_dim: int
  vocab_size: int
  max_length: int
  num_segments: int
  num_hidden_layers: int
  num_attention_heads: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, token_ids: jax.Array, position_ids: jax.Array, segment_ids: jax.Array,
               input_mask: jax.Array, *, train: bool = False) -> jax.Array:
    x = Embedder(self.hidden_size, self.vocab_size, self.max_length, self.num_segments,
                 name="embedder")(token_ids, position_ids, segment_ids)
    x = _layer_norm()(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    mask = input_mask.astype(bool)
    pair = mask[:, None, :, None] & mask[:, None, None, :]  # (batch, 1, query, key)
    bias = jnp.where(pair, 0.0, _MASKED).astype(x.dtype)
    return EncoderBlock(self.num_hidden_layers, self.num_attention_heads,
                        self.intermediate_dim, self.dropout_rate, name="encoder_block")(
                            x, bias, train=train)


def bert_encoder(config: Union[str, Mapping[str, Any]], **overrides: Any) -> BertEncoder:
  """The BertEncoder of BERT_CONFIGS[config] ('base' / 'large'), or of a mapping of all its
  size fields (a smaller BERT, e.g. for tests); one ValueError otherwise."""
  if isinstance(config, str):
    if config not in BERT_CONFIGS:
      raise ValueError(f"BERT config {config!r} is not known; use one of {sorted(BERT_CONFIGS)} "
                       f"or a dict of the fields {sorted(BERT_CONFIGS['base'])}.")
    config = BERT_CONFIGS[config]
  missing = sorted(set(BERT_CONFIGS["base"]) - set(config))
  if missing:
    raise ValueError(f"BERT config {dict(config)} lacks {missing}; give all of "
                     f"{sorted(BERT_CONFIGS['base'])} or the name 'base' / 'large'.")
  return BertEncoder(**{**dict(config), **overrides}, name="BertEncoder_0")
