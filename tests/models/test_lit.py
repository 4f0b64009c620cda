"""LiT image-text models: Google's parameter counts, the published file layout (flaxformer's
BERT names) loaded from disk, gs:// and https:// (loopback), embeddings against NumPy."""
import functools
import http.server
import threading

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from flax import traverse_util
from official_layout import tiny_config

from vit_jax import models
from vit_jax.checkpoint import image_text
from vit_jax.google_compat import lit as google_lit
from vit_jax.models import lit, registry

# Google's models_test table.
LIT_SIZES = {"LiT-B16B": 195_871_489, "LiT-B16B_2": 195_280_897, "LiT-L16L": 638_443_521,
             "LiT-L16S": 331_140_353, "LiT-L16Ti": 311_913_089}
TINY_BERT = dict(hidden_size=16, intermediate_dim=32, num_hidden_layers=2,
                 num_attention_heads=2, vocab_size=11, max_length=8, num_segments=2)
BERT_VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\nphoto\nof\nthe\nnumber\none\ntwo\n"


@pytest.mark.parametrize("name", sorted(LIT_SIZES))
def test_googles_parameter_counts_and_output_shapes(name):
  model = models.get_model(name)
  assert isinstance(model, models.LitModel) and model.pp.max_len == 16
  images = jnp.ones((2, 224, 224, 3))
  tokens = jnp.ones((2, model.pp.max_len), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images=images,
                                                tokens=tokens))
  assert sum(x.size for x in jax.tree.leaves(variables)) == LIT_SIZES[name]
  zimg, ztxt, out = jax.eval_shape(lambda v: model.apply(v, images=images, tokens=tokens),
                                   variables)
  assert zimg.shape == ztxt.shape and zimg.shape[0] == 2 and out["t"].shape == (1,)


def _tiny(text_model: str, out_dim, name: str = "LiT-tiny") -> google_lit.LitModel:
  text = dict(config=TINY_BERT) if text_model == "bert" else dict(
      width=16, num_layers=2, mlp_dim=32, num_heads=2, vocab_size=11)
  return google_lit.LitModel(image=tiny_config().to_dict(), text_model=text_model, text=text,
                             pp=dict(tokenizer_name="bert" if text_model == "bert"
                                     else "sentencepiece", max_len=6, size=16),
                             out_dim=out_dim, model_name=name)


def _write_published(model, path, seed=0):
  """Init with random weights and write them as Google's code does: flatten by names, savez."""
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(seed),
                                         **model.init_inputs((1, 16, 16, 3))))()
  params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * np.random.default_rng(seed).normal(
      size=x.shape).astype(np.float32), variables["params"])  # No zero heads or biases.
  np.savez(path, **traverse_util.flatten_dict(params, sep="/"))
  return params


def _apply(model, variables, images, tokens):
  """model.apply compiled (eager dispatch compiles every primitive on its own: slower)."""
  return jax.jit(lambda v, x, t: model.apply(v, images=x, tokens=t))(variables, images, tokens)


TOKENS = np.array([[2, 4, 5, 6, 7, 0], [2, 8, 9, 10, 3, 1]], np.int32)  # With padding.


def test_bert_lit_in_the_published_layout_equals_numpy(tmp_path):
  model = _tiny("bert", (12, 8))
  params = _write_published(model, tmp_path / "LiT-tiny.npz")
  keys = set(np.load(tmp_path / "LiT-tiny.npz").files)
  layer = "txt/BertEncoder_0/encoder_block/layer_sequence/layers_1/"
  for key in ("txt/BertEncoder_0/embedder/embedders_token_ids/embedding",
              "txt/BertEncoder_0/embedder/embedders_position_ids/embedding",
              "txt/BertEncoder_0/embedder/embedders_segment_ids/embedding",
              "txt/BertEncoder_0/layer_norm/scale", "txt/head/kernel", "t",
              layer + "attention_block/attention_layer/query/kernel",
              layer + "attention_block/dense_layer/kernel",
              layer + "attention_block/layer_norm/bias",
              layer + "mlp_block/mlp/dense_layer/kernel", layer + "mlp_block/dense_layer/bias",
              layer + "mlp_block/layer_norm/scale", "img/head/kernel", "img/embedding/kernel"):
    assert key in keys, key  # flaxformer's names (its BERT checkpoint converter's tree).
  assert np.load(tmp_path / "LiT-tiny.npz")[layer + "attention_block/attention_layer/query/kernel"
                                            ].shape == (16, 16)  # Heads folded, as flaxformer.
  variables = model.load_variables(str(tmp_path / "LiT-tiny.npz"))
  images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  zimg, ztxt, out = _apply(model, variables, images, TOKENS)

  txt = params["txt"]
  encoded = ref.bert_forward(txt["BertEncoder_0"], TOKENS, num_heads=2)
  np.testing.assert_allclose(ztxt, ref.unit(ref.dense(encoded[:, 0], ref.as_f64(txt["head"]))),
                             atol=2e-5)
  np.testing.assert_allclose(zimg, ref.unit(ref.vit_forward(params["img"], images)), atol=2e-5)
  np.testing.assert_allclose(out["t"], np.exp(params["t"]), rtol=1e-6)
  assert zimg.shape == (2, 12) and ztxt.shape == (2, 8)
  # One tower at a time gives the same embeddings (the Colab embeds texts and images apart).
  _, ztxt_only, _ = model.apply(variables, tokens=TOKENS)
  np.testing.assert_allclose(ztxt_only, ztxt, atol=1e-6)


