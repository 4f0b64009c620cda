"""Image-text training on the trainer: the README's digits example end to end (small), the
contrastive step equal on 1 and 8 devices, retrieval against NumPy, LiT's locked image tower
from an image checkpoint, and the one-line refusals."""
import json
import os

import jax
import numpy as np
import pytest
from helpers import tiny_image_text_config
from jax.sharding import Mesh
from PIL import Image

from vit_jax import artifacts, checkpoint, evaluate, exits, sharding
from vit_jax.datasets import preprocess, sources, text
from vit_jax.evaluators import retrieval
from vit_jax.export_formats import writers
from vit_jax.models import lit
from vit_jax.run import loop
from vit_jax.training import train_state, train_step


def test_digits_example_trains_and_evaluates_zero_shot(tmp_path, data_dir):
  config = tiny_image_text_config(data_dir, total_steps=8, checkpoint_every=8)
  result = loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert result["step"] == 8
  ev = result["eval"]  # the default evaluator of an image-text run on labelled data
  assert ev["examples"] == 297 and ev["classes"] == 10 and 0 <= ev["top1"] <= 1
  train = result["train"]
  assert {"loss", "accuracy", "t", "b"} <= set(train) and np.isfinite(train["loss"])
  assert train["t"] == pytest.approx(10.0, rel=0.05)       # SigLIP's init, barely moved
  # The workdir serves every command line: weights with the run's vocabulary, both exports.
  weights = artifacts.resolve(workdir=str(tmp_path / "w"))
  assert lit.is_lit(weights.model) and weights.vocab == config.pp.vocab
  params = jax.device_get(result["state"].params)
  out = str(tmp_path / "two_tower.npz")
  writers.export_files(str(tmp_path / "w"), out, fmt="big_vision")
  loaded = checkpoint.load_image_text(out)
  for a, b in zip(jax.tree.leaves(params["txt"]), jax.tree.leaves(loaded["txt"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded["b"], params["b"])
  # That file starts a new run whole (both towers, t and b): tuning a published two-tower.
  again = tiny_image_text_config(data_dir, pretrained_path=out)
  setup = train_state.setup_from_config(again, _mesh(1), 0, 12)
  lines = []
  start = loop.load_pretrained_params(again, setup, lines.append)
  for a, b in zip(jax.tree.leaves(params["txt"]), jax.tree.leaves(start["txt"])):
    np.testing.assert_array_equal(np.asarray(b), a)
  np.testing.assert_array_equal(np.asarray(start["t"]), params["t"])
  # big_vision adds the class token after the position embedding, so the export folds our
  # class slot of pos_embedding into cls: other arrays, the same image embeddings.
  images = np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  tokens = np.ones((4, 8), np.int32)
  z0 = setup.model.apply({"params": params}, images=images, tokens=tokens)
  z1 = setup.model.apply({"params": jax.device_get(start)}, images=images, tokens=tokens)
  np.testing.assert_allclose(z1[0], z0[0], atol=1e-5)
  assert "text tower: from the same file." in lines


def _mesh(n):
  return Mesh(np.array(jax.devices()[:n]).reshape(n, 1, 1), sharding.MESH_AXES)


def test_the_contrastive_step_is_the_same_on_one_and_eight_devices(data_dir):
  config = tiny_image_text_config(data_dir, loss="sigmoid_contrastive")
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32),
           "tokens": rng.integers(0, 24, (32, 8)).astype(np.int32)}
  out = []
  for n in (1, 8):
    setup = train_state.setup_from_config(config, _mesh(n), 0, 12)
    state = train_state.create_train_state(setup, 0)
    step = train_step.compile_train_step(setup, config, 0)
    placed = jax.device_put(batch, sharding.batch_sharding(setup.mesh))
    state, metrics = step(state, placed)
    out.append((jax.device_get(metrics), jax.device_get(state.params)))
  (m1, p1), (m8, p8) = out
  for key in ("loss", "accuracy", "grad_norm"):
    assert float(m8[key]) == pytest.approx(float(m1[key]), rel=1e-4, abs=1e-6)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _caption_folder(root, n=6):
  captions = {}
  for split in ("train", "test"):
    folder = root / split
    folder.mkdir(parents=True)
    rows = []
    for k in range(n):
      rng = np.random.default_rng(k)
      Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{k}.png")
      caps = [f"image {k} view {v}" for v in range(1 + k % 3)]   # 1 to 3 captions each
      rows.append(json.dumps({"image": f"{k}.png", "captions": caps}))
      captions[split, k] = caps
    (folder / "captions.jsonl").write_text("\n".join(rows))
  words = [c for caps in captions.values() for c in caps] + [str(k) for k in range(n)]
  vocab = text.write_wordpiece_vocab(words, str(root / "vocab.txt"))
  sources.clear_cache()
  return captions, vocab


