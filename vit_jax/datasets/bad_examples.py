"""Undecodable examples (config.input.skip_bad_examples): stop with the example's id and the
fix (the default), or skip it, counted and logged, never silently.

Skipping keeps the batch shape and the pipeline's determinism: a train element whose image
does not decode is replaced by the next example of its source (then the one after, up to
MAX_TRIES), the same one on every run and process count, and the element records the ids it
skipped; the train iterator logs them and counts them for the run's summary
(pipeline.TrainIterator.skipped_examples). The count travels in the data state (STATE_KEY), so
a resumed run's summary counts from the start of the run: the trainer saves it summed over the
processes and process 0 restores it. An undecodable eval example is left out of the metrics
(mask 0) and logged.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import numpy as np

MAX_TRIES = 16  # undecodable examples in a row before the run stops anyway
SKIPPED = "skipped"          # element / batch key: how many examples were skipped
SKIPPED_IDS = "skipped_ids"  # element / batch key: their ids, newline-separated
FALLBACK = "_fallback"       # element key: Fallback to the next examples of the source
STATE_KEY = "skipped_examples"  # data-state key: examples skipped in the batches read so far


def example_id(element: Any, where: str = "") -> str:
  """What names an example in messages: its file path, its TFDS id, else `where`."""
  if hasattr(element, "get"):
    for key in ("path", "tfds_id", "id", "__key__"):
      value = element.get(key)
      if value is not None and str(value) not in ("", "b''"):
        value = value.decode() if isinstance(value, bytes) else value
        return str(value.item() if hasattr(value, "item") else value)
  return where or "an example"


@dataclasses.dataclass(frozen=True)
class Fallback:
  """The examples after example `index` of `source` (wrapping around)."""
  source: Any
  index: int

  def __call__(self, step: int) -> dict:
    k = (self.index + step) % len(self.source)
    return {**self.source[k], FALLBACK: Fallback(self.source, k)}


@dataclasses.dataclass(frozen=True)
class WithFallback:
  """A source whose elements can be replaced by the next ones (`FALLBACK`); only the worker
  that decodes an element calls it, so it never crosses processes."""
  source: Any

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return Fallback(self.source, int(index))(0)


def hint(element: Any, error: Exception) -> ValueError:
  """The one error of an undecodable example when skipping is off."""
  return ValueError(f"cannot decode image {example_id(element)!r}: {error}. Fix or remove it, "
                    "or set --config.input.skip_bad_examples=True to skip undecodable images "
                    "(each is counted and logged).")


def decode_or_skip(element: dict, decode: Callable[[dict], Any], skip: bool
                   ) -> tuple[Any, dict, list[str]]:
  """(decode(element), the element decoded, the ids skipped before it): with `skip` an
  element that does not decode is replaced by its source's next (module doc); without, one
  ValueError naming it and the fix."""
  skipped: list[str] = []
  for attempt in range(MAX_TRIES):
    try:
      return decode(element), element, skipped
    except Exception as e:  # pylint: disable=broad-except  (any decoder's error)
      if not skip or FALLBACK not in element:
        raise hint(element, e) from e
      name = example_id(element)
      logging.warning("Skipping undecodable example %s: %s", name, e)
      skipped.append(name)
      element = element[FALLBACK](1)
  raise ValueError(f"{MAX_TRIES} undecodable examples in a row from {skipped[0]!r} on "
                   "(config.input.skip_bad_examples): the data looks broken; check it.")


def carry(batch: dict, out: dict) -> dict:
  """`out` (a batch transform's result) with `batch`'s skip counts and ids, when its elements
  recorded them (the train iterator takes them out)."""
  if SKIPPED in batch:
    out[SKIPPED] = np.asarray(batch[SKIPPED], np.int32)
    out[SKIPPED_IDS] = np.asarray(batch[SKIPPED_IDS])
  return out


def record(out: dict, skipped: list[str]) -> dict:
  """`out` with the skip count and ids of its element (for the iterator's count)."""
  out[SKIPPED] = len(skipped)
  out[SKIPPED_IDS] = "\n".join(skipped)
  return out


def with_count(state: dict, config: Any, count: int) -> dict:
  """A train iterator's data state with its skipped-example count, when the run skips them."""
  return {**state, STATE_KEY: int(count)} if config.input.skip_bad_examples else state


def restored_count(state: dict, process_index: int) -> int:
  """This process's starting count from a restored data state: the run's total on process 0
  (the trainer saved the sum over processes), 0 on the others, so the sum stays the total."""
  return int(state.get(STATE_KEY, 0)) if process_index == 0 else 0
