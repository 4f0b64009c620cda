r"""Command line: flags → (multi-host start-up) → loop.train_and_evaluate or the dry run (or,
with Google's vit_jax/configs/inference_time.py, its inference-time benchmark).

  python -m vit_jax.main --config=configs/vit.py:b16,cifar10 --workdir=/tmp/run \
      [--config.base_lr=0.01 ...] [--evals=NAME:TYPE[:KEY=VALUE,...] ...] \
      [--dry_run [--topology=v5p-256 [--num_slices=2]] [--plan] [--json=FILE]]
  # Several processes without a cluster manager JAX detects:
  python -m vit_jax.main ... --coordinator_address=10.0.0.1:1234 --num_processes=4 --process_id=0

Multi-host: `jax.distributed.initialize` runs when --coordinator_address (or env
JAX_COORDINATOR_ADDRESS) is given, or when a multi-process cluster is detected (SLURM
with several tasks, Open MPI, TPU pod slices, Kubernetes JobSets); --distributed=off
disables it. A process that cannot reach the coordinator fails after
--distributed_init_timeout seconds with a message saying what to check.

Errors end the program with one line `error: <what happened and what to do>` on stderr and
the exit statuses of vit_jax/exits.py (0 finished, 2 bad input, 3 NaN stop, 75 preempted
with a checkpoint saved, 76 hang watchdog); the traceback goes to the run's log file
(<workdir>/train.log) and, with --verbosity=1 or more, to the console too.
"""
from __future__ import annotations

if __name__ == "__main__":  # A SIGTERM from the first moment exits 75 (run/termination.py).
  from vit_jax.run import termination as _termination  # pylint: disable=g-import-not-at-top
  _termination.install()

import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys
import threading
import time
from typing import Optional, Sequence

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:preset], e.g. configs/vit.py:b16,cifar10.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Checkpoints, TensorBoard logs and config.json go here.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step, print memory/FLOPs, exit.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "With --dry_run: compile for this TPU slice instead of the local devices "
    "(v4-128, v5e-16, v5litepod-16, v5p-256, v6e-64 or v5p:4x4x8; needs requirements-tpu.txt).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "With --topology: slices joined by DCN.")
_PLAN = flags.DEFINE_bool("plan", False, "With --dry_run: search meshes / remat / accum_steps "
                          "for the configurations that fit, fastest first.")
_JSON = flags.DEFINE_string("json", None, "With --dry_run: also write the figures to this file.")
_EVALS = flags.DEFINE_multi_string(
    "evals", [], "Add an evaluator to config.evals (which --config.evals cannot, the config "
    "is locked): NAME:TYPE[:KEY=VALUE,...], e.g. half:classification:split=test[:50%],topk=2; "
    "repeatable; replaces a same-named entry (vit_jax/evaluators/command_line.py).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0's coordinator (env JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None,
    "Total number of processes (env JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
    "This process's index in [0, num_processes) (env JAX_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "auto: initialize when flags/env or a detected cluster say there are several processes.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "distributed_init_timeout", 300, "Seconds to wait for all processes to join.")


def detected_cluster(environ=os.environ) -> Optional[str]:
  """Name of a multi-process cluster environment JAX can auto-configure, or None."""
  if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in environ:
    return "SLURM"
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  if "," in environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in environ:
    return "TPU pod slice"
  if "JOBSET_NAME" in environ and int(environ.get("JAX_NUM_PROCESSES", "1") or 1) > 1:
    return "Kubernetes JobSet"
  return None