def test_retrieval_on_a_caption_folder_equals_numpy_recall(tmp_path, data_dir):
  captions, vocab = _caption_folder(tmp_path / "data")
  config = tiny_image_text_config(data_dir, dataset=str(tmp_path / "data"), batch=8,
                                  batch_eval=8, total_steps=4, checkpoint_every=4, **{
                                      "input.caption_templates": (),
                                      "input.caption_classnames": (), "pp.vocab": vocab})
  result = loop.train_and_evaluate(config, str(tmp_path / "w"))
  ev = result["eval"]
  assert ev["images"] == 6 and ev["captions"] == 12
  # The oracle: the final params' embeddings of every test image and caption, NumPy recall.
  params = jax.device_get(result["state"].params)
  setup = train_state.setup_from_config(config, _mesh(1), 0, 4)
  opts = preprocess.options_from_config(config.pp)
  images = np.stack([preprocess.eval_values(preprocess.eval_image(
      open(tmp_path / "data" / "test" / f"{k}.png", "rb").read(), opts)[None], opts)[0]
      for k in range(6)])
  texts = [c for k in range(6) for c in captions["test", k]]
  owner = [k for k in range(6) for _ in captions["test", k]]
  tokens = text.BertTokenizer(vocab_path=vocab, max_len=8)(texts)
  zimg, ztxt, _ = setup.model.apply({"params": params}, images=images, tokens=tokens)
  expected = retrieval.recall_at_k(np.asarray(zimg), np.asarray(ztxt), owner)
  for key, value in expected.items():
    assert ev[key] == pytest.approx(value), key
  # The command line on the workdir: its own default evaluator, then --retrieval by flag.
  out = tmp_path / "r.json"
  assert evaluate.main(["--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
  results = json.loads(out.read_text())["results"]
  assert results["retrieval/img2txt_r@1"] == pytest.approx(expected["img2txt_r@1"])
  assert evaluate.main(["--workdir", str(tmp_path / "w"), "--retrieval", str(tmp_path / "data"),
                        "--split", "train", "--json", str(out)]) == 0
  assert json.loads(out.read_text())["results"]["retrieval/captions"] == 12


def test_lit_tunes_the_text_tower_against_a_locked_image_checkpoint(tmp_path, data_dir):
  config = tiny_image_text_config(data_dir, total_steps=4, checkpoint_every=4)
  setup = train_state.setup_from_config(config, _mesh(1), 0, 4)
  image = jax.device_get(train_state.init_params(setup, 7))["img"]
  path = str(tmp_path / "image_tower.npz")
  checkpoint.save(image, path)
  tuned = tiny_image_text_config(data_dir, total_steps=4, checkpoint_every=4,
                                 pretrained_path=path, param_groups=(("img/.*", "freeze"),))
  result = loop.train_and_evaluate(tuned, str(tmp_path / "w"))
  state = result["state"]
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(image), jax.tree.leaves(after["img"])):
    np.testing.assert_array_equal(a, b)                    # locked: bit for bit the file's
  fresh = jax.device_get(train_state.init_params(setup, tuned.seed))["txt"]
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh),
                                                     jax.tree.leaves(after["txt"]))]
  assert any(moved)
  slots = jax.tree.leaves(state.opt_state)
  n_img = sum(x.size for x in jax.tree.leaves(after["img"]))
  n_all = sum(x.size for x in jax.tree.leaves(after))
  assert sum(x.size for x in slots) < 2 * (n_all - n_img) + 100  # no Adam slots for img/


@pytest.mark.parametrize("overrides,message", [
    ({"input.caption_templates": ()}, "has labels, not captions"),
    ({"loss": "softmax_xent"}, "sigmoid_contrastive"),
    ({"model_name": "ViT-Ti_16", "model.out_dim": None, "model.image_model": None,
      "model.text.width": None, "model.text.num_layers": None, "model.text.mlp_dim": None,
      "model.text.num_heads": None, "model.text.vocab_size": None}, "image classifier"),
])
def test_mismatched_model_data_or_loss_is_one_error_before_compiling(tmp_path, data_dir,
                                                                      overrides, message):
  config = tiny_image_text_config(data_dir, **overrides)
  with pytest.raises(exits.UserError, match=message):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_precomputed_image_embeddings_train_the_text_tower_as_the_images_do(tmp_path, data_dir):
  # crop = resize and no flip: the train preprocessing equals the eval one the rows are made
  # with, so both runs see the same image embeddings at every step.
  frozen = {"param_groups": (("img/.*", "freeze"),), "total_steps": 4, "checkpoint_every": 4}
  plain = loop.train_and_evaluate(tiny_image_text_config(data_dir, **frozen),
                                  str(tmp_path / "plain"))
  config = tiny_image_text_config(data_dir, **frozen, **{"input.image_embeddings": True})
  fast = loop.train_and_evaluate(config, str(tmp_path / "fast"))
  files = os.listdir(tmp_path / "fast" / "image_embeddings")
  rows = np.load(tmp_path / "fast" / "image_embeddings" / files[0])
  assert rows.shape == (1500, 16)
  np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
  a, b = (jax.device_get(r["state"].params) for r in (plain, fast))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
  assert fast["train"]["loss"] == pytest.approx(plain["train"]["loss"], rel=1e-4)
  # A resumed run reuses the file; an image tower that trains is refused.
  again = loop.train_and_evaluate(tiny_image_text_config(
      data_dir, **dict(frozen, total_steps=4), **{"input.image_embeddings": True}),
      str(tmp_path / "fast"))
  assert again.get("already_finished") and len(os.listdir(tmp_path / "fast" /
                                                          "image_embeddings")) == 1
  with pytest.raises(ValueError, match="locked image tower"):
    loop.train_and_evaluate(tiny_image_text_config(data_dir, **{
        "input.image_embeddings": True}), str(tmp_path / "unfrozen"))
