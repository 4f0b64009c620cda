"""The ViT transformer encoder: blocks, position embeddings, stochastic depth, MAP head.

Owns `Encoder` (module name `Transformer` inside VisionTransformer), its
`Encoder1DBlock` (pre-LN attention + MLP with residuals), `MlpBlock`,
`AddPositionEmbs` and `MAPHead` (big_vision's multi-head attention pooling).
Submodules carry explicit names equal to the checkpoint paths.

Position embeddings (`posemb`): 'learn' (a (1, tokens, D) parameter, Google's vit_jax) or
'sincos2d' (fixed 2-D sin-cos of the patch grid as MoCo v3 / big_vision define them, no
parameter, computed for the actual grid so another resolution needs no interpolation;
class-token rows get zeros: big_vision adds the embedding before the class token).

Stochastic depth rule: layer i of L drops its residual branches (attention and
MLP, per example) with rate `stochastic_depth * i / (L - 1)`, i.e. linear over
depth from 0 at the first block to `stochastic_depth` at the last (DeiT/timm
convention); kept branches are scaled by 1 / (1 - rate).

Scan over layers (`scan_layers=True`) stores the blocks as ONE subtree
`encoderblock` whose leaves have a leading axis of size num_layers (logical axis
'layers'); layer i of the stack equals `encoderblock_{i}` of the unrolled tree.

Rematerialisation (`remat=True`) recomputes each block's activations in the backward pass;
`remat_policy` says what a block keeps instead of recomputing (REMAT_POLICIES, see
`checkpoint_policy`): 'full' (default: only the block's input), 'dots_saveable' (every
matmul output), 'dots_with_no_batch_dims_saveable' (the projections' and MLP's matmul outputs,
not the attention's batched ones) and 'offload_dots_with_no_batch_dims' (the same set, kept in
pinned host memory instead of device memory; TPU and GPU only).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import cpu_ops, packed
from vit_jax.models.attention import MultiHeadDotProductAttention
from vit_jax.models.axes import constrain, logical
from vit_jax.models.platform import current_platform, on_cpu
from vit_jax.models.resize import grid_axis_weights

LN_EPS = 1e-6

# remat_policy values: what a rematerialised block saves for the backward pass.
REMAT_POLICIES = ("full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "offload_dots_with_no_batch_dims")
# Platforms whose JAX lowering honours pinned-host placement. On CPU JAX drops it (host memory
# is the device's memory): the offload policy would silently be dots_with_no_batch_dims_saveable.
HOST_OFFLOAD_PLATFORMS = ("tpu", "gpu", "cuda", "rocm")


def checkpoint_policy(remat: bool, remat_policy: Optional[str],
                      platform: Optional[str] = None) -> Optional[Callable[..., Any]]:
  """The jax.checkpoint policy `remat_policy` names (None: save nothing); one ValueError if bad.

  None and 'full' give None, nn.remat's default, so a config without the key compiles the
  program it compiled before the key existed. A policy needs remat=True (it says what remat
  keeps); the offload policy needs a platform in HOST_OFFLOAD_PLATFORMS (default: the one
  programs are built for, `platform.current_platform`).
  """
  if remat_policy is None:
    return None
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={remat_policy!r} is not known; use one of {REMAT_POLICIES} "
                     "(or None, which is 'full').")
  if not remat:
    raise ValueError(f"remat_policy={remat_policy!r} needs remat=True: the policy says what a "
                     "rematerialised block saves. Set --config.model.remat=True too, or unset "
                     "remat_policy.")
  if remat_policy == "dots_saveable":
    return jax.checkpoint_policies.dots_saveable
  if remat_policy == "dots_with_no_batch_dims_saveable":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  if remat_policy == "offload_dots_with_no_batch_dims":
    target = platform or current_platform()
    if target not in HOST_OFFLOAD_PLATFORMS:
      raise ValueError(
          f"remat_policy='offload_dots_with_no_batch_dims' moves saved activations to pinned "
          f"host memory, which JAX supports on TPU and GPU only, not on {target!r} (where "
          "device memory is host memory, so nothing would be offloaded). Use "
          "'dots_with_no_batch_dims_saveable' (the same activations, kept in device memory) "
          "or 'full'.")
    return jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
  return None  # 'full'


def layer_norm(dtype: Any, name: str, train: bool = False, use_bias: bool = True) -> nn.Module:
  """LayerNorm with eps 1e-6, float32 params annotated with the 'embed' axis.

  When training on CPU `cpu_ops.LayerNorm` (same parameters and statistics, hand-written
  backward pass, faster there); otherwise `nn.LayerNorm` (its forward is the faster one).
  use_bias=False: scale only (ViT-22B)."""
  if train and on_cpu():
    return cpu_ops.LayerNorm(epsilon=LN_EPS, dtype=dtype, use_bias=use_bias, name=name)
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, use_bias=use_bias,
                      scale_init=logical(nn.initializers.ones, "embed"),
                      bias_init=logical(nn.initializers.zeros, "embed"), name=name)


def stochastic_depth_rates(rate: float, num_layers: int) -> np.ndarray:
  """Per-layer drop rates: linear from 0 (first block) to `rate` (last block)."""
  return np.asarray([rate * i / max(num_layers - 1, 1) for i in range(num_layers)], np.float32)


def drop_path(x: jax.Array, rate: Any, rng: jax.Array) -> jax.Array:
  """Zeroes whole examples of a residual branch with probability `rate`; rescales the rest."""
  keep_prob = 1.0 - jnp.asarray(rate, jnp.float32)
  keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / keep_prob.astype(x.dtype), jnp.zeros((), x.dtype))


class MlpBlock(nn.Module):
  """Dense_0 (D->mlp_dim), GELU, dropout, Dense_1 (mlp_dim->D), dropout.

  Computed on the 2-D (tokens, D) matrix whatever the input's leading dims (see
  Encoder1DBlock: XLA:CPU runs 2-D fusions markedly faster)."""
  mlp_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    kernel_init = nn.initializers.xavier_uniform()
    bias_init = nn.initializers.normal(stddev=1e-6)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=logical(kernel_init, "embed", "mlp"),
                 bias_init=logical(bias_init, "mlp"), name="Dense_0")(
                     jnp.reshape(x, (-1, width)))
    y = constrain(y, "batch", "mlp")
    y = nn.gelu(y, approximate=self.approximate_gelu)
    y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=self.deterministic)
    y = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=logical(kernel_init, "mlp", "embed"),
                 bias_init=logical(bias_init, "embed"), dot_general=cpu_ops.dense_dot_general,
                 name="Dense_1")(y)
    y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=self.deterministic)
    return jnp.reshape(y, x.shape[:-1] + (width,))


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block. With `scanned=True` it returns (x, None) for nn.scan.

  ViT-22B options (off by default): `parallel_block` computes x + Attn(LN(x)) + MLP(LN(x))
  from one LayerNorm_0 (no LayerNorm_1); `qk_norm` and `use_bias=False` (no QKV and
  LayerNorm biases) as in MultiHeadDotProductAttention."""
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  deterministic: bool = True
  attention_impl: Optional[str] = None
  approximate_gelu: bool = True
  use_drop_path: bool = False
  scanned: bool = False
  parallel_block: bool = False
  qk_norm: bool = False
  use_bias: bool = True

  def _residual(self, x: jax.Array, branch: jax.Array, drop_rate: Any, batch: int) -> jax.Array:
    if self.use_drop_path and not self.deterministic:
      per_example = jnp.reshape(branch, (batch, -1, branch.shape[-1]))
      branch = jnp.reshape(drop_path(per_example, drop_rate, self.make_rng("dropout")),
                           branch.shape)
    return x + branch

  @nn.compact
  def __call__(self, inputs: jax.Array, drop_rate: Any = 0.0,
               mask: Optional[jax.Array] = None):
    """mask: optional bool (batch, 1, tokens, tokens) attention mask (packed sequences)."""
    # LayerNorms, residuals and the MLP run on the (batch * tokens, D) token matrix (a free
    # reshape): XLA:CPU emits markedly faster fusions and matmuls for 2-D operands than for
    # (batch, 197, D) ones (docs/performance.md); on other backends it makes no difference.
    batch, tokens, width = inputs.shape
    inputs = constrain(inputs, "batch", None, None)
    x2d = constrain(jnp.reshape(inputs, (batch * tokens, width)), "batch", None)
    normed = layer_norm(self.dtype, "LayerNorm_0", not self.deterministic, self.use_bias)(x2d)
    y = jnp.reshape(normed, (batch, tokens, width))
    y = MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.attention_dropout_rate,
        deterministic=self.deterministic, attention_impl=self.attention_impl,
        qk_norm=self.qk_norm, use_bias=self.use_bias,
        name="MultiHeadDotProductAttention_0")(y, y, mask)
    y = nn.Dropout(rate=self.dropout_rate)(jnp.reshape(y, x2d.shape),
                                           deterministic=self.deterministic)
    mlp = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
                   deterministic=self.deterministic, approximate_gelu=self.approximate_gelu,
                   name="MlpBlock_0")
    if self.parallel_block:  # both branches read the same LayerNorm_0 output
      y = y + mlp(normed)
    else:
      x = self._residual(x2d, y, drop_rate, batch)
      y = mlp(layer_norm(self.dtype, "LayerNorm_1", not self.deterministic, self.use_bias)(x))
      x2d = x
    out = constrain(jnp.reshape(self._residual(x2d, y, drop_rate, batch), inputs.shape),
                    "batch", None, None)
    self.sow("intermediates", "features", out)  # Kept only when inspecting (analysis.py).
    return (out, None) if self.scanned else out


