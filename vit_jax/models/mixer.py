"""MlpMixer (Tolstikhin et al. 2021) with the official parameter names.

Owns `MlpMixer`: `stem` (patch conv), `MixerBlock_{i}` = LayerNorm_0,
token_mixing/{Dense_0,Dense_1} (an MLP across tokens), LayerNorm_1,
channel_mixing/{Dense_0,Dense_1}, then `pre_head_layer_norm`, mean over tokens
and a zero-initialised `head`. Field names follow Google's vit_jax so
`MlpMixer(num_classes=10, **MODEL_CONFIGS['Mixer-B_16'])` works. Extras: dtype
(compute; params and logits float32), remat and remat_policy (ViT's fields and
values, transformer.REMAT_POLICIES), approximate_gelu and
`stochastic_depth` (ViT's field name), which drops each block's residual branches per
example with a rate linear over depth (0 at the first block, `stochastic_depth` at the last),
as ViT.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import param_tree
from vit_jax.models.axes import constrain, logical
from vit_jax.models.fields import check_image_size, patch_size
from vit_jax.models.transformer import (
  checkpoint_policy,
  drop_path,
  layer_norm,
  stochastic_depth_rates,
)


class MixerMlp(nn.Module):
  """Dense_0 -> GELU -> Dense_1 back to the input width; `axes` = (in, hidden) logical names."""
  mlp_dim: int
  axes: tuple[str, str] = ("embed", "mlp")
  dtype: Any = jnp.float32
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    io, hidden = self.axes
    init = nn.initializers.lecun_normal()
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=logical(init, io, hidden),
                 bias_init=logical(nn.initializers.zeros, hidden), name="Dense_0")(x)
    y = nn.gelu(y, approximate=self.approximate_gelu)
    return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=logical(init, hidden, io),
                    bias_init=logical(nn.initializers.zeros, io), name="Dense_1")(y)


class MixerBlock(nn.Module):
  """Token mixing then channel mixing, each pre-LN with a residual."""
  tokens_mlp_dim: int
  channels_mlp_dim: int
  dtype: Any = jnp.float32
  drop_rate: float = 0.0
  deterministic: bool = True
  approximate_gelu: bool = True

  def _residual(self, x: jax.Array, branch: jax.Array) -> jax.Array:
    if self.drop_rate > 0.0 and not self.deterministic:
      branch = drop_path(branch, self.drop_rate, self.make_rng("dropout"))
    return x + branch

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = constrain(x, "batch", None, None)
    y = layer_norm(self.dtype, "LayerNorm_0")(x)
    y = jnp.swapaxes(y, 1, 2)
    y = MixerMlp(self.tokens_mlp_dim, ("tokens", "mlp"), self.dtype, self.approximate_gelu,
                 name="token_mixing")(y)
    x = self._residual(x, jnp.swapaxes(y, 1, 2))
    y = layer_norm(self.dtype, "LayerNorm_1")(x)
    y = MixerMlp(self.channels_mlp_dim, ("embed", "mlp"), self.dtype, self.approximate_gelu,
                 name="channel_mixing")(y)
    out = self._residual(x, y)
    self.sow("intermediates", "features", out)  # Kept only when inspecting (analysis.py).
    return out


class MlpMixer(nn.Module):
  """MLP-Mixer. Call: model(x, train=...) with x (B,H,W,3) in [-1,1] -> float32 logits."""
  patches: Any
  num_classes: Optional[int]
  num_blocks: int
  hidden_dim: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  model_name: Optional[str] = None
  stochastic_depth: float = 0.0
  dtype: Any = jnp.float32
  approximate_gelu: bool = True
  remat: bool = False
  remat_policy: Optional[str] = None  # transformer.REMAT_POLICIES; None = 'full'

  def _check_tokens(self, tokens: int, grid: tuple[int, int]) -> None:
    """Clear error when params made for another token count (resolution) are applied."""
    made_for = param_tree.mixer_tokens(self.variables.get("params", {}))
    if made_for is not None and made_for != tokens:
      raise ValueError(
          f"this Mixer's token-mixing weights are for {made_for} tokens but "
          f"the input gives {tokens} ({grid[0]}x{grid[1]} patches); a Mixer cannot change "
          "resolution, so feed images of the size its checkpoint was trained at.")

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
    dtype = jnp.dtype(self.dtype)
    patch = patch_size(self.patches)
    check_image_size(inputs.shape, patch, 1, self.model_name)
    x = nn.Conv(self.hidden_dim, kernel_size=patch, strides=patch, padding="VALID",
                dtype=dtype, param_dtype=jnp.float32,
                kernel_init=logical(nn.initializers.lecun_normal(),
                                    "patch", "patch", "patch", "embed"),
                bias_init=logical(nn.initializers.zeros, "embed"),
                name="stem")(inputs.astype(dtype))
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))
    self._check_tokens(h * w, (h, w))
    policy = checkpoint_policy(self.remat, self.remat_policy)
    block = nn.remat(MixerBlock, policy=policy) if self.remat else MixerBlock
    rates = stochastic_depth_rates(float(self.stochastic_depth), self.num_blocks)
    for i in range(self.num_blocks):
      x = block(self.tokens_mlp_dim, self.channels_mlp_dim, dtype, float(rates[i]),
                     not train, self.approximate_gelu, name=f"MixerBlock_{i}")(x)
    x = layer_norm(dtype, "pre_head_layer_norm")(x)
    x = jnp.mean(x, axis=1).astype(jnp.float32)
    if not self.num_classes:
      return x
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=logical(nn.initializers.zeros, "embed", "classes"),
                    bias_init=logical(nn.initializers.zeros, "classes"), name="head")(x)
