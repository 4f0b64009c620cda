"""Inspection: attention probabilities and block features against a NumPy forward, rollout,
mean attention distance, position-embedding similarity and filter PCA against independent
formulations, and `python -m vit_jax.visualize` end to end on a tiny export."""
import json
import math

import jax
import numpy as np
import pytest
from flax.linen import meta
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import cosine_similarity

from tests import numpy_reference as ref
from vit_jax import analysis, checkpoint, exits, predict, visualize as vit_inspect
from vit_jax.export_formats import npz
from vit_jax.models import registry

X = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
TINY = dict(hidden_size=16, patches={"size": (4, 4)},
            transformer=dict(num_layers=2, num_heads=2, mlp_dim=32, dropout_rate=0.0,
                             attention_dropout_rate=0.0))


def _model(**kw):
  return registry.create_model("testing", 5, **{**TINY, **kw})


_INITS = {}  # (repr(model), input shape, seed) -> host init params; tests share equal models.


def _init(model, images, seed=0):
  """model.init compiled once (eager dispatch compiles every primitive on its own), per model."""
  key = (repr(model), images.shape, seed)
  if key not in _INITS:
    init = jax.jit(lambda x: model.init(jax.random.PRNGKey(seed), x, train=False))
    _INITS[key] = jax.device_get(meta.unbox(init(images)["params"]))
  return _INITS[key]


def _params(model, seed=0):
  params = _init(model, X[:1], seed)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.3, p.shape).astype(np.float32),
                      params)


def _numpy_attention_and_features(params, images, classifier):
  """Per-block (B, H, T, T) softmax probabilities and block outputs, NumPy float64."""
  p = ref.as_f64(checkpoint.unstack_layers(params))
  x = ref.patch_embed(np.asarray(images, np.float64), p["embedding"])
  if classifier == "token":
    x = np.concatenate([np.broadcast_to(p["cls"], (x.shape[0], 1, x.shape[2])), x], axis=1)
  x = x + p["Transformer"]["posembed_input"]["pos_embedding"]
  probs, feats = [], []
  for i in range(2):
    b = p["Transformer"][f"encoderblock_{i}"]
    y = ref.layer_norm(x, b["LayerNorm_0"])
    m = b["MultiHeadDotProductAttention_0"]
    heads = []
    for h in range(m["query"]["kernel"].shape[1]):
      q = y @ m["query"]["kernel"][:, h] + m["query"]["bias"][h]
      k = y @ m["key"]["kernel"][:, h] + m["key"]["bias"][h]
      heads.append(ref.softmax(q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])))
    probs.append(np.stack(heads, axis=1))
    x = ref.encoder_block(x, b)
    feats.append(x)
  return probs, feats


@pytest.mark.parametrize("classifier,scan", [("token", False), ("gap", True), ("map", False)])
def test_attention_probabilities_and_features_equal_a_numpy_forward(classifier, scan):
  model = _model(classifier=classifier, scan_layers=scan)
  params = _params(model)
  inter = analysis.intermediates(model, params, X)
  probs, feats = _numpy_attention_and_features(params, X, classifier)
  assert len(inter.attention) == len(inter.features) == 2
  for got, want in zip(inter.attention, probs):
    assert got.shape == want.shape == (3, 2, want.shape[2], want.shape[2])
    np.testing.assert_allclose(got, want, atol=2e-6)
  for got, want in zip(inter.features, feats):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, X)
  np.testing.assert_allclose(inter.logits, np.asarray(logits), atol=2e-5)
  assert inter.num_prefix_tokens == (classifier == "token") and inter.grid == (4, 4)
  assert (inter.pool_attention is not None) == (classifier == "map")
  if classifier == "map":
    assert inter.pool_attention.shape == (3, 2, 1, 16)
    np.testing.assert_allclose(inter.pool_attention.sum(-1), 1.0, atol=1e-6)


def test_hybrid_attention_follows_from_the_previous_block_features():
  model = registry.create_model("R+ViT-Ti_16", 5, **{**TINY, "patches": {"size": (2, 2)}})
  images = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  params = _init(model, images[:1])
  inter = analysis.intermediates(model, params, images)
  assert inter.grid == (4, 4) and analysis.patch_pixels(model) == (8, 8)  # 2x2 patches x stride 4
  b = ref.as_f64(params["Transformer"]["encoderblock_1"])
  y = ref.layer_norm(np.asarray(inter.features[0], np.float64), b["LayerNorm_0"])
  m = b["MultiHeadDotProductAttention_0"]
  q = np.einsum("btd,dhk->bhtk", y, m["query"]["kernel"]) + m["query"]["bias"][None, :, None]
  k = np.einsum("btd,dhk->bhtk", y, m["key"]["kernel"]) + m["key"]["bias"][None, :, None]
  want = ref.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]))
  np.testing.assert_allclose(inter.attention[1], want, atol=2e-6)


