"""big_vision checkpoints: every pool type, scan, sincos2d, two-tower files, bfloat16 .npz,
patch-size (FlexiViT) resizing and dont_load, through `checkpoint.load` and `load_pretrained`.

The files are written here in big_vision's layout from NumPy random arrays (names and shapes of
big_vision/models/vit.py: top-level `pos_embedding` without a class slot, added before the class
token; scanned blocks stacked under `Transformer/encoderblock`; `params/` or `params/img/`
prefixes), and the logits are checked against a NumPy float64 forward of that layout written
here, not against our model.
"""
import math

import jax
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from flax.linen import meta

from tests import numpy_reference as ref
from vit_jax import checkpoint
from vit_jax.checkpoint import patch_embed
from vit_jax.models import registry, transformer

WIDTH, DEPTH, HEADS, MLP, PATCH, IMAGE, CLASSES = 16, 2, 2, 32, 4, 16, 5
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)


def _normal(rng, *shape, scale=0.3):
  return rng.normal(0, scale, shape).astype(np.float32)


def _dense(rng, din, dout):
  return {"kernel": _normal(rng, din, dout), "bias": _normal(rng, dout, scale=0.05)}


def _ln(rng):
  return {"scale": 1 + _normal(rng, WIDTH, scale=0.1), "bias": _normal(rng, WIDTH, scale=0.05)}


def _mha(rng):
  hd = WIDTH // HEADS
  qkv = {n: {"kernel": _normal(rng, WIDTH, HEADS, hd), "bias": _normal(rng, HEADS, hd, scale=0.05)}
         for n in ("query", "key", "value")}
  return {**qkv, "out": {"kernel": _normal(rng, HEADS, hd, WIDTH),
                         "bias": _normal(rng, WIDTH, scale=0.05)}}


def _block(rng):
  return {"LayerNorm_0": _ln(rng), "MultiHeadDotProductAttention_0": _mha(rng),
          "LayerNorm_1": _ln(rng),
          "MlpBlock_0": {"Dense_0": _dense(rng, WIDTH, MLP), "Dense_1": _dense(rng, MLP, WIDTH)}}


