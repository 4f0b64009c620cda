"""A run's state in its workdir: Orbax checkpoints of the whole run and the record of its config.

Named apart from vit_jax.checkpoint (the published-weights layer): this module owns the
run-state contract (docs/architecture.md, "Run state").

A checkpoint `<workdir>/checkpoints/<step>/` holds two items: 'state' (params, optimizer
state, step, RNG — saved asynchronously by every process, atomically committed) and
'data' (the input pipeline's JSON position). Restoring takes the *current* abstract
state with its shardings, so a checkpoint written on one mesh restores onto another;
`Checkpointer.restore_params` reads the params (or their EMA) alone (an Orbax partial
restore: no optimizer state is read), and `read_params` gives them for a workdir — the
one place exports and the command lines (vit_jax.artifacts) get a run's weights from.

`<workdir>/config.json` records the config that created the workdir (written by
`check_or_write_config`, read back by `read_config`); a run with another model in the same
workdir fails naming both, and a resumed run whose config differs in anything but
RESUMABLE_CHANGES is refused with the differences (config.allow_config_change lets it
continue; the change is logged). `<workdir>/results.json` keeps every evaluation
(`record_eval`, `last_eval`), so a finished run asked to run again reports its result.

A latest checkpoint that cannot be restored (a truncated or missing file) is moved to
`<workdir>/checkpoints_broken/<step>` (kept, not deleted) and the previous one is restored
with a warning. A save that fails for lack of space raises "disk full" naming the last
committed checkpoint, which stays intact (Orbax commits a step only when it is complete).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from vit_jax import exits
from vit_jax.configs import base
from vit_jax.models import factory
from vit_jax.training import train_state

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
# Config keys (and key prefixes) a resumed run may change without allow_config_change: how
# long it runs, how often it logs / evaluates / saves, where data is read from and how fast.
RESUMABLE_CHANGES = ("total_steps", "total_epochs", "log_every", "eval_every", "evals",
                     "checkpoint_every", "max_to_keep", "keep_period", "progress", "batch_eval",
                     "input", "tfds_data_dir", "tfds_manual_dir", "workdir_lock_timeout",
                     "watchdog", "compilation_cache_dir", "allow_config_change",
                     "pretrained_path", "model_or_filename", "replace_head", "dont_load",
                     "resize_patch_embedding", "class_names")  # class_names: from the data.
# TrainState fields Checkpointer.restore_params reads alone, by its `which` argument.
PARAMS_FIELDS = {"raw": "params", "ema": "ema_params"}
# The config fields that decide the shapes of the checkpointed state.
MODEL_IDENTITY_KEYS = ("model_name", "model", "num_classes", "pp.crop", "optimizer")


def absolute_dir(path: str) -> epath.Path:
  """`path` as an absolute epath.Path: local paths resolved against the working directory
  (Orbax refuses relative ones), URLs such as gs://bucket/dir unchanged."""
  return epath.Path(path if "://" in str(path) else os.path.abspath(path))


