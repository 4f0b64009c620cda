r"""Export a run's trained params to the official vit_models .npz layout, with its architecture.

  python -m vit_jax.export --workdir=/tmp/run --output=model.npz [--step=N] [--overwrite]

Reads <workdir>/config.json (run_state.read_config), restores the checkpoint's params
onto this machine's devices, and writes them with checkpoint.save — loadable by
checkpoint.load and by any tool that reads Google's ViT files. Beside the .npz it writes a
sidecar `<output without .npz>.json` (ARCHITECTURE_FORMAT): the complete model fields, class
count and names, input resolution and eval preprocessing, so `vit_jax.inference
--checkpoint model.npz` rebuilds a modified architecture (e.g. the quickstart's) without
--model. Both files are written atomically; an existing output is kept unless --overwrite.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import jax
import ml_collections

from vit_jax import checkpoint, exits, run_state, sharding, train_state

ARCHITECTURE_FORMAT = "vit_jax.export/architecture-1"


def _mesh_for(config):
  """The run's mesh if it fits these devices, else the default (pure data parallel)."""
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  try:
    return sharding.make_mesh(config.mesh)
  except ValueError:
    return sharding.make_mesh(common.DEFAULT_MESH)


def restore_params(workdir: str, step: Optional[int] = None) -> tuple[dict, ml_collections.ConfigDict, int]:
  """(host numpy params, run config, step) from the workdir's checkpoint (latest by default)."""
  config = run_state.read_config(workdir)
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
  return checkpoint.to_host(state.params), config, step


def sidecar_path(output: str) -> str:
  """The architecture file that goes with an exported .npz: 'model.npz' -> 'model.json'."""
  output = os.fspath(output)
  return (output[:-len(".npz")] if output.endswith(".npz") else output) + ".json"


def architecture(config, step: Optional[int] = None, workdir: Optional[str] = None) -> dict[str, Any]:
  """What a loader needs to rebuild and feed the model of a run config (the sidecar's content)."""
  from vit_jax import model_configs  # pylint: disable=g-import-not-at-top
  return json.loads(json.dumps({
      "format": ARCHITECTURE_FORMAT,
      "model_name": config.model_name,
      "model": model_configs.run_model_config(config).to_dict(),
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
  from vit_jax import model_configs  # pylint: disable=g-import-not-at-top
  return model_configs.model_from_fields(arch["model"], int(arch["num_classes"]))


def export(workdir: str, output: str, step: Optional[int] = None,
           overwrite: bool = False) -> str:
  """Writes the params of `workdir`'s checkpoint to `output` (.npz) and its architecture to
  sidecar_path(output); returns the .npz path.

  An existing `output` is only replaced when `overwrite` is set (then atomically).
  """
  for path in (output, sidecar_path(output)):
    if os.path.exists(path) and not overwrite:
      raise FileExistsError(f"{path!r} already exists; choose another --output or pass "
                            "--overwrite to replace it.")
  params, config, step = restore_params(workdir, step)
  if jax.process_index() == 0:
    checkpoint.save(params, output)
    text = json.dumps(architecture(config, step, workdir), indent=1)
    checkpoint.files.write_atomic(sidecar_path(output), lambda f: f.write(text.encode()))
  return output


def main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    path = export(f.workdir, f.output, f.step, f.overwrite)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    sys.exit(exits.report(e, verbose=f["verbosity"].present and f.verbosity >= 1))
  print(f"Exported {f.workdir} to {path} (architecture: {sidecar_path(path)})")


def run() -> None:
  """Console entry point: `python -m vit_jax.export --workdir W --output model.npz`."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/ and config.json).", required=True)
  flags.DEFINE_string("output", None, "Output .npz path.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
  app.run(main)


if __name__ == "__main__":
  run()