def big_vision_params(*, pool_type="gap", posemb="learn", rep_size=0, num_classes=CLASSES,
                      scan=False, patch=PATCH, image=IMAGE, seed=0) -> dict:
  """A random tree with the names and shapes big_vision's vit.Model gives these options."""
  rng = np.random.default_rng(seed)
  grid = image // patch
  p = {"embedding": {"kernel": _normal(rng, patch, patch, 3, WIDTH, scale=0.1),
                     "bias": _normal(rng, WIDTH, scale=0.05)}}
  if posemb == "learn":
    p["pos_embedding"] = _normal(rng, 1, grid * grid, WIDTH)
  if pool_type == "tok":
    p["cls"] = _normal(rng, 1, 1, WIDTH)
  blocks = [_block(rng) for _ in range(DEPTH)]
  t = {"encoder_norm": _ln(rng)}
  if scan:
    t["encoderblock"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  else:
    t.update({f"encoderblock_{i}": b for i, b in enumerate(blocks)})
  p["Transformer"] = t
  if pool_type == "map":
    p["MAPHead_0"] = {"probe": _normal(rng, 1, 1, WIDTH),
                      "MultiHeadDotProductAttention_0": _mha(rng),
                      "LayerNorm_0": _ln(rng), "MlpBlock_0": {"Dense_0": _dense(rng, WIDTH, MLP),
                                                              "Dense_1": _dense(rng, MLP, WIDTH)}}
  feat = WIDTH
  if rep_size:
    p["pre_logits"] = _dense(rng, WIDTH, rep_size)
    feat = rep_size
  if num_classes:
    p["head"] = _dense(rng, feat, num_classes)
  return p


def sincos2d_reference(h, w, width, temperature=10_000.0):
  """MoCo v3's 2-D sin-cos embedding, one token and one frequency at a time."""
  quarter = width // 4
  out = np.zeros((h * w, width))
  for row in range(h):
    for col in range(w):
      for k in range(quarter):
        omega = temperature ** (-k / (quarter - 1))
        i = row * w + col
        out[i, k], out[i, quarter + k] = math.sin(col * omega), math.cos(col * omega)
        out[i, 2 * quarter + k] = math.sin(row * omega)
        out[i, 3 * quarter + k] = math.cos(row * omega)
  return out[None]


def big_vision_forward(p, images, *, pool_type, posemb="learn"):
  """NumPy float64 forward in big_vision's order: posemb added to the patch tokens, then cls."""
  p = ref.as_f64(p)
  t = p["Transformer"]
  if "encoderblock" in t:
    depth = jax.tree.leaves(t["encoderblock"])[0].shape[0]
    blocks = [jax.tree.map(lambda a, i=i: a[i], t["encoderblock"]) for i in range(depth)]
  else:
    depth = len([k for k in t if k.startswith("encoderblock_")])
    blocks = [t[f"encoderblock_{i}"] for i in range(depth)]
  x = ref.patch_embed(np.asarray(images, np.float64), p["embedding"])
  grid = int(math.isqrt(x.shape[1]))
  x = x + (p["pos_embedding"] if posemb == "learn" else sincos2d_reference(grid, grid, WIDTH))
  if pool_type == "tok":
    x = np.concatenate([np.broadcast_to(p["cls"], (x.shape[0], 1, WIDTH)), x], axis=1)
  for b in blocks:
    x = ref.encoder_block(x, b)
  x = ref.layer_norm(x, t["encoder_norm"])
  if pool_type == "map":
    m = p["MAPHead_0"]
    probe = np.broadcast_to(m["probe"], (x.shape[0], 1, WIDTH))
    y = ref.attention(probe, x, m["MultiHeadDotProductAttention_0"])
    x = (y + ref.mlp(ref.layer_norm(y, m["LayerNorm_0"]), m["MlpBlock_0"]))[:, 0]
  elif pool_type == "gap":
    x = x.mean(axis=1)
  elif pool_type in ("tok", "0"):
    x = x[:, 0]
  if "pre_logits" in p:
    x = np.tanh(ref.dense(x, p["pre_logits"]))
  return ref.dense(x, p["head"]) if "head" in p else x


def flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def write_npz(path, params, prefix="params/", extra=None):
  flat = {prefix + k: v for k, v in flatten(params).items()}
  flat.update(extra or {})
  np.savez(path, **flat)
  return str(path)


def our_model(pool_type, posemb="learn", rep_size=0, num_classes=CLASSES, patch=PATCH, **kw):
  config = registry.from_big_vision(f"mu/{patch}", pool_type=pool_type, posemb=posemb,
                                         rep_size=rep_size)
  config.hidden_size = WIDTH
  config.transformer.update(dict(num_layers=DEPTH, num_heads=HEADS, mlp_dim=MLP))
  return registry.model_from_fields({**config.to_dict(), **kw}, num_classes)


# Compiled init/apply: eager dispatch compiles every primitive of the model on its own.
def _init(model, image=IMAGE):
  """Concrete init params (the values matter where dont_load or a new head keeps them)."""
  init = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))
  return meta.unbox(init(IMAGES[:1, :image, :image])["params"])


def _shapes(model, image=IMAGE):
  """Abstract init params: names and shapes, where every parameter comes from the file."""
  return meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), IMAGES[:1, :image, :image], train=False))["params"])


def _logits(model, params, images):
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  return np.asarray(apply(params, images))


CASES = [  # (pool_type, posemb, scan, rep_size, prefix)
    ("tok", "learn", False, 0, "params/"),
    ("gap", "learn", True, 0, "params/"),
    ("map", "learn", True, 0, "params/img/"),
    ("map", "sincos2d", False, 0, ""),
    ("0", "sincos2d", True, 0, "opt/target/"),
    ("tok", "sincos2d", True, 12, "params/"),
    ("none", "learn", False, 0, "params/"),
]


