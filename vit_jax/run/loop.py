"""The training loop: `train_and_evaluate(config, workdir)` (the entry main.py and tests call).

Owns the order of things: workdir lock → mesh → dataset info → pre-flight checks → sharded
state (workdir checkpoint > pretrained weights > scratch) → compiled step → loop (log / eval /
checkpoint / preemption / NaN guard / hang watchdog) → final checkpoint and evaluation. The
pieces live in sharding.py, training/ (train_state, train_step, optim), run/ (run_state,
metrics, preflight, workdir_lock, watchdog) and datasets/ (pipeline, device_prefetch); this
module only sequences them. How a run ends is in its result
('preempted': exit status 75 in main.py) or in the exception it raises (exits.py).

Config keys read here (units in brackets; defaults in configs/base.defaults() only):
total_steps [steps] or total_epochs [epochs over the train split], batch, accum_steps,
log_every / eval_every / checkpoint_every [steps; 0 = only at the end], max_to_keep,
keep_period [steps], seed, pretrained_path / model_or_filename, replace_head, num_classes
(None = from the dataset), progress (tqdm bar), input.device_prefetch [batches],
workdir_lock_timeout [s], watchdog.{factor, min_seconds [s], first_step_seconds [s],
eval_seconds [s], save_seconds [s]},
allow_config_change, compilation_cache_dir (run/compile_cache.py). The param-group table
(param_groups.py) and the distillation teacher (distill.py, loaded here on every start) are
logged before the first step, and whether the train step came from the compilation cache.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import batching, checkpoint, sharding
from vit_jax.datasets import bad_examples, device_prefetch, pipeline
from vit_jax.evaluators import runner
from vit_jax.models import factory, lit
from vit_jax.planning import compiled_stats, datasheets
from vit_jax.run import (
    compile_cache,
    image_embeddings,
    metrics,
    preflight,
    run_state,
    termination,
    watchdog,
    workdir_lock,
)
from vit_jax.training import distill, flexi, optim, param_groups, train_state, train_step
from vit_jax.training.train_state import StateSetup, TrainState


class Preemption:
  """SIGTERM → stop at the next step boundary. Multi-process jobs use JAX's preemption sync
  point (every process stops at the same step); a single process reads run/termination.py's
  flag (the command line's handler, installed from its start) or, called as a library from
  the main thread, installs a handler for the loop's duration."""

  def __init__(self):
    self._flag = threading.Event()
    self._multi = jax.process_count() > 1
    self._old = None
    if (not self._multi and not termination.installed()
        and threading.current_thread() is threading.main_thread()):
      self._old = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

  def requested(self, step: int) -> bool:
    if not self._multi:
      return self._flag.is_set() or termination.requested()
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # No preemption service (e.g. explicit initialize without it).
      return False

  def close(self) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def load_pretrained_params(config, setup: StateSetup, log=None) -> Optional[Any]:
  """Host params from config.pretrained_path / config.model_or_filename, or None if neither set.

  Where they are read from is checkpoint.load_from (the rule the command lines use too): an
  AugReg name or file tries its Hugging Face copy first, then gs://. `log` gets the load
  report (head replaced or kept, pre_logits dropped, posemb grid resized).
  """
  location = config.pretrained_path or config.model_or_filename
  if not location:
    return None
  if lit.is_lit(setup.model):
    return _load_pretrained_image_text(config, setup, str(location), log)
  # Abstract params: load_pretrained needs only names and shapes (a new head starts at zero,
  # as in the published fine-tuning recipe).
  init_params = setup.abstract_state.params
  if config.dont_load:  # Those parameters keep a real initial value (the scratch init's).
    init_params = train_state.init_params(setup, config.seed)
  model_config = factory.run_model_config(config)
  _, (params, report) = checkpoint.load_from(
      str(location), lambda uri: checkpoint.load_pretrained(
          pretrained_path=uri, init_params=init_params, model_config=model_config,
          replace_head=config.replace_head, dont_load=tuple(config.dont_load),
          resize_patch_embedding=config.resize_patch_embedding, report=True))
  if log is not None:
    for line in report.lines():
      log(line)
  return params


def _load_pretrained_image_text(config, setup: StateSetup, location: str, log) -> Any:
  """An image-text model's start: a two-tower file gives both towers (and t, b), an image
  checkpoint the image tower only (LiT's locked image tower); what the file lacks keeps the
  scratch init. The image tower is fitted like any image checkpoint (head, posemb grid)."""
  init = jax.device_get(train_state.init_params(setup, config.seed))
  image_fields = factory.run_model_config(config).image
  used, (image, report) = checkpoint.load_from(
      location, lambda uri: checkpoint.load_pretrained(
          pretrained_path=uri, init_params=init["img"], model_config=image_fields,
          replace_head=config.replace_head, dont_load=tuple(config.dont_load),
          resize_patch_embedding=config.resize_patch_embedding, report=True))
  params = dict(init, img=image)
  try:
    both = checkpoint.load_image_text(used)  # the copy the image tower came from
  except ValueError:  # An image checkpoint: the text tower, t and b start from scratch.
    both = None
  if both is not None:
    fitted = jax.tree.map(np.shape, both["txt"]) == jax.tree.map(np.shape, init["txt"])
    if not fitted:
      raise ValueError(f"the text tower of {location} does not fit config.model_name="
                       f"{config.model_name!r} (its arrays differ: another text width, depth, "
                       "vocabulary or max_len); pick the model it was trained as.")
    params.update(txt=both["txt"], **{k: both[k] for k in ("t", "b") if k in both and k in init})
  if log is not None:
    for line in report.lines():
      log(f"image tower: {line}")
    log("text tower: " + ("from the same file." if both is not None else
                          "trained from scratch (the file is an image checkpoint)."))
  return params


def initial_state(config, setup: StateSetup, ckpt: run_state.Checkpointer,
                  log) -> tuple[TrainState, Optional[dict]]:
  """Resume precedence: workdir checkpoint > pretrained weights > scratch."""
  restored = ckpt.restore_latest(setup.abstract_state, warn=log)
  if restored is not None:
    step, state, data_state = restored
    log(f"Resuming from the workdir checkpoint at step {step}.")
    return state, data_state
  params = load_pretrained_params(config, setup, log)
  if params is not None:
    log("Fine-tuning from pretrained weights "
        f"{config.pretrained_path or config.model_or_filename}.")
    return train_state.state_from_params(setup, params, config.seed), None
  log("Training from scratch.")
  return train_state.create_train_state(setup, config.seed), None


def evaluate(eval_step, params, config) -> dict[str, float]:
  """One masked pass over config.eval_split: accuracy, top-5 accuracy and mean loss over real
  examples (the default evaluator; config.evals adds named ones, evaluators/runner.py)."""
  return runner.classification_values(runner.classification_pass(eval_step, params, config))


def check_finite(pending: list[tuple[int, dict]]) -> Optional[tuple[int, dict]]:
  """Fetches queued step metrics; raises FloatingPointError at the first non-finite loss."""
  last = None
  for step, m in pending:
    host = {k: float(v) for k, v in jax.device_get(m).items()}
    if not np.isfinite(host["loss"]):
      raise FloatingPointError(
          f"loss is {host['loss']} at step {step} (grad_norm {host['grad_norm']}); training "
          "stopped and the last good checkpoint is kept. Lower --config.base_lr, set "
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
  ckpt.save(step, state, with_run_skip_count(feeder.position))


def run_skip_count(position: Optional[dict]) -> int:
  """Undecodable train examples skipped in the batches trained on so far, summed over the
  processes (each process's data position counts its own; process 0's also what the restored
  state had). Every process calls it at the same step: it is a collective."""
  count = int((position or {}).get(bad_examples.STATE_KEY, 0))
  if jax.process_count() == 1:
    return count
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))


