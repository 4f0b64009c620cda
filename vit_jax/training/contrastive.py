"""Image-text contrastive losses on the global batch: softmax (CLIP / LiT) and sigmoid (SigLIP).

Inputs are (N, D) image and text embeddings of the same N pairs (pair i: image i, text i), unit
norm or not (the losses take them as given); `t` is the temperature (the models' exp(t)) and
`b` SigLIP's bias. The global batch is the contrastive batch: every image is scored against
every text of the batch, across devices.

* softmax_contrastive_loss: mean over both directions of the cross-entropy of the row
  softmax of t * zimg @ ztxt.T against the diagonal (Radford et al. 2021; Zhai et al. 2022).
* sigmoid_loss: -1/N * sum_ij log sigmoid(z_ij (t <zimg_i, ztxt_j> + b)), z_ij = +1 on the
  diagonal, -1 elsewhere (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").
* chunked_sigmoid_loss: the same value with the N x N logits never formed on one device:
  inside shard_map each device holds its images and texts; the texts travel around the batch
  axes in a ring (one collective permute per step, size-1 steps of SigLIP's "chunked"
  implementation) and each device adds the terms of its images against the chunk it holds.
  Memory per device is (N/d)^2 logits instead of N^2; the gradient is that of the sum.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P


def _logits(zimg: jax.Array, ztxt: jax.Array, t: Any, b: Any = 0.0) -> jax.Array:
  t = jnp.reshape(jnp.asarray(t, jnp.float32), ())
  b = jnp.reshape(jnp.asarray(b, jnp.float32), ())
  return t * jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32)) + b


def softmax_contrastive_loss(zimg: jax.Array, ztxt: jax.Array, t: Any) -> jax.Array:
  """Symmetric InfoNCE: (CE(images -> texts) + CE(texts -> images)) / 2, mean over pairs."""
  logits = _logits(zimg, ztxt, t)
  diag = jnp.arange(logits.shape[0])
  img_to_txt = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diag, diag])
  txt_to_img = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diag, diag])
  return 0.5 * (img_to_txt + txt_to_img)


def _sigmoid_sum(zimg: jax.Array, ztxt: jax.Array, t: Any, b: Any, positive: bool) -> jax.Array:
  """-sum log sigmoid(z * logits) of one block; `positive`: the block holds the diagonal."""
  logits = _logits(zimg, ztxt, t, b)
  labels = -jnp.ones_like(logits)
  if positive:
    labels = labels + 2 * jnp.eye(logits.shape[0], dtype=logits.dtype)
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: Any, b: Any) -> jax.Array:
  """SigLIP's loss of the whole batch, normalised by the number of pairs."""
  return _sigmoid_sum(zimg, ztxt, t, b, positive=True) / zimg.shape[0]


def _batch_axes(mesh: Mesh, axes: Sequence[str], n: int) -> tuple[tuple[str, ...], int]:
  """The axes of `axes` that `mesh` has, and their device count (which must divide n)."""
  axes = tuple(a for a in axes if a in mesh.shape)
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  if n % size:
    raise ValueError(f"the contrastive batch {n} does not split over the {size} devices of "
                     f"mesh axes {axes}; make the batch a multiple of {size}.")
  return axes, size


def chunked_sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: Any, b: Any, mesh: Mesh,
                         axes: Sequence[str] = ("data", "fsdp")) -> jax.Array:
  """sigmoid_loss with the texts passed around the devices of `axes` (module doc).

  zimg / ztxt: (N, D), sharded (or shardable) over `axes` along N; N divisible by their size.
  """
  axes, size = _batch_axes(mesh, axes, zimg.shape[0])
  n = zimg.shape[0]
  if size == 1:
    return sigmoid_loss(zimg, ztxt, t, b)
  ring = [(i, (i + 1) % size) for i in range(size)]

  def local(zi: jax.Array, zt: jax.Array, t: Any, b: Any) -> jax.Array:
    total = _sigmoid_sum(zi, zt, t, b, positive=True)
    for _ in range(size - 1):
      zt = jax.lax.ppermute(zt, axes, ring)
      total = total + _sigmoid_sum(zi, zt, t, b, positive=False)
    return jax.lax.psum(total, axes)[None]

  batch = P(axes)
  out = jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, P(), P()), out_specs=P(),
                      check_vma=False)(zimg, ztxt, jnp.asarray(t, jnp.float32),
                                       jnp.asarray(b, jnp.float32))
  return out[0] / n


LOSSES = ("sigmoid_contrastive", "softmax_contrastive")


def get(name: str, mesh: Mesh) -> Callable[[jax.Array, jax.Array, Any, Any], jax.Array]:
  """f(zimg, ztxt, t, b) of config.loss `name` on `mesh`: 'sigmoid_contrastive' (the chunked
  sigmoid loss over the batch axes) or 'softmax_contrastive' (b unused)."""
  if name == "sigmoid_contrastive":
    return lambda zimg, ztxt, t, b: chunked_sigmoid_loss(zimg, ztxt, t, b, mesh)
  if name == "softmax_contrastive":
    return lambda zimg, ztxt, t, b: softmax_contrastive_loss(zimg, ztxt, t)
  raise ValueError(f"config.loss={name!r} is not an image-text loss; an image-text model trains "
                   f"with one of {LOSSES} (SigLIP's sigmoid, CLIP / LiT's softmax).")


def in_batch_accuracy(zimg: jax.Array, ztxt: jax.Array, mesh: Mesh,
                      axes: Sequence[str] = ("data", "fsdp")) -> jax.Array:
  """Fraction of images whose own text scores above every other text of the global batch
  (image -> text top-1). Like chunked_sigmoid_loss the texts travel around the batch axes, so
  no device forms the N x N scores."""
  axes, size = _batch_axes(mesh, axes, zimg.shape[0])
  if size == 1:
    own, others = _own_and_others(zimg, ztxt)
    return jnp.mean(own > others)
  ring = [(i, (i + 1) % size) for i in range(size)]

  def local(zi: jax.Array, zt: jax.Array) -> jax.Array:
    own, others = _own_and_others(zi, zt)
    for _ in range(size - 1):
      zt = jax.lax.ppermute(zt, axes, ring)
      block = jnp.einsum("id,jd->ij", zi.astype(jnp.float32), zt.astype(jnp.float32))
      others = jnp.maximum(others, jnp.max(block, axis=1))
    return jax.lax.psum(jnp.sum(own > others), axes)[None]

  batch = P(axes)
  out = jax.shard_map(local, mesh=mesh, in_specs=(batch, batch), out_specs=P(),
                      check_vma=False)(zimg, ztxt)
  return out[0] / zimg.shape[0]


def _own_and_others(zimg: jax.Array, ztxt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per image of a diagonal block: its own text's score, and the best score of the others."""
  scores = jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32))
  others = jnp.where(jnp.eye(scores.shape[0], dtype=bool), -jnp.inf, scores)
  return jnp.diagonal(scores), jnp.max(others, axis=1)
