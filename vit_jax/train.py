"""The training loop: `train_and_evaluate(config, workdir)` (the entry point main.py and tests call).

Owns the order of things: mesh → dataset info → sharded state (workdir checkpoint >
pretrained weights > scratch) → compiled step → loop (log / eval / checkpoint /
preemption / NaN guard) → final checkpoint and evaluation. The pieces live in
sharding.py, train_state.py, train_step.py, optim.py, run_state.py, metrics.py,
device_prefetch.py and input_pipeline.py; this module only sequences them.

Config keys read here (units in brackets; defaults in configs/common.defaults() only):
total_steps [steps] or total_epochs [epochs over the train split], batch, accum_steps,
log_every / eval_every / checkpoint_every [steps; 0 = only at the end], max_to_keep,
keep_period [steps], seed, pretrained_path / model_or_filename, num_classes (None = from the
dataset), progress (tqdm bar), input.device_prefetch [batches].
"""
from __future__ import annotations

import collections
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, device_prefetch, input_pipeline, metrics, model_configs, optim
from vit_jax import run_state, sharding, train_state, train_step
from vit_jax.train_state import StateSetup, TrainState


class Preemption:
  """SIGTERM → stop at the next step boundary. Multi-process jobs use JAX's preemption sync
  point (every process stops at the same step); single-process jobs install a handler."""

  def __init__(self):
    self._flag = threading.Event()
    self._multi = jax.process_count() > 1
    self._old = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

  def requested(self, step: int) -> bool:
    if not self._multi:
      return self._flag.is_set()
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # No preemption service (e.g. explicit initialize without it).
      return False

  def close(self) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def load_pretrained_params(config, setup: StateSetup) -> Optional[Any]:
  """Host params from config.pretrained_path / config.model_or_filename, or None if neither set.

  Where they are read from is checkpoint.candidate_locations (the rule the inference CLI
  uses too): an AugReg name or file tries its Hugging Face copy first, then gs://.
  """
  location = config.pretrained_path or config.model_or_filename
  if not location:
    return None
  # Abstract params: load_pretrained needs only names and shapes (a new head starts at zero,
  # as in the published fine-tuning recipe).
  init_params = setup.abstract_state.params
  model_config = model_configs.run_model_config(config)
  _, params = checkpoint.load_first(
      checkpoint.candidate_locations(str(location)),
      lambda uri: checkpoint.load_pretrained(pretrained_path=uri, init_params=init_params,
                                             model_config=model_config))
  return params


def initial_state(config, setup: StateSetup, ckpt: run_state.Checkpointer,
                  log) -> tuple[TrainState, Optional[dict]]:
  """Resume precedence: workdir checkpoint > pretrained weights > scratch."""
  latest = ckpt.latest_step()
  if latest is not None:
    log(f"Resuming from the workdir checkpoint at step {latest}.")
    return ckpt.restore(latest, setup.abstract_state)
  params = load_pretrained_params(config, setup)
  if params is not None:
    log(f"Fine-tuning from pretrained weights {config.pretrained_path or config.model_or_filename}.")
    return train_state.state_from_params(setup, params, config.seed), None
  log("Training from scratch.")
  return train_state.create_train_state(setup, config.seed), None


def evaluate(eval_step, params, config) -> dict[str, float]:
  """One masked pass over config.eval_split: accuracy and mean loss over real examples."""
  bsh = sharding.batch_sharding(jax.tree.leaves(params)[0].sharding.mesh)
  totals = collections.Counter()
  batches = device_prefetch.DevicePrefetcher(input_pipeline.create_eval_iterator(config), bsh,
                                             config.input.device_prefetch,
                                             keys=("image", "label", "mask"))
  for batch in batches:
    out = jax.device_get(eval_step(params, batch))
    totals.update({k: float(v) for k, v in out.items()})
  count = max(totals["count"], 1.0)
  return {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count,
          "examples": totals["count"]}


def check_finite(pending: list[tuple[int, dict]]) -> Optional[tuple[int, dict]]:
  """Fetches queued step metrics; raises FloatingPointError at the first non-finite loss."""
  last = None
  for step, m in pending:
    host = {k: float(v) for k, v in jax.device_get(m).items()}
    if not np.isfinite(host["loss"]):
      raise FloatingPointError(
          f"loss is {host['loss']} at step {step} (grad_norm {host['grad_norm']}); training stopped "
          "and the last good checkpoint is kept. Lower --config.base_lr, set "
          "--config.grad_norm_clip, or check the data.")
    last = (step, host)
  pending.clear()
  return last


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def save_checkpoint(ckpt, step: int, state: TrainState,
                    feeder: device_prefetch.DevicePrefetcher, pending) -> None:
  """Saves `state` only when every loss so far and every parameter is finite."""
  check_finite(pending)
  if not bool(_all_finite(state.params)):
    raise FloatingPointError(
        f"parameters became non-finite at step {step}; training stopped and the last good "
        "checkpoint is kept. Lower --config.base_lr or set --config.grad_norm_clip.")
  ckpt.save(step, state, feeder.position)


