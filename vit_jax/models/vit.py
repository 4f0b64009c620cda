"""VisionTransformer: patch embedding (optionally after a ResNet root), encoder, pooling, head.

Owns the top-level ViT module. Its field names are those of Google's vit_jax
(`num_classes, patches, transformer, hidden_size, resnet, representation_size,
classifier, head_bias_init, model_name`) so `VisionTransformer(num_classes=10,
**MODEL_CONFIGS['ViT-B_16'])` works; `patches`, `transformer` and `resnet` may be
ConfigDicts or plain dicts. Module names equal the official checkpoint paths
(embedding, cls, Transformer/..., pre_logits, head; hybrids add conv_root,
gn_root, block{s}/unit{u} at the top level).

Extra fields (all defaulted): stochastic_depth (peak drop-path rate; layer i of L
uses stochastic_depth * i / (L - 1), see transformer.py), dtype (compute dtype; params are
always float32 and the returned logits/features are float32 too, the dtype users
expect for losses and metrics), attention_impl (None|'xla'|'cudnn'|'einsum'|'einsum_vjp';
None = per-platform choice, see attention.py), remat, remat_policy (what remat saves:
transformer.REMAT_POLICIES, None = 'full'), scan_layers, approximate_gelu,
head_zeroinit, batch_chunks, and the ViT-22B options parallel_block, qk_norm and use_bias
(default off; see transformer.Encoder1DBlock).

Per-platform execution (same parameters, same values up to float rounding):
  * `batch_chunks` (None = per-platform default, see `resolve_batch_chunks`): the model
    (patch embedding, encoder, pooling and head; for hybrids everything after the ResNet
    root) runs on that many independent sub-batches, unrolled, with shared parameters.
    XLA:CPU executes independent ops concurrently on its threads, and several chunks keep
    both cores of a small CPU busy where one batch leaves one idle in its poorly-parallel
    ops (batched attention matmuls, weight gradients): ViT-Ti/16 batch 32 on 2 cores trains
    ~1.13x and infers ~1.15x faster with the defaults (8 / 4 chunks; docs/performance.md). Costs
    compile time (~linear in the chunk count: ViT-Ti/16 train step 1.5 s -> 11 s). Default
    1 (no chunking) on GPU/TPU and whenever JAX has more than one device.
  * the patch embedding runs as reshape + one matmul on CPU (its weight gradient is ~2x
    faster there than the strided convolution's) and as the convolution elsewhere.

Classifiers: 'token' (class token), 'gap' (mean of the tokens), 'map' (MAPHead_0
attention pooling), 'first' (the first patch token, no class token: big_vision's
pool_type '0'), and the unpooled variants 'token_unpooled' (class token kept
in the sequence) and 'unpooled' / 'gap_unpooled' (no class token) that return the
whole sequence; as in Google's code, pre_logits/head (if any) then apply per token.
With num_classes None (or 0) there is no head and the pooled pre-logits are returned.

Position embeddings: posemb='learn' (default, the `pos_embedding` parameter) or 'sincos2d'
(fixed, computed for the patch grid of the input; see transformer.py).

DeiT's distillation token (distilled=True, classifier 'token' only; Touvron et al. 2021): a
learned `dist_token` after the class token (tokens [cls, dist, patches], the position
embedding covers both, as timm's deit_*_distilled models) read by a second head `head_dist`.
With train=True the model returns the two heads' logits (cls_logits, dist_logits), for the
loss (training/distill.py); otherwise one array, their mean ((cls + dist) / 2, timm's
inference; DeiT's paper adds the softmax outputs instead, which can rank classes differently).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import packed as packed_lib, resnet as resnet_lib
from vit_jax.models.axes import logical
from vit_jax.models.cpu_ops import matmul
from vit_jax.models.fields import check_image_size, config_get, patch_size, sequence_length
from vit_jax.models.platform import check_attention_impl, on_cpu, resolve_batch_chunks
from vit_jax.models.resize import pi_resize_matrix
from vit_jax.models.transformer import Encoder, MAPHead

CLASSIFIERS = ("token", "gap", "map", "first", "token_unpooled", "unpooled", "gap_unpooled")
PACKED_CLASSIFIERS = ("token", "gap", "map", "first")  # the poolings of a packed input
_TRANSFORMER_KEYS = ("num_layers", "mlp_dim", "num_heads", "dropout_rate", "attention_dropout_rate")


class PatchEmbedParams(nn.Module):
  """`kernel` (ph, pw, C, D) and `bias` (D,) created exactly as `nn.Conv(D, (ph, pw))` does."""
  patch: tuple[int, int]
  in_channels: int
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", logical(nn.initializers.lecun_normal(),
                                          "patch", "patch", "patch", "embed"),
                        tuple(self.patch) + (self.in_channels, self.features), jnp.float32)
    bias = self.param("bias", logical(nn.initializers.zeros, "embed"), (self.features,),
                      jnp.float32)
    return nn.meta.unbox(kernel), nn.meta.unbox(bias)


def patch_embed(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                as_matmul: Optional[bool] = None) -> jax.Array:
  """(B, H, W, C) -> (B, tokens, D): non-overlapping (ph, pw) patches times `kernel` + bias.

  A stride-(ph, pw) VALID convolution. With `as_matmul` (default: on CPU) it runs as
  reshape + transpose + one matmul (patches flattened in (ph, pw, C) order, the kernel's
  order), whose weight gradient XLA:CPU computes ~2x faster than the convolution's.
  """
  ph, pw, c, d = kernel.shape
  n, h, w, _ = x.shape
  if as_matmul is None:
    as_matmul = on_cpu()
  if as_matmul:
    p = jnp.reshape(x, (n, h // ph, ph, w // pw, pw, c)).transpose(0, 1, 3, 2, 4, 5)
    p = jnp.reshape(p, (n * (h // ph) * (w // pw), ph * pw * c))
    y = matmul(p, jnp.reshape(kernel, (ph * pw * c, d))) + bias
    return jnp.reshape(y, (n, (h // ph) * (w // pw), d))
  y = jax.lax.conv_general_dilated(x, kernel, (ph, pw), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  return jnp.reshape(y, (n, -1, d))


def distilled_prediction(cls_logits: jax.Array, dist_logits: jax.Array) -> jax.Array:
  """What a distilled ViT predicts with: the mean of its two heads' logits (module doc)."""
  return (cls_logits + dist_logits) / 2


