"""The models' platform policy: which formulation runs where (one home for it).

Owns the target platform (`current_platform`, `compile_target` for compiling for devices
this host does not have), the CPU test (`on_cpu`), the core count, the attention
implementation choice (`ATTENTION_IMPLS`, `check_attention_impl`, `resolve_attention_impl`)
and the batch-chunk
scheduling of a CPU forward (`resolve_batch_chunks` and its measured constants). Kernels
(attention.py, cpu_ops.py) and layers (transformer.py, vit.py) ask here and nowhere else.

The first time the models find themselves on the CPU backend, the library's host
start-up defaults are applied (vit_jax.runtime_defaults.apply_host_defaults: the glibc
allocator setting measured in docs/performance.md), so a notebook that drives the
public API gets the speed `python -m vit_jax.main` gets; VIT_JAX_NO_XLA_DEFAULTS=1
turns it off.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import jax
import numpy as np

from vit_jax import runtime_defaults

_host_defaults_checked = False
_target_platform: Optional[str] = None  # Set by `compile_target` (compiling for other devices).


def current_platform() -> str:
  """The platform programs are built for: `compile_target`'s, else JAX's default backend."""
  return _target_platform or jax.default_backend()


@contextlib.contextmanager
def compile_target(platform: str) -> Iterator[None]:
  """Within it, the models choose their formulations for `platform` (e.g. 'tpu').

  For compiling on this host for devices it does not have (the TPU dry run over abstract
  devices): without it a CPU host would trace the CPU formulations into a TPU program.
  """
  global _target_platform
  previous, _target_platform = _target_platform, platform
  try:
    yield
  finally:
    _target_platform = previous


def on_cpu() -> bool:
  """True when programs are built for the CPU (where the CPU formulations are used)."""
  global _host_defaults_checked
  cpu = current_platform() == "cpu"
  if cpu and not _host_defaults_checked:
    _host_defaults_checked = True
    runtime_defaults.apply_host_defaults("cpu")
  return cpu


def cpu_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


ATTENTION_IMPLS = (None, "xla", "cudnn", "einsum", "einsum_vjp")


def check_attention_impl(impl: Optional[str]) -> None:
  """Raises a ValueError naming the valid choices if `impl` is not one."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is not supported; use one of {ATTENTION_IMPLS} "
                     "(None lets the library choose per platform, 'cudnn' needs a GPU and "
                     "bf16/fp16 compute).")


def resolve_attention_impl(impl: Optional[str], platform: Optional[str] = None) -> Optional[str]:
  """The implementation `impl` runs as on `platform` (default: JAX's default backend).

  None becomes 'einsum_vjp' on CPU (fastest there, see the module doc) and stays None
  (jax.nn.dot_product_attention's own choice) on GPU/TPU.
  """
  check_attention_impl(impl)
  if impl is not None:
    return impl
  return "einsum_vjp" if (platform or current_platform()) == "cpu" else None


# CPU default of `batch_chunks` (measured on a 2-core CPU, docs/performance.md): chunks
# hold at least this many activations (images x tokens x width; ViT-Ti/16 at 224: 37.8k
# per image) and there are at most CHUNKS_PER_CORE * cores of them. Index: train (True) or
# inference (False). Small models (the tests' toy ViTs) are not chunked.
CPU_MIN_CHUNK_ACTIVATIONS = {True: 1 << 17, False: 1 << 18}
CPU_CHUNKS_PER_CORE = {True: 4, False: 2}
# Chunks are unrolled: at most this many encoder blocks in the program (chunks x layers,
# 1 x chunks with scan_layers), which bounds the compile time (ViT-Ti/16: 8 chunks x 12).
CPU_MAX_UNROLLED_BLOCKS = 96


def resolve_batch_chunks(batch_chunks: Optional[int], tokens_shape: tuple[int, int, int],
                         train: bool, platform: Optional[str] = None,
                         unrolled_layers: int = 1) -> int:
  """How many chunks the model splits a batch with (batch, tokens, width) encoder input into.

  An explicit `batch_chunks` is an upper bound: the largest divisor of the batch that is at
  most `batch_chunks` (chunking only changes how the work is scheduled, never the values,
  so a batch it does not divide, e.g. the 1-image batch of `model.init`, is split into
  fewer chunks instead of failing). None is the per-platform default: 1 on GPU/TPU and
  when JAX has several devices (the batch is then sharded; splitting it would move rows
  between devices); on a single CPU device the
  largest divisor of the batch that is at most min(activations //
  CPU_MIN_CHUNK_ACTIVATIONS[train], CPU_CHUNKS_PER_CORE[train] * cores,
  CPU_MAX_UNROLLED_BLOCKS // unrolled_layers) (1 when below 2). `unrolled_layers`: encoder
  blocks per chunk in the program (num_layers, or 1 with scan_layers).
  """
  batch = tokens_shape[0]
  if batch_chunks is not None:
    if batch_chunks < 1:
      raise ValueError(f"batch_chunks={batch_chunks} must be >= 1 (1 = no chunking); use "
                       "None for the per-platform default.")
    return _largest_divisor_at_most(batch, batch_chunks)
  if (platform or current_platform()) != "cpu" or jax.device_count() > 1:
    return 1
  activations = int(np.prod(tokens_shape))
  limit = min(activations // CPU_MIN_CHUNK_ACTIVATIONS[train], batch,
              CPU_CHUNKS_PER_CORE[train] * cpu_cores(),
              CPU_MAX_UNROLLED_BLOCKS // max(unrolled_layers, 1))
  return _largest_divisor_at_most(batch, limit)


def _largest_divisor_at_most(n: int, limit: int) -> int:
  """The largest divisor of `n` that is <= `limit` (1 when `limit` < 1)."""
  return max([d for d in range(1, min(limit, n) + 1) if n % d == 0] or [1])
