"""Packed sequences (NaViT / NaFlex): a pack of images of different grids gives each image the
logits its own forward gives, for every pooling and position embedding, with no attention
weight crossing images; the attention mask in every implementation."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.datasets import packing
from vit_jax.models import attention, packed
from vit_jax.models.vit import VisionTransformer

PATCH = 4
GRIDS = [(3, 5), (4, 4), (2, 6)]  # (rows, cols) of three images of different aspect


def _model(classifier, posemb="learn", **kw):
  return VisionTransformer(
      num_classes=7, patches={"size": (PATCH, PATCH)}, hidden_size=32, classifier=classifier,
      transformer=dict(num_layers=2, mlp_dim=64, num_heads=4, dropout_rate=0.0,
                       attention_dropout_rate=0.0),
      posemb=posemb, posemb_grid=(4, 4) if posemb == "learn" else None, head_zeroinit=False,
      **kw)


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.uniform(-1, 1, (r * PATCH, c * PATCH, 3)).astype(np.float32) for r, c in GRIDS]


def _pack(images, seq_len=64, num_slots=4, batch_of=None):
  patches = [packing.patchify(im, PATCH) for im in images]
  coords = [packing.grid_coords(r, c) for r, c in GRIDS[:len(images)]]
  one = packing.pack(patches, coords, GRIDS[:len(images)], seq_len, num_slots)
  return {k: jnp.asarray(v[None]) for k, v in one.items()}


@pytest.mark.parametrize("classifier,posemb,impl", [
    ("token", "learn", None), ("gap", "learn", "einsum"), ("map", "learn", "xla"),
    ("first", "learn", "einsum_vjp"), ("gap", "sincos2d", None), ("map", "sincos2d", "einsum")])
def test_pack_equals_separate_forwards(classifier, posemb, impl):
  model = _model(classifier, posemb, attention_impl=impl)
  images = _images()
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(1), x, train=False))(
      jnp.asarray(images[1][None]))

  @jax.jit
  def forwards(params, batch, *alone):
    return (model.apply(params, batch, train=False),
            [model.apply(params, x, train=False) for x in alone])

  out, separate = forwards(params, _pack(images), *(jnp.asarray(im[None]) for im in images))
  assert out.shape == (1, 4, 7)
  for i, alone in enumerate(separate):
    np.testing.assert_allclose(out[0, i], alone[0], atol=1e-5, rtol=1e-5)


def test_pack_order_and_padding_do_not_change_an_image():
  model = _model("map")
  images = _images(3)
  params = model.init(jax.random.PRNGKey(2), jnp.asarray(images[0][None]), train=False)
  apply = jax.jit(lambda p, b: model.apply(p, b, train=False))
  first = apply(params, _pack(images[:1], seq_len=40, num_slots=1))[0, 0]
  among = apply(params, _pack(images, seq_len=80, num_slots=5))[0, 0]
  np.testing.assert_allclose(first, among, atol=1e-5)


def test_no_attention_weight_crosses_images():
  model = _model("token")
  images = _images()
  batch = _pack(images)
  params = model.init(jax.random.PRNGKey(1), jnp.asarray(images[0][None]), train=False)
  _, state = model.apply(params, batch, train=False, mutable=["intermediates"])
  weights = [np.asarray(w[0]) for path, w in
             flax.traverse_util.flatten_dict(state["intermediates"]).items()
             if path[-1] == "attention_weights"]
  assert len(weights) == 2  # one per encoder block
  seg = np.concatenate([np.arange(1, 5), np.asarray(batch["segment_ids"][0])])
  cross = seg[:, None] != seg[None, :]
  for w in weights:
    assert w.shape[-2:] == cross.shape
    assert np.all(w[:, :, cross] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_packed_gradients_match_separate():
  """Gradients of a per-image loss on the pack equal the sum of separate forwards' (the
  masked custom VJP of einsum_vjp included)."""
  model = _model("gap", attention_impl="einsum_vjp")
  images = _images(5)
  params = model.init(jax.random.PRNGKey(3), jnp.asarray(images[0][None]), train=False)
  batch = _pack(images, seq_len=48, num_slots=3)

  def packed_loss(p):
    return jnp.sum(model.apply(p, batch, train=True)[0, :3, 0])

  def separate_loss(p):
    return sum(model.apply(p, jnp.asarray(im[None]), train=True)[0, 0] for im in images)

  g1, g2 = jax.jit(jax.grad(packed_loss))(params), jax.jit(jax.grad(separate_loss))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["einsum", "einsum_vjp", "xla"])
def test_masked_attention_matches_numpy(impl):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 6, 2, 4)).astype(np.float32) for _ in range(3))
  seg = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 2, 2, 2, 2]])
  mask = packed.attention_mask(jnp.asarray(seg), jnp.asarray(seg))
  out = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                        implementation=impl, mask=mask)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
  allowed = seg[:, None, :, None] == seg[:, None, None, :]
  logits = np.where(allowed, logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", w, v), atol=1e-5)


def test_packed_input_errors():
  model = _model("token_unpooled")
  images = _images()
  with pytest.raises(ValueError, match="pooled per image"):
    model.init(jax.random.PRNGKey(0), _pack(images), train=False)
  model = _model("gap")
  bad = dict(_pack(images))
  del bad["coords"]
  with pytest.raises(ValueError, match="missing"):
    model.init(jax.random.PRNGKey(0), bad, train=False)


@pytest.mark.parametrize("options", [dict(scan_layers=True, remat=True),
                                     dict(qk_norm=True, parallel_block=True),
                                     dict(flexi_patch=(2, 2))])
def test_pack_equals_separate_with_model_options(options):
  """Scanned / rematerialised blocks carry the mask; ViT-22B options; a FlexiViT model at
  another patch size (patches cut at that size)."""
  patch = options.get("flexi_patch", (PATCH, PATCH))[0]
  model = _model("map", **options)
  images = _images(7)
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(4), x, train=False))(
      jnp.asarray(images[0][None]))
  grids = [(im.shape[0] // patch, im.shape[1] // patch) for im in images]
  one = packing.pack([packing.patchify(im, patch) for im in images],
                     [packing.grid_coords(*g) for g in grids], grids, 192, 3)
  batch = {k: jnp.asarray(v[None]) for k, v in one.items()}

  @jax.jit
  def forwards(params, batch, *alone):
    return (model.apply(params, batch, train=False),
            [model.apply(params, x, train=False) for x in alone])

  out, separate = forwards(params, batch, *(jnp.asarray(im[None]) for im in images))
  for i, alone in enumerate(separate):
    np.testing.assert_allclose(out[0, i], alone[0], atol=2e-5, rtol=1e-5)
