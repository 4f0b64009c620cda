"""The training loop: `train_and_evaluate(config, workdir)` (the entry point main.py and tests call).

Owns the order of things: mesh → dataset info → sharded state (workdir checkpoint >
pretrained weights > scratch) → compiled step → loop (log / eval / checkpoint /
preemption / NaN guard) → final checkpoint and evaluation. The pieces live in
sharding.py, train_state.py, train_step.py, optim.py, checkpointing.py, metrics.py.

Config keys read here (units in brackets): total_steps [steps] or total_epochs [epochs over
the train split], batch, accum_steps, log_every / eval_every / checkpoint_every [steps; 0 = only
at the end], max_to_keep, keep_period [steps], seed, pretrained_path / model_or_filename,
num_classes (None = from the dataset), progress (tqdm bar), input.device_prefetch [batches].
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

from vit_jax import checkpointing, device_prefetch, metrics, sharding, train_state, train_step
from vit_jax.train_state import StateSetup, TrainState


class BatchFeeder:
  """Global device batches from the host iterator, `depth` ahead, each paired with the
  pipeline position *after* it — so a checkpoint records exactly the batches consumed.
  (device_prefetch.prefetch_to_device cannot pair batches with positions, hence this.)"""

  def __init__(self, host_iter, batch_sharding, depth: int = 2):
    self._it = host_iter
    self._sharding = batch_sharding
    self._queue = collections.deque()
    self._depth = max(int(depth), 1)
    self.position = host_iter.get_state() if hasattr(host_iter, "get_state") else None

  def _put(self) -> None:
    local = next(self._it)
    batch = device_prefetch.global_batch_from_local(
        {k: local[k] for k in ("image", "label")}, self._sharding)
    state = self._it.get_state() if hasattr(self._it, "get_state") else None
    self._queue.append((batch, state))

  def next(self) -> dict[str, jax.Array]:
    while len(self._queue) < self._depth:
      self._put()
    batch, self.position = self._queue.popleft()
    return batch


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


def total_steps_for(config, num_train_examples: int) -> int:
  """config.total_steps, else config.total_epochs × examples / batch (rounded down)."""
  steps = config.get("total_steps", None)
  if steps:
    return int(steps)
  epochs = config.get("total_epochs", None)
  if not epochs:
    raise ValueError("set --config.total_steps (steps) or --config.total_epochs (epochs).")
  return max(int(epochs * num_train_examples // config.batch), 1)


def load_pretrained_params(config, setup: StateSetup) -> Optional[Any]:
  """Host params from config.pretrained_path / config.model_or_filename, or None if neither set."""
  path = config.get("pretrained_path", None)
  name = config.get("model_or_filename", None)
  if not path and not name:
    return None
  from vit_jax import checkpoint, checkpoint_sources  # pylint: disable=g-import-not-at-top
  if path:
    candidates = [str(path)]
  else:
    from vit_jax import augreg  # pylint: disable=g-import-not-at-top
    candidates = list(augreg.resolve(name).uris)  # The Hugging Face copy first, then gs://.
  # Abstract params: load_pretrained needs only names and shapes (a new head starts at zero,
  # as in the published fine-tuning recipe).
  init_params = setup.abstract_state.params
  errors = []
  for uri in candidates:
    try:
      return checkpoint.load_pretrained(pretrained_path=uri, init_params=init_params,
                                        model_config=train_state.model_config(config))
    except checkpoint_sources.FetchError as e:
      errors.append(f"{uri}: {e}")
      if len(candidates) == 1:
        raise
  raise FileNotFoundError(f"could not fetch {name!r} from any source:\n  " + "\n  ".join(errors))


def initial_state(config, setup: StateSetup, ckpt: checkpointing.Checkpointer,
                  log) -> tuple[TrainState, Optional[dict]]:
  """Resume precedence: workdir checkpoint > pretrained weights > scratch."""
  latest = ckpt.latest_step()
  if latest is not None:
    log(f"Resuming from the workdir checkpoint at step {latest}.")
    return ckpt.restore(latest, setup.abstract_state)
  params = load_pretrained_params(config, setup)
  if params is not None:
    log("Fine-tuning from pretrained weights "
        f"{config.get('pretrained_path', None) or config.get('model_or_filename')}.")
    return train_state.state_from_params(setup, params, config.seed), None
  log("Training from scratch.")
  return train_state.create_train_state(setup, config.seed), None


def compile_train_step(setup: StateSetup, config, local_batch_shape: dict) -> Any:
  """Lowers and compiles the train step for the abstract state and a global batch."""
  step_fn = train_step.make_train_step(setup, int(config.get("accum_steps", 1) or 1))
  bsh = sharding.batch_sharding(setup.mesh)
  batch = {k: jax.ShapeDtypeStruct(shape, np.float32, sharding=bsh)
           for k, shape in local_batch_shape.items()}
  return step_fn.lower(setup.abstract_state, batch).compile()


def abstract_batch_shapes(config, num_classes: int) -> dict[str, tuple[int, ...]]:
  """Global batch shapes of one train step."""
  crop = int(config.pp.crop)
  return {"image": (config.batch, crop, crop, 3), "label": (config.batch, num_classes)}


def evaluate(eval_step, params, config) -> dict[str, float]:
  """One masked pass over config.eval_split: accuracy and mean loss over real examples."""
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  bsh = sharding.batch_sharding(jax.tree.leaves(params)[0].sharding.mesh)
  totals = collections.Counter()
  for local in input_pipeline.create_eval_iterator(config):
    batch = device_prefetch.global_batch_from_local(
        {k: local[k] for k in ("image", "label", "mask")}, bsh)
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


def save_checkpoint(ckpt, step: int, state: TrainState, feeder: BatchFeeder, pending) -> None:
  """Saves `state` only when every loss so far and every parameter is finite."""
  check_finite(pending)
  if not bool(_all_finite(state.params)):
    raise FloatingPointError(
        f"parameters became non-finite at step {step}; training stopped and the last good "
        "checkpoint is kept. Lower --config.base_lr or set --config.grad_norm_clip.")
  ckpt.save(step, state, feeder.position)


def _prepare(config):
  """Validates the batch geometry against the mesh."""
  mesh = sharding.make_mesh(config.get("mesh", (("data", -1),)))
  shards = sharding.batch_shards(mesh)
  if config.batch % jax.process_count() or config.batch_eval % jax.process_count():
    raise ValueError(f"batch={config.batch} / batch_eval={config.batch_eval} must be divisible by "
                     f"the {jax.process_count()} processes.")
  train_step.check_accum_steps(config.batch, int(config.get("accum_steps", 1) or 1), shards)
  if config.batch_eval % shards:
    raise ValueError(f"batch_eval={config.batch_eval} must be divisible by the {shards} batch shards.")
  return mesh


def _every(step: int, period: int, total: int) -> bool:
  return step == total or (period > 0 and step % period == 0)


def dataset_info_prepared_once(config):
  """Dataset info; with several processes, process 0 prepares the dataset while the others wait.

  Preparing (e.g. the embedded 'digits' builder) writes into tfds_data_dir, which is usually
  shared between the processes of one host; letting every process prepare it at once races.
  """
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return input_pipeline.get_dataset_info(config)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  info = input_pipeline.get_dataset_info(config) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("vit_jax:dataset_prepared")
  return info or input_pipeline.get_dataset_info(config)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the last train/eval metrics."""
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top  # imports TF.
  mesh = _prepare(config)
  info = dataset_info_prepared_once(config)
  num_classes = int(config.get("num_classes", None) or info.num_classes)
  total = total_steps_for(config, info.num_train_examples)
  setup = train_state.setup_from_config(config, mesh, num_classes, total)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.get("max_to_keep", 3),
                                    keep_period=config.get("keep_period", None))
  record = config.copy_and_resolve_references()
  with record.unlocked():
    record.num_classes = num_classes
  checkpointing.check_or_write_config(workdir, record, ckpt.latest_step() is not None)
  writer = metrics.Writer(workdir, total, ckpt.latest_step() or 0, config.get("progress", True))
  try:
    return _run(config, workdir, setup, ckpt, writer, total, num_classes)
  finally:
    writer.close()
    ckpt.close()


