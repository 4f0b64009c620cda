"""Formulations that XLA:CPU runs faster; same values, used only on the CPU backend.

Owns `dense_dot_general` (a drop-in `dot_general` for `nn.Dense`), `matmul` (x @ w on 2-D
operands with a hand-written backward pass), `layer_norm` (a LayerNorm with a hand-written
backward pass) and `LayerNorm` (the Flax module around it, parameters as `nn.LayerNorm`'s).

Matmul: the weight gradient of a dense layer is dW = x^T dy, a matmul that contracts the
token axis of both operands. XLA:CPU runs that "transposed-lhs" matmul ~1.4x faster when
the output's first axis is the narrower one: for a (768, 192) kernel (the MLP's second
layer, the patch embedding) dW^T = dy^T x, a (192, 768) result, takes 13.2 ms where dW
takes 18.6 ms (6304 tokens, one core; docs/performance.md). XLA folds a plain transpose
of the result back into the matmul, so `matmul` puts an optimisation barrier between the
(Dout, Din) product and its transpose (a copy of the small kernel-sized matrix).

LayerNorm: the backward of `nn.LayerNorm` as JAX differentiates it compiles on XLA:CPU into
passes that materialise broadcasts of the scale and of the per-row statistics; written out
(dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * scale) it reads x and dy in
fewer passes (bench/cpu_formulations.py; docs/performance.md). Used for training only:
the forward alone is no faster than `nn.LayerNorm`'s. The statistics are computed as
`nn.LayerNorm` computes them (float32, E[x^2] - E[x]^2).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.axes import logical
from vit_jax.models.platform import on_cpu


def _matmul_fwd(x: jax.Array, w: jax.Array):
  return x @ w, (x, w)


def _matmul_bwd(res, dy):
  x, w = res
  dy = dy.astype(x.dtype)
  dx = jax.lax.dot_general(dy, w, (((1,), (1,)), ((), ())))
  if w.shape[0] > w.shape[1]:  # (Din, Dout) with Din > Dout: compute (Dout, Din), then transpose
    dw_t = jax.lax.dot_general(dy, x, (((0,), (0,)), ((), ())))
    dw = jnp.transpose(jax.lax.optimization_barrier(dw_t))
  else:
    dw = jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dw.astype(w.dtype)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """(N, Din) @ (Din, Dout); its weight gradient is taken in XLA:CPU's faster orientation."""
  return x @ w


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                      precision: Any = None,
                      preferred_element_type: Optional[Any] = None) -> jax.Array:
  """`jax.lax.dot_general` for `nn.Dense(dot_general=...)`: `matmul` on the CPU backend.

  Only the dense-layer contraction (last axis of `lhs` with the first of a 2-D `rhs`, no
  batch axes, default precision) on the CPU backend takes the `matmul` path; everything
  else (and every other backend) is plain `jax.lax.dot_general`.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  dense = (tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
           and rhs.ndim == 2 and not lhs_batch and not rhs_batch)
  if (not dense or precision is not None or preferred_element_type is not None
      or lhs.dtype != rhs.dtype or not on_cpu()):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  y = matmul(jnp.reshape(lhs, (-1, lhs.shape[-1])), rhs)
  return jnp.reshape(y, lhs.shape[:-1] + (rhs.shape[1],))


def _layer_norm_stats(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """Row mean and 1/sqrt(var + eps) of a float32 (N, D) matrix, (N, 1) each.

  var = E[x^2] - E[x]^2 (clamped at 0), as `nn.LayerNorm(use_fast_variance=True)`, Flax's
  default, computes it: both row sums come from one pass over x."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
  return mean, jax.lax.rsqrt(var + eps)


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean, rstd = _layer_norm_stats(x32, eps)
  y = (x32 - mean) * (rstd * scale) + bias
  return y.astype(x.dtype), (x, scale, mean, rstd)


def _layer_norm_bwd(eps, res, dy):
  del eps
  x, scale, mean, rstd = res
  dy = dy.astype(jnp.float32)
  xhat = (x.astype(jnp.float32) - mean) * rstd
  g = dy * scale
  dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
               - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
  return dx.astype(x.dtype), jnp.sum(dy * xhat, axis=0), jnp.sum(dy, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
  return _layer_norm_fwd(x, scale, bias, eps)[0]


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm over the last axis of `x` (any leading shape); float32 statistics.

  (x - mean) / sqrt(var + eps) * scale + bias, returned in x's dtype; `scale` and `bias`
  are float32 (D,) vectors. Gradients through the hand-written backward pass.
  """
  x2d = jnp.reshape(x, (-1, x.shape[-1]))
  y = _layer_norm(x2d, scale.astype(jnp.float32), bias.astype(jnp.float32), float(eps))
  return jnp.reshape(y, x.shape)


class LayerNorm(nn.Module):
  """`layer_norm` with `scale` (ones) and `bias` (zeros) created as `nn.LayerNorm` does.

  Same parameter names, shapes, float32 dtype, initial values and 'embed' axis annotation
  as the `nn.LayerNorm` it replaces on CPU; the output is cast to `dtype`.
  """
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  use_bias: bool = True  # False: no `bias` parameter (ViT-22B style)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    scale = self.param("scale", logical(nn.initializers.ones, "embed"), (width,), jnp.float32)
    bias = (self.param("bias", logical(nn.initializers.zeros, "embed"), (width,), jnp.float32)
            if self.use_bias else jnp.zeros((width,), jnp.float32))
    y = layer_norm(x, nn.meta.unbox(scale), nn.meta.unbox(bias), self.epsilon)
    return y.astype(self.dtype)
