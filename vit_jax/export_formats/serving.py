"""--format=stablehlo and --format=savedmodel: the model's inference function, for serving.

stablehlo  DIR/model.stablehlo: `jax.export` of images -> logits, serialized
           (Exported.serialize). The params are baked in as constants, so the artifact is
           self-contained with one input and needs neither vit_jax nor the weights; the batch
           dimension is symbolic ('b', any size); lowered for --platforms (default cpu, cuda,
           tpu). DIR/signature.json says what goes in and out (shape, dtype, value range,
           preprocessing, class names). Load:
             exported = jax.export.deserialize(open('DIR/model.stablehlo', 'rb').read())
             logits = exported.call(images)   # (b, R, R, 3) float32 in [-1, 1]
savedmodel DIR/<version>/ (--savedmodel_version, default 1): a TensorFlow SavedModel in TF
           Serving's layout, so `tensorflow_model_server --model_base_path=DIR` loads it (TF
           Serving reads only numbered version directories and serves the highest). Made with
           jax.experimental.jax2tf.convert (jax 0.10: native serialization only, i.e. the same
           StableHLO inside an XlaCallModule op) of the same function with the params as
           tf.Variables (no 2 GiB graph-constant limit), signature 'serving_default': images ->
           {logits, probabilities}. --savedmodel_input=float: (b, R, R, 3) float32 in [-1, 1]
           (the models' own input); uint8: (b, R, R, 3) uint8 RGB in [0, 255], scaled inside
           the graph exactly as the input pipeline does (image_ops.to_float).
           DIR/<version>/vit_jax.json (beside saved_model.pb, so each version keeps its own; TF
           Serving ignores it) as signature.json plus `tf_serving`: the XlaCallModule and
           StableHLO versions in the graph and the oldest TF Serving that runs the op. Another
           version is added beside the existing ones (written under a dot-name TF Serving
           ignores, then renamed), an existing version is kept unless --overwrite.
Neither resizes: images come at the model's resolution, prepared as signature.json says.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

from vit_jax.export_formats import common

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
INPUTS = ("float", "uint8")
SIGNATURE_FORMAT = "vit_jax.export/serving-1"
# The oldest TF Serving whose XlaCallModule op runs a given op version (jax2tf's
# "serialization version"): 10 is supported since 2025-05-20, first in TF / TF Serving 2.20.0
# (2.19 fails "XlaCallModuleOp with version 10 is not supported by this build. Must be <= 9");
# 9 since 2023-10-27 (in TF 2.16.0 and later). docs/serving.md has the sources.
MIN_TF_SERVING = {9: "2.16.0", 10: "2.20.0"}


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  platforms = tuple(p.strip().lower() for p in platforms if p.strip())
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ValueError(f"--platforms={','.join(platforms)!r}: use a comma-separated subset of "
                     f"{','.join(PLATFORMS)}.")
  return platforms


def check_input(kind: str) -> str:
  if kind not in INPUTS:
    raise ValueError(f"--savedmodel_input={kind!r} is unknown; use 'uint8' (images in [0, 255], "
                     "scaled inside the graph) or 'float' (images in [-1, 1]).")
  return kind


def check_version(version: int) -> int:
  """A TF Serving version directory name: a positive integer."""
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise ValueError(f"--savedmodel_version={version!r}: TF Serving loads numbered version "
                     "directories; use a positive integer (1, 2, ...).")
  return version


def version_dir(output: str, version: int) -> str:
  """Where version `version` of a SavedModel export goes: <output>/<version>."""
  return os.path.join(os.path.abspath(os.fspath(output)), str(version))


def next_version(output: str) -> int:
  """One more than the highest numbered version directory in `output` (1 when none)."""
  names = os.listdir(output) if os.path.isdir(output) else []
  return max([int(n) for n in names if n.isdigit() and
              os.path.isdir(os.path.join(output, n))], default=0) + 1


def check_savedmodel_output(output: str, version: int, overwrite: bool) -> None:
  """Refuses, before anything is read or written, a --format=savedmodel --output that is a
  file, an unversioned SavedModel, or already holds `version` (unless `overwrite`)."""
  version, path = check_version(version), os.path.abspath(os.fspath(output))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise FileExistsError(f"{path!r} is a file; --format=savedmodel writes a TF Serving model "
                          f"directory ({path}/<version>/saved_model.pb): choose another --output.")
  if os.path.exists(os.path.join(path, "saved_model.pb")):
    raise FileExistsError(f"{path!r} holds an unversioned SavedModel, which TF Serving does not "
                          f"load; move its files into {path}/1/ (then export with "
                          "--savedmodel_version=2) or choose another --output. Nothing was "
                          "written.")
  target = version_dir(path, version)
  if os.path.lexists(target) and not overwrite:
    raise FileExistsError(f"{target!r} already holds version {version} of this model; pass "
                          f"--savedmodel_version={next_version(path)} to add a version beside it "
                          f"or --overwrite to replace version {version}. Nothing was written.")


def xla_call_modules(saved_model_pb: str) -> list[dict[str, Any]]:
  """The XlaCallModule ops of a saved_model.pb: {'version', 'stablehlo'} (the op version and
  the StableHLO version its portable artifact was written for), read from the file."""
  import re  # pylint: disable=g-import-not-at-top

  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  proto = saved_model_pb2.SavedModel()
  with open(saved_model_pb, "rb") as f:
    proto.ParseFromString(f.read())
  nodes = [n for g in proto.meta_graphs for n in list(g.graph_def.node) +
           [n for fn in g.graph_def.library.function for n in fn.node_def]]
  found = []
  for node in nodes:
    if node.op == "XlaCallModule":
      producer = re.search(rb"StableHLO_v([0-9]+(?:\.[0-9]+)*)", node.attr["module"].s[:64])
      found.append({"version": int(node.attr["version"].i),
                    "stablehlo": producer.group(1).decode() if producer else None})
  return found


def tf_serving_record(modules: Sequence[dict[str, Any]], version: int) -> dict[str, Any]:
  """vit_jax.json's `tf_serving`: the layout, the op versions in the graph, the oldest server."""
  op_version = max((m["version"] for m in modules), default=None)
  return {"version": version, "layout": "<model_base_path>/<version>/saved_model.pb",
          "xla_call_module_version": op_version,
          "stablehlo_version": next((m["stablehlo"] for m in modules if m["stablehlo"]), None),
          "min_tensorflow_serving": MIN_TF_SERVING.get(op_version)}