def test_compute_in_batches_averages_over_every_image():
  model = _model()
  params = _params(model)
  whole = analysis.compute(model, params, X, 4, batch_size=8)
  batched = analysis.compute(model, params, X, 4, batch_size=2)  # batches of 2 and 1
  np.testing.assert_allclose(batched["distances"], whole["distances"], rtol=1e-6)
  np.testing.assert_allclose(batched["rollout"], whole["rollout"], rtol=1e-6)


def test_mixer_gives_features_and_no_attention():
  model = registry.create_model("Mixer-B_16", 5, patches={"size": (4, 4)}, hidden_dim=8,
                                     num_blocks=2, tokens_mlp_dim=8, channels_mlp_dim=8)
  params = _params(model)
  inter = analysis.intermediates(model, params, X)
  assert inter.attention == [] and [f.shape for f in inter.features] == [(3, 16, 8)] * 2
  with pytest.raises(ValueError, match="MLP-Mixer has no attention"):
    analysis.compute(model, params, X, 4)


def test_a_wrong_image_size_is_one_clear_error():
  model = _model()
  with pytest.raises(ValueError, match="not divisible by the effective patch size"):
    analysis.intermediates(model, _params(model), X[:, :15, :15])
  with pytest.raises(ValueError, match="pos_embedding has shape"):
    analysis.intermediates(model, _params(model), np.zeros((1, 24, 24, 3), np.float32))


def test_rollout_matches_the_formula_written_as_loops():
  rng = np.random.default_rng(1)
  layers = [ref.softmax(rng.normal(size=(2, 3, 5, 5))) for _ in range(3)]
  want = np.zeros((2, 5, 5))
  for b in range(2):
    joint = np.eye(5)
    for a in layers:
      mixed = np.zeros((5, 5))
      for i in range(5):
        for j in range(5):
          mixed[i, j] = 0.5 * np.mean(a[b, :, i, j]) + 0.5 * (i == j)
      joint = mixed @ joint
    want[b] = joint
  np.testing.assert_allclose(analysis.rollout(layers), want, atol=1e-12)
  np.testing.assert_allclose(analysis.rollout(layers).sum(-1), 1.0, atol=1e-12)


def test_output_rollout_map_reads_the_class_token_row():
  rng = np.random.default_rng(2)
  layers = [ref.softmax(rng.normal(size=(1, 2, 5, 5)))]
  inter = analysis.Intermediates(np.zeros((1, 3)), layers, [], None, 1, (2, 2))
  joint = 0.5 * layers[0].mean(axis=1) + 0.5 * np.eye(5)
  np.testing.assert_allclose(analysis.output_rollout_map(inter)[0], joint[0, 0, 1:].reshape(2, 2))


def test_mean_attention_distance_on_hand_made_patterns():
  grid, px, n = (3, 4), 16, 12
  identity = np.broadcast_to(np.eye(n), (2, 3, n, n))
  np.testing.assert_allclose(analysis.mean_attention_distance(identity, grid, px), 0.0)
  uniform = np.full((1, 2, n, n), 1.0 / n)
  rows, cols = np.divmod(np.arange(n), 4)
  pairwise = [px * math.hypot(rows[i] - rows[j], cols[i] - cols[j])
              for i in range(n) for j in range(n)]
  np.testing.assert_allclose(analysis.mean_attention_distance(uniform, grid, px),
                             np.mean(pairwise), rtol=1e-12)
  # With a class token: its row and column are left out, the patch weights renormalised.
  with_cls = np.full((1, 1, n + 1, n + 1), 1.0 / (n + 1))
  np.testing.assert_allclose(analysis.mean_attention_distance(with_cls, grid, px, 1),
                             np.mean(pairwise), rtol=1e-12)
  # Each patch looking at its right neighbour (the last column at its left one): one patch.
  right = np.zeros((1, 1, n, n))
  for i in range(n):
    right[0, 0, i, i + 1 if cols[i] < 3 else i - 1] = 1.0
  np.testing.assert_allclose(analysis.mean_attention_distance(right, grid, px), [px])
  with pytest.raises(ValueError, match="does not match"):
    analysis.mean_attention_distance(uniform, (3, 3), px)


