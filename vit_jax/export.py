r"""Export a run's trained params: the official vit_models .npz (default) or another format.

  python -m vit_jax.export --workdir=/tmp/run --output=model.npz [--step=N] [--overwrite]
  python -m vit_jax.export --workdir=W --format=timm --output=DIR [--push_to_hub=org/name]
  python -m vit_jax.export --workdir=W --format=transformers --output=DIR [--push_to_hub=...]
  python -m vit_jax.export --workdir=W --format=stablehlo --output=DIR [--platforms=cpu,cuda,tpu]
  python -m vit_jax.export --workdir=W --format=savedmodel --output=DIR [--savedmodel_input=uint8]
    [--savedmodel_version=N]  # DIR/N/saved_model.pb: tensorflow_model_server --model_base_path=DIR
  python -m vit_jax.export --workdir=W --format=big_vision --output=two_tower.npz  # image-text

Reads <workdir>/config.json, restores only the checkpoint's params (or their EMA,
--params=ema) into host memory (run_state.read_params, the workdir part of vit_jax.artifacts)
and writes them (vit_jax.export_formats.writers). --format=npz: checkpoint.save —
loadable by checkpoint.load and by any tool that reads Google's ViT files; beside the .npz a
sidecar `<output without .npz>.json` (export_formats/npz.py): the complete model fields,
class count and names, input resolution and eval preprocessing, so `vit_jax.inference
--checkpoint model.npz` rebuilds a modified architecture (e.g. the quickstart's) without
--model; for an image-text (LiT / SigLIP) run it is the image tower alone. --format=big_vision
(image-text runs): both towers and t / b in big_vision's two_towers layout (params/img/...,
params/txt/...; export_formats/big_vision.py), printed with the big_vision config.model that
loads it. The other formats write a directory
(vit_jax/export_formats/: timm and transformers snapshots with a model card, a serialized
jax.export StableHLO artifact, a TF SavedModel in TF Serving's DIR/<version>/ layout, where
another --savedmodel_version goes beside the existing ones; docs/serving.md). Every output is
written atomically (temp name beside it, then a rename); an existing one (for a SavedModel:
its version) is kept unless --overwrite. A format that
cannot represent the run's architecture, an unknown format or flag value is one error line
(exit status 2) before anything is written; --push_to_hub then uploads the written folder
(a failure leaves it on disk and says what to do).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging as absl_logging

from vit_jax import exits
from vit_jax.export_formats import npz, serving, writers


def main(argv) -> None:
  """Runs the export the flags describe and prints what was written (absl app main)."""
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    written = writers.export_files(f.workdir, f.output, f.step, f.overwrite, fmt=f.format,
                                   params=f.params, push_to_hub=f.push_to_hub,
                                   savedmodel_input=f.savedmodel_input,
                                   savedmodel_version=f.savedmodel_version,
                                   platforms=f.platforms.split(","))
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    sys.exit(exits.report(e, verbose=f["verbosity"].present and f.verbosity >= 1))
  if not written.files:  # Another process of a multi-host run: process 0 wrote it.
    return
  if written.format == "npz":
    print(f"Exported {f.workdir} to {written.path} (architecture: "
          f"{npz.sidecar_path(written.path)})")
  elif written.format == "big_vision":
    print(f"Exported {f.workdir} as a big_vision two-tower checkpoint to {written.path}")
  else:
    print(f"Exported {f.workdir} as {written.format} to {written.path}/: "
          f"{', '.join(written.files)}")
  for note in written.notes:
    print(f"note: {note}")
  print(f"Load it: {written.load}")


def run() -> None:
  """Console entry point: `python -m vit_jax.export --workdir W --output model.npz`."""
  flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/ and config.json).",
                      required=True)
  flags.DEFINE_string("output", None, "Output .npz path (--format=npz) or directory (the "
                      "other formats).", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
  flags.DEFINE_string("format", "npz", f"One of {', '.join(writers.FORMATS)}: the official "
                      "vit_models .npz + architecture .json; a timm or transformers "
                      "(ViTForImageClassification) folder with a model card; a jax.export "
                      "StableHLO artifact; a TF SavedModel; big_vision: an image-text run's two "
                      "towers as big_vision's two_towers .npz.")
  flags.DEFINE_string("params", "raw", "'raw': the trained params; 'ema': their exponential "
                      "moving average (runs with config.ema).")
  flags.DEFINE_string("push_to_hub", None, "org/name: upload the written folder to this Hugging "
                      "Face Hub model repo (created if missing; token from HF_TOKEN or `hf auth "
                      "login`).")
  flags.DEFINE_string("savedmodel_input", "float", "--format=savedmodel input: 'float' (float32 "
                      "images in [-1, 1]) or 'uint8' (RGB in [0, 255], scaled inside the graph).")
  flags.DEFINE_integer("savedmodel_version", 1, "--format=savedmodel: the TF Serving version "
                       "directory, --output/<version>/ (TF Serving serves the highest); an "
                       "existing one is kept unless --overwrite.")
  flags.DEFINE_string("platforms", ",".join(serving.DEFAULT_PLATFORMS), "--format=stablehlo / "
                      "savedmodel: the platforms the program is lowered for (comma-separated).")
  app.run(main)


if __name__ == "__main__":
  run()
