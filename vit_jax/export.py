r"""Export a run's trained params to the official vit_models .npz layout.

  python -m vit_jax.export --workdir=/tmp/run --output=model.npz [--step=N]

Reads <workdir>/config.json (written by the trainer), restores the checkpoint's params
onto this machine's devices, and writes them with checkpoint.save — loadable by
checkpoint.load and by any tool that reads Google's ViT files.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np
from etils import epath

from vit_jax import checkpointing, sharding, train_state


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config recorded in the workdir by the trainer."""
  path = epath.Path(workdir) / checkpointing.CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory a vit_jax run wrote.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def _mesh_for(config):
  """The run's mesh if it fits these devices, else pure data parallel."""
  try:
    return sharding.make_mesh(config.get("mesh", (("data", -1),)))
  except ValueError:
    return sharding.make_mesh((("data", -1),))


def restore_params(workdir: str, step: Optional[int] = None) -> tuple[dict, ml_collections.ConfigDict, int]:
  """(host numpy params, run config, step) from the workdir's checkpoint (latest by default)."""
  config = load_run_config(workdir)
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
    setup = train_state.setup_from_config(config, _mesh_for(config), int(config.num_classes),
                                          int(config.get("total_steps", 0) or 1))
    state, _ = ckpt.restore(step, setup.abstract_state)
  finally:
    ckpt.close()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  params = jax.tree.map(np.asarray, multihost_utils.process_allgather(state.params, tiled=True))
  return params, config, step


def export(workdir: str, output: str, step: Optional[int] = None,
           overwrite: bool = False) -> str:
  """Writes the params of `workdir`'s checkpoint to `output` (.npz); returns the path.

  An existing `output` is only replaced when `overwrite` is set (then atomically).
  """
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output!r} already exists; choose another --output or pass "
                          "--overwrite to replace it.")
  params, _, step = restore_params(workdir, step)
  if jax.process_index() == 0:
    checkpoint.save(params, output)
  return output


def main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  path = export(f.workdir, f.output, f.step, f.overwrite)
  print(f"Exported {f.workdir} to {path}")


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
