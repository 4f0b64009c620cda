"""`python -m vit_jax.evaluate --zeroshot`: a LiT file in the published layout, its vocabulary
beside it, an image folder; the result equals an independent NumPy computation."""
import json
import os

import jax
import numpy as np
import numpy_reference as ref
import pytest
from flax import traverse_util
from PIL import Image

from vit_jax import evaluate, inference
from vit_jax.datasets import sources, text
from vit_jax.models import lit

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "the", "cat", "dog", "blurry",
         "small"]
TEMPLATES = ["a photo of the {}.", "a blurry photo of a {}", "{}"]


@pytest.fixture(scope="module")
def lit_files(tmp_path_factory):
  """LiT-testing with random weights as Google publishes it (X.npz + X.txt), and a folder of
  32x32 PNGs in test/cat and test/dog."""
  root = tmp_path_factory.mktemp("zeroshot")
  model = lit.LitModel(**lit.get_lit_config("LiT-testing"))
  variables = model.init(jax.random.PRNGKey(0), **model.init_inputs((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: (np.asarray(x) + rng.normal(size=x.shape)).astype(np.float32),
                        variables["params"])  # O(1) weights: embeddings that differ clearly.
  npz = root / "LiT-testing.npz"
  np.savez(npz, **traverse_util.flatten_dict(params, sep="/"))
  (root / "LiT-testing.txt").write_text("\n".join(VOCAB) + "\n")
  images, labels = [], []
  for label, name in enumerate(("cat", "dog")):
    os.makedirs(root / "pets" / "test" / name)
    for i in range(5):
      img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      Image.fromarray(img).save(root / "pets" / "test" / name / f"{i}.png")
      images.append(img)
      labels.append(label)
  (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
  sources.clear_cache()
  return root, params, np.stack(images), np.asarray(labels)


def _oracle(root, params, images, labels):
  """Top-1 and mean loss of LiT zero-shot classification, in float64 NumPy."""
  x = images.astype(np.float64) / 127.5 - 1.0
  zimg = ref.unit(ref.vit_forward(params["img"], x))
  # The tokenizer itself is held to Google's outputs in tests/data/test_text.py.
  tokenizer = text.BertTokenizer(vocab_path=str(root / "LiT-testing.txt"), max_len=8)
  tokens = tokenizer([t.format(c) for c in ("cat", "dog") for t in TEMPLATES])
  txt = params["txt"]
  ztxt = ref.unit(ref.dense(ref.bert_forward(txt["BertEncoder_0"], tokens, num_heads=2)[:, 0],
                            ref.as_f64(txt["head"])))
  zclass = ref.unit(ref.unit(ztxt).reshape(2, len(TEMPLATES), -1).mean(1))
  scores = np.exp(np.float64(params["t"][0])) * zimg @ zclass.T
  logp = scores - np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1, keepdims=True)) \
      - scores.max(1, keepdims=True)
  return (scores.argmax(1) == labels).mean(), -logp[np.arange(len(labels)), labels].mean()


def test_zeroshot_evaluation_equals_numpy(lit_files, tmp_path, capsys):
  root, params, images, labels = lit_files
  out = tmp_path / "r.json"
  rc = evaluate.main(["--model", "LiT-testing", "--checkpoint", str(root / "LiT-testing.npz"),
                      "--zeroshot", str(root / "pets"), "--split", "test",
                      "--zeroshot_templates", str(root / "templates.txt"), "--json", str(out)])
  assert rc == 0, capsys.readouterr()
  results = json.loads(out.read_text())["results"]
  top1, loss = _oracle(root, params, images, labels)
  assert results["zeroshot/top1"] == pytest.approx(top1, abs=1e-9)
  assert results["zeroshot/loss"] == pytest.approx(loss, rel=1e-4)
  assert results["zeroshot/examples"] == 10 and results["zeroshot/classes"] == 2
  printed = capsys.readouterr().out
  assert "zeroshot/top1" in printed
  assert "zeroshot/classes                   2\n" in printed  # A count, not a percentage.


def test_image_text_and_image_models_get_one_clear_error(lit_files, capsys):
  root, *_ = lit_files
  rc = evaluate.main(["--model", "LiT-testing", "--checkpoint", str(root / "LiT-testing.npz"),
                      "--dataset", str(root / "pets")])
  err = capsys.readouterr().err
  assert rc != 0 and "--zeroshot DATASET" in err and len(err.strip().splitlines()) == 1
  rc = evaluate.main(["--model", "LiT-B16B", "--checkpoint", str(root / "LiT-testing.npz"),
                      "--zeroshot", str(root / "pets")])
  assert rc != 0 and "does not hold the weights of LiT-B16B" in capsys.readouterr().err


def test_inference_ranks_ad_hoc_texts_as_numpy_does(lit_files, tmp_path):
  root, params, images, _ = lit_files
  texts = ["a photo of the cat", "a small dog", "the"]
  test = root / "pets" / "test"
  paths = [str(test / "cat" / "0.png"), str(test / "dog" / "1.png")]
  out = tmp_path / "p.json"
  rc = inference.main(["--model", "LiT-testing", "--checkpoint", str(root / "LiT-testing.npz"),
                       "--texts", ",".join(texts), "--top_k", "3", "--output", str(out)] + paths)
  assert rc == 0
  rows = json.loads(out.read_text())
  tokenizer = text.BertTokenizer(vocab_path=str(root / "LiT-testing.txt"), max_len=8)
  txt = params["txt"]
  ztxt = ref.unit(ref.dense(ref.bert_forward(txt["BertEncoder_0"], tokenizer(texts),
                                             num_heads=2)[:, 0], ref.as_f64(txt["head"])))
  x = images[[0, 6]].astype(np.float64) / 127.5 - 1.0  # cat/0.png and dog/1.png
  scores = np.exp(np.float64(params["t"][0])) * ref.unit(ref.vit_forward(params["img"], x)) @ ztxt.T
  probs = np.exp(scores - scores.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  for row, want in zip(rows, probs):
    got = {t["label"]: t["probability"] for t in row["top_k"]}
    assert list(got) == [texts[i] for i in np.argsort(-want)]
    np.testing.assert_allclose([got[t] for t in texts], want, atol=1e-5)


def test_texts_flag_on_an_image_classifier_is_one_clear_error(tmp_path, capsys):
  img = tmp_path / "x.png"
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
  rc = inference.main(["--model", "ViT-B_16", "--checkpoint", str(tmp_path / "any.npz"),
                       "--texts", "a cat", str(img)])
  err = capsys.readouterr().err
  assert rc != 0 and "--texts is for image-text (LiT) models" in err


def test_zeroshot_on_an_image_classifier_is_one_clear_error(trained_workdir, lit_files, capsys):
  root, *_ = lit_files
  rc = evaluate.main(["--workdir", str(trained_workdir), "--zeroshot", str(root / "pets"),
                      "--vocab", str(root / "LiT-testing.txt"), "--split", "test"])
  err = capsys.readouterr().err
  assert rc != 0 and "needs an image-text model" in err and "'fewshot'" in err, err


def test_vocab_flag_serves_weights_published_without_one(lit_files, tmp_path, capsys):
  root, *_ = lit_files
  bare = tmp_path / "LiT-testing.npz"  # No vocabulary beside this copy.
  bare.write_bytes((root / "LiT-testing.npz").read_bytes())
  args = ["--model", "LiT-testing", "--checkpoint", str(bare), "--zeroshot", str(root / "pets"),
          "--split", "test"]
  assert evaluate.main(args) != 0
  assert "pass --vocab FILE" in capsys.readouterr().err
  assert evaluate.main(args + ["--vocab", str(root / "LiT-testing.txt")]) == 0
  assert "zeroshot/top1" in capsys.readouterr().out