@pytest.mark.parametrize("pool_type,posemb,scan,rep_size,prefix", CASES,
                         ids=["-".join(map(str, c[:4])) for c in CASES])
def test_big_vision_layouts_give_its_logits_through_load_and_load_pretrained(
    tmp_path, pool_type, posemb, scan, rep_size, prefix):
  num_classes = 0 if pool_type == "none" else CLASSES
  bv = big_vision_params(pool_type=pool_type, posemb=posemb, scan=scan, rep_size=rep_size,
                         num_classes=num_classes)
  extra = {"params/txt/Embed_0/embedding": np.zeros((7, 3), np.float32),
           "params/t": np.ones((1,), np.float32), "params/b": np.zeros((1,), np.float32)
           } if prefix == "params/img/" else None
  path = write_npz(tmp_path / "bv.npz", bv, prefix, extra)
  want = big_vision_forward(bv, IMAGES, pool_type=pool_type, posemb=posemb)

  loaded = checkpoint.load(path)  # One canonical per-layer tree, whatever the file.
  assert "encoderblock" not in loaded["Transformer"]
  assert ("posembed_input" in loaded["Transformer"]) == (posemb == "learn")
  model = our_model(pool_type, posemb, rep_size, num_classes or None)
  got = _logits(model, loaded, IMAGES)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)

  for scan_model in (False, True):
    model = our_model(pool_type, posemb, rep_size, num_classes or None, scan_layers=scan_model)
    params = checkpoint.load_pretrained(pretrained_path=path, init_params=_shapes(model))
    assert ("encoderblock" in params["Transformer"]) == scan_model
    np.testing.assert_allclose(_logits(model, params, IMAGES), want, atol=2e-5, rtol=1e-5)


def test_sincos2d_matches_the_formula_and_needs_no_interpolation(tmp_path):
  np.testing.assert_allclose(transformer.posemb_sincos2d(3, 5, 16), sincos2d_reference(3, 5, 16),
                             atol=1e-6)
  bv = big_vision_params(pool_type="gap", posemb="sincos2d")
  model = our_model("gap", "sincos2d")
  loaded = checkpoint.load_pretrained(pretrained_path=write_npz(tmp_path / "s.npz", bv),
                                      init_params=_shapes(model))
  big = np.random.default_rng(3).uniform(-1, 1, (1, 24, 24, 3)).astype(np.float32)  # 6x6 grid
  np.testing.assert_allclose(_logits(model, loaded, big),
                             big_vision_forward(bv, big, pool_type="gap", posemb="sincos2d"),
                             atol=2e-5, rtol=1e-5)


def test_posemb_mismatch_is_one_clear_error_naming_the_option(tmp_path):
  sincos_file = write_npz(tmp_path / "s.npz", big_vision_params(posemb="sincos2d"))
  with pytest.raises(ValueError, match="posemb='sincos2d'"):
    checkpoint.load_pretrained(pretrained_path=sincos_file, init_params=_shapes(our_model("gap")))
  learned_file = write_npz(tmp_path / "l.npz", big_vision_params(posemb="learn"))
  with pytest.raises(ValueError, match="posemb='learn'"):
    checkpoint.load_pretrained(pretrained_path=learned_file,
                               init_params=_shapes(our_model("gap", "sincos2d")))