def initialize_distributed() -> None:
  """Calls jax.distributed.initialize when this is one process of several (see module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  mode = _DISTRIBUTED.value
  explicit = _COORDINATOR.value is not None
  cluster = detected_cluster()
  if mode == "off" or (mode == "auto" and not explicit and cluster is None):
    return
  if explicit and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id (or env "
                         "JAX_NUM_PROCESSES / JAX_PROCESS_ID).")
  where = (f"coordinator {_COORDINATOR.value}, process {_PROCESS_ID.value} of "
           f"{_NUM_PROCESSES.value}" if explicit else f"auto-detected {cluster or 'cluster'}")
  logging.info("jax.distributed.initialize (%s)", where)
  timeout = _INIT_TIMEOUT.value
  message = (f"Multi-host start-up failed ({where}): not all processes joined within {timeout}s. "
             "Check that every process was started with the same --num_processes and a distinct "
             "--process_id, that the coordinator host:port is reachable from all hosts (firewall), "
             "and that process 0 is running. Raise --distributed_init_timeout for slow starts.")
  # JAX aborts the process from C++ when its own timeout expires; a watchdog that fires first
  # turns the hang into this message and a clean exit status.
  watchdog = threading.Timer(timeout, _fail_start_up, args=(message,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value, initialization_timeout=timeout + 60)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(f"{message}\nCause: {e}") from e
  finally:
    watchdog.cancel()


def _fail_start_up(message: str) -> None:
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def _flatten_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if hasattr(value, "items") and hasattr(value, "lock"):
      keys.extend(_flatten_keys(value, prefix + key + "."))
  return keys


def check_config_overrides(argv: Sequence[str]) -> None:
  """Exits with one line when --config cannot be loaded (missing file, bad preset) or when a
  --config.<key> override names no config field (with the closest and the valid keys)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not spec:
    return
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    _bad_input(f"error: config file {path!r} (from --config={spec}) does not exist; pass a "
               "file such as configs/quickstart.py or configs/vit.py:b16,cifar10.")
  try:
    from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
    module = base.load_config_file(path)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    from vit_jax import exits  # pylint: disable=g-import-not-at-top
    _bad_input(f"{exits.one_line(e)} (while loading --config={spec})")
  valid = _flatten_keys(config)
  unknown = [k for k in overrides if k not in valid]
  if unknown:
    import difflib  # pylint: disable=g-import-not-at-top
    close = sorted({m for k in unknown for m in difflib.get_close_matches(k, valid, n=3)})
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    _bad_input(f"error: Unknown config key(s) {unknown} for --config={spec}.{hint} Valid keys: "
               + ", ".join(sorted(valid)))


def _bad_input(line: str) -> None:
  """Prints `line` on stderr and exits with the bad-input status (2)."""
  sys.stderr.write(line + "\n")
  sys.stderr.flush()
  sys.exit(2)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py")
  if not flags.FLAGS["verbosity"].present:  # Keep library INFO chatter (Orbax, grain) out of
    absl_logging.set_verbosity(absl_logging.WARNING)  # the progress bar; --verbosity=0 shows it.
  from vit_jax import exits, runtime_defaults  # pylint: disable=g-import-not-at-top
  from vit_jax.run import run_log
  verbose = flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1
  try:
    status = _main(runtime_defaults, run_log)
  except Exception as e:  # pylint: disable=broad-except  # One line; the traceback to the log.
    status = exits.report(e, log=run_log.write, verbose=verbose)
  finally:
    run_log.close()
  if status not in (exits.FINISHED, exits.PREEMPTED) and _one_of_several_processes():
    # JAX's shutdown barrier at exit would wait for a peer that failed or died (heartbeat
    # timeout, 100 s) and then abort the process (134): leave now with the real status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


def _one_of_several_processes() -> bool:
  jax = sys.modules.get("jax")
  try:
    return jax is not None and jax.process_count() > 1
  except Exception:  # pylint: disable=broad-except  # No backend: one process.
    return False


def _main(runtime_defaults, run_log) -> int:
  """The program; returns the exit status (exceptions are reported by main)."""
  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_defaults()  # Before any backend exists (docs/performance.md).
  initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_host_defaults()
  if jax.process_index() != 0:
    logging.getLogger().setLevel(logging.WARNING)  # Logs from process 0 only.
  config = _CONFIG.value
  from vit_jax.google_compat import inference_time, schema  # pylint: disable=g-import-not-at-top
  if inference_time.is_inference_time_config(config):  # Google's configs/inference_time.py.
    return _inference_time(config, inference_time, run_log)
  google_layout = schema.is_google_config(config)
  if google_layout:  # Google's config files (vit_jax/configs/vit.py, ...): translated once.
    config = schema.to_run_config(config)
  if _EVALS.value:  # --evals: entries added to the (locked) config.evals before anything runs.
    from vit_jax.evaluators import command_line  # pylint: disable=g-import-not-at-top
    config = command_line.apply(config, _EVALS.value)
  if _DRY_RUN.value or _PLAN.value:
    from vit_jax.planning import report  # pylint: disable=g-import-not-at-top
    from vit_jax.run import compile_cache  # pylint: disable=g-import-not-at-top
    note = compile_cache.setup_dry_run(config, _TOPOLOGY.value)  # Before the dry run compiles.
    if note and jax.process_index() == 0:
      sys.stderr.write(note + "\n")
    return report.run(config, topology_name=_TOPOLOGY.value,
                       num_slices=_NUM_SLICES.value, plan=_PLAN.value, json_path=_JSON.value)
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (checkpoints and logs go there).")
  workdir = _WORKDIR.value
  log = open_workdir_log(workdir, jax.process_index())
  if log is not None and "://" in workdir and jax.process_index() == 0:
    print(f"Log file of this run: {log.path}", flush=True)
  run_log.write(f"--- {' '.join(sys.argv)}")
  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top
  start = time.time()
  result = loop.train_and_evaluate(config, workdir)
  if result.get("preempted"):
    message = (f"Preempted (SIGTERM) at step {result['step']}: checkpoint saved. Rerun the same "
               f"command to continue (exit status {exits.PREEMPTED}).")
    logging.warning("%s", message)
    run_log.write(message)
    return exits.PREEMPTED
  if google_layout:  # Where Google's tooling looks for the result: <workdir>/checkpoint_<step>.
    from vit_jax.google_compat import checkpoint as google_checkpoint  # pylint: disable=g-import-not-at-top
    google_checkpoint.write(workdir, result["state"].params, result["state"].opt_state,
                            result["step"])
  if jax.process_index() == 0:
    line = summary_line(result, workdir, time.time() - start)
    run_log.write(line)
    print(line, flush=True)
  return exits.FINISHED


