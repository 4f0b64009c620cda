"""Batch geometry: how a GLOBAL batch splits over processes, batch shards and micro-batches.

The one place that checks that a batch divides evenly (the trainer's pre-flight check, the
input pipeline's per-process batch, the dry run and the bench scripts all call it), each
failure one ValueError that says which value to change. Pure Python: no JAX, no TensorFlow,
so the input pipeline's worker processes can import it.
"""
from __future__ import annotations


def local_batch_size(global_batch: int, process_count: int, name: str = "batch") -> int:
  """global_batch // process_count; raises when it does not divide evenly."""
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"config.{name}={global_batch} must be a positive multiple of the "
                     f"{process_count} processes; set --config.{name} to e.g. "
                     f"{max(global_batch // process_count, 1) * process_count}.")
  return global_batch // process_count


def check_accum_steps(global_batch: int, accum_steps: int, num_shards: int) -> None:
  """Raises unless the batch splits evenly into micro-batches and over the batch shards."""
  if accum_steps < 1 or global_batch % accum_steps:
    raise ValueError(f"batch={global_batch} is not divisible by accum_steps={accum_steps}.")
  micro = global_batch // accum_steps
  if micro % num_shards:
    raise ValueError(f"micro-batch {micro} (batch {global_batch} / accum_steps {accum_steps}) "
                     f"must be divisible by the {num_shards} batch shards (mesh data x fsdp).")


def check_batches(config, process_count: int, num_shards: int) -> None:
  """config.batch and config.batch_eval against the processes, the batch shards and accum_steps."""
  local_batch_size(config.batch, process_count, "batch")
  local_batch_size(config.batch_eval, process_count, "batch_eval")
  check_accum_steps(config.batch, int(config.accum_steps), num_shards)
  if config.batch_eval % num_shards:
    raise ValueError(f"batch_eval={config.batch_eval} must be divisible by the {num_shards} "
                     "batch shards (mesh data x fsdp); set --config.batch_eval to a multiple.")