def test_two_tower_file_loads_its_image_tower_and_says_what_it_ignored(tmp_path, caplog):
  img = big_vision_params(pool_type="map", num_classes=0)
  txt = {"txt/Encoder_0/encoder_norm/scale": np.ones(4, np.float32),
         "txt/head/kernel": np.zeros((4, 8), np.float32), "t": np.ones(1, np.float32),
         "b": np.zeros(1, np.float32)}
  path = write_npz(tmp_path / "siglip.npz", img, "params/img/",
                   {"params/" + k: v for k, v in txt.items()})
  with caplog.at_level("WARNING"):
    loaded = checkpoint.load(path)
  notes = [r.getMessage() for r in caplog.records if "image tower" in r.getMessage()]
  assert len(notes) == 1 and "txt/ (2 arrays)" in notes[0] and ", t" in notes[0], notes
  assert set(loaded) == {"embedding", "Transformer", "MAPHead_0"}
  # big_vision's "file.npz:img" syntax names the sub-tree explicitly.
  explicit = checkpoint.load(path + ":img")
  assert flatten(explicit).keys() == flatten(loaded).keys()
  with pytest.raises(ValueError, match="no sub-tree 'nope'"):
    checkpoint.load(path + ":nope")
  # A tower without a head fine-tunes with a new head; the report says so, and the notes.
  init = _init(our_model("map", num_classes=3))
  caplog.clear()
  with caplog.at_level("WARNING"):
    params, report = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                                report=True)
  assert not [r for r in caplog.records if "image tower" in r.getMessage()]  # in the report
  assert report.head == "new" and not np.any(params["head"]["kernel"])
  text = "\n".join(report.lines())
  assert "head: new (3 classes; the checkpoint has none)" in text and "txt/ (2 arrays)" in text
  with pytest.raises(ValueError, match="no classification head"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, replace_head=False)
  # A classifier file into a feature extractor: the head is dropped.
  cls_file = write_npz(tmp_path / "cls.npz", big_vision_params(pool_type="map"))
  features, report = checkpoint.load_pretrained(
      pretrained_path=cls_file, init_params=_shapes(our_model("map", num_classes=None)),
      report=True)
  assert "head" not in features and report.head == "dropped"


def test_bfloat16_npz_from_big_vision_is_read(tmp_path):
  bv = big_vision_params(pool_type="gap")
  flat = {"params/" + k: v.astype(ml_dtypes.bfloat16) for k, v in flatten(bv).items()}
  np.savez(tmp_path / "bf16.npz", **flat)
  with np.load(tmp_path / "bf16.npz") as raw:  # What numpy gives back: 2-byte void.
    assert raw["params/head/kernel"].dtype.kind == "V"
  loaded = checkpoint.load(str(tmp_path / "bf16.npz"))
  want = flat["params/head/kernel"].astype(np.float32)
  np.testing.assert_array_equal(loaded["head"]["kernel"], want)
  assert loaded["head"]["kernel"].dtype == np.float32


@pytest.mark.parametrize("old,new", [((16, 16), (8, 8)), ((16, 16), (14, 14)),
                                     ((16, 16), (32, 32)), ((4, 6), (7, 3))])
def test_resize_matrix_is_tf_bilinear_resize(old, new):
  columns = []
  for i in range(old[0] * old[1]):
    basis = np.zeros(old)
    basis[np.unravel_index(i, old)] = 1.0
    columns.append(tf.image.resize(basis[None, ..., None], new, method="bilinear")
                   .numpy()[0, ..., 0].reshape(-1))
  np.testing.assert_allclose(patch_embed.resize_matrix(old, new), np.stack(columns, axis=1),
                             atol=2e-6)


def test_pi_resize_keeps_the_projection_of_every_upsampled_patch():
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(4, 4, 3, 6))
  new = patch_embed.resize_patch_kernel(kernel, (8, 8))
  assert new.shape == (8, 8, 3, 6)
  patches = rng.normal(size=(5, 4, 4, 3))
  resized = tf.image.resize(patches, (8, 8), method="bilinear").numpy()
  np.testing.assert_allclose(np.einsum("nhwc,hwcd->nd", resized, new),
                             np.einsum("nhwc,hwcd->nd", patches, kernel), atol=1e-5)
  # Downsampling: the least-squares solution, pinv(B^T) w (here checked by its normal equation).
  small = patch_embed.resize_patch_kernel(kernel, (2, 2)).reshape(4, -1)
  b = patch_embed.resize_matrix((4, 4), (2, 2))
  np.testing.assert_allclose(b @ b.T @ small, b @ kernel.reshape(16, -1), atol=1e-8)