def test_text_transformer_lit_equals_numpy_and_reads_the_last_token(tmp_path):
  model = _tiny("text_transformer", (None, 16))
  params = _write_published(model, tmp_path / "LiT-tiny.npz", seed=3)
  variables = model.load_variables(str(tmp_path / "LiT-tiny.npz"))
  images = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  zimg, ztxt, _ = _apply(model, variables, images, TOKENS)
  np.testing.assert_allclose(ztxt, ref.unit(ref.text_transformer_forward(params["txt"], TOKENS)),
                             atol=2e-5)
  np.testing.assert_allclose(zimg, ref.unit(ref.vit_forward(params["img"], images)), atol=2e-5)
  assert "head" not in params["img"]  # out_dim[0] None: the image tower has no projection.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture
def lit_server(tmp_path, monkeypatch):
  """A loopback server over tmp_path/www, standing in for GCS (VIT_JAX_GCS_ENDPOINT)."""
  root = tmp_path / "www"
  (root / "vit_models" / "lit").mkdir(parents=True)
  handler = functools.partial(_QuietHandler, directory=str(root))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{httpd.server_address[1]}"
  monkeypatch.setenv("VIT_JAX_GCS_ENDPOINT", url)
  monkeypatch.setenv("VIT_JAX_GCS_ANONYMOUS", "1")
  monkeypatch.setenv("VIT_JAX_CACHE", str(tmp_path / "cache"))
  yield root / "vit_models" / "lit", url
  httpd.shutdown()


def test_published_files_from_gs_and_https_with_the_vocabulary_beside(lit_server, tmp_path,
                                                                       monkeypatch):
  published, url = lit_server
  model = _tiny("bert", (12, 8), name="LiT-tinyweb")
  params = _write_published(model, published / "LiT-tinyweb.npz", seed=5)
  (published / "LiT-tinyweb.txt").write_text(BERT_VOCAB)
  work = tmp_path / "colab"
  work.mkdir()
  monkeypatch.chdir(work)
  # Google's default: gs://vit_models/lit/<name>.npz, copied into the working directory.
  variables = model.load_variables()
  assert (work / "LiT-tinyweb.npz").exists()
  np.testing.assert_array_equal(variables["params"]["t"], params["t"])
  tokens = model.get_tokenizer()(["a photo of the number one", "two"])
  np.testing.assert_array_equal(tokens, [[2, 4, 5, 6, 7, 8], [2, 10, 0, 0, 0, 0]])
  # https:// and an explicit gs:// path read the same file (and its vocabulary beside it).
  for location in (f"{url}/vit_models/lit/LiT-tinyweb.npz", "gs://vit_models/lit/LiT-tinyweb.npz"):
    again = model.load_variables(location)
    assert model.vocab_path.endswith(".txt") and open(model.vocab_path).read() == BERT_VOCAB
    jax.tree.map(np.testing.assert_array_equal, again["params"], variables["params"])


def test_not_an_image_text_file_is_one_clear_error(tmp_path):
  np.savez(tmp_path / "vit.npz", **{"embedding/kernel": np.zeros((4, 4, 3, 16), np.float32)})
  with pytest.raises(ValueError, match="not an image-text checkpoint.*checkpoint.load"):
    image_text.load_image_text(str(tmp_path / "vit.npz"))
  with pytest.raises(FileNotFoundError, match="vocabulary file beside"):
    image_text.load_image_text(str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match="not known"):
    models.LitModel(**lit.get_lit_config("LiT-B16B").to_dict() | {"text_model": "gpt"}).init(
        jax.random.PRNGKey(0), tokens=jnp.zeros((1, 4), jnp.int32))


def test_init_inputs_cover_both_towers():
  model = _tiny("bert", 8)
  inputs = model.init_inputs((3, 16, 16, 3))
  assert inputs["images"].shape == (3, 16, 16, 3) and inputs["tokens"].shape == (3, 6)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), **inputs))()
  zimg, ztxt, _ = _apply(model, variables, inputs["images"], inputs["tokens"])
  assert zimg.shape == ztxt.shape == (3, 8)


