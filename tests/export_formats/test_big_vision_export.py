"""--format=big_vision: an image-text model in big_vision's two_towers layout, and back.

The reference is tests/fixtures/big_vision_two_tower_*.json: the {key: shape} of big_vision's
own two_towers.Model(...).init (vit.Model + text_transformer.Model, scan=False) and its
embeddings for seeded params and inputs (the fixture's "recipe"), recorded once by running
big_vision's model files (at the commit the fixtures' "source" names) with JAX on CPU; the
tests never import big_vision.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.linen import meta

from vit_jax import checkpoint, exits, sharding
from vit_jax.checkpoint import files, layouts
from vit_jax.configs import base
from vit_jax.export_formats import big_vision, npz, writers
from vit_jax.models import lit, registry
from vit_jax.run import run_state
from vit_jax.training import train_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
CASES = ("map_proj", "tok_noproj", "gap_rep")
POOLS = {"tok": "token", "map": "map", "gap": "gap", "0": "first"}  # big_vision -> ours


def _fixture(name: str) -> dict:
  with open(os.path.join(FIXTURES, f"big_vision_two_tower_{name}.json"), encoding="utf-8") as f:
    return json.load(f)


def _our_model(record: dict) -> lit.LitModel:
  """Our LitModel with the fields of the fixture's big_vision model (mapped by hand)."""
  m, i, t = record["model"], record["model"]["image"], record["model"]["text"]
  rep = i.get("rep_size", False)
  image = dict(patches={"size": tuple(i["patch_size"])}, hidden_size=i["width"],
               transformer=dict(num_layers=i["depth"], mlp_dim=i["mlp_dim"],
                                num_heads=i["num_heads"], dropout_rate=0.0,
                                attention_dropout_rate=0.0),
               classifier=POOLS[i["pool_type"]], posemb=i["posemb"],
               representation_size=(i["width"] if rep is True else rep or None),
               model_name="tiny")
  text = dict(width=t["width"], num_layers=t["depth"], mlp_dim=t["mlp_dim"],
              num_heads=t["num_heads"], vocab_size=t["vocab_size"], pool_type=t["pool_type"])
  return lit.LitModel(image=image, text_model="text_transformer", text=text,
                      pp=dict(max_len=record["tokens"]), out_dim=tuple(m["out_dim"]),
                      model_name="tiny", temperature_init=m["temperature_init"],
                      bias_init=m["bias_init"])


def _random_params(model: lit.LitModel, px: int, seed: int = 0) -> dict:
  """Random params of the model's tree (non-zero cls, heads, biases: nothing at its init)."""
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs((1, px, px, 3)))["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32),
                      meta.unbox(abstract))


def _flat(tree) -> dict:
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _apply(model, params, images, tokens):
  zimg, ztxt, out = jax.jit(lambda p, x, y: model.apply({"params": p}, images=x, tokens=y))(
      params, images, tokens)
  return np.asarray(zimg), np.asarray(ztxt), float(out["t"][0]), float(out["b"][0])


@pytest.mark.parametrize("name", CASES)
def test_export_has_exactly_big_visions_keys_and_shapes(name):
  record = _fixture(name)
  model = _our_model(record)
  flat = big_vision.to_big_vision_two_tower(_random_params(model, record["image_px"]), model)
  assert {k: list(v.shape) for k, v in flat.items()} == record["shapes"]
  assert all(v.dtype == np.float32 for v in flat.values())
  config = big_vision.big_vision_config(model)  # What loads it in big_vision.
  for tower in ("image", "text"):
    for key, value in record["model"][tower].items():
      if key == "rep_size" and value is True:  # big_vision's True: the width.
        value = record["model"]["image"]["width"]
      assert config[tower][key] == value, (tower, key)
  assert config["out_dim"] == record["model"]["out_dim"]
  assert config["text_model"] == "proj.image_text.text_transformer"
  assert (config["temperature_init"], config["bias_init"]) == (10.0, -10.0)