def _model(source: common.Source):
  """The Flax module, unchunked (batch_chunks splits a concrete batch; ours is symbolic)."""
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  fields = source.fields
  if not source.is_mixer:
    fields["batch_chunks"] = 1
  return registry.model_from_fields(fields, source.num_classes or None)


def predict_fn(source: common.Source, input_kind: str = "float") -> Callable[[Any, Any], Any]:
  """fn(params, images) -> float32 logits (uint8 images are scaled to [-1, 1] first)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = _model(source)

  def fn(params, images):
    if input_kind == "uint8":
      from vit_jax.datasets import image_ops  # pylint: disable=g-import-not-at-top
      images = image_ops.to_float(images)
    return model.apply({"params": params}, images.astype(jnp.float32), train=False)
  return fn


def signature(source: common.Source, input_kind: str, platforms: Sequence[str],
              file: str) -> dict[str, Any]:
  """signature.json: the input and output of the exported function and how to prepare input."""
  r = source.resolution
  pp = common.preprocessing(source.arch)
  image = ({"dtype": "uint8", "range": [0, 255]} if input_kind == "uint8" else
           {"dtype": "float32", "range": [-1.0, 1.0]})
  out = source.num_classes
  return {
      "format": SIGNATURE_FORMAT, "file": file, "model_name": source.model_name,
      "step": source.step, "platforms": list(platforms),
      "params": "baked in as constants" if file.endswith(".stablehlo") else "tf.Variables",
      "inputs": [{"name": "images", "shape": ["b", r, r, 3], "layout": "NHWC, RGB", **image}],
      "outputs": ([{"name": "logits", "shape": ["b", out], "dtype": "float32"}] +
                  ([] if file.endswith(".stablehlo") else
                   [{"name": "probabilities", "shape": ["b", out], "dtype": "float32"}])),
      "class_names": source.class_names,
      "preprocessing": {"mode": pp.mode, "crop": pp.crop, "resize": pp.resize,
                        "crop_pct": pp.crop_pct, "interpolation": pp.interpolation,
                        "mean": list(pp.mean), "std": list(pp.std), "description": pp.describe()},
  }


def _write_json(path: str, content: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(content, f, indent=1)


def write_stablehlo(source: common.Source, output: str, *, overwrite: bool = False,
                    platforms: Sequence[str] = DEFAULT_PLATFORMS) -> common.Written:
  """DIR/model.stablehlo + DIR/signature.json, written atomically."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import files  # pylint: disable=g-import-not-at-top
  platforms = check_platforms(platforms)
  fn, params = predict_fn(source), source.params
  r = source.resolution
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {r}, {r}, 3"), jnp.float32)
  exported = jax.export.export(jax.jit(lambda images: fn(params, images)),
                               platforms=platforms)(spec)
  data = exported.serialize()
  sig = dict(signature(source, "float", platforms, "model.stablehlo"),
             calling_convention_version=exported.calling_convention_version,
             jax_version=jax.__version__)

  def fill(directory: str) -> None:
    with open(os.path.join(directory, "model.stablehlo"), "wb") as f:
      f.write(data)
    _write_json(os.path.join(directory, "signature.json"), sig)
  files.write_dir_atomic(output, fill, overwrite=overwrite)
  path = os.path.abspath(output)
  load = (f"jax.export.deserialize(open('{path}/model.stablehlo', 'rb').read()).call(images)"
          f"  # images (b, {r}, {r}, 3) float32 in [-1, 1]")
  return common.Written(path, "stablehlo", ("model.stablehlo", "signature.json"), load)


