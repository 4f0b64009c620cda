r"""Export a run's trained params to the official vit_models .npz layout.

  python -m vit_jax.export --workdir=/tmp/run --output=model.npz [--step=N]

Reads <workdir>/config.json (run_state.read_config), restores the checkpoint's params
onto this machine's devices, and writes them with checkpoint.save — loadable by
checkpoint.load and by any tool that reads Google's ViT files.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections

from vit_jax import checkpoint, run_state, sharding, train_state


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
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
    setup = train_state.setup_from_config(config, _mesh_for(config), int(config.num_classes),
                                          int(config.total_steps or 1))
    state, _ = ckpt.restore(step, setup.abstract_state)
  finally:
    ckpt.close()
  return checkpoint.to_host(state.params), config, step


def export(workdir: str, output: str, step: Optional[int] = None,
           overwrite: bool = False) -> str:
  """Writes the params of `workdir`'s checkpoint to `output` (.npz); returns the path.

  An existing `output` is only replaced when `overwrite` is set (then atomically).
  """
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