@pytest.mark.parametrize("name", CASES)
def test_written_file_loads_back_as_our_params(tmp_path, name):
  record = _fixture(name)
  model = _our_model(record)
  params = _random_params(model, record["image_px"], seed=1)
  path = big_vision.write_two_tower(params, model, str(tmp_path / "two_tower.npz"))
  with np.load(path) as f:
    assert sorted(f.files) == sorted(f"params/{k}" for k in record["shapes"])

  loaded, ours = _flat(checkpoint.load_image_text(path)), _flat(params)
  assert set(loaded) == set(ours)
  posemb = "img/Transformer/posembed_input/pos_embedding"
  for key, value in ours.items():
    if record["model"]["image"]["pool_type"] == "tok" and key in ("img/cls", posemb):
      continue
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)
  if record["model"]["image"]["pool_type"] == "tok":
    # big_vision adds the position embedding before it prepends cls: the class slot's value
    # moves into cls (the same model, bit for bit).
    np.testing.assert_array_equal(loaded["img/cls"], ours["img/cls"] + ours[posemb][:, :1])
    np.testing.assert_array_equal(loaded[posemb][:, :1], 0)
    np.testing.assert_array_equal(loaded[posemb][:, 1:], ours[posemb][:, 1:])
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    tokens = rng.integers(0, 64, (2, 8)).astype(np.int32)
    got = _apply(model, checkpoint.load_image_text(path), images, tokens)
    want = _apply(model, params, images, tokens)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)

  image = _flat(checkpoint.load(path))  # A two-tower file loads as its image tower.
  assert set(image) == {k[4:] for k in loaded if k.startswith("img/")}
  for key, value in image.items():
    np.testing.assert_array_equal(value, loaded["img/" + key], err_msg=key)