def test_load_pretrained_resizes_the_patch_embedding_when_asked(tmp_path):
  bv = big_vision_params(pool_type="gap", patch=4)  # 16 px / 4 = 4x4 grid
  path = write_npz(tmp_path / "p4.npz", bv)
  model = our_model("gap", patch=8)               # 32 px / 8 = the same 4x4 grid
  init = meta.unbox(jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False))["params"])
  with pytest.raises(ValueError, match="resize_patch_embedding=True"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init)
  params, report = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                              resize_patch_embedding=True, report=True)
  assert report.patch_size == ((4, 4), (8, 8))
  assert "patch embedding: resized from 4x4 to 8x8" in "\n".join(report.lines())
  # Each 4x4 patch bilinearly resized to 8x8 on its own (the FlexiViT identity is per patch).
  n = IMAGES.shape[0]
  patches = IMAGES.reshape(n, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 4, 4, 3)
  big = tf.image.resize(patches, (8, 8), method="bilinear").numpy()
  upsampled = big.reshape(n, 4, 4, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 32, 32, 3)
  np.testing.assert_allclose(_logits(model, params, upsampled),
                             big_vision_forward(bv, IMAGES, pool_type="gap"), atol=5e-5, rtol=1e-4)


def test_dont_load_keeps_init_values_and_is_reported(tmp_path):
  path = write_npz(tmp_path / "gap.npz", big_vision_params(pool_type="gap"))
  model = our_model("map")  # The file has no MAPHead_0: dont_load lets the model's init stand.
  # Concrete init values of the model's names and shapes, nonzero everywhere (the model's own
  # init has zero biases and head, which a zero default would also give), without compiling.
  rng = np.random.default_rng(5)
  init = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), _shapes(model))
  with pytest.raises(ValueError, match="missing keys"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init)
  params, report = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init, dont_load=["MAPHead_0/.*", "head/.*"], report=True)
  for key, value in flatten(init).items():
    if key.startswith(("MAPHead_0/", "head/")):
      np.testing.assert_array_equal(flatten(params)[key], value)
  np.testing.assert_array_equal(params["embedding"]["kernel"],
                                big_vision_params(pool_type="gap")["embedding"]["kernel"])
  assert report.head == "not loaded" and "head/kernel" in report.not_loaded
  assert "not loaded (dont_load): " in "\n".join(report.lines())
  with pytest.raises(ValueError, match="matches no parameter name"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, dont_load=["MAPHead/.*"])
  with pytest.raises(ValueError, match="not a valid regular expression"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, dont_load=["head/(["])


def test_from_big_vision_maps_variants_and_pool_types():
  c = registry.from_big_vision("So400m/14", pool_type="map")
  assert (c.hidden_size, c.transformer.num_layers, c.transformer.mlp_dim,
          c.transformer.num_heads, c.patches.size, c.classifier) == (
              1152, 27, 4304, 16, (14, 14), "map")
  registered = registry.MODEL_CONFIGS["ViT-So400m_14"]
  plain = lambda v: v.to_dict() if hasattr(v, "to_dict") else v
  for key in ("hidden_size", "patches", "transformer", "classifier", "representation_size"):
    assert plain(registered[key]) == plain(c[key]), key
  assert registry.from_big_vision("B/16", pool_type="tok").classifier == "token"
  assert registry.from_big_vision("B/16", pool_type="0").classifier == "first"
  assert registry.from_big_vision("L/16", rep_size=True).representation_size == 1024
  with pytest.raises(ValueError, match="'<name>/<patch>'"):
    registry.from_big_vision("So400m")
  with pytest.raises(ValueError, match="pool_type 'cls'"):
    registry.from_big_vision("B/16", pool_type="cls")
