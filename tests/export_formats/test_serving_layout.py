"""--format=savedmodel in TF Serving's layout: <output>/<version>/saved_model.pb, read back by
TensorFlow's own `saved_model_cli` (as a user would) and compared with our JAX model's logits.

The refusals (an existing version, an unversioned SavedModel, a bad --savedmodel_version)
need no TensorFlow; the saved_model_cli test is skipped without it.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.linen import meta

from tests import official_layout as ol
from vit_jax import exits
from vit_jax.export_formats import common, npz, serving, writers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R = ol.IMAGE
# Two RGB images using every level 0..255; saved_model_cli reads --input_exprs as a Python literal.
IMAGES = (np.arange(2 * R * R * 3).reshape(2, R, R, 3) % 256).astype(np.uint8)


def _source(seed=0):
  """A tiny ViT (official_layout sizes) with random non-zero params, and its Flax model."""
  fields = ol.tiny_config().to_dict()
  arch = {"format": npz.ARCHITECTURE_FORMAT, "model_name": "tiny", "model": fields,
          "num_classes": ol.CLASSES, "class_names": [f"c{i}" for i in range(ol.CLASSES)],
          "resolution": R, "dataset": "digits", "step": None, "workdir": None,
          "pp": {"eval": "resize", "crop": R, "resize": None, "crop_pct": None}}
  model = npz.model_from_architecture(arch)
  shapes = meta.unbox(jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                                     np.zeros((1, R, R, 3), np.float32))["params"])
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda p: rng.normal(0, 0.3, p.shape).astype(np.float32), shapes)
  return common.Source(params, arch), model


def _cli(*args, timeout=240):
  """TensorFlow's saved_model_cli (the venv's console script), as a user runs it."""
  exe = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  if not os.path.exists(exe):
    exe = shutil.which("saved_model_cli")
  if not exe:
    pytest.skip("saved_model_cli is not installed (it comes with tensorflow)")
  proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_saved_model_cli_shows_and_runs_version_1_with_our_logits(tmp_path):
  pytest.importorskip("tensorflow")
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  source, model = _source()
  base = tmp_path / "vit"
  written = serving.write_savedmodel(source, str(base), input_kind="uint8", platforms=("cpu",))
  # TF Serving's layout: only the numbered version directory at the top.
  assert sorted(os.listdir(base)) == ["1"]
  assert {"saved_model.pb", "variables", "vit_jax.json"} <= set(os.listdir(base / "1"))
  assert written.path == str(base) and "1/saved_model.pb" in written.files
  assert any(f"--model_base_path={base}" in n for n in written.notes)

  shown = _cli("show", "--dir", str(base / "1"), "--all")
  signature = shown[shown.index("signature_def['serving_default']"):]
  assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n" in signature
  assert f"shape: (-1, {R}, {R}, 3)" in signature
  for key in ("logits", "probabilities"):
    assert (f"outputs['{key}'] tensor_info:\n        dtype: DT_FLOAT\n        "
            f"shape: (-1, {ol.CLASSES})") in signature
  assert "Method name is: tensorflow/serving/predict" in signature

  _cli("run", "--dir", str(base / "1"), "--tag_set", "serve", "--signature_def",
       "serving_default", "--input_exprs", f"images={json.dumps(IMAGES.tolist())}", "--outdir",
       str(tmp_path / "out"))
  ours = np.asarray(model.apply({"params": source.params},
                                IMAGES.astype(np.float32) / 127.5 - 1.0, train=False))
  logits = np.load(tmp_path / "out" / "logits.npy")
  np.testing.assert_allclose(logits, ours, atol=1e-5, rtol=1e-5)
  exp = np.exp(ours - ours.max(-1, keepdims=True))
  np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"),
                             exp / exp.sum(-1, keepdims=True), atol=1e-6)

  # vit_jax.json records the XlaCallModule op version the graph really has.
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString((base / "1" / "saved_model.pb").read_bytes())
  versions = {n.attr["version"].i for f in proto.meta_graphs[0].graph_def.library.function
              for n in f.node_def if n.op == "XlaCallModule"}
  record = json.loads((base / "1" / "vit_jax.json").read_text())["tf_serving"]
  assert versions == {record["xla_call_module_version"]} and record["version"] == 1
  assert record["min_tensorflow_serving"] == serving.MIN_TF_SERVING[versions.pop()]
  assert record["stablehlo_version"].count(".") == 2

  # A second version goes beside the first, which is left byte for byte; written with the
  # older op version (docs/serving.md: for TF Serving 2.16-2.19), it gives the same logits.
  before = {p: (base / "1" / p).read_bytes() for p in ("saved_model.pb", "vit_jax.json")}
  old = jax.config.jax_export_calling_convention_version
  jax.config.update("jax_export_calling_convention_version", 9)
  try:
    serving.write_savedmodel(source, str(base), input_kind="uint8", platforms=("cpu",),
                             version=2)
  finally:
    jax.config.update("jax_export_calling_convention_version", old)
  assert sorted(os.listdir(base)) == ["1", "2"]
  assert {p: (base / "1" / p).read_bytes() for p in before} == before
  record = json.loads((base / "2" / "vit_jax.json").read_text())["tf_serving"]
  assert record["version"] == 2 and record["xla_call_module_version"] == 9
  assert record["min_tensorflow_serving"] == "2.16.0"
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(str(base / "2")).signatures["serving_default"]
  np.testing.assert_allclose(serve(images=tf.constant(IMAGES))["logits"].numpy(), ours,
                             atol=1e-5, rtol=1e-5)


def _fake_version(base, version):
  folder = base / str(version)
  folder.mkdir(parents=True)
  (folder / "saved_model.pb").write_bytes(b"version %d" % version)


def test_an_existing_version_is_refused_in_one_line_and_kept(tmp_path):
  source, _ = _source()
  base = tmp_path / "vit"
  _fake_version(base, 1)
  _fake_version(base, 2)
  for call in (lambda: serving.write_savedmodel(source, str(base), platforms=("cpu",)),
               lambda: writers.check_request("savedmodel", str(base), False, None, "float",
                                             ("cpu",), 1)):
    with pytest.raises(FileExistsError) as e:
      call()
    line = exits.one_line(e.value)
    assert "\n" not in line and "already holds version 1" in line
    assert "--savedmodel_version=3" in line and "--overwrite" in line
  assert exits.status_for(e.value) == exits.BAD_INPUT
  assert (base / "1" / "saved_model.pb").read_bytes() == b"version 1"
  assert sorted(os.listdir(base)) == ["1", "2"]
  # A free version passes the check; --overwrite lets an existing one through.
  writers.check_request("savedmodel", str(base), False, None, "float", ("cpu",), 3)
  writers.check_request("savedmodel", str(base), True, None, "float", ("cpu",), 1)


def test_unversioned_layout_file_and_bad_version_are_refused(tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  (old / "saved_model.pb").write_bytes(b"old")
  with pytest.raises(FileExistsError, match=r"unversioned SavedModel.*old/1/"):
    serving.check_savedmodel_output(str(old), 1, overwrite=True)
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileExistsError, match="is a file"):
    serving.check_savedmodel_output(str(tmp_path / "file"), 1, overwrite=False)
  for bad in (0, -1, True, 1.5):
    with pytest.raises(ValueError, match="positive integer"):
      writers.check_request("savedmodel", str(tmp_path / "new"), False, None, "float",
                            ("cpu",), bad)
  assert serving.next_version(str(tmp_path / "new")) == 1
  assert sorted(os.listdir(tmp_path)) == ["file", "old"]


def test_cli_refuses_an_existing_version_before_reading_the_run(tmp_path):
  base = tmp_path / "vit"
  _fake_version(base, 1)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "vit_jax.export", f"--workdir={tmp_path}/none",
                         "--format=savedmodel", f"--output={base}"], capture_output=True,
                        text=True, timeout=120, cwd=REPO, env=env)
  assert proc.returncode == exits.BAD_INPUT, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "--savedmodel_version=2" in last, proc.stderr[-2000:]
  assert sorted(os.listdir(base)) == ["1"]