@pytest.mark.parametrize("name", CASES)
def test_big_visions_params_give_its_embeddings_and_export_back_unchanged(tmp_path, name):
  """The fixture's seeded params, as big_vision writes them, loaded into our LitModel give
  big_vision's embeddings; exported again they are the same arrays."""
  record = _fixture(name)
  rng = np.random.default_rng(0)  # The fixture's recipe.
  bv = {k: rng.normal(0.0, 0.3, s).astype(np.float32) for k, s in sorted(record["shapes"].items())}
  px, length = record["image_px"], record["tokens"]
  images = rng.uniform(-1, 1, (2, px, px, 3)).astype(np.float32)
  tokens = rng.integers(0, record["model"]["text"]["vocab_size"], (2, length)).astype(np.int32)
  path = str(tmp_path / "bv.npz")
  files.write_npz_atomic({f"params/{k}": v for k, v in bv.items()}, path)

  model = _our_model(record)
  params = checkpoint.load_image_text(path)
  zimg, ztxt, t, b = _apply(model, params, images, tokens)
  want = record["outputs"]
  np.testing.assert_allclose(zimg, np.asarray(want["zimg"]), atol=2e-5)
  np.testing.assert_allclose(ztxt, np.asarray(want["ztxt"]), atol=2e-5)
  np.testing.assert_allclose([t, b], [want["t"], want["b"]], rtol=1e-6)

  again = big_vision.to_big_vision_two_tower(params, model)
  assert set(again) == set(bv)
  for key, value in bv.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_a_scanned_image_tower_is_written_per_layer():
  record = _fixture("map_proj")
  model = _our_model(record)
  scanned = model.clone(image={**model.image, "scan_layers": True})
  params = _random_params(scanned, record["image_px"])
  assert "encoderblock" in params["img"]["Transformer"]
  flat = big_vision.to_big_vision_two_tower(params, scanned)
  assert {k: list(v.shape) for k, v in flat.items()} == record["shapes"]
  stacked = params["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
  np.testing.assert_array_equal(
      flat["img/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"], stacked[1])


def test_layouts_to_big_vision_moves_the_position_embedding_and_refuses_what_it_cannot_name():
  pe = np.arange(3 * 2, dtype=np.float32).reshape(1, 3, 2)
  ours = {"cls": np.full((1, 1, 2), 10.0, np.float32), "embedding/kernel": np.ones((1,)),
          "Transformer/posembed_input/pos_embedding": pe, "Transformer/encoder_norm/scale":
          np.ones((2,))}
  bv = layouts.to_big_vision(ours)
  assert sorted(bv) == ["Transformer/encoder_norm/scale", "cls", "embedding/kernel",
                        "pos_embedding"]
  np.testing.assert_array_equal(bv["cls"], [[[10.0, 11.0]]])  # 10 + the class slot (0, 1)
  np.testing.assert_array_equal(bv["pos_embedding"], [[[2.0, 3.0], [4.0, 5.0]]])
  no_cls = {k: v for k, v in ours.items() if k != "cls"}
  flat = layouts.to_big_vision(no_cls)
  np.testing.assert_array_equal(flat["pos_embedding"], pe)  # No class slot: kept whole.
  back = layouts.canonicalize(flat)
  np.testing.assert_array_equal(back["Transformer"]["posembed_input"]["pos_embedding"], pe)
  for bad, what in [({**no_cls, "dist_token": np.zeros((1, 1, 2))}, "dist_token"),
                    ({**no_cls, "conv_root/kernel": np.zeros((1,))}, "conv_root"),
                    ({"Transformer/encoderblock/LayerNorm_0/scale": np.ones((2, 2))},
                     "scanned")]:
    with pytest.raises(ValueError, match=what):
      layouts.to_big_vision(bad)


def _tiny_image(**fields) -> dict:
  config = registry.vit(8, 16, 32, 2, 1).to_dict()
  config.update(model_name="tiny", **fields)
  return config


def _text_transformer() -> dict:
  return dict(width=16, num_layers=1, mlp_dim=32, num_heads=2, vocab_size=64)


def test_what_big_vision_cannot_hold_is_refused_in_one_error():
  image_model = registry.model_from_fields(_tiny_image(), 10)
  with pytest.raises(exits.UserError, match="image model: use --format=npz"):
    big_vision.to_big_vision_two_tower({}, image_model)
  cases = [(dict(image=_tiny_image(resnet=dict(num_layers=(1,), width_factor=1))), "hybrid"),
           (dict(image=_tiny_image(classifier="token", distilled=True)), "distillation"),
           (dict(image=_tiny_image(classifier="unpooled")), "classifier 'unpooled'"),
           (dict(image=_tiny_image(qk_norm=True)), "qk_norm"),
           (dict(image=_tiny_image(approximate_gelu=False)), "tanh GELU"),
           (dict(text_model="bert", text=lit.LIT_CONFIGS["LiT-testing"].text.to_dict()),
            "only 'base' and 'large'")]
  for fields, what in cases:
    model = lit.LitModel(**{"image": _tiny_image(), "text_model": "text_transformer",
                            "text": _text_transformer(), "pp": dict(max_len=8),
                            "out_dim": (None, 16), "model_name": "x", **fields})
    with pytest.raises(exits.UserError, match=what) as error:
      big_vision.to_big_vision_two_tower({}, model)
    assert "--format=npz" in str(error.value) and "nothing was written" in str(error.value)


def test_a_bert_base_text_tower_keeps_flaxformers_names():
  """big_vision's proj.flaxformer.bert is flaxformer's BertEncoder (auto-named BertEncoder_0)
  + `head`: our BERT's tree already (flaxformer's BertBaseConfig sizes)."""
  model = lit.LitModel(image=_tiny_image(), text_model="bert", text=dict(config="base"),
                       pp=dict(max_len=8), out_dim=(None, 32), model_name="x")
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               **model.init_inputs((1, 8, 8, 3)))["params"])
  # Zero-copy stand-ins for BERT-base's 110M parameters.
  params = jax.tree.map(lambda x: np.broadcast_to(np.float32(0), x.shape), meta.unbox(abstract))
  flat = big_vision.to_big_vision_two_tower(params, model)
  enc = "txt/BertEncoder_0/"
  assert flat[enc + "embedder/embedders_token_ids/embedding"].shape == (30522, 768)
  assert flat[enc + "embedder/embedders_position_ids/embedding"].shape == (512, 768)
  assert flat[enc + "embedder/embedders_segment_ids/embedding"].shape == (2, 768)
  layer = enc + "encoder_block/layer_sequence/layers_11/"
  assert flat[layer + "attention_block/attention_layer/query/kernel"].shape == (768, 768)
  assert flat[layer + "mlp_block/mlp/dense_layer/kernel"].shape == (768, 3072)
  assert flat["txt/head/kernel"].shape == (768, 32)
  assert {k.split("/")[1] for k in flat if k.startswith("txt/")} == {"BertEncoder_0", "head"}
  config = big_vision.big_vision_config(model)
  assert config["text_model"] == "proj.flaxformer.bert" and config["text"] == {"config": "base"}
  assert "bias_init" not in config