def test_posemb_similarity_and_filter_components_against_sklearn():
  rng = np.random.default_rng(3)
  posemb = rng.normal(size=(9, 8))
  np.testing.assert_allclose(analysis.posemb_similarity(posemb), cosine_similarity(posemb),
                             atol=1e-12)
  np.testing.assert_allclose(analysis.posemb_similarity(np.eye(4)), np.eye(4))
  kernel = rng.normal(size=(4, 4, 3, 40))
  comps, ratio = analysis.embedding_components(kernel, k=5)
  pca = PCA(n_components=5, svd_solver="full").fit(kernel.reshape(48, 40).T)
  for got, want in zip(comps.reshape(5, -1), pca.components_):
    np.testing.assert_allclose(abs(got @ want), 1.0, atol=1e-9)  # Same direction, any sign.
  np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-9)


def _export(tmp_path):
  """A tiny random ViT export (.npz + sidecar), as vit_jax.export writes it."""
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, **{"model.transformer.num_layers": 2})
  with config.unlocked():
    config.pp.crop = 16
  model = npz.model_from_architecture(npz.architecture(config))
  params = _params(model)
  out = tmp_path / "model.npz"
  checkpoint.save(params, str(out))
  (tmp_path / "model.json").write_text(json.dumps(npz.architecture(config)))
  return str(out), model, params


def _images(tmp_path, n=2):
  paths = []
  for i in range(n):
    path = tmp_path / f"img{i}.png"
    Image.fromarray(((X[i] + 1) * 127.5).astype(np.uint8)).save(path)
    paths.append(str(path))
  return paths


def test_cli_writes_every_file(tmp_path, capsys):
  path, model, params = _export(tmp_path)
  images = _images(tmp_path)
  out = tmp_path / "out"
  assert vit_inspect.main(["--checkpoint", path, "--out", str(out), *images]) == 0
  assert "Wrote 8 files" in capsys.readouterr().out
  for name in ("attention.npz", "rollout.npy", "rollout.png", "attention_distance.json",
               "attention_distance.png", "posemb_similarity.png", "embedding_filters.png",
               "summary.json"):
    assert (out / name).stat().st_size > 0, name
  with np.load(out / "attention.npz") as f:
    assert sorted(f.files) == ["layer_0", "layer_1"]
    layer0 = f["layer_0"]
  assert layer0.shape == (2, 17, 17) and layer0.dtype == np.float32
  np.testing.assert_allclose(layer0.sum(-1), 1.0, atol=1e-5)
  # The first image as the CLI read it (PIL round trip) gives the same probabilities here.
  first = predict.load_image(images[0], 16)[None]
  np.testing.assert_allclose(layer0, analysis.intermediates(model, params, first).attention[0][0],
                             atol=1e-6)
  assert np.load(out / "rollout.npy").shape == (4, 4)
  distance = json.loads((out / "attention_distance.json").read_text())
  assert distance["unit"] == "pixels" and distance["images"] == 2
  assert [len(layer["heads"]) for layer in distance["layers"]] == [2, 2]
  assert all(0 <= d <= 4 * math.hypot(3, 3) for layer in distance["layers"] for d in layer["heads"])


def test_cli_bad_input_is_one_line_each(tmp_path, capsys):
  path, _, _ = _export(tmp_path)
  assert vit_inspect.main(["--checkpoint", path, "--out", str(tmp_path / "o"),
                           str(tmp_path / "missing.png")]) == exits.BAD_INPUT
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "cannot read image" in err[0]
  # A Mixer export: one line saying attention maps need a ViT.
  arch = json.loads((tmp_path / "model.json").read_text())
  arch["model"] = dict(model_name="Mixer-B_16", patches={"size": [4, 4]}, hidden_dim=8,
                       num_blocks=1, tokens_mlp_dim=8, channels_mlp_dim=8)
  mixer = npz.model_from_architecture(arch)
  checkpoint.save(_params(mixer), str(tmp_path / "mixer.npz"))
  (tmp_path / "mixer.json").write_text(json.dumps(arch))
  assert vit_inspect.main(["--checkpoint", str(tmp_path / "mixer.npz"), "--out",
                           str(tmp_path / "o"), *_images(tmp_path, 1)]) == exits.BAD_INPUT
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "MLP-Mixer has no attention" in err[0], err
