"""Runs the Colab walkthrough vit_jax.ipynb end to end in its tiny offline mode and checks it.

The notebook's one mode-switch cell reads VIT_JAX_NOTEBOOK_TINY=1 and then uses the tiny
`testing` architecture, the checkpoint named by VIT_JAX_NOTEBOOK_CHECKPOINT (written here
with checkpoint.save, i.e. in the official vit_models layout), tfds.testing.mock_data for
cifar10, a few steps and a drawn image. The kernel is the interpreter running the tests
(a kernelspec written to a temporary JUPYTER_PATH), on 2 fake CPU devices so the sharded
path is exercised. Only a copy of the notebook is executed; the committed file must have
no outputs. Set VIT_JAX_NOTEBOOK_DUMP=path.ipynb to keep the executed copy for inspection.
"""
import json
import math
import os
import re
import sys
import time

import jax
import nbformat
import numpy as np
import pytest

from vit_jax import checkpoint, models
from vit_jax.configs import models as models_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "vit_jax.ipynb")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
KERNEL = "vit-jax-notebook-test"
CELL_TIMEOUT_S = 240
pytestmark = pytest.mark.slow  # executes the notebook in a kernel

# Appended to the executed copy only: reads the notebook's variables back as JSON.
PROBE = """
import json, sys
print('PROBE' + json.dumps({'history': history, 'total_steps': int(config.total_steps),
                            'base_lr': float(config.base_lr), 'warmup': int(config.warmup_steps),
                            'executable': sys.executable, 'devices': jax.device_count(),
                            'vit_jax': vit_jax.__file__,
                            'tiny': TINY}))
"""


def _write_fixture(path: str) -> dict:
  """A 'testing' ViT at 32x32 (2x2 patch grid) with a 21-class head, saved as vit_models .npz."""
  cfg = models_config.MODEL_CONFIGS["testing"]
  model = models.VisionTransformer(num_classes=21, **cfg)
  params = model.init(jax.random.PRNGKey(7), np.zeros((1, 32, 32, 3), np.float32),
                      train=False)["params"]
  checkpoint.save(params, path)
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


LIT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", "a", "photo", "of", "the", "number",
             "digit", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
             "nine"]


def _write_lit_fixture(path: str) -> dict:
  """LiT-testing with random weights in the published layout, its BERT vocabulary beside it."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  from vit_jax.models import lit  # pylint: disable=g-import-not-at-top
  model = lit.LitModel(**lit.get_lit_config("LiT-testing"))
  params = model.init(jax.random.PRNGKey(3), **model.init_inputs((1, 32, 32, 3)))["params"]
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda x: (np.asarray(x) + rng.normal(size=x.shape)).astype(np.float32),
                        params)
  np.savez(path, **traverse_util.flatten_dict(params, sep="/"))
  with open(path[:-len(".npz")] + ".txt", "w", encoding="utf-8") as f:
    f.write("\n".join(LIT_VOCAB) + "\n")
  return params


def _lit_digits_accuracy(params: dict, vocab: str) -> float:
  """The notebook's zero-shot digits accuracy, recomputed with the float64 NumPy towers."""
  import numpy_reference as ref  # pylint: disable=g-import-not-at-top

  from vit_jax.datasets import digits, text  # pylint: disable=g-import-not-at-top
  words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
  templates = ["a photo of the number {}.", "the digit {}", "{}"]
  tokens = text.BertTokenizer(vocab_path=vocab, max_len=8)(
      [t.format(w) for w in words for t in templates])
  txt = params["txt"]
  ztxt = ref.unit(ref.dense(ref.bert_forward(txt["BertEncoder_0"], tokens, num_heads=2)[:, 0],
                            ref.as_f64(txt["head"])))
  zclass = ref.unit(ztxt.reshape(10, len(templates), -1).mean(1))
  images, labels = digits.digits_arrays()
  test = digits.split_indices()["test"]
  zimg = ref.unit(ref.vit_forward(params["img"], images[test].astype(np.float64) / 127.5 - 1))
  return float(((zimg @ zclass.T).argmax(1) == labels[test]).mean())


def _fingerprint(flat: dict) -> float:
  """Sum of |w| over the tensors fine-tuning keeps as loaded (all but head and posemb)."""
  return sum(float(np.abs(v).sum(dtype=np.float64)) for k, v in flat.items()
             if not k.startswith("head/") and not k.endswith("pos_embedding"))


def _tagged(nb, tag):
  cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
  return cells[0]


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _has_png(cell) -> bool:
  return any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])
             if o.get("output_type") in ("display_data", "execute_result"))


def test_committed_notebook_is_valid_and_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  switches = [c for c in code if "VIT_JAX_NOTEBOOK_TINY" in c.source]
  assert len(switches) == 1, "the tiny-mode switch must live in exactly one cell"
  source = "\n".join(c.source for c in code)
  for call in ("train_step.make_train_step", "checkpoint.load_pretrained",
               "pipeline.create_train_iterator", "sources.fetch",
               "gs://vit_models/imagenet21k/", "google.colab import files"):
    assert call in source, call
  assert "value_and_grad" not in source  # The step is the library's, not re-implemented.


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
  """A kernelspec that starts ipykernel under this very interpreter (sys.executable)."""
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "vit_jax test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  return spec