class VisionTransformer(nn.Module):
  """Vision Transformer (and R+ViT hybrid when `resnet` is set). Call: model(x, train=...)."""
  num_classes: Optional[int]
  patches: Any
  transformer: Any
  hidden_size: int
  resnet: Optional[Any] = None
  representation_size: Optional[int] = None
  classifier: str = "token"
  head_bias_init: float = 0.0
  model_name: Optional[str] = None
  stochastic_depth: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: Optional[str] = None
  remat: bool = False
  remat_policy: Optional[str] = None  # transformer.REMAT_POLICIES; None = 'full'
  scan_layers: bool = False
  approximate_gelu: bool = True
  head_zeroinit: bool = True
  batch_chunks: Optional[int] = None
  parallel_block: bool = False   # ViT-22B options, see transformer.Encoder1DBlock
  qk_norm: bool = False
  use_bias: bool = True
  posemb: str = "learn"         # 'learn' | 'sincos2d' (fixed, big_vision / MoCo v3)
  distilled: bool = False       # DeiT's distillation token + head (module doc)
  # FlexiViT (Beyer et al. 2023): the patch size of this call (None: patches.size, the
  # kernel's), the kernel PI-resized to it on the fly; and the fixed (rows, cols) grid of the
  # learned position embedding, resized to each input's grid (None: the input's grid).
  flexi_patch: Optional[Any] = None
  posemb_grid: Optional[Any] = None

  def _check_fields(self) -> None:
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f"classifier={self.classifier!r} is not supported; use one of "
                       f"{CLASSIFIERS}.")
    if self.distilled and self.classifier != "token":
      raise ValueError(f"distilled=True (DeiT's distillation token) reads the class and "
                       f"distillation tokens: it needs classifier='token', not "
                       f"{self.classifier!r}.")
    check_attention_impl(self.attention_impl)
    if self.transformer is None:
      raise ValueError("VisionTransformer needs a `transformer` config (num_layers, mlp_dim, "
                       "num_heads, dropout_rate, attention_dropout_rate).")
    keys = self.transformer.keys() if hasattr(self.transformer, "keys") else _TRANSFORMER_KEYS
    unknown = sorted(set(keys) - set(_TRANSFORMER_KEYS))
    if unknown:
      raise ValueError(f"unknown transformer config keys {unknown}; valid: {_TRANSFORMER_KEYS}.")

  def _encoder(self, dtype: Any) -> Encoder:
    t = self.transformer
    return Encoder(
        num_layers=int(config_get(t, "num_layers")), mlp_dim=int(config_get(t, "mlp_dim")),
        num_heads=int(config_get(t, "num_heads")),
        dropout_rate=float(config_get(t, "dropout_rate", 0.1)),
        attention_dropout_rate=float(config_get(t, "attention_dropout_rate", 0.1)),
        dtype=dtype, attention_impl=self.attention_impl, approximate_gelu=self.approximate_gelu,
        stochastic_depth=float(self.stochastic_depth), remat=self.remat,
        remat_policy=self.remat_policy, scan_layers=self.scan_layers,
        parallel_block=self.parallel_block, qk_norm=self.qk_norm, use_bias=self.use_bias,
        posemb=self.posemb,
        posemb_grid=tuple(self.posemb_grid) if self.posemb_grid is not None else None,
        name="Transformer")

  def _resnet_layers(self) -> tuple[int, ...]:
    return tuple(config_get(self.resnet, "num_layers", ()) or ())

  def _root_stride(self) -> int:
    return resnet_lib.root_stride(self._resnet_layers()) if self.resnet is not None else 1

  def _tokens_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(batch, tokens, width) of the encoder input for (B, H, W, C) patch-embedding input."""
    patches = {"size": tuple(self.flexi_patch)} if self.flexi_patch else self.patches
    tokens = sequence_length(patches, self.classifier, feature_shape[1], feature_shape[2],
                             self.distilled)
    return (feature_shape[0], tokens, self.hidden_size)

  def _root(self, x: jax.Array, dtype: Any) -> jax.Array:
    """The ResNet root of hybrids (identity for plain ViT)."""
    if self.resnet is None:
      return x
    return resnet_lib.resnet_root(
        x, num_layers=self._resnet_layers(),
        width_factor=config_get(self.resnet, "width_factor", 1), dtype=dtype)

  def _pool_module(self, dtype: Any) -> Optional[nn.Module]:
    if self.classifier != "map":
      return None
    t = self.transformer
    return MAPHead(num_heads=int(config_get(t, "num_heads")),
                   mlp_dim=int(config_get(t, "mlp_dim")), dtype=dtype,
                   attention_impl=self.attention_impl, approximate_gelu=self.approximate_gelu,
                   name="MAPHead_0")

  @staticmethod
  def _pool(x: jax.Array, classifier: str, map_head: Optional[nn.Module]) -> jax.Array:
    if classifier in ("token", "first"):
      return x[:, 0]
    if classifier == "gap":
      return jnp.mean(x, axis=1)
    if classifier == "map":
      return map_head(x)
    return x  # unpooled variants

  def _head_modules(self, dtype: Any) -> tuple[Optional[nn.Module], Optional[nn.Module],
                                               Optional[nn.Module]]:
    """(pre_logits, head, head_dist) Dense modules; None where the config has none."""
    feature_axis, pre_logits, head, head_dist = "embed", None, None, None
    if self.representation_size is not None:
      pre_logits = nn.Dense(self.representation_size, dtype=dtype, param_dtype=jnp.float32,
                            kernel_init=logical(nn.initializers.lecun_normal(), "embed", "repr"),
                            bias_init=logical(nn.initializers.zeros, "repr"), name="pre_logits")
      feature_axis = "repr"
    if self.num_classes:
      kernel_init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
      make = lambda name: nn.Dense(
          self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
          kernel_init=logical(kernel_init, feature_axis, "classes"),
          bias_init=logical(nn.initializers.constant(self.head_bias_init), "classes"), name=name)
      head = make("head")
      head_dist = make("head_dist") if self.distilled else None
    return pre_logits, head, head_dist

  @staticmethod
  def _apply_head(x: jax.Array, pre_logits: Optional[nn.Module],
                  head: Optional[nn.Module]) -> jax.Array:
    if pre_logits is not None:
      x = jnp.tanh(pre_logits(x))
    x = x.astype(jnp.float32)
    return head(x) if head is not None else x

  def _check_packed_fields(self) -> None:
    if self.resnet is not None or self.distilled or self.classifier not in PACKED_CLASSIFIERS:
      raise ValueError(
          f"packed sequences (NaFlex, config.naflex) run a plain ViT pooled per image "
          f"(classifier one of {PACKED_CLASSIFIERS}); this model has classifier="
          f"{self.classifier!r}" + (", a ResNet root" if self.resnet is not None else "")
          + (", a distillation token" if self.distilled else "") + ".")

  @nn.compact
  def __call__(self, inputs: Any, *, train: bool) -> Any:
    """(B,H,W,3) images in [-1,1] -> float32 logits (B,C) (or features, see module doc);
    distilled and train: the tuple (cls_logits, dist_logits). A packed-sequence dict
    (models/packed.py) -> (B, K, C): the logits of each of its K image slots."""
    self._check_fields()
    dtype = jnp.dtype(self.dtype)
    base = patch_size(self.patches)
    patch = tuple(int(p) for p in self.flexi_patch) if self.flexi_patch else base
    is_packed = packed_lib.is_packed(inputs)
    if is_packed:
      self._check_packed_fields()
      x = inputs["patches"]
      in_channels = x.shape[-1] // (patch[0] * patch[1])
      packed_lib.check_packed(inputs, patch[0] * patch[1] * in_channels)
    else:
      check_image_size(inputs.shape, patch, self._root_stride(), self.model_name)
      # Every module is created once here and applied to each chunk (shared parameters).
      x = self._root(inputs.astype(dtype), dtype)  # hybrids: the ResNet root on the batch
      in_channels = x.shape[-1]
    kernel, bias = PatchEmbedParams(base, in_channels, self.hidden_size, name="embedding")()
    if patch != base:  # FlexiViT: the PI-resized kernel (checkpoint/patch_embed.py's numbers)
      ph, pw, c, d = kernel.shape
      pinv = jnp.asarray(pi_resize_matrix(base, patch), jnp.float32)
      kernel = jnp.reshape(pinv @ jnp.reshape(kernel, (ph * pw, c * d)), patch + (c, d))
    cls = None
    if self.classifier in ("token", "token_unpooled"):
      cls = self.param("cls", logical(nn.initializers.zeros, None, None, "embed"),
                       (1, 1, self.hidden_size), jnp.float32)
    prefix = [cls] if cls is not None else []
    if self.distilled:  # timm's init of the distillation token: N(0, 0.02), not the cls zeros.
      prefix.append(self.param("dist_token",
                               logical(nn.initializers.normal(stddev=0.02), None, None, "embed"),
                               (1, 1, self.hidden_size), jnp.float32))
    encoder = self._encoder(dtype)
    map_head = self._pool_module(dtype)
    pre_logits, head, head_dist = self._head_modules(dtype)
    if is_packed:
      return self._packed_forward(inputs, kernel, bias, cls, encoder, map_head,
                                  (pre_logits, head), train, dtype)

    grid = (x.shape[1] // patch[0], x.shape[2] // patch[1])

    def forward(images: jax.Array) -> Any:
      tokens = patch_embed(images, kernel.astype(dtype), bias.astype(dtype))
      if prefix:
        tokens = jnp.concatenate(
            [jnp.tile(p.astype(dtype), (tokens.shape[0], 1, 1)) for p in prefix] + [tokens],
            axis=1)
      y = encoder(tokens, train=train, grid=grid)
      if not self.distilled:
        return self._apply_head(self._pool(y, self.classifier, map_head), pre_logits, head)
      out = (self._apply_head(y[:, 0], pre_logits, head),
             self._apply_head(y[:, 1], pre_logits, head_dist))
      return out if train else distilled_prediction(*out)

    layers = 1 if self.scan_layers else int(config_get(self.transformer, "num_layers"))
    chunks = resolve_batch_chunks(self.batch_chunks, self._tokens_shape(x.shape), train,
                                  unrolled_layers=layers)
    if chunks > 1:  # independent sub-batches: XLA:CPU runs them concurrently (see module doc)
      return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=0),
                          *[forward(c) for c in jnp.split(x, chunks)])
    return forward(x)

  def _packed_forward(self, inputs: Any, kernel: jax.Array, bias: jax.Array,
                      cls: Optional[jax.Array], encoder: nn.Module,
                      map_head: Optional[nn.Module], heads: tuple, train: bool,
                      dtype: Any) -> jax.Array:
    """(B, K, C) logits of a packed sequence's K image slots (module doc of models/packed.py):
    block-diagonal attention, each token's position embedding at its place in its own image,
    one class token per image ('token'), pooling per image."""
    segments = inputs["segment_ids"].astype(jnp.int32)
    coords = inputs["coords"].astype(jnp.int32)
    num_images = inputs["image_grid"].shape[1]
    ph, pw, c, d = kernel.shape
    tokens = matmul(jnp.reshape(inputs["patches"].astype(dtype), (-1, ph * pw * c)),
                    jnp.reshape(kernel.astype(dtype), (ph * pw * c, d))) + bias.astype(dtype)
    tokens = jnp.reshape(tokens, segments.shape + (d,))
    grids = packed_lib.token_grids(segments, inputs["image_grid"].astype(jnp.int32))
    prefix = jnp.zeros(segments.shape, bool)
    if cls is not None:  # one class token per image slot, before the patches
      b = segments.shape[0]
      slots = jnp.broadcast_to(jnp.arange(1, num_images + 1, dtype=jnp.int32), (b, num_images))
      tokens = jnp.concatenate([jnp.tile(cls.astype(dtype), (b, num_images, 1)), tokens], 1)
      segments = jnp.concatenate([slots, segments], axis=1)
      coords = jnp.concatenate([jnp.zeros((b, num_images, 2), jnp.int32), coords], axis=1)
      grids = jnp.concatenate([jnp.ones((b, num_images, 2), jnp.int32), grids], axis=1)
      prefix = jnp.concatenate([jnp.ones((b, num_images), bool), prefix], axis=1)
    positions = packed_lib.TokenPositions(coords, grids, prefix, int(cls is not None))
    y = encoder(tokens, train=train, mask=packed_lib.attention_mask(segments, segments),
                positions=positions)
    member = packed_lib.membership(segments, num_images) * (~prefix)[..., None]
    if self.classifier == "token":
      pooled = y[:, :num_images]
    elif self.classifier == "gap":
      pooled = packed_lib.mean_pool(y, member)
    elif self.classifier == "first":
      pooled = packed_lib.first_pool(y, member)
    else:  # 'map': one probe query per image slot, each attending to its image's tokens
      pooled = map_head(y, jnp.transpose(member > 0, (0, 2, 1))[:, None])
    return self._apply_head(pooled, *heads)
