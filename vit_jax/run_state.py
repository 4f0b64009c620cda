"""A run's state in its workdir: Orbax checkpoints of the whole run and the record of its config.

Named apart from vit_jax.checkpoint (the published-weights layer): this module owns the
run-state contract (docs/architecture.md, "Run state").

A checkpoint `<workdir>/checkpoints/<step>/` holds two items: 'state' (params, optimizer
state, step, RNG — saved asynchronously by every process, atomically committed) and
'data' (the input pipeline's JSON position). Restoring takes the *current* abstract
state with its shardings, so a checkpoint written on one mesh restores onto another.

`<workdir>/config.json` records the config that created the workdir (written by
`check_or_write_config`, read back by `read_config`); a run with another model in the same
workdir fails naming both.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CONFIG_FILE = "config.json"
# The config fields that decide the shapes of the checkpointed state.
MODEL_IDENTITY_KEYS = ("model_name", "model", "num_classes", "pp.crop", "optimizer")


def absolute_dir(path: str) -> epath.Path:
  """`path` as an absolute epath.Path: local paths resolved against the working directory
  (Orbax refuses relative ones), URLs such as gs://bucket/dir unchanged."""
  return epath.Path(path if "://" in str(path) else os.path.abspath(path))


class Checkpointer:
  """Thin wrapper around ocp.CheckpointManager for TrainState + data position."""

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = 3, keep_period: Optional[int] = None,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_period or None, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.directory = absolute_dir(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Optional[dict]) -> bool:
    """Starts an (async) save of `state` and the data position at `step`; True if started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}))
    return self._manager.save(step, args=args, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored["state"], dict(restored["data"] or {})

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def model_identity(config) -> dict:
  """The part of the config that must match for a checkpoint to be reusable."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  out = {}
  for key in MODEL_IDENTITY_KEYS:
    node = cfg
    for part in key.split("."):
      node = node.get(part) if isinstance(node, dict) else None
    out[key] = node
  return json.loads(json.dumps(out, default=str))


def check_or_write_config(workdir: str, config, has_checkpoint: bool) -> None:
  """Raises if the workdir's checkpoint came from another model; else records this config."""
  path = epath.Path(workdir) / CONFIG_FILE
  if has_checkpoint and path.exists():
    stored = json.loads(path.read_text())
    old, new = model_identity(stored), model_identity(config)
    if old != new:
      diff = {k: (old[k], new[k]) for k in old if old[k] != new.get(k)}
      raise ValueError(
          f"workdir {workdir} holds a checkpoint of another model: stored config {old} vs this "
          f"config {new} (differs in {diff}). Use a new --workdir, or rerun with the stored config.")
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config recorded in `workdir` by the trainer, over today's defaults.

  Keys added to configs/common.defaults() after the workdir was written take their
  default, so code can read every key without a second default of its own.
  """
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory a vit_jax run wrote.")
  stored = json.loads(path.read_text())
  config = common.defaults()
  _update(config, stored)
  return config


def _update(config: ml_collections.ConfigDict, values: dict) -> None:
  """Writes `values` into `config`, nested dicts into nested ConfigDicts, new keys added."""
  for key, value in values.items():
    node = config[key] if key in config else None
    if isinstance(value, dict) and isinstance(node, ml_collections.ConfigDict):
      _update(node, value)
    else:
      with config.ignore_type():
        config[key] = value