def test_notebook_runs_in_tiny_offline_mode(tmp_path, monkeypatch, kernel_dir):
  from nbclient import NotebookClient

  fixture = _write_fixture(str(tmp_path / "ViT-testing.npz"))
  lit_params = _write_lit_fixture(str(tmp_path / "LiT-testing.npz"))
  monkeypatch.setenv("VIT_JAX_NOTEBOOK_LIT_CHECKPOINT", str(tmp_path / "LiT-testing.npz"))
  monkeypatch.setenv("VIT_JAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("VIT_JAX_NOTEBOOK_CHECKPOINT", str(tmp_path / "ViT-testing.npz"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.setenv("VIT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  monkeypatch.delenv("MPLBACKEND", raising=False)  # Agg would swallow plt.show() output.
  monkeypatch.delenv("VIT_JAX_GCS_ENDPOINT", raising=False)
  # The kernel imports this checkout (so its install cell finds everything and installs nothing).
  monkeypatch.setenv("PYTHONPATH",
                     os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))

  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(PROBE, metadata={"tags": ["probe"]}))
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, allow_errors=False,
                          resources={"metadata": {"path": str(run_dir)}})
  start = time.time()
  client.execute()
  elapsed = time.time() - start
  if os.environ.get("VIT_JAX_NOTEBOOK_DUMP"):
    nbformat.write(nb, os.environ["VIT_JAX_NOTEBOOK_DUMP"])
  print(f"notebook executed in {elapsed:.1f} s")
  nbformat.validate(nb)

  for cell in nb.cells:
    for out in cell.get("outputs", []):
      assert out["output_type"] != "error", (cell.source[:80], out.get("evalue"))
      if out["output_type"] == "stream" and out["name"] == "stderr":
        assert "Traceback" not in out["text"], out["text"]

  probe = json.loads(_text(_tagged(nb, "probe")).split("PROBE", 1)[1])
  assert probe["tiny"] is True and probe["devices"] == 2
  assert os.path.realpath(probe["executable"]) == os.path.realpath(sys.executable)
  assert os.path.realpath(probe["vit_jax"]).startswith(os.path.realpath(ROOT) + os.sep)
  assert "Installing" not in _text(_tagged(nb, "install"))  # Never pip installs in the test.
  assert "TINY offline mode" in _text(_tagged(nb, "tiny-mode"))

  # Training: one finite loss and one learning rate per step, warm-up then cosine decay.
  loss, lr, steps = probe["history"]["loss"], probe["history"]["lr"], probe["total_steps"]
  assert steps > probe["warmup"] > 0
  assert len(loss) == len(lr) == steps
  assert all(math.isfinite(x) and 0.0 < x < 50.0 for x in loss), loss
  assert lr[0] == 0.0 and max(lr) == pytest.approx(probe["base_lr"], rel=1e-6)
  assert lr.index(max(lr)) == probe["warmup"] and lr[-1] < max(lr)

  # The checkpoint really was loaded: the weights fine-tuning keeps as loaded sum to the
  # fixture's (random init would not), and the printed shapes show head swap + posemb resize.
  loaded = _text(_tagged(nb, "load-checkpoint"))
  printed = float(re.search(r"fingerprint of the (\d+) pretrained tensors: ([\d.]+)", loaded)[2])
  assert printed == pytest.approx(_fingerprint(fixture), rel=1e-9)
  assert "new head (10, 10)" in loaded and "(1, 10, 10)" in loaded  # 3x3 grid + cls at 48px.
  # The load report says what was adapted, as the trainer prints it.
  assert "head: replaced (21 -> 10 classes)" in loaded
  assert re.search(r"position embeddings: resized from the \d+x\d+ to the 3x3 patch grid", loaded)
  assert fixture["head/kernel"].shape == (10, 21)

  assert _has_png(_tagged(nb, "plot-training")), "loss/lr plot produced no image"
  assert _has_png(_tagged(nb, "predictions-grid")), "prediction grid produced no image"
  assert "test accuracy after" in _text(_tagged(nb, "evaluate"))

  # Inference: format_top_k prints the image path, then 5 '  prob  label  [index]' lines.
  lines = re.findall(r"^\s+([01]\.\d{5})\s+(\S+)\s+\[(\d)\]$", _text(_tagged(nb, "inference")),
                     re.MULTILINE)
  assert len(lines) == 5, _text(_tagged(nb, "inference"))
  probs = [float(p) for p, _, _ in lines]
  assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-4
  assert all(CIFAR10[int(i)] == name for _, name, i in lines), lines
  assert _has_png(_tagged(nb, "inference"))
  # Looking inside: rollout, attention distance, position-embedding similarity, filters.
  inspected = _tagged(nb, "inspect")
  assert re.search(r"1 layers x 2 heads; mean attention distance [\d.]+ px", _text(inspected))
  assert sum("image/png" in o.get("data", {}) for o in inspected.outputs) == 4
  # LiT: the tiny model loaded with its vocabulary, and the zero-shot digits accuracy is the
  # one an independent NumPy computation gets (within one of the 297 images).
  loaded_lit = _text(_tagged(nb, "lit-load"))
  assert "LiT-testing: " in loaded_lit and "'bert'" in loaded_lit, loaded_lit
  assert "[ 2  5  6  7  8  9 14  4]" in loaded_lit, loaded_lit  # [CLS] a photo ... three .
  zero_shot = _text(_tagged(nb, "lit-zeroshot"))
  accuracy = float(re.search(r"zero-shot accuracy on the 297 test digits: ([\d.]+)%",
                             zero_shot)[1]) / 100
  assert accuracy == pytest.approx(_lit_digits_accuracy(
      lit_params, str(tmp_path / "LiT-testing.txt")), abs=1.01 / 297), zero_shot
  assert _has_png(_tagged(nb, "lit-zeroshot"))