def with_run_skip_count(position: Optional[dict]) -> Optional[dict]:
  """The data position a checkpoint records: with the run's skip count (run_skip_count) where
  the run skips undecodable examples (process 0's position is what Orbax writes)."""
  if not position or bad_examples.STATE_KEY not in position:
    return position
  return {**position, bad_examples.STATE_KEY: run_skip_count(position)}


def _close_checkpointer(ckpt: run_state.Checkpointer, config, failed: bool) -> None:
  """Closes `ckpt` (it waits for pending async writes) within watchdog.save_seconds: after an
  error a save may still wait in Orbax's commit barrier for a peer that died. Past the bound
  the error that ended the run is reported; without one it is a hang (exit 76)."""
  if config.watchdog.factor <= 0:
    ckpt.close()
    return
  done, errors = threading.Event(), []

  def close():
    try:
      ckpt.close()
    except BaseException as e:  # pylint: disable=broad-except  # Re-raised below.
      errors.append(e)
    finally:
      done.set()
  threading.Thread(target=close, name="vit_jax-checkpoint-close", daemon=True).start()
  bound = float(config.watchdog.save_seconds)
  if done.wait(bound):
    if errors and not failed:
      raise errors[0]
    return
  message = (f"the pending checkpoint save did not finish within watchdog.save_seconds={bound:g}"
             " s while the run was closing; a peer process may have died inside it.")
  if failed:  # The error that ended the run says more; the pending save is abandoned.
    logging.warning("%s The run's error follows.", message)
    return
  watchdog.dump_and_exit("hang watchdog: " + message + " Python stacks of every thread "
                         "follow; exiting so the launcher restarts from the last checkpoint.")


