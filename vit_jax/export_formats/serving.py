"""--format=stablehlo and --format=savedmodel: the model's inference function, for serving.

stablehlo  DIR/model.stablehlo: `jax.export` of images -> logits, serialized
           (Exported.serialize). The params are baked in as constants, so the artifact is
           self-contained with one input and needs neither vit_jax nor the weights; the batch
           dimension is symbolic ('b', any size); lowered for --platforms (default cpu, cuda,
           tpu). DIR/signature.json says what goes in and out (shape, dtype, value range,
           preprocessing, class names). Load:
             exported = jax.export.deserialize(open('DIR/model.stablehlo', 'rb').read())
             logits = exported.call(images)   # (b, R, R, 3) float32 in [-1, 1]
savedmodel DIR/: a TensorFlow SavedModel made with jax.experimental.jax2tf.convert (jax 0.10:
           native serialization, i.e. the same StableHLO inside an XlaCallModule op) of the
           same function with the params as tf.Variables (no 2 GiB graph-constant limit),
           signature 'serving_default': images -> {logits, probabilities}.
           --savedmodel_input=float: (b, R, R, 3) float32 in [-1, 1] (the models' own input);
           uint8: (b, R, R, 3) uint8 RGB in [0, 255], scaled inside the graph exactly as the
           input pipeline does (image_ops.to_float). DIR/vit_jax.json as signature.json.
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
                     input_kind: str = "float",
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> common.Written:
  """A TF SavedModel directory with a serving_default signature, written atomically."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import files  # pylint: disable=g-import-not-at-top
  platforms, input_kind = check_platforms(platforms), check_input(input_kind)
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

  def fill(directory: str) -> None:
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})
    _write_json(os.path.join(directory, "vit_jax.json"), sig)
  files.write_dir_atomic(output, fill, overwrite=overwrite)
  path = os.path.abspath(output)
  kind = "uint8 in [0, 255]" if input_kind == "uint8" else "float32 in [-1, 1]"
  load = (f"tf.saved_model.load('{path}').signatures['serving_default'](images=...)"
          f"  # (b, {r}, {r}, 3) {kind}")
  return common.Written(path, "savedmodel", ("saved_model.pb", "variables/", "vit_jax.json"), load)