def write_savedmodel(source: common.Source, output: str, *, overwrite: bool = False,
                     input_kind: str = "float", platforms: Sequence[str] = DEFAULT_PLATFORMS,
                     version: int = 1) -> common.Written:
  """A TF SavedModel with a serving_default signature at <output>/<version>/ (TF Serving's
  layout), written atomically; other versions in `output` are left as they are."""
  platforms, input_kind = check_platforms(platforms), check_input(input_kind)
  check_savedmodel_output(output, version, overwrite)
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import files  # pylint: disable=g-import-not-at-top
  fn, r = predict_fn(source, input_kind), source.resolution

  def predict(params, images):
    logits = fn(params, images)
    return logits, jax.nn.softmax(logits)
  converted = jax2tf.convert(predict, polymorphic_shapes=[None, f"(b, {r}, {r}, 3)"],
                             with_gradient=False, native_serialization_platforms=platforms)
  module = tf.Module()
  module.params = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False),
                                        dict(source.params))
  dtype = tf.uint8 if input_kind == "uint8" else tf.float32

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, r, r, 3], dtype,
                                                               name="images")])
  def serve(images):
    logits, probabilities = converted(module.params, images)
    return {"logits": logits, "probabilities": probabilities}
  module.serve = serve
  sig = signature(source, input_kind, platforms, "saved_model.pb")
  record: dict[str, Any] = {}

  def fill(directory: str) -> None:
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})
    record.update(tf_serving_record(
        xla_call_modules(os.path.join(directory, "saved_model.pb")), version))
    _write_json(os.path.join(directory, "vit_jax.json"), dict(sig, tf_serving=record))
  path = os.path.abspath(os.fspath(output))
  created = not os.path.exists(path)
  if created:
    if not os.path.isdir(os.path.dirname(path)):
      raise FileNotFoundError(f"cannot write {path!r}: directory {os.path.dirname(path)!r} does "
                              "not exist; create it first.")
    os.mkdir(path)
  try:
    files.write_dir_atomic(version_dir(path, version), fill, overwrite=overwrite)
  except BaseException:
    if created and not os.listdir(path):
      os.rmdir(path)
    raise
  kind = "uint8 in [0, 255]" if input_kind == "uint8" else "float32 in [-1, 1]"
  load = (f"tf.saved_model.load('{path}/{version}').signatures['serving_default'](images=...)"
          f"  # (b, {r}, {r}, 3) {kind}")
  server = record["min_tensorflow_serving"]
  op = f"XlaCallModule version {record['xla_call_module_version']}"
  needs = f"TF Serving {server} or later for its {op}" if server else f"a TF Serving with {op}"
  notes = (f"serve it: tensorflow_model_server --rest_api_port=8501 --model_name=vit "
           f"--model_base_path={path}  # needs {needs} (docs/serving.md)",)
  return common.Written(path, "savedmodel", tuple(f"{version}/{name}" for name in (
      "saved_model.pb", "variables/", "vit_jax.json")), load, notes)
