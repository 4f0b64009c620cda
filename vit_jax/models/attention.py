"""Multi-head dot-product attention with a selectable kernel.

Owns `MultiHeadDotProductAttention` (parameter names `query`, `key`, `value`, `out` with
the official shapes: query/key/value kernel (D, H, D/H) + bias (H, D/H), out kernel
(H, D/H, D) + bias (D,), exactly as Flax's DenseGeneral creates them for the official
checkpoints), `dot_product_attention` and `headmajor_attention`; which implementation runs
where is decided in platform.py.

How it computes (the parameters stay the official separate ones):
  * the query/key/value projections run as ONE matmul over the (batch * tokens, D) token
    matrix: the kernels are stacked inside the module at apply time into (D, 3, H, D/H)
    ((D, 2, H, D/H) for key/value when queries come from another input, as in MAPHead).
    On CPU the stacked kernel is used as a 2-D (D, 3D) matrix (XLA:CPU then computes its
    weight gradient without transposing the (tokens, 3D) gradient); elsewhere the kernel
    keeps its (D, 3, heads, head_dim) axes so a 'heads' sharding carries through;
  * the attention itself by implementation:
      'xla' / 'cudnn'  `jax.nn.dot_product_attention` ('cudnn': the fused cuDNN kernel, GPU
                       with bf16/fp16 compute);
      'einsum'         explicit einsum + float32 softmax on (batch, tokens, heads, head_dim),
                       differentiated by JAX;
      'einsum_vjp'     the same maths on head-major (batch, heads, tokens, head_dim) arrays
                       (`headmajor_attention`): softmax normalised after the PV matmul, and a
                       hand-written backward pass whose matmuls all take operands in layouts
                       XLA:CPU's dot kernels accept without copying the (tokens x tokens)
                       matrices. On a 2-core CPU it makes the whole ViT-Ti/16 train step
                       ~1.17x and inference ~1.35x faster than 'xla' (docs/performance.md,
                       ablation rows (b) -> (c));
      None             the library's choice per platform: 'einsum_vjp' on CPU,
                       `jax.nn.dot_product_attention(implementation=None)` elsewhere (cuDNN
                       when JAX can use it, else XLA). `resolve_attention_impl` says which.
Attention dropout needs the attention weights, so when it is active (train and rate > 0)
the 'einsum' formulation is used whatever implementation was asked for.

Masks: every implementation takes an optional boolean `mask` (batch, 1, q_tokens, kv_tokens),
True where a query may attend (packed sequences: the block-diagonal mask of their segment ids,
models/packed.py). Masked logits get a large finite negative value, so a row with no allowed
key gives uniform weights instead of NaN; 'einsum_vjp' carries the mask as an additive bias
through its hand-written backward pass, 'xla' passes it to `jax.nn.dot_product_attention`, and
'cudnn' passes it there as that additive bias (what the fused kernel takes).

Inspection: applied with the 'intermediates' collection mutable, the module computes the
float32 probabilities explicitly (`attention_weights`), sows them as
`attention_weights` (batch, heads, q_tokens, kv_tokens) and multiplies exactly those with
the values, so what is returned is what the forward used (vit_jax/analysis.py reads them).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.axes import logical
from vit_jax.models.platform import on_cpu, resolve_attention_impl

MASKED_LOGIT = -1e30  # float32 logit of a masked (query, key) pair: exp() of it is exactly 0


def mask_bias(mask: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """Additive logit bias of a boolean mask: 0 where allowed, a large negative value where not
  (MASKED_LOGIT in float32; 70% of the dtype's range in a narrower one, so it stays finite)."""
  neg = MASKED_LOGIT if jnp.dtype(dtype) == jnp.float32 else -0.7 * float(jnp.finfo(dtype).max)
  return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(neg, dtype))


def attention_weights(q: jax.Array, k: jax.Array,
                      mask: Optional[jax.Array] = None) -> jax.Array:
  """float32 softmax(q k^T / sqrt(d)): (batch, heads, q_tokens, kv_tokens) probabilities;
  0 where `mask` (broadcast to that shape) is False."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
  logits = logits.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.asarray(MASKED_LOGIT, jnp.float32))
  return jax.nn.softmax(logits, axis=-1)


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, dropout_rate: float = 0.0,
                     dropout_rng: Optional[jax.Array] = None,
                     mask: Optional[jax.Array] = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v on (batch, tokens, heads, head_dim) arrays, softmax in float32."""
  weights = attention_weights(q, k, mask).astype(v.dtype)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / jnp.asarray(1.0 - dropout_rate, weights.dtype),
                        jnp.zeros((), weights.dtype))
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _headmajor_forward(q: jax.Array, k: jax.Array, v: jax.Array,
                       bias: Optional[jax.Array] = None):
  """Output and residuals of softmax(q k^T / sqrt(d) + bias) v on (B, H, T, d) arrays.

  The softmax is normalised AFTER the PV matmul (flash-attention style: exp(logits - max)
  @ v, then divided by the row sums), which on XLA:CPU makes the forward ~1.7x faster than
  normalising the (T x T) weights first."""
  qs = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", qs, k).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  inv_sum = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
  out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v) * inv_sum.astype(v.dtype)
  return out, (qs, k, v, e, inv_sum)