def _inference_time(config, inference_time, run_log) -> int:
  """Google's inference-time benchmark: times the forward, writes its TensorBoard scalars to
  --workdir and prints one line."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  if _DRY_RUN.value or _PLAN.value or _EVALS.value:
    raise app.UsageError("--dry_run, --plan and --evals take a training config, not "
                         f"{inference_time.CONFIG_FILE}.")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (the TensorBoard events go there).")
  open_workdir_log(_WORKDIR.value, jax.process_index())
  run_log.write(f"--- {' '.join(sys.argv)}")
  result = inference_time.inference_time(config, _WORKDIR.value)
  if jax.process_index() == 0:
    line = inference_time.summary_line(config, result, _WORKDIR.value)
    run_log.write(line)
    print(line, flush=True)
  return exits.FINISHED


def open_workdir_log(workdir: str, process_index: int):
  """Creates the workdir if needed and opens its log file; an unwritable workdir is one
  UserError saying so."""
  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  from vit_jax.run import run_log
  try:
    if "://" not in workdir:
      os.makedirs(workdir, exist_ok=True)
      if not os.access(workdir, os.W_OK):
        raise PermissionError(f"no write permission on {os.path.abspath(workdir)}")
    return run_log.open_log(workdir, process_index)
  except OSError as e:
    raise exits.UserError(f"cannot write to --workdir {workdir!r} ({e.strerror or e}); choose a "
                          "directory you can write, e.g. --workdir=$HOME/runs/NAME.") from e


def summary_line(result: dict, workdir: str, seconds: float) -> str:
  """One line for the end of a run: steps, final eval accuracy, wall time, where things are."""
  parts = [f"Done: step {result.get('step')}"]
  ev = result.get("eval")
  if ev and "accuracy" in ev:
    parts.append(f"eval accuracy {ev['accuracy']:.2%} on {int(ev['examples'])} examples, "
                 f"eval loss {ev['loss']:.4f}")
  elif ev:  # Named evaluators (config.evals): their headline figures.
    counts = ("examples", "classes")  # Counts, not fractions (the default evaluator's names).
    shown = {k: v for k, v in ev.items()
             if k.rsplit("/", 1)[-1] not in counts and "/class_" not in k}
    parts.append("eval " + ", ".join(f"{k} {v:.2%}" if "loss" not in k else f"{k} {v:.4f}"
                                     for k, v in shown.items()))
    if "examples" in ev:
      parts[-1] += f" on {int(ev['examples'])} examples"
  if result.get("already_finished"):
    parts.append("recorded when the run finished (nothing trained now)")
  else:
    parts.append(f"{seconds:.0f} s in this process")
  if "skipped_examples" in result:  # config.input.skip_bad_examples
    parts.append(f"{result['skipped_examples']} undecodable train examples skipped")
  parts.append(f"checkpoints and TensorBoard logs in {workdir}")
  if result.get("note"):
    parts.append(result["note"].rstrip("."))
  return "; ".join(parts) + "."


def run() -> None:
  """Console entry point."""
  from vit_jax.run import termination  # pylint: disable=g-import-not-at-top
  termination.install()  # Idempotent: `python -m` installed it before the imports above.
  check_config_overrides(sys.argv[1:])
  app.run(main)


if __name__ == "__main__":
  run()