def _image_text_workdir(tmp_path):
  """A workdir of SigLIP-testing (its config.json and an Orbax checkpoint at step 7) holding
  random params."""
  workdir = tmp_path / "run"
  config = base.defaults()
  config.model_name, config.num_classes, config.pp.crop = "SigLIP-testing", 10, 32
  config.mesh = (("data", 1),)
  run_state.check_or_write_config(str(workdir), config, False)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
  setup = train_state.setup_from_config(config, mesh, 10, 1000)
  model = setup.model
  params = _random_params(model, 32)
  ckpt = run_state.Checkpointer(str(workdir))
  ckpt.save(7, train_state.state_from_params(setup, params, 0), None)
  ckpt.wait()
  ckpt.close()
  return str(workdir), model, params


def test_export_files_writes_both_towers_or_the_image_tower(tmp_path):
  workdir, model, params = _image_text_workdir(tmp_path)
  out = str(tmp_path / "siglip.npz")
  written = writers.export_files(workdir, out, fmt="big_vision")
  assert written.format == "big_vision" and written.files == ("siglip.npz",)
  assert "proj.image_text.two_towers" in written.load and "model_init" in written.load
  loaded = checkpoint.load_image_text(out)
  assert set(_flat(loaded)) == set(_flat(params))
  np.testing.assert_array_equal(loaded["b"], params["b"])
  with pytest.raises(FileExistsError, match="--overwrite"):
    writers.export_files(workdir, out, fmt="big_vision")
  writers.export_files(workdir, out, fmt="big_vision", overwrite=True)
  with pytest.raises(exits.UserError, match=r"\.npz"):
    writers.export_files(workdir, str(tmp_path / "siglip"), fmt="big_vision")
  with pytest.raises(exits.UserError, match="--format=big_vision .both towers. or --format=npz"):
    writers.export_files(workdir, str(tmp_path / "timm"), fmt="timm")

  # --format=npz: the image tower alone, an image model with its own sidecar.
  image_out = str(tmp_path / "image.npz")
  writers.export_files(workdir, image_out, fmt="npz")
  arch = npz.read_architecture(image_out)
  assert arch["model_name"] == "SigLIP-testing:img" and arch["num_classes"] == 16
  tower = npz.model_from_architecture(arch)
  tower_params = checkpoint.load(image_out)
  images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  features = np.asarray(tower.apply({"params": tower_params}, images, train=False))
  zimg = model.apply({"params": params}, images=images)[0]
  np.testing.assert_allclose(features / np.linalg.norm(features, axis=1, keepdims=True),
                             np.asarray(zimg), atol=1e-6)


def test_big_vision_format_on_an_image_run_says_use_npz(tmp_path):
  workdir = tmp_path / "run"
  config = base.defaults()
  config.model_name, config.num_classes = "testing", 10
  run_state.check_or_write_config(str(workdir), config, False)
  out = tmp_path / "x.npz"
  proc = subprocess.run([sys.executable, "-m", "vit_jax.export", f"--workdir={workdir}",
                         "--format=big_vision", f"--output={out}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "image model 'testing': use --format=npz" in proc.stderr
  assert not out.exists()
  with pytest.raises(exits.UserError, match="--push_to_hub"):
    writers.check_request("big_vision", str(out), False, "org/name", "float", ("cpu",))