@pytest.mark.parametrize("text_model", ["bert", "text_transformer"])
def test_every_lit_parameter_has_logical_axis_names(text_model):
  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  P = jax.sharding.PartitionSpec
  model = _tiny(text_model, (12, 8))
  _, specs = sharding.param_layout(
      lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs((1, 16, 16, 3)))["params"])
  assert all(isinstance(s, P) and len(s) for s in jax.tree.leaves(
      specs, is_leaf=lambda s: isinstance(s, P))), "a parameter without logical axis names"
  if text_model == "bert":
    embedder = specs["txt"]["BertEncoder_0"]["embedder"]
    assert embedder["embedders_token_ids"]["embedding"] == P("vocab", "embed")
  else:
    assert specs["txt"]["Embed_0"]["embedding"] == P("vocab", "embed")


@pytest.mark.parametrize("pool", ["last", "map"])
def test_big_vision_two_tower_file_scanned_with_bias_equals_numpy(tmp_path, pool):
  """A SigLIP-style file as big_vision writes it: params/img/ (big_vision's ViT names, map
  pooling, scanned), params/txt/ (scanned Encoder_0/encoderblock), t and b."""
  from tests.checkpoint import test_big_vision_checkpoints as bv  # pylint: disable=g-import-not-at-top
  img = bv.big_vision_params(pool_type="map", num_classes=0, scan=True)
  model = lit.LitModel(
      image=registry.from_big_vision("mu/4", pool_type="map").to_dict() | dict(
          hidden_size=bv.WIDTH, transformer=dict(num_layers=bv.DEPTH, num_heads=bv.HEADS,
                                                 mlp_dim=bv.MLP, dropout_rate=0.0,
                                                 attention_dropout_rate=0.0)),
      text_model="text_transformer", pp=dict(tokenizer_name="sentencepiece", max_len=6, size=16),
      text=dict(width=16, num_layers=2, mlp_dim=32, num_heads=2, vocab_size=11, pool_type=pool),
      out_dim=(None, 16), model_name="siglip-tiny", temperature_init=10.0, bias_init=-10.0)
  txt_model = lit.TextTransformer(num_classes=16, width=16, num_layers=2, mlp_dim=32,
                                  num_heads=2, vocab_size=11, pool_type=pool)
  rng = np.random.default_rng(4)
  txt = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(np.float32),
                     jax.jit(lambda: txt_model.init(jax.random.PRNGKey(1), TOKENS))()["params"])
  scanned = dict(txt, Encoder_0={"encoder_norm": txt["Encoder_0"]["encoder_norm"],
                                 "encoderblock": jax.tree.map(
                                     lambda *xs: np.stack(xs), txt["Encoder_0"]["encoderblock_0"],
                                     txt["Encoder_0"]["encoderblock_1"])})
  extra = {f"params/txt/{k}": v for k, v in traverse_util.flatten_dict(scanned, sep="/").items()}
  extra.update({"params/t": np.log(np.float32([10.0])), "params/b": np.float32([-10.0])})
  bv.write_npz(tmp_path / "siglip.npz", img, "params/img/", extra)

  variables = {"params": image_text.load_image_text(str(tmp_path / "siglip.npz"))}
  assert set(variables["params"]) == {"img", "txt", "t", "b"}
  images = np.random.default_rng(5).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  zimg, ztxt, out = _apply(model, variables, images, TOKENS)
  np.testing.assert_allclose(ztxt, ref.unit(ref.text_transformer_forward(txt, TOKENS, pool)),
                             atol=2e-5)
  np.testing.assert_allclose(
      zimg, ref.unit(ref.vit_forward(variables["params"]["img"], images, classifier="map")),
      atol=2e-5)
  np.testing.assert_allclose(out["t"], [10.0], rtol=1e-6)
  np.testing.assert_allclose(out["b"], [-10.0])
  fresh = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                     **model.init_inputs((1, 16, 16, 3))))()["params"]
  np.testing.assert_allclose(np.exp(fresh["t"]), [10.0], rtol=1e-6)  # temperature_init
  assert float(fresh["b"][0]) == -10.0  # bias_init


def test_text_tower_unstacking_and_big_visions_doubled_posemb():
  stacked = {"Dense_0": {"kernel": np.arange(12.0).reshape(3, 2, 2)}}
  txt = {"pos_embedding": np.ones((1, 4, 2)),
         "Encoder_0": {"pos_embedding": np.full((1, 4, 2), 2.0), "encoderblock": stacked,
                       "encoder_norm": {"scale": np.ones(2)}}}
  out = image_text.unstack_text_layers(txt)
  np.testing.assert_array_equal(out["pos_embedding"], np.full((1, 4, 2), 3.0))  # Summed once.
  assert sorted(out["Encoder_0"]) == ["encoder_norm", "encoderblock_0", "encoderblock_1",
                                      "encoderblock_2"]
  np.testing.assert_array_equal(out["Encoder_0"]["encoderblock_2"]["Dense_0"]["kernel"],
                                np.arange(8.0, 12.0).reshape(2, 2))
  assert "pos_embedding" in txt["Encoder_0"]  # The input is not changed.
