"""Host batches → global, sharded `jax.Array`s, a few steps ahead (no TensorFlow here).

Every process passes its local batch (leading axis = its share of the global batch, the
rows its addressable devices hold under `sharding`); `jax.make_array_from_process_local_data`
assembles the global array without any cross-host copy. One prefetcher, `DevicePrefetcher`,
serves the trainer (which also needs the data position after each batch, for exact resume)
and `prefetch_to_device` (a plain generator for notebooks and evaluation loops).
"""
from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np


def global_batch_from_local(batch: dict, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Each leaf (local rows of the global batch) → a global jax.Array laid out by `sharding`."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


class DevicePrefetcher:
  """Global device batches from a host iterator, `depth` (>= 1) transfers ahead.

  Transfers are asynchronous, so queueing a batch early overlaps its host→device copy with
  the current step. When the host iterator has `get_state()` (grain, our iterators), each
  queued batch is paired with the pipeline position *after* it, and `position` is the
  position after the last batch handed out — what a checkpoint must record so that a
  resumed run reads exactly the batches not yet consumed. `keys` selects the batch fields
  put on device (None = all).
  """

  def __init__(self, host_iter: Iterable[dict], sharding: jax.sharding.Sharding,
               depth: int = 2, keys: Optional[Sequence[str]] = None):
    self._it = iter(host_iter)
    self._get_state = getattr(host_iter, "get_state", None)
    self._sharding = sharding
    self._keys = tuple(keys) if keys else None
    self._queue: collections.deque = collections.deque()
    self._depth = max(int(depth), 1)
    self._exhausted = False
    self.position: Optional[Any] = self._get_state() if self._get_state else None

  def _fill(self) -> None:
    while len(self._queue) < self._depth and not self._exhausted:
      try:
        local = next(self._it)
      except StopIteration:
        self._exhausted = True
        return
      if self._keys:
        local = {k: local[k] for k in self._keys}
      batch = global_batch_from_local(local, self._sharding)
      self._queue.append((batch, self._get_state() if self._get_state else None))

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    self._fill()
    if not self._queue:
      raise StopIteration
    batch, self.position = self._queue.popleft()
    return batch


def prefetch_to_device(iterator: Iterable[dict], size: int,
                       sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """Yields global batches, keeping `size` (>= 1) transfers in flight ahead of the consumer.

  The iterator stops when `iterator` does.
  """
  return DevicePrefetcher(iterator, sharding, depth=size)