def _every(step: int, period: int, total: int) -> bool:
  return step == total or (period > 0 and step % period == 0)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the last train/eval metrics."""
  mesh = sharding.mesh_for_config(config)
  info = input_pipeline.dataset_info_prepared_once(config)
  num_classes = int(config.num_classes or info.num_classes)
  total = optim.total_steps(config, info.num_train_examples)
  setup = train_state.setup_from_config(config, mesh, num_classes, total)
  ckpt = run_state.Checkpointer(workdir, max_to_keep=config.max_to_keep,
                                keep_period=config.keep_period)
  record = config.copy_and_resolve_references()
  with record.unlocked():
    record.num_classes = num_classes
  run_state.check_or_write_config(workdir, record, ckpt.latest_step() is not None)
  writer = metrics.Writer(workdir, total, ckpt.latest_step() or 0, config.progress)
  try:
    return _run(config, workdir, setup, ckpt, writer, total, num_classes)
  finally:
    writer.close()
    ckpt.close()


def _run(config, workdir, setup, ckpt, writer, total, num_classes) -> dict[str, Any]:
  """The loop proper (see train_and_evaluate)."""
  del workdir
  state, data_state = initial_state(config, setup, ckpt, writer.text)
  host_iter = input_pipeline.create_train_iterator(config)
  if data_state:
    host_iter.set_state(data_state)
  feeder = device_prefetch.DevicePrefetcher(host_iter, sharding.batch_sharding(setup.mesh),
                                            config.input.device_prefetch, keys=("image", "label"))
  compiled = train_step.compile_train_step(setup, config, num_classes)
  peak, reason = metrics.peak_flops_per_device()
  if reason:
    writer.text(reason)
  meter = metrics.Throughput(config.batch, jax.device_count(), metrics.compiled_flops(compiled), peak)
  eval_step = train_step.make_eval_step(setup)
  preempt = Preemption()
  step = int(jax.device_get(state.step))
  pending, result = [], {"step": step}
  try:
    while step < total:
      t0 = time.perf_counter()
      batch = next(feeder)
      meter.add_data_wait(time.perf_counter() - t0)
      state, step_metrics = compiled(state, batch)
      step += 1
      meter.step_done()
      pending.append((step, step_metrics))
      writer.advance()
      result = _after_step(config, step, total, state, feeder, pending, meter, ckpt, writer,
                           eval_step, preempt, result)
      if result.get("preempted"):
        break
  finally:
    preempt.close()
    if hasattr(host_iter, "close"):
      host_iter.close()
    input_pipeline.release_shared_memory()  # grain's worker batches, before the process exits
  if not result.get("preempted") and ckpt.latest_step() != step:
    save_checkpoint(ckpt, step, state, feeder, pending)
  ckpt.wait()
  result["state"] = state
  return result


def _after_step(config, step, total, state, feeder, pending, meter, ckpt, writer, eval_step,
                preempt, result) -> dict[str, Any]:
  """Logging, evaluation, checkpointing and preemption handling after `step`."""
  result = dict(result, step=step)
  if _every(step, int(config.log_every or 0), total):
    last = check_finite(pending)
    if last:
      values = dict(last[1], **meter.summary())
      writer.scalars(step, values, prefix="train/")
      result["train"] = values
  if preempt.requested(step):
    writer.text(f"SIGTERM: saving a checkpoint at step {step} and exiting.")
    save_checkpoint(ckpt, step, state, feeder, pending)
    return dict(result, preempted=True)
  t0 = time.perf_counter()
  if _every(step, int(config.checkpoint_every or 0), total):
    save_checkpoint(ckpt, step, state, feeder, pending)
  elif len(pending) >= 1000:  # Nothing logged for long: still guard against NaN, free memory.
    check_finite(pending)
  if _every(step, int(config.eval_every or 0), total):
    values = evaluate(eval_step, state.params, config)
    writer.scalars(step, values, prefix="eval/")
    result["eval"] = values
  meter.start += time.perf_counter() - t0  # Saving and evaluating is not training time.
  return result