@jax.custom_vjp
def headmajor_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v on head-major (batch, heads, tokens, head_dim) arrays.

  Float32 softmax; same values as `einsum_attention` on the transposed arrays. The backward
  pass is written out (see the module doc): P = e / rowsum(e), dP = dO V^T,
  dS = P * (dP - rowsum(dP * P)), dQ = dS K / sqrt(d), dK = dS^T (Q / sqrt(d)), dV = P^T dO.
  """
  return _headmajor_forward(q, k, v)[0]


def _headmajor_fwd(q, k, v):
  return _headmajor_forward(q, k, v)


def _headmajor_grads(res, dout):
  qs, k, v, e, inv_sum = res
  scale = jnp.asarray(qs.shape[-1] ** -0.5, qs.dtype)
  dout = dout.astype(v.dtype)
  probs = e * inv_sum
  dp = jnp.einsum("bhqd,bhkd->bhqk", dout, v).astype(jnp.float32)
  ds = (probs * (dp - jnp.sum(dp * probs, axis=-1, keepdims=True))).astype(qs.dtype)
  dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k) * scale
  dk = jnp.einsum("bhqk,bhqd->bhkd", ds, qs)
  dv = jnp.einsum("bhqk,bhqd->bhkd", probs.astype(dout.dtype), dout)
  return dq.astype(qs.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _headmajor_bwd(res, dout):
  return _headmajor_grads(res, dout)


headmajor_attention.defvjp(_headmajor_fwd, _headmajor_bwd)


@jax.custom_vjp
def headmajor_attention_biased(q: jax.Array, k: jax.Array, v: jax.Array,
                               bias: jax.Array) -> jax.Array:
  """`headmajor_attention` with an additive float32 logit bias broadcast to (B, H, Tq, Tk) (a
  mask's `mask_bias`); the bias gets no gradient (it is a constant of the batch)."""
  return _headmajor_forward(q, k, v, bias)[0]


def _headmajor_biased_fwd(q, k, v, bias):
  return _headmajor_forward(q, k, v, bias)  # the bias is not kept: the backward needs only e


def _headmajor_biased_bwd(res, dout):
  return _headmajor_grads(res, dout) + (None,)  # None: a zero cotangent for the bias


headmajor_attention_biased.defvjp(_headmajor_biased_fwd, _headmajor_biased_bwd)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: Optional[str] = None, dropout_rate: float = 0.0,
                          dropout_rng: Optional[jax.Array] = None,
                          mask: Optional[jax.Array] = None) -> jax.Array:
  """Attention over (batch, tokens, heads, head_dim) arrays with the chosen implementation;
  `mask` (batch, 1, q_tokens, kv_tokens) bool, True where a query may attend (module doc)."""
  implementation = resolve_attention_impl(implementation)
  if implementation == "einsum" or (dropout_rng is not None and dropout_rate > 0.0):
    return einsum_attention(q, k, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                            mask=mask)
  if implementation == "einsum_vjp":
    q, k, v = (jnp.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
    if mask is None:
      out = headmajor_attention(q, k, v)
    else:
      out = headmajor_attention_biased(q, k, v, mask_bias(mask))
    return jnp.transpose(out, (0, 2, 1, 3))
  if mask is not None and implementation == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, bias=mask_bias(mask, q.dtype),
                                        implementation=implementation)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class DenseGeneralParams(nn.Module):
  """Creates `kernel` and `bias` exactly as `nn.DenseGeneral(features, axis=-1 or (-2, -1))`.

  Same names, shapes, float32 dtype, initialiser calls (on the flattened 2-D shape, as
  DenseGeneral does, so fan-in/fan-out and hence values are identical) and logical axis
  annotations; returns them unboxed without applying anything, so the caller can combine
  several projections into one matmul.
  """
  in_shape: Sequence[int]
  features: Sequence[int]
  kernel_axes: Sequence[Optional[str]]
  bias_axes: Sequence[Optional[str]]
  use_bias: bool = True  # False: no `bias` parameter; zeros are returned in its place.

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    in_shape, features = tuple(self.in_shape), tuple(self.features)
    kernel_init = logical(nn.initializers.xavier_uniform(), *self.kernel_axes)
    bias_init = logical(nn.initializers.zeros, *self.bias_axes)

    def reshaped(init, flat_shape):
      def wrapped(rng, shape, dtype=jnp.float32):
        value = init(rng, flat_shape, dtype)
        if isinstance(value, nn.meta.AxisMetadata):
          return nn.meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
        return jnp.reshape(value, shape)
      return wrapped

    kernel = self.param("kernel", reshaped(kernel_init, (int(np.prod(in_shape)),
                                                         int(np.prod(features)))),
                        in_shape + features, jnp.float32)
    if not self.use_bias:
      return nn.meta.unbox(kernel), jnp.zeros(features, jnp.float32)
    bias = self.param("bias", reshaped(bias_init, (int(np.prod(features)),)), features,
                      jnp.float32)
    return nn.meta.unbox(kernel), nn.meta.unbox(bias)


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention; params query/key/value (D,H,D/H)+(H,D/H) and out (H,D/H,D)+(D,).

  ViT-22B options (Dehghani et al. 2023; off by default, so the official layouts stay):
  `qk_norm` applies a LayerNorm over the head dimension to queries and keys (params
  `query_norm`, `key_norm`: scale (D/H,), plus bias when `use_bias`), and `use_bias=False`
  drops the query/key/value biases (the output projection keeps its bias).
  """
  num_heads: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True
  attention_impl: Optional[str] = None
  qk_norm: bool = False
  use_bias: bool = True

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               mask: Optional[jax.Array] = None) -> jax.Array:
    """mask: optional bool (batch, 1, q_tokens, kv_tokens), True where a query may attend."""
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"hidden size {width} is not divisible by num_heads={self.num_heads}; "
                       "pick a num_heads that divides the hidden size.")
    if inputs_kv.shape[-1] != width:
      raise ValueError(f"inputs_kv width {inputs_kv.shape[-1]} differs from inputs_q's {width}.")
    heads, head_dim = self.num_heads, width // self.num_heads
    dtype = self.dtype

    def projection(name):
      return DenseGeneralParams(in_shape=(width,), features=(heads, head_dim),
                                kernel_axes=("embed", "heads", "kv"), bias_axes=("heads", "kv"),
                                use_bias=self.use_bias, name=name)()

    (wq, bq), (wk, bk), (wv, bv) = projection("query"), projection("key"), projection("value")
    wo, bo = DenseGeneralParams(in_shape=(heads, head_dim), features=(width,),
                                kernel_axes=("heads", "kv", "embed"), bias_axes=("embed",),
                                name="out")()

    batch, q_len = inputs_q.shape[0], inputs_q.shape[1]

    def project(x, kernels, biases):
      """(B,T,D) @ stacked kernels (D,S,H,d) -> (B,T,S,H,d): one matmul for S projections."""
      kernel = jnp.stack(kernels, axis=1).astype(dtype)
      bias = jnp.stack(biases, axis=0).astype(dtype)
      tokens = jnp.reshape(x.astype(dtype), (-1, width))
      if on_cpu():  # 2-D kernel: the weight gradient then needs no transpose of dqkv
        y = tokens @ jnp.reshape(kernel, (width, -1))
        y = jnp.reshape(y, (-1,) + kernel.shape[1:]) + bias
      else:  # the kernel keeps its (D, S, heads, head_dim) axes: 'heads' may be sharded
        y = jnp.einsum("nd,dshk->nshk", tokens, kernel) + bias
      return jnp.reshape(y, x.shape[:2] + y.shape[1:])

    if inputs_q is inputs_kv:
      qkv = project(inputs_q, (wq, wk, wv), (bq, bk, bv))
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      q = project(inputs_q, (wq,), (bq,))[:, :, 0]
      kv = project(inputs_kv, (wk, wv), (bk, bv))
      k, v = kv[:, :, 0], kv[:, :, 1]
    if self.qk_norm:
      def norm(x, name):
        return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                            use_bias=self.use_bias,
                            scale_init=logical(nn.initializers.ones, "kv"),
                            bias_init=logical(nn.initializers.zeros, "kv"), name=name)(x)
      q, k = norm(q, "query_norm"), norm(k, "key_norm")
    use_dropout = not self.deterministic and self.dropout_rate > 0.0
    if self.is_mutable_collection("intermediates") and not use_dropout:
      weights = attention_weights(q, k, mask)
      self.sow("intermediates", "attention_weights", weights)
      y = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    else:
      y = dot_product_attention(
          q, k, v, implementation=self.attention_impl, dropout_rate=self.dropout_rate,
          dropout_rng=self.make_rng("dropout") if use_dropout else None, mask=mask)
    out = jnp.einsum("nhk,hkd->nd", jnp.reshape(y, (batch * q_len, heads, head_dim)),
                     wo.astype(dtype))
    return jnp.reshape(out + bo.astype(dtype), (batch, q_len, width))