POSEMB_TYPES = ("learn", "sincos2d")


def posemb_sincos2d(height: int, width: int, features: int,
                    temperature: float = 10_000.0) -> np.ndarray:
  """(1, height*width, features) fixed 2-D sin-cos position embedding (MoCo v3 / big_vision).

  Row-major over the grid; per token [sin(x*w), cos(x*w), sin(y*w), cos(y*w)] with x the
  column, y the row and w_k = temperature ** -(k / (features/4 - 1)), k < features/4.
  """
  if features % 4:
    raise ValueError(f"posemb='sincos2d' needs a width divisible by 4, got {features}.")
  quarter = features // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  y, x = np.mgrid[:height, :width]
  x = np.outer(x.reshape(-1), omega)
  y = np.outer(y.reshape(-1), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class AddPositionEmbs(nn.Module):
  """Adds the position embedding: a learned (1, tokens, D) `pos_embedding` sized from the
  input at init, or the fixed sin-cos embedding of `grid` (no parameter)."""
  dtype: Any = jnp.float32
  posemb: str = "learn"
  # FlexiViT: the (rows, cols) grid of the learned parameter; an input of another grid gets it
  # resized (aligned corners, the loader's interpolation; prefix rows kept). None: the input's.
  param_grid: Optional[tuple[int, int]] = None

  @nn.compact
  def __call__(self, x: jax.Array, grid: Optional[tuple[int, int]] = None,
               positions: Optional[packed.TokenPositions] = None) -> jax.Array:
    """grid: the input's patch grid; positions: each token's place in its own image (packed
    sequences, models/packed.py) instead of one grid for the whole input."""
    if self.posemb not in POSEMB_TYPES:
      raise ValueError(f"posemb={self.posemb!r} is not supported; use one of {POSEMB_TYPES}.")
    if positions is not None:
      return x + self._per_token(x, positions).astype(x.dtype)
    expected = (1, x.shape[1], x.shape[2])
    if self.posemb == "sincos2d":
      if grid is None:
        raise ValueError("posemb='sincos2d' needs the patch grid (Encoder(..., grid=(h, w))).")
      prefix = x.shape[1] - grid[0] * grid[1]
      pe = posemb_sincos2d(grid[0], grid[1], x.shape[2])
      pe = np.concatenate([np.zeros((1, prefix, x.shape[2]), np.float32), pe], axis=1)
      return x + jnp.asarray(pe, x.dtype)
    if self.param_grid is not None:
      return x + self._resized(x, grid).astype(x.dtype)
    if self.has_variable("params", "pos_embedding"):
      found = tuple(nn.meta.unbox(self.get_variable("params", "pos_embedding")).shape)
      if found != expected:
        raise ValueError(
            f"pos_embedding has shape {found} but this input gives {expected} (tokens x width); "
            "load the checkpoint with checkpoint.load_pretrained (it interpolates position "
            "embeddings to the new grid) or feed images of the size the params were made for.")
    pe = self.param("pos_embedding",
                    logical(nn.initializers.normal(stddev=0.02), None, "posemb", "embed"),
                    expected, jnp.float32)
    return x + pe.astype(x.dtype)


  def _per_token(self, x: jax.Array, positions: packed.TokenPositions) -> jax.Array:
    """(B, T, D) position embeddings of packed tokens: sin-cos of each token's (row, col), or
    the param_grid embedding interpolated at it for its image's grid (the numbers `_resized`
    gives that image alone); prefix tokens get the parameter's prefix rows (zeros: sin-cos)."""
    if self.posemb == "sincos2d":
      return packed.sincos_at(positions, x.shape[2])
    if self.param_grid is None:
      raise ValueError("a packed sequence of images of several grids needs a position "
                       "embedding of a fixed grid (posemb_grid, config.naflex / config.flexi) "
                       "or posemb='sincos2d'.")
    gh, gw = (int(g) for g in self.param_grid)
    pe = self._grid_param(positions.num_prefix, x.shape[2])
    return packed.interpolate_at(pe[0], (gh, gw), positions)

  def _grid_param(self, prefix: int, width: int) -> jax.Array:
    """The (1, prefix + gh*gw, width) learned embedding of param_grid."""
    gh, gw = (int(g) for g in self.param_grid)
    return self.param("pos_embedding",
                      logical(nn.initializers.normal(stddev=0.02), None, "posemb", "embed"),
                      (1, prefix + gh * gw, width), jnp.float32)

  def _resized(self, x: jax.Array, grid: Optional[tuple[int, int]]) -> jax.Array:
    """The param_grid-shaped pos_embedding, its grid part resized to `grid`."""
    if grid is None:
      raise ValueError("a position embedding of a fixed param_grid needs the input's patch grid.")
    gh, gw = (int(g) for g in self.param_grid)
    prefix = x.shape[1] - grid[0] * grid[1]
    pe = self._grid_param(prefix, x.shape[2])
    if tuple(grid) == (gh, gw):
      return pe
    wh = jnp.asarray(grid_axis_weights(gh, int(grid[0])), jnp.float32)
    ww = jnp.asarray(grid_axis_weights(gw, int(grid[1])), jnp.float32)
    part = jnp.reshape(pe[0, prefix:], (gh, gw, x.shape[2]))
    part = jnp.einsum("bw,awd->abd", ww, jnp.einsum("ah,hwd->awd", wh, part))
    return jnp.concatenate([pe[:, :prefix], jnp.reshape(part, (1, -1, x.shape[2]))], axis=1)


class Encoder(nn.Module):
  """Position embedding, dropout, `num_layers` blocks and `encoder_norm`.

  add_position_embedding=False (Google's field): no `posembed_input`, for a caller that adds
  its own (LiT's text transformer)."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  attention_impl: Optional[str] = None
  approximate_gelu: bool = True
  stochastic_depth: float = 0.0
  remat: bool = False
  remat_policy: Optional[str] = None  # REMAT_POLICIES; None = 'full' (see checkpoint_policy)
  scan_layers: bool = False
  parallel_block: bool = False
  qk_norm: bool = False
  use_bias: bool = True
  posemb: str = "learn"
  add_position_embedding: bool = True
  posemb_grid: Optional[tuple[int, int]] = None  # AddPositionEmbs.param_grid (FlexiViT)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               grid: Optional[tuple[int, int]] = None,
               mask: Optional[jax.Array] = None,
               positions: Optional[packed.TokenPositions] = None) -> jax.Array:
    """grid: the (rows, cols) patch grid of x's patch tokens (needed by posemb='sincos2d');
    packed sequences: `mask` (B, 1, T, T) their block-diagonal attention mask and `positions`
    each token's place in its image (models/packed.py)."""
    if self.add_position_embedding:
      x = AddPositionEmbs(dtype=self.dtype, posemb=self.posemb, param_grid=self.posemb_grid,
                          name="posembed_input")(x, grid, positions)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    rates = stochastic_depth_rates(self.stochastic_depth, self.num_layers)
    block_kwargs = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        deterministic=not train, attention_impl=self.attention_impl,
        approximate_gelu=self.approximate_gelu, use_drop_path=self.stochastic_depth > 0,
        parallel_block=self.parallel_block, qk_norm=self.qk_norm, use_bias=self.use_bias)
    block = Encoder1DBlock
    policy = checkpoint_policy(self.remat, self.remat_policy)
    if self.remat:
      block = nn.remat(block, prevent_cse=not self.scan_layers, policy=policy)
    extra = () if mask is None else (mask,)  # no mask: the program of an unpacked input
    if self.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0,) + (nn.broadcast,) * len(extra),
                      length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(scanned=True, name="encoderblock", **block_kwargs)(
          x, jnp.asarray(rates), *extra)
    else:
      for i in range(self.num_layers):
        x = block(name=f"encoderblock_{i}", **block_kwargs)(x, float(rates[i]), *extra)
    return layer_norm(self.dtype, "encoder_norm", train, self.use_bias)(x)


class MAPHead(nn.Module):
  """Multi-head attention pooling (big_vision): a learned probe attends over the tokens."""
  num_heads: int
  mlp_dim: Optional[int] = None
  dtype: Any = jnp.float32
  attention_impl: Optional[str] = None
  approximate_gelu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """(B, T, D) -> (B, D); with a bool `mask` (B, 1, Q, T) the probe is asked Q times, query q
    attending to the tokens mask[:, 0, q] allows (one image of a packed sequence each):
    (B, Q, D)."""
    n, _, d = x.shape
    queries = 1 if mask is None else mask.shape[-2]
    probe = self.param("probe", logical(nn.initializers.xavier_uniform(), None, None, "embed"),
                       (1, 1, d), jnp.float32)
    probe = jnp.tile(probe.astype(x.dtype), (n, queries, 1))
    x = MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                     attention_impl=self.attention_impl,
                                     name="MultiHeadDotProductAttention_0")(probe, x, mask)
    y = layer_norm(self.dtype, "LayerNorm_0")(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim or 4 * d, dtype=self.dtype,
                     approximate_gelu=self.approximate_gelu, name="MlpBlock_0")(y)
    return x[:, 0] if mask is None else x
