"""ResNet root of the hybrid R+ViT models (BiT-style StdConv + GroupNorm bottleneck units).

Owns `StdConv` (convolution with weight standardisation), `ResidualUnit`
(bottleneck unit: conv1 1x1, conv2 3x3 carrying the stride, conv3 1x1 to 4x
width, each followed by GroupNorm(32); `conv_proj` + `gn_proj` on the shortcut
when shape changes, i.e. in each stage's first unit), `ResNetStage` and
the root (conv_root 7x7/2, gn_root, ReLU, max-pool 3x3/2 'SAME', then the
stages: `resnet_root`). Parameter names equal Google's R50+ViT .npz files:
conv_root, gn_root, block{s}/unit{u}/{conv1,conv2,conv3,gn1,gn2,gn3,conv_proj,gn_proj}.
All convolutions use 'SAME' padding; weight standardisation uses eps 1e-5 added
to the (population) standard deviation over the (h, w, in) axes.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.axes import logical

WS_EPS = 1e-5
GN_GROUPS = 32
GN_EPS = 1e-6


def standardize_weight(w: jax.Array, eps: float = WS_EPS) -> jax.Array:
  """(w - mean) / (std + eps) over all axes but the output-channel one."""
  axes = tuple(range(w.ndim - 1))
  w = w - jnp.mean(w, axis=axes, keepdims=True)
  return w / (jnp.std(w, axis=axes, keepdims=True) + eps)


def root_stride(num_layers: Sequence[int]) -> int:
  """Total downsampling of ResNetRoot: 4 from conv_root + max-pool, 2 per stage after the first."""
  return 4 * 2 ** max(len(tuple(num_layers)) - 1, 0)


class StdConv(nn.Module):
  """Bias-free convolution ('SAME' padding) whose float32 kernel is weight-standardised."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", logical(nn.initializers.lecun_normal(),
                                          "patch", "patch", "conv_in", "conv_out"),
                        shape, jnp.float32)
    kernel = standardize_weight(kernel).astype(self.dtype)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel, window_strides=tuple(self.strides), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(dtype: Any, name: str, zero_scale: bool = False) -> nn.GroupNorm:
  """GroupNorm(32 groups, eps 1e-6) with float32 params on the 'conv_out' axis."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.GroupNorm(num_groups=GN_GROUPS, epsilon=GN_EPS, dtype=dtype, param_dtype=jnp.float32,
                      scale_init=logical(scale_init, "conv_out"),
                      bias_init=logical(nn.initializers.zeros, "conv_out"), name=name)


class ResidualUnit(nn.Module):
  """Bottleneck unit: conv->GN->ReLU x2, conv->GN (scale init 0), add shortcut, ReLU."""
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.features * 4
    residual = x
    if x.shape[-1] != out_features or tuple(self.strides) != (1, 1):
      residual = StdConv(out_features, (1, 1), self.strides, self.dtype, name="conv_proj")(x)
      residual = group_norm(self.dtype, "gn_proj")(residual)
    y = StdConv(self.features, (1, 1), dtype=self.dtype, name="conv1")(x)
    y = nn.relu(group_norm(self.dtype, "gn1")(y))
    y = StdConv(self.features, (3, 3), self.strides, self.dtype, name="conv2")(y)
    y = nn.relu(group_norm(self.dtype, "gn2")(y))
    y = StdConv(out_features, (1, 1), dtype=self.dtype, name="conv3")(y)
    y = group_norm(self.dtype, "gn3", zero_scale=True)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` units; unit1 carries `first_stride`."""
  block_size: int
  features: int
  first_stride: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for u in range(self.block_size):
      stride = self.first_stride if u == 0 else (1, 1)
      x = ResidualUnit(self.features, stride, self.dtype, name=f"unit{u + 1}")(x)
    return x


def resnet_root(x: jax.Array, *, num_layers: Sequence[int], width_factor: float = 1,
                dtype: Any = jnp.float32) -> jax.Array:
  """conv_root 7x7/2, gn_root, ReLU, max-pool 3x3/2, stages block1.. (width 64*width_factor).

  Call it inside a compact method: the params land in the CALLER's scope (top level of
  VisionTransformer, as in the official files), not in a submodule of their own.
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), dtype, name="conv_root")(x)
  x = nn.relu(group_norm(dtype, "gn_root")(x))
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
  for s, block_size in enumerate(tuple(num_layers)):
    stride = (1, 1) if s == 0 else (2, 2)
    x = ResNetStage(block_size, width * 2 ** s, stride, dtype, name=f"block{s + 1}")(x)
  return x
