"""Multi-head dot-product attention with a selectable kernel.

Owns `MultiHeadDotProductAttention` (parameter names `query`, `key`, `value`,
`out` as in Flax / the official checkpoints) and `dot_product_attention`, which
runs either `jax.nn.dot_product_attention` (implementation None / 'xla' /
'cudnn': the cuDNN fused kernel on GPU) or an explicit einsum + softmax
formulation ('einsum'). Attention dropout needs the attention weights, so when
it is active (train and rate > 0) the explicit formulation is used whatever
implementation was asked for.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.axes import logical

ATTENTION_IMPLS = (None, "xla", "cudnn", "einsum")


def check_attention_impl(impl: Optional[str]) -> None:
  """Raises a ValueError naming the valid choices if `impl` is not one."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is not supported; use one of {ATTENTION_IMPLS} "
                     "(None lets JAX choose, 'cudnn' needs a GPU and bf16/fp16 compute).")


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, dropout_rate: float = 0.0,
                     dropout_rng: Optional[jax.Array] = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v on (batch, tokens, heads, head_dim) arrays, softmax in float32."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / jnp.asarray(1.0 - dropout_rate, weights.dtype),
                        jnp.zeros((), weights.dtype))
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: Optional[str] = None, dropout_rate: float = 0.0,
                          dropout_rng: Optional[jax.Array] = None) -> jax.Array:
  """Attention over (batch, tokens, heads, head_dim) arrays with the chosen implementation."""
  check_attention_impl(implementation)
  if implementation == "einsum" or (dropout_rng is not None and dropout_rate > 0.0):
    return einsum_attention(q, k, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention; params query/key/value (D,H,D/H)+(H,D/H) and out (H,D/H,D)+(D,)."""
  num_heads: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array) -> jax.Array:
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"hidden size {width} is not divisible by num_heads={self.num_heads}; "
                       "pick a num_heads that divides the hidden size.")
    head_dim = width // self.num_heads
    xavier = nn.initializers.xavier_uniform()

    def projection(name):
      return nn.DenseGeneral(
          features=(self.num_heads, head_dim), axis=-1, dtype=self.dtype,
          param_dtype=jnp.float32, kernel_init=logical(xavier, "embed", "heads", "kv"),
          bias_init=logical(nn.initializers.zeros, "heads", "kv"), name=name)

    q = projection("query")(inputs_q)
    k = projection("key")(inputs_kv)
    v = projection("value")(inputs_kv)
    use_dropout = not self.deterministic and self.dropout_rate > 0.0
    y = dot_product_attention(
        q, k, v, implementation=self.attention_impl, dropout_rate=self.dropout_rate,
        dropout_rng=self.make_rng("dropout") if use_dropout else None)
    return nn.DenseGeneral(
        features=width, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=logical(xavier, "heads", "kv", "embed"),
        bias_init=logical(nn.initializers.zeros, "embed"), name="out")(y)