class Checkpointer:
  """Thin wrapper around ocp.CheckpointManager for TrainState + data position.

  read_only=True is for readers of a workdir (export, evaluate, inspection) that may run while
  its training writes: they create nothing and leave the run's unfinished (temporary) step
  folders alone, which the training's own manager would clean up on its next start.
  """

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = 3,
               keep_period: Optional[int] = None, async_save: bool = True,
               read_only: bool = False):
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                             cleanup_tmp_directories=False)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, keep_period=keep_period or None, create=True,
          enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.directory = absolute_dir(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Optional[dict]) -> bool:
    """Starts an (async) save of `state` and the data position at `step`; True if started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}))
    with self._disk_full_said(f"the checkpoint of step {step}"):
      return self._manager.save(step, args=args, force=True)

  @contextlib.contextmanager
  def _disk_full_said(self, what: str) -> Iterator[None]:
    """An out-of-space error inside becomes one OSError(ENOSPC) naming the intact checkpoint."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not exits.is_disk_full(e):
        raise
      committed = self._committed_steps()
      kept = (f"the last committed checkpoint (step {committed[-1]}) is intact"
              if committed else "no earlier checkpoint exists")
      raise OSError(errno.ENOSPC, f"disk full while writing {what} in {self.directory}; {kept}. "
                    "Free space (or raise the quota) and rerun to continue.") from e

  def _committed_steps(self) -> list[int]:
    """Steps whose folder is committed on disk (no temporary suffix), oldest first."""
    try:
      names = [p.name for p in self.directory.iterdir()]
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit())

  def restore_latest(self, abstract_state: Any, warn: Callable[[str], None] = logging.warning
                     ) -> Optional[tuple[int, Any, dict]]:
    """(step, state, data position) of the newest checkpoint that restores, or None if none.

    A checkpoint that fails to restore is moved to <workdir>/checkpoints_broken/<step> with a
    warning and the next older one is tried; when none restores, the newest's error is raised
    (then nothing is moved: the cause is not the files, e.g. a changed model).
    """
    steps = sorted(self.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        state, data = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        errors.append((step, e))
        continue
      for broken, error in errors:
        self._set_aside(broken)
        warn(f"Checkpoint at step {broken} could not be restored ({type(error).__name__}: "
             f"{str(error)[:200]}); moved to {self.directory.parent / 'checkpoints_broken'} and "
             f"resumed from step {step} instead.")
      return step, state, data
    if errors:
      raise errors[0][1]
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      target = self.directory.parent / "checkpoints_broken"
      target.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target / str(step))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"vit_jax:set_aside_{step}")
    self._manager.reload()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored["state"], dict(restored["data"] or {})

  def restore_params(self, step: int, abstract_params: Any, which: str = "raw") -> Any:
    """Only the params (which='raw') or only their EMA ('ema') of checkpoint `step`.

    An Orbax partial restore of the 'state' item: the optimizer state, step, RNG and data
    position are not read. Leaves of `abstract_params` (ShapeDtypeStructs) that carry a
    sharding restore as jax.Arrays on it, the others as host numpy arrays. The item is read
    by a PyTree handler of its own (the manager keeps its Standard one for save / restore).
    """
    if which not in PARAMS_FIELDS:
      raise exits.UserError(f"params={which!r} is unknown; use 'raw' or 'ema'.")
    field = PARAMS_FIELDS[which]
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory}.")
    args = ocp.args.PyTreeRestore(
        item={field: abstract_params}, partial_restore=True,
        restore_args={field: ocp.checkpoint_utils.construct_restore_args(abstract_params)})
    reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
      restored = reader.restore(self.directory / str(step) / "state", args=args)[field]
    finally:
      reader.close()
    # A partial restore hands back the abstract leaf of anything the checkpoint lacks.
    missing = [jax.tree_util.keystr(path) for path, leaf
               in jax.tree_util.tree_flatten_with_path(restored)[0]
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:
      what = f"no {field}" if len(missing) == len(jax.tree.leaves(restored)) else (
          f"not all {field}: {len(missing)} missing, e.g. {', '.join(missing[:3])}")
      raise exits.UserError(f"the checkpoint of step {step} in {self.directory} holds {what}.")
    return restored

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    with self._disk_full_said("a checkpoint"):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and for the start-up clean-up of unfinished step folders (Orbax's
    close does not), so a later manager on the same workdir in this process never races it."""
    with self._disk_full_said("a checkpoint"):
      self._manager.wait_until_finished()
      await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
      if await_cleanup is not None:
        await_cleanup()
      self._manager.close()


def read_params(workdir: str, step: Optional[int] = None, which: str = "raw"
                ) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(host numpy params, run config, step) of the workdir's checkpoint (latest by default);
  which='ema' gives their moving average (config.ema) instead. Nothing else is read."""
  if which not in PARAMS_FIELDS:
    raise exits.UserError(f"params={which!r} is unknown; use 'raw' or 'ema'.")
  config = read_config(workdir)
  if which == "ema" and not float(config.ema.decay):
    raise exits.UserError(f"the run in {workdir} kept no EMA of its params (config.ema.decay is "
                          "0); export the raw params (--params=raw).")
  model = factory.model_from_run_config(config, int(config.num_classes))
  crop = int(config.pp.crop)
  # No shardings: every leaf is read into host numpy (by each process of a multi-host job).
  abstract = jax.eval_shape(lambda: train_state.init_model_params(
      model, jax.random.PRNGKey(0), (1, crop, crop, 3)))
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
    if step is not None and step not in steps:
      raise exits.UserError(f"no checkpoint at step {step} in {workdir}/checkpoints; the steps "
                            f"there are {sorted(steps)}.")
    step = max(steps) if step is None else step
    params = ckpt.restore_params(step, abstract, which)
  finally:
    ckpt.close()
  return params, config, step


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


def check_or_write_config(workdir: str, config, has_checkpoint: bool,
                          log: Callable[[str], None] = logging.warning) -> None:
  """Raises if the workdir's checkpoint came from another model, or (unless
  config.allow_config_change) from a config that differs outside RESUMABLE_CHANGES; then
  records this config."""
  path = epath.Path(workdir) / CONFIG_FILE
  if has_checkpoint and path.exists():
    stored = json.loads(path.read_text())
    old, new = model_identity(stored), model_identity(config)
    if old != new:
      diff = {k: (old[k], new[k]) for k in old if old[k] != new.get(k)}
      raise exits.UserError(
          f"workdir {workdir} holds a checkpoint of another model: stored config {old} vs this "
          f"config {new} (differs in {diff}). Use a new --workdir, or rerun with the stored "
          "config.")
    changes = config_changes(read_config(workdir), config)
    if changes:
      listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items()))
      if not config.allow_config_change:
        raise exits.UserError(
            f"workdir {workdir} was created with another config; resuming it would change "
            f"{listed}. Rerun with the stored values (see {path}), use a new --workdir, or pass "
            "--config.allow_config_change=True to continue with the new values.")
      log(f"Config changed on resume (allow_config_change): {listed}.")
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))