def _saving(wd: watchdog.StepWatchdog, config):
  """The watchdog phase of a checkpoint save (or of the wait for its async writes)."""
  return wd.phase("checkpoint save", config.watchdog.save_seconds)


def _every(step: int, period: int, total: int) -> bool:
  return step == total or (period > 0 and step % period == 0)


def train_and_evaluate(config, workdir: str) -> Any:
  """Trains (or resumes) the run in `workdir`; returns the last train/eval metrics and the state.

  `config` is a run config (configs/base.defaults() and its overrides); Google's config
  layout goes through vit_jax.train (google_compat/train.py), which translates it first.
  """
  # The lock first: a second run on this workdir leaves before preparing data or compiling.
  lock = workdir_lock.acquire_for_run(workdir, config.workdir_lock_timeout)
  # An image-text run's tokenizer and max_len, a packed-sequence run's patch size.
  config = factory.with_pipeline_settings(config)
  try:
    cache_line = compile_cache.setup(config, workdir)  # Before the run's first compile.
    mesh = sharding.mesh_for_config(config)
    termination.set_phase("dataset preparation")
    info = pipeline.dataset_info_prepared_once(config)
    preflight.check(config, info)
    num_classes = int(config.num_classes or info.num_classes)
    total = optim.total_steps(config, info.num_train_examples)
    setup = train_state.setup_from_config(config, mesh, num_classes, total)
    ckpt = run_state.Checkpointer(workdir, max_to_keep=config.max_to_keep,
                                  keep_period=config.keep_period)
    record = config.copy_and_resolve_references()
    with record.unlocked():
      record.num_classes = num_classes
      record.class_names = tuple(info.class_names)
    run_state.check_or_write_config(workdir, record, ckpt.latest_step() is not None)
    writer = metrics.Writer(workdir, total, ckpt.latest_step() or 0, config.progress)
    writer.text(cache_line)
    failed = False
    try:
      return _run(config, workdir, setup, ckpt, writer, total, num_classes)
    except BaseException:
      failed = True
      raise
    finally:
      writer.close()
      _close_checkpointer(ckpt, config, failed)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, setup, ckpt, writer, total, num_classes) -> dict[str, Any]:
  """The loop proper (see train_and_evaluate)."""
  termination.set_phase("start-up (restoring or initialising the state)")
  state, data_state = initial_state(config, setup, ckpt, writer.text)
  step = int(jax.device_get(state.step))
  evals = runner.Runner(setup, config)
  if step >= total:  # A finished run asked to run again: report, do not retrain.
    return _finished(config, workdir, step, state, evals, writer)
  embeddings = None
  if config.input.image_embeddings:  # LiT: the locked image tower's rows, computed once.
    termination.set_phase("embedding the train images (config.input.image_embeddings)")
    embeddings = image_embeddings.ensure(config, workdir, setup, state.params, writer.text)
  host_iter = pipeline.create_train_iterator(config, image_embeddings=embeddings,
                                             uint8_images=True)
  if data_state:
    host_iter.set_state(data_state)
  for line in pipeline.mixture_summary(config, step):  # config.input.data: what each source gave
    writer.text(line)
  feeder = device_prefetch.DevicePrefetcher(host_iter, sharding.batch_sharding(setup.mesh),
                                            config.input.device_prefetch,
                                            keys=train_step.batch_keys(setup.model, config))
  if setup.groups is not None:
    for line in param_groups.table(setup.groups, setup.abstract_state.params):
      writer.text(line)
  teacher, teacher_args = _teacher(config, setup, num_classes, writer.text)
  termination.set_phase("the train step's compilation")
  # FlexiViT and progressive resolution: a compiled step per (patch size, stage), on first use.
  sizes, stages = flexi.patch_sizes(config), batching.resolution_stages(config)

  def shape_of(i: int) -> tuple[Optional[int], Optional[Any]]:
    return (flexi.patch_size_at(config, i) if sizes else None,
            batching.stage_at(stages, i) if stages else None)

  def compile_for(key) -> Any:
    patch, stage = key
    at = batching.stage_config(config, stage) if stage is not None else config
    return train_step.compile_train_step(flexi.at_patch_size(setup, patch), at, num_classes,
                                         teacher)

  first = shape_of(step)
  with compile_cache.watch("Train step", writer.text):
    compiled = compile_for(first)
  by_shape = {first: compiled}
  if stages:
    writer.text(f"Progressive resolution: {len(stages)} stages (start step, px, batch) "
                f"{[(s.start, s.resolution, s.batch) for s in stages]}; each compiles at its "
                "first step.")
  if sizes:
    writer.text(f"FlexiViT: patch sizes {sizes} drawn per step (probabilities "
                f"{[round(float(p), 4) for p in flexi.probabilities(config)]}); each compiles "
                "at its first step.")
  peak, reason = datasheets.peak_flops_per_device()
  step_flops = compiled_stats.compiled_flops(compiled)
  flops_of = {first: step_flops}  # per compiled shape: the meter's MFU of each step
  fixed = {}
  if teacher is not None:
    fixed = _teacher_share(config, setup, num_classes, teacher, step_flops, writer.text)
  meter = metrics.Throughput(batching.images_per_step(config), jax.device_count(), step_flops,
                             peak, fixed)
  preempt = Preemption()
  wd = watchdog.StepWatchdog(factor=config.watchdog.factor,
                             min_seconds=config.watchdog.min_seconds,
                             first_step_seconds=config.watchdog.first_step_seconds)
  pending, result = [], {"step": step}
  loop = _Loop(config, workdir, total, feeder, pending, meter, ckpt, writer, evals, preempt, wd)
  termination.training_started()  # A SIGTERM from here on saves at the next step boundary.
  try:
    while step < total:
      t0 = time.perf_counter()
      batch = next(feeder)
      meter.add_data_wait(time.perf_counter() - t0)
      key = shape_of(step)
      if key not in by_shape:  # Compiling is not a hung step: the first step's bound.
        what = (f"patch size {key[0]}" if key[1] is None else
                f"{key[1].resolution} px, batch {key[1].batch}"
                + (f", patch size {key[0]}" if key[0] else ""))
        with wd.phase(f"compiling the train step at {what}", config.watchdog.first_step_seconds), \
            compile_cache.watch(f"Train step at {what}", writer.text):
          by_shape[key] = compile_for(key)
          flops_of[key] = compiled_stats.compiled_flops(by_shape[key])
      state, step_metrics = by_shape[key](state, batch, *teacher_args)
      if key[0] is not None:
        step_metrics = dict(step_metrics, patch_size=jnp.float32(key[0]))
      if key[1] is not None:
        step_metrics = dict(step_metrics, resolution=jnp.float32(key[1].resolution))
      wd.step_dispatched(step_metrics)
      step += 1
      meter.step_done(images=key[1].batch if key[1] is not None else None, flops=flops_of[key])
      pending.append((step, step_metrics))
      writer.advance()
      result = _after_step(loop, step, state, result)
      if result.get("preempted"):
        break
    if not result.get("preempted") and ckpt.latest_step() != step:
      check_finite(pending)
      with _saving(wd, config):
        save_checkpoint(ckpt, step, state, feeder, pending)
    with _saving(wd, config):  # The async writes of the last save finish here.
      ckpt.wait()
    for line in pipeline.mixture_summary(config, step):
      writer.text(line)
    if config.input.skip_bad_examples:  # bad_examples.py: each was logged when skipped
      result["skipped_examples"] = run_skip_count(feeder.position)
      writer.text(f"Skipped {result['skipped_examples']} undecodable train examples in the "
                  "batches this run trained on, all processes, since it started "
                  "(config.input.skip_bad_examples; each is named in the log of the process "
                  "that read it).")
  finally:
    wd.close()
    preempt.close()
    if hasattr(host_iter, "close"):
      host_iter.close()
    pipeline.release_shared_memory()  # grain's worker batches, before the process exits
  if reason:
    result["note"] = reason
  result["state"] = state
  return result


