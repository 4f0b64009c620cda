"""Tests for the inference CLI (vit_jax.inference).

A tiny ViT ('testing' config, 1000 classes so the ImageNet-1k names apply) with a random
head is written by the test itself as a flat .npz in the vit_models layout (pre-Linen block
numbering); the CLI's top-5 output is checked against the independent NumPy forward pass in
tests/numpy_reference.py.
"""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import numpy_reference as ref
import pytest
from flax.linen import meta
from PIL import Image

from vit_jax import artifacts, inference, predict
from vit_jax.models import registry

RES = 32  # 2x2 patches of 16
LINE = re.compile(r"^  (\d\.\d{5})  (.+)  \[(\d+)\]$")
_ON_DISK = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
            "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}


def _flatten_vit_models(tree, prefix=""):
  """Nested in-memory params -> flat vit_models keys (block children renamed as on disk)."""
  flat = {}
  for key, value in tree.items():
    name = _ON_DISK.get(key, key) if "encoderblock_" in prefix else key
    path = f"{prefix}/{name}" if prefix else name
    if isinstance(value, dict):
      flat.update(_flatten_vit_models(value, path))
    else:
      flat[path] = np.asarray(value, np.float32)
  return flat


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(checkpoint path, in-memory params, image paths) for a 1000-class 'testing' ViT."""
  root = tmp_path_factory.mktemp("inference")
  model = registry.create_model("testing", 1000)
  init = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))  # one compile
  params = meta.unbox(init(np.zeros((1, RES, RES, 3), np.float32))["params"])
  params = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(1)
  params["head"] = {"kernel": rng.normal(0, 1.0, (10, 1000)).astype(np.float32),
                    "bias": rng.normal(0, 0.1, (1000,)).astype(np.float32)}
  path = str(root / "tiny_vit_models_layout.npz")
  np.savez(path, **_flatten_vit_models(params))
  images = []
  for i, ext in enumerate(("png", "jpg")):
    pixels = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    images.append(str(root / f"img{i}.{ext}"))
    Image.fromarray(pixels).save(images[-1])
  return path, params, images


def _parse(text):
  """{image path: [(prob, label, index), ...]} from the CLI output."""
  out, current = {}, None
  for line in text.splitlines():
    match = LINE.match(line)
    if match:
      out[current].append((float(match.group(1)), match.group(2), int(match.group(3))))
    else:
      current = line
      out[current] = []
  return out


def _reference_probs(params, image_path):
  pixels = np.asarray(Image.open(image_path).convert("RGB"), np.float64)
  logits = ref.vit_forward(params, (pixels / 127.5 - 1.0)[None])[0]
  e = np.exp(logits - logits.max())
  return e / e.sum()


def test_cli_top5_matches_numpy_reference(tiny, capsys):
  path, params, images = tiny
  assert inference.main(["--model", "testing", "--checkpoint", path, *images]) == 0
  result = _parse(capsys.readouterr().out)
  labels = predict.load_labels(1000)
  assert list(result) == images
  for image in images:
    rows = result[image]
    assert len(rows) == 5
    probs = [p for p, _, _ in rows]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
    expected = _reference_probs(params, image)
    top = np.argsort(-expected)[:5]
    assert rows[0][2] == int(np.argmax(expected)) and rows[0][1] == labels[rows[0][2]]
    assert [i for _, _, i in rows] == list(top)
    np.testing.assert_allclose(probs, expected[top], atol=2e-5)


def test_cli_as_module_subprocess(tiny):
  path, _, images = tiny
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "vit_jax.inference", "--model", "testing",
                         "--checkpoint", path, "--num_classes", "1000", "--top_k", "3", images[0]],
                        capture_output=True, text=True, timeout=300, check=False, env=env,
                        cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert proc.returncode == 0, proc.stderr
  rows = _parse(proc.stdout)[images[0]]
  assert len(rows) == 3 and all(LINE.match(f"  {p:.5f}  {label}  [{i}]") for p, label, i in rows)


def test_cli_other_resolution_goes_through_load_pretrained(tiny, capsys):
  path, _, images = tiny
  assert inference.main(["--model", "testing", "--checkpoint", path, "--resolution", "48",
                         images[0]]) == 0
  rows = _parse(capsys.readouterr().out)[images[0]]
  assert len(rows) == 5 and sum(p for p, _, _ in rows) <= 1.0 + 1e-5


def test_cli_errors(tiny, tmp_path, capsys):
  path, params, images = tiny
  assert inference.main(["--model", "testing", "--checkpoint", path, "--num_classes", "10",
                         images[0]]) == 2
  assert "--num_classes 10 but the checkpoint's head has 1000" in capsys.readouterr().err
  zero = dict(params, head={"kernel": np.zeros((10, 21843), np.float32),
                            "bias": np.zeros((21843,), np.float32)})
  zero_path = str(tmp_path / "zero_head.npz")
  np.savez(zero_path, **_flatten_vit_models(zero))
  assert inference.main(["--model", "testing", "--checkpoint", zero_path, images[0]]) == 2
  assert "head is all zeros" in capsys.readouterr().err
  assert inference.main(["--model", "testing", "--checkpoint", path, str(tmp_path / "no.png")]) == 2
  assert "no.png" in capsys.readouterr().err


def test_checkpoint_resolution_from_posemb_grid(tiny):
  _, params, _ = tiny
  model = registry.create_model("testing", 1000)
  assert artifacts.checkpoint_resolution(model, params) == RES
  bigger = dict(params, Transformer=dict(params["Transformer"], posembed_input={
      "pos_embedding": np.zeros((1, 1 + 24 * 24, 10), np.float32)}))
  assert artifacts.checkpoint_resolution(model, bigger) == 384


def test_labels():
  in1k = predict.load_labels(1000)
  assert len(in1k) == 1000 and in1k[0] == "tench, Tinca tinca" and in1k[281].startswith("tabby")
  in21k = predict.load_labels(21843)
  assert len(in21k) == 21843 and len(set(in21k)) > 20000
  assert predict.load_labels(3) == ["class 0", "class 1", "class 2"]


def test_custom_label_file(tmp_path):
  f = tmp_path / "labels.txt"
  f.write_text("n1\tcat\nn2\tdog\n")
  assert predict.load_labels(2, str(f)) == ["cat", "dog"]
  with pytest.raises(ValueError, match="has 2 names but the model has 3 classes"):
    predict.load_labels(3, str(f))


def test_load_image_scales_to_minus_one_one(tmp_path):
  pixels = np.array([[[0, 127, 255], [255, 0, 64]]], np.uint8)  # 1x2
  Image.fromarray(pixels).save(tmp_path / "x.png")
  x = predict.load_image(str(tmp_path / "x.png"), 4)
  assert x.shape == (4, 4, 3) and x.dtype == np.float32
  assert x.min() >= -1 and x.max() <= 1
  Image.fromarray(np.full((2, 2, 3), 255, np.uint8)).save(tmp_path / "w.png")
  np.testing.assert_array_equal(predict.load_image(str(tmp_path / "w.png"), 2), 1.0)
  Image.fromarray(np.zeros((2, 2), np.uint8), "L").save(tmp_path / "k.png")  # grayscale -> RGB
  np.testing.assert_array_equal(predict.load_image(str(tmp_path / "k.png"), 2),
                                -np.ones((2, 2, 3)))


def test_format_top_k_orders_by_probability():
  text = predict.format_top_k("a.jpg", np.array([0.1, 0.6, 0.3]), ["x", "y", "z"], 2)
  assert text == "a.jpg\n  0.60000  y  [1]\n  0.30000  z  [2]"


def test_augreg_file_names_become_hub_uris(tmp_path):
  name = ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-"
          "lr_0.03-res_224")
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  uris = checkpoint.candidate_locations(name)
  assert uris == ("hf://timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                  f"gs://vit_models/augreg/{name}.npz")
  local = tmp_path / f"{name}.npz"
  local.write_bytes(b"")
  assert checkpoint.candidate_locations(str(local)) == (str(local),)
  assert checkpoint.candidate_locations("hf://x/y") == ("hf://x/y",)


def test_predict_pads_last_batch_and_compiles_once(tiny):
  _, params, _ = tiny
  model = registry.create_model("testing", 1000)
  rng = np.random.default_rng(2)
  images = rng.uniform(-1, 1, (5, RES, RES, 3)).astype(np.float32)
  probs = predict.predict(model, params, images, batch_size=2)  # batches 2, 2, 1 (+1 pad)
  assert probs.shape == (5, 1000)
  for i in range(5):
    logits = ref.vit_forward(params, images[i:i + 1].astype(np.float64))[0]
    e = np.exp(logits - logits.max())
    np.testing.assert_allclose(probs[i], e / e.sum(), atol=2e-5)
  again = predict.predict(model, params, images[:3], batch_size=2)
  np.testing.assert_allclose(again, probs[:3], atol=1e-6)
  # The same model object reuses one jitted function, and padding kept it at one shape.
  assert predict._softmax_apply(model)._cache_size() == 1  # pylint: disable=protected-access


def test_inference_falls_back_between_copies_like_the_trainer(tiny, monkeypatch, tmp_path):
  from helpers import refused_url  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  path, params, _ = tiny
  monkeypatch.setattr(checkpoint, "candidate_locations", lambda name: (refused_url(), path))
  monkeypatch.setenv("VIT_JAX_CACHE", str(tmp_path / "cache"))
  weights = artifacts.resolve(model="testing", checkpoint_path="Ti/16")
  assert weights.resolution == RES and weights.location == path
  np.testing.assert_array_equal(weights.params["head"]["kernel"], params["head"]["kernel"])


def test_folder_prediction_recursive_batched_csv_and_json(tiny, tmp_path, capsys):
  import csv  # pylint: disable=g-import-not-at-top
  path, images = tiny[0], tiny[2]
  folder = tmp_path / "imgs"
  (folder / "sub").mkdir(parents=True)
  for i, src in enumerate(images * 2):
    suffix = os.path.splitext(src)[1]
    (folder / ("sub" if i % 2 else "") / f"im{i}{suffix}").write_bytes(open(src, "rb").read())
  (folder / "notes.txt").write_text("not an image")
  assert inference.main(["--model", "testing", "--checkpoint", path, "--batch_size", "1",
                         str(folder)]) == 0
  printed = capsys.readouterr().out
  found = sorted(str(p) for p in folder.rglob("im*"))
  assert len(found) == 4
  assert [line for line in printed.splitlines() if not line.startswith(" ")] == found
  out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
  assert inference.main(["--model", "testing", "--checkpoint", path, "--top_k", "2",
                         "--output", str(out_csv), str(folder)]) == 0
  assert f"to {out_csv}" in capsys.readouterr().out
  rows = list(csv.DictReader(out_csv.open()))
  assert [r["path"] for r in rows] == found and set(rows[0]) == {
      "path", "label_1", "index_1", "probability_1", "label_2", "index_2", "probability_2"}
  assert inference.main(["--model", "testing", "--checkpoint", path, "--top_k", "2",
                         "--output", str(out_json), str(folder)]) == 0
  data = json.loads(out_json.read_text())
  assert [r["path"] for r in data] == found
  for r, c in zip(data, rows):  # both files and the printed lines agree
    assert r["top_k"][0]["index"] == int(c["index_1"])
    assert r["top_k"][0]["probability"] == pytest.approx(float(c["probability_1"]), abs=1e-6)
  # Existing output is never overwritten; an empty folder is one clear error.
  assert inference.main(["--model", "testing", "--checkpoint", path, "--output", str(out_json),
                         str(folder)]) == 2
  (tmp_path / "empty").mkdir()
  assert inference.main(["--model", "testing", "--checkpoint", path,
                         str(tmp_path / "empty")]) == 2
  assert "holds no image files" in capsys.readouterr().err