def _run(config, workdir, setup, ckpt, writer, total, num_classes) -> dict[str, Any]:
  """The loop proper (see train_and_evaluate)."""
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  del workdir
  state, data_state = initial_state(config, setup, ckpt, writer.text)
  host_iter = input_pipeline.create_train_iterator(config)
  if data_state:
    host_iter.set_state(data_state)
  feeder = BatchFeeder(host_iter, sharding.batch_sharding(setup.mesh),
                       config.get("input", {}).get("device_prefetch", 2))
  compiled = compile_train_step(setup, config, abstract_batch_shapes(config, num_classes))
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
      batch = feeder.next()
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
  if not result.get("preempted") and ckpt.latest_step() != step:
    save_checkpoint(ckpt, step, state, feeder, pending)
  ckpt.wait()
  result["state"] = state
  return result


def _after_step(config, step, total, state, feeder, pending, meter, ckpt, writer, eval_step,
                preempt, result) -> dict[str, Any]:
  """Logging, evaluation, checkpointing and preemption handling after `step`."""
  result = dict(result, step=step)
  if _every(step, int(config.get("log_every", 50) or 0), total):
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
  if _every(step, int(config.get("checkpoint_every", 1000) or 0), total):
    save_checkpoint(ckpt, step, state, feeder, pending)
  elif len(pending) >= 1000:  # Nothing logged for long: still guard against NaN, free memory.
    check_finite(pending)
  if _every(step, int(config.get("eval_every", 0) or 0), total):
    values = evaluate(eval_step, state.params, config)
    writer.scalars(step, values, prefix="eval/")
    result["eval"] = values
  meter.start += time.perf_counter() - t0  # Saving and evaluating is not training time.
  return result