def _teacher(config, setup: StateSetup, num_classes: int, log):
  """(teacher, (its params,)) of config.distill, loaded once onto the mesh (it is not part of
  the checkpoint: a resumed run reloads it), or (None, ()) without distillation."""
  teacher = distill.from_config(config, setup.mesh, num_classes, setup.rules, setup.input_shape)
  if teacher is None:
    return None, ()
  log(f"Distillation: {teacher.mode} (weight {teacher.weight:g}, temperature "
      f"{teacher.temperature:g}) from the teacher {teacher.model_name} at {teacher.location}.")
  return teacher, (distill.load_params(teacher, int(config.pp.crop), log),)


def _teacher_share(config, setup, num_classes, teacher, step_flops, log) -> dict[str, float]:
  """The teacher forward's share of the compiled step's FLOPs (logged once and with every
  train summary as teacher_flops_share)."""
  images = train_step.abstract_batch(config, num_classes, setup.mesh)["image"]
  images = images.update(dtype=jnp.float32)  # the teacher sees the step's float values
  flops = compiled_stats.compiled_flops(distill.compile_forward(teacher, images))
  if not flops or not step_flops:
    return {}
  log(f"Distillation teacher forward: {flops / 1e9:.4g} GFLOPs per device and step, "
      f"{flops / step_flops:.1%} of the train step's {step_flops / 1e9:.4g} GFLOPs.")
  return {"teacher_flops_share": flops / step_flops}


