"""Host batches → global, sharded `jax.Array`s, a few steps ahead (no TensorFlow here).

Every process passes its local batch (leading axis = its share of the global batch, the
rows its addressable devices hold under `sharding`); `jax.make_array_from_process_local_data`
assembles the global array without any cross-host copy.
"""
from __future__ import annotations

import collections
from typing import Iterable, Iterator

import jax
import numpy as np


def global_batch_from_local(batch: dict, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Each leaf (local rows of the global batch) → a global jax.Array laid out by `sharding`."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def prefetch_to_device(iterator: Iterable[dict], size: int,
                       sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """Yields global batches, keeping `size` (>= 1) transfers in flight ahead of the consumer.

  Transfers are asynchronous, so queueing a batch early overlaps its host→device copy with
  the current step. The iterator stops when `iterator` does.
  """
  queue = collections.deque()
  it = iter(iterator)

  def enqueue(n: int) -> None:
    for _ in range(n):
      try:
        queue.append(global_batch_from_local(next(it), sharding))
      except StopIteration:
        return

  enqueue(max(int(size), 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
