"""Measured wall time of compiled calls: the one timing loop of bench/ and of Google's
inference-time benchmark (google_compat/inference_time.py), and the sharded forward it times.

A timed window is `steps` calls with a block on the last output, so dispatch overlaps inside
a window as it does in a training loop; warm-up calls (the host heap growing to its working
size, lazy initialisation) are run and blocked on first, untimed.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from vit_jax import sharding


def time_windows(call: Callable[[], Any], windows: int, steps: int = 1, *, warmup: int = 2,
                 clock: Optional[Callable[[], float]] = None,
                 cpu_clock: Optional[Callable[[], float]] = None) -> dict:
  """{'window_s': seconds of each of `windows` windows of `steps` calls, 'cpu_cores_used':
  process CPU time / wall time over them}, after `warmup` blocked calls that are not timed.

  clock / cpu_clock default to time.perf_counter / time.process_time (read at call time, so
  a test may pass its own).
  """
  if windows < 1 or steps < 1 or warmup < 0:
    raise ValueError(f"time_windows: windows={windows} and steps={steps} must be >= 1 and "
                     f"warmup={warmup} >= 0.")
  clock = clock or time.perf_counter
  cpu_clock = cpu_clock or time.process_time
  for _ in range(warmup):
    jax.block_until_ready(call())
  times, cpu = [], 0.0
  for _ in range(windows):
    start, cpu_start = clock(), cpu_clock()
    out = None
    for _ in range(steps):
      out = call()
    jax.block_until_ready(out)
    times.append(clock() - start)
    cpu += cpu_clock() - cpu_start
  return {"window_s": times, "cpu_cores_used": cpu / max(sum(times), 1e-12)}


def forward_on_mesh(model: Any, mesh: Mesh, *, batch: int,
                    image_size: int) -> tuple[Callable[[], Any], jax.Array]:
  """(call, images): `call()` runs the compiled inference forward of `model` on `images`, a
  [batch, image_size, image_size, 3] array of ones split over the mesh's batch axes; the
  params are initialised on the devices (seed 0) and replicated. Compiled before returning."""
  shards = sharding.batch_shards(mesh)
  if batch < 1 or batch % shards:
    raise ValueError(f"batch {batch} does not split over the mesh's {shards} batch shards; "
                     f"use a positive multiple of {shards}.")
  batch_sh, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  sample = (1, image_size, image_size, 3)
  params = jax.jit(
      lambda: model.init(jax.random.PRNGKey(0), jnp.ones(sample, jnp.float32),
                         train=False)["params"], out_shardings=replicated)()
  images = jax.jit(lambda: jnp.ones((batch,) + sample[1:], jnp.float32),
                   out_shardings=batch_sh)()
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False),
                    out_shardings=batch_sh).lower(params, images).compile()
  return (lambda: forward(params, images)), images