def _write_text_atomic(path: epath.Path, text: str) -> None:
  """`text` into `path` through a temp file beside it and a rename (local or gs://)."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flat(value, f"{prefix}{key}."))
    return out if out or not prefix else {prefix[:-1]: {}}
  return {prefix[:-1]: tree}


def config_changes(stored, config) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (stored value, new value)} outside RESUMABLE_CHANGES (JSON-normalised)."""
  as_json = lambda c: json.loads(json.dumps(c.to_dict() if hasattr(c, "to_dict") else c,
                                            default=str))
  a, b = _flat(as_json(stored)), _flat(as_json(config))
  resumable = lambda k: any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not resumable(k)}


def record_eval(workdir: str, step: int, values: dict[str, float]) -> None:
  """Appends one evaluation to <workdir>/results.json (process 0, atomic replace)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / RESULTS_FILE
  results = json.loads(path.read_text()) if path.exists() else {"evals": []}
  results["evals"] = [e for e in results["evals"] if e["step"] != step]
  results["evals"].append({"step": int(step), **{k: float(v) for k, v in values.items()}})
  _write_text_atomic(path, json.dumps(results, indent=1))


def last_eval(workdir: str, step: Optional[int] = None) -> Optional[dict]:
  """The newest recorded evaluation (at `step` when given), or None."""
  path = epath.Path(workdir) / RESULTS_FILE
  if not path.exists():
    return None
  evals = [e for e in json.loads(path.read_text()).get("evals", [])
           if step is None or e["step"] == step]
  return max(evals, key=lambda e: e["step"]) if evals else None


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config recorded in `workdir` by the trainer, over today's defaults.

  Keys added to configs/base.defaults() after the workdir was written take their
  default, so code can read every key without a second default of its own.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a directory a vit_jax run wrote.")
  stored = json.loads(path.read_text())
  config = base.defaults()
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