def _finished(config, workdir, step, state, evals, writer) -> dict[str, Any]:
  """The result of a run that already reached its last step: its recorded evaluation, or a
  fresh one when none was recorded at that step."""
  recorded = run_state.last_eval(workdir, step)
  if recorded is not None:
    values = {k: v for k, v in recorded.items() if k != "step"}
    writer.text(f"The run in {workdir} already finished at step {step}; its evaluation at that "
                "step follows (raise --config.total_steps to train further).")
  else:
    writer.text(f"The run in {workdir} already finished at step {step}; evaluating it.")
    values = evals.run(state.params, step, step, ema_params=state.ema_params)
    run_state.record_eval(workdir, step, values)
  writer.scalars(step, values, prefix="eval/")
  return {"step": step, "eval": values, "state": state, "already_finished": True}


class _Loop:
  """What _after_step needs besides the step and state (one object instead of ten args)."""

  def __init__(self, config, workdir, total, feeder, pending, meter, ckpt, writer, evals,
               preempt, wd):
    self.config, self.workdir, self.total, self.feeder = config, workdir, total, feeder
    self.pending, self.meter, self.ckpt, self.writer = pending, meter, ckpt, writer
    self.evals, self.preempt, self.watchdog = evals, preempt, wd


def _after_step(loop: _Loop, step: int, state: TrainState, result: dict) -> dict[str, Any]:
  """Logging, evaluation, checkpointing and preemption handling after `step`."""
  config, total, pending, writer = loop.config, loop.total, loop.pending, loop.writer
  result = dict(result, step=step)
  if _every(step, int(config.log_every or 0), total):
    last = check_finite(pending)
    if last:
      values = dict(last[1], **loop.meter.summary())
      writer.scalars(step, values, prefix="train/")
      result["train"] = values
  if loop.preempt.requested(step):
    writer.text(f"SIGTERM: saving a checkpoint at step {step} and exiting.")
    check_finite(pending)  # Waits for the step itself under the step's bound.
    with _saving(loop.watchdog, config):
      save_checkpoint(loop.ckpt, step, state, loop.feeder, pending)
    return dict(result, preempted=True)
  t0 = time.perf_counter()
  if _every(step, int(config.checkpoint_every or 0), total):
    check_finite(pending)
    with _saving(loop.watchdog, config):
      save_checkpoint(loop.ckpt, step, state, loop.feeder, pending)
  elif len(pending) >= 1000:  # Nothing logged for long: still guard against NaN, free memory.
    check_finite(pending)
  if runner.due(loop.evals.specs, step, total):
    check_finite(pending)
    with loop.watchdog.phase("evaluation", config.watchdog.eval_seconds):
      values = loop.evals.run(state.params, step, total, ema_params=state.ema_params)
    run_state.record_eval(loop.workdir, step, values)
    writer.scalars(step, values, prefix="eval/")
    result["eval"] = values
  loop.meter.start += time.perf_counter() - t0  # Saving and evaluating is not training time.
  return result
