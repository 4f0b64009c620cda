r"""Export a run's trained params: the official vit_models .npz (default) or another format.

  python -m vit_jax.export --workdir=/tmp/run --output=model.npz [--step=N] [--overwrite]
  python -m vit_jax.export --workdir=W --format=timm --output=DIR [--push_to_hub=org/name]
  python -m vit_jax.export --workdir=W --format=transformers --output=DIR [--push_to_hub=...]
  python -m vit_jax.export --workdir=W --format=stablehlo --output=DIR [--platforms=cpu,cuda,tpu]
  python -m vit_jax.export --workdir=W --format=savedmodel --output=DIR [--savedmodel_input=uint8]

Reads <workdir>/config.json (run_state.read_config), restores the checkpoint's params
onto this machine's devices (`restore_params`, the one place exported params come from),
and writes them. --format=npz: checkpoint.save — loadable by checkpoint.load and by any
tool that reads Google's ViT files; beside the .npz a sidecar `<output without .npz>.json`
(ARCHITECTURE_FORMAT): the complete model fields, class count and names, input resolution
and eval preprocessing, so `vit_jax.inference --checkpoint model.npz` rebuilds a modified
architecture (e.g. the quickstart's) without --model. The other formats write a directory
(vit_jax/export_formats/: timm and transformers snapshots with a model card, a serialized
jax.export StableHLO artifact, a TF SavedModel). Every output is written atomically (temp
name beside it, then a rename); an existing one is kept unless --overwrite. A format that
cannot represent the run's architecture, an unknown format or flag value is one error line
(exit status 2) before anything is written; --push_to_hub then uploads the written folder
(a failure leaves it on disk and says what to do).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import ml_collections

from vit_jax import checkpoint, exits, sharding
from vit_jax.run import run_state
from vit_jax.training import train_state

ARCHITECTURE_FORMAT = "vit_jax.export/architecture-1"
FORMATS = ("npz", "timm", "transformers", "stablehlo", "savedmodel")


def _mesh_for(config):
  """The run's mesh if it fits these devices, else the default (pure data parallel)."""
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  try:
    return sharding.make_mesh(config.mesh)
  except ValueError:
    return sharding.make_mesh(base.DEFAULT_MESH)


def restore_params(workdir: str, step: Optional[int] = None,
                   which: str = "raw") -> tuple[dict, ml_collections.ConfigDict, int]:
  """(host numpy params, run config, step) from the workdir's checkpoint (latest by default);
  which='ema' gives the EMA of the params (config.ema) instead of the raw ones."""
  if which not in ("raw", "ema"):
    raise exits.UserError(f"params={which!r} is unknown; use 'raw' or 'ema'.")
  config = run_state.read_config(workdir)
  if which == "ema" and not float(config.ema.decay):
    raise exits.UserError(f"the run in {workdir} kept no EMA of its params (config.ema.decay is "
                          "0); export the raw params (--params=raw).")
  ckpt = run_state.Checkpointer(workdir)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
    if step is not None and step not in steps:
      raise exits.UserError(f"no checkpoint at step {step} in {workdir}/checkpoints; the steps "
                            f"there are {sorted(steps)}.")
    step = max(steps) if step is None else step
    setup = train_state.setup_from_config(config, _mesh_for(config), int(config.num_classes),
                                          int(config.total_steps or 1))
    state, _ = ckpt.restore(step, setup.abstract_state)
  finally:
    ckpt.close()
  return checkpoint.to_host(state.ema_params if which == "ema" else state.params), config, step


def sidecar_path(output: str) -> str:
  """The architecture file that goes with an exported .npz: 'model.npz' -> 'model.json'."""
  output = os.fspath(output)
  return (output[:-len(".npz")] if output.endswith(".npz") else output) + ".json"


def architecture(config, step: Optional[int] = None, workdir: Optional[str] = None) -> dict[str, Any]:
  """What a loader needs to rebuild and feed the model of a run config (the sidecar's content)."""
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  return json.loads(json.dumps({
      "format": ARCHITECTURE_FORMAT,
      "model_name": config.model_name,
      "model": registry.run_model_config(config).to_dict(),
      "num_classes": int(config.num_classes),
      "class_names": list(config.class_names or ()),
      "resolution": int(config.pp.crop),
      "pp": {"eval": config.pp.eval, "crop": config.pp.crop, "resize": config.pp.resize,
             "crop_pct": config.pp.crop_pct},
      "dataset": str(config.dataset),
      "step": step,
      "workdir": os.path.abspath(workdir) if workdir and "://" not in workdir else workdir,
  }, default=str))


def read_architecture(path: str) -> Optional[dict[str, Any]]:
  """The sidecar of an exported file (`path` is the .npz or the .json), or None if it has none."""
  path = os.fspath(path)
  candidate = path if path.endswith(".json") else sidecar_path(path)
  if not os.path.isfile(candidate):
    return None
  with open(candidate, encoding="utf-8") as f:
    data = json.load(f)
  if data.get("format") != ARCHITECTURE_FORMAT:
    raise exits.UserError(f"{candidate} is not a vit_jax export architecture file (format "
                          f"{data.get('format')!r}, expected {ARCHITECTURE_FORMAT!r}).")
  return data


def model_from_architecture(arch: dict[str, Any]):
  """The Flax module an architecture record describes."""
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.model_from_fields(arch["model"], int(arch["num_classes"]))


def _check_request(fmt: str, output: str, overwrite: bool, push_to_hub: Optional[str],
                   savedmodel_input: str, platforms: Sequence[str]) -> None:
  """Bad flags and an existing output: one error before any checkpoint is read."""
  if fmt not in FORMATS:
    raise exits.UserError(f"--format={fmt!r} is unknown; use one of {', '.join(FORMATS)}.")
  if fmt == "npz":
    for path in (output, sidecar_path(output)):
      if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; choose another --output or pass "
                              "--overwrite to replace it.")
  elif os.path.lexists(output) and not overwrite:
    raise FileExistsError(f"{output!r} already exists; choose another --output or pass "
                          "--overwrite to replace it.")
  from vit_jax.export_formats import hub, serving  # pylint: disable=g-import-not-at-top
  if push_to_hub:
    if fmt == "npz":
      raise exits.UserError("--push_to_hub uploads an export folder: use it with --format=timm "
                            "or --format=transformers (or stablehlo / savedmodel).")
    hub.check_repo_id(push_to_hub)
  serving.check_input(savedmodel_input)
  serving.check_platforms(platforms)


def export_files(workdir: str, output: str, step: Optional[int] = None, overwrite: bool = False,
                 *, fmt: str = "npz", params: str = "raw", push_to_hub: Optional[str] = None,
                 savedmodel_input: str = "float", platforms: Optional[Sequence[str]] = None):
  """Writes `workdir`'s checkpoint (latest, or `step`) in format `fmt` to `output`; returns
  an export_formats.common.Written (what was written, how to load it, notes, hub URL).

  npz: `output` is the .npz (and its sidecar); the other formats: `output` is a directory.
  params: 'raw' or 'ema' (restore_params). platforms: stablehlo / savedmodel lowering targets
  (default serving.DEFAULT_PLATFORMS).
  """
  from vit_jax.export_formats import common, serving  # pylint: disable=g-import-not-at-top
  platforms = tuple(platforms or serving.DEFAULT_PLATFORMS)
  _check_request(fmt, output, overwrite, push_to_hub, savedmodel_input, platforms)
  if fmt in ("timm", "transformers"):  # Refuse what the format cannot hold before restoring.
    config = run_state.read_config(workdir)
    _library(fmt).check(common.Source({}, architecture(config, None, workdir), config))
  weights, config, step = restore_params(workdir, step, params)
  if fmt == "npz":
    if jax.process_index() == 0:
      checkpoint.save(weights, output)
      text = json.dumps(architecture(config, step, workdir), indent=1)
      checkpoint.files.write_atomic(sidecar_path(output), lambda f: f.write(text.encode()))
    return common.Written(os.fspath(output), "npz",
                          (os.path.basename(output), os.path.basename(sidecar_path(output))),
                          f"vit_jax.checkpoint.load('{output}') (or python -m vit_jax.inference "
                          f"--checkpoint {output} IMAGE)")
  source = common.Source(weights, architecture(config, step, workdir), config, step, workdir,
                         params)
  if jax.process_index() != 0:
    return common.Written(os.fspath(output), fmt)
  if fmt in ("timm", "transformers"):
    written = _library(fmt).write(source, output, overwrite=overwrite, repo_id=push_to_hub)
  elif fmt == "stablehlo":
    written = serving.write_stablehlo(source, output, overwrite=overwrite, platforms=platforms)
  else:
    written = serving.write_savedmodel(source, output, overwrite=overwrite,
                                       input_kind=savedmodel_input, platforms=platforms)
  if push_to_hub:
    from vit_jax.export_formats import hub  # pylint: disable=g-import-not-at-top
    url = hub.push(written.path, push_to_hub)
    written = dataclasses.replace(written, notes=written.notes + (f"pushed to {url}",))
  return written


def _library(fmt: str):
  """The module that checks and writes a timm / transformers snapshot (StableHLO and
  SavedModel hold any architecture the model factory builds)."""
  from vit_jax.export_formats import timm, transformers  # pylint: disable=g-import-not-at-top
  return {"timm": timm, "transformers": transformers}[fmt]


def export(workdir: str, output: str, step: Optional[int] = None, overwrite: bool = False,
           **options: Any) -> str:
  """Writes the params of `workdir`'s checkpoint to `output` and returns its path: by default
  the .npz with its architecture at sidecar_path(output); `fmt=...` and the other options of
  export_files choose another format.

  An existing `output` is only replaced when `overwrite` is set (then atomically).
  """
  return export_files(workdir, output, step, overwrite, **options).path


def main(argv) -> None:
  from absl import (
    flags,  # pylint: disable=g-import-not-at-top
    logging as absl_logging,  # pylint: disable=g-import-not-at-top
  )
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    written = export_files(f.workdir, f.output, f.step, f.overwrite, fmt=f.format,
                           params=f.params, push_to_hub=f.push_to_hub,
                           savedmodel_input=f.savedmodel_input,
                           platforms=f.platforms.split(","))
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    sys.exit(exits.report(e, verbose=f["verbosity"].present and f.verbosity >= 1))
  if not written.files:  # Another process of a multi-host run: process 0 wrote it.
    return
  if written.format == "npz":
    print(f"Exported {f.workdir} to {written.path} (architecture: {sidecar_path(written.path)})")
  else:
    print(f"Exported {f.workdir} as {written.format} to {written.path}/: "
          f"{', '.join(written.files)}")
  for note in written.notes:
    print(f"note: {note}")
  print(f"Load it: {written.load}")


def run() -> None:
  """Console entry point: `python -m vit_jax.export --workdir W --output model.npz`."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  from vit_jax.export_formats import serving  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/ and config.json).", required=True)
  flags.DEFINE_string("output", None, "Output .npz path (--format=npz) or directory (the "
                      "other formats).", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
  flags.DEFINE_string("format", "npz", f"One of {', '.join(FORMATS)}: the official vit_models "
                      ".npz + architecture .json; a timm or transformers "
                      "(ViTForImageClassification) folder with a model card; a jax.export "
                      "StableHLO artifact; a TF SavedModel.")
  flags.DEFINE_string("params", "raw", "'raw': the trained params; 'ema': their exponential "
                      "moving average (runs with config.ema).")
  flags.DEFINE_string("push_to_hub", None, "org/name: upload the written folder to this Hugging "
                      "Face Hub model repo (created if missing; token from HF_TOKEN or `hf auth "
                      "login`).")
  flags.DEFINE_string("savedmodel_input", "float", "--format=savedmodel input: 'float' (float32 "
                      "images in [-1, 1]) or 'uint8' (RGB in [0, 255], scaled inside the graph).")
  flags.DEFINE_string("platforms", ",".join(serving.DEFAULT_PLATFORMS), "--format=stablehlo / "
                      "savedmodel: the "
                      "platforms the program is lowered for (comma-separated).")
  app.run(main)


if __name__ == "__main__":
  run()
