"""Training on a mixture of datasets (config.input.data): several (dataset, split, weight)
sources read as one train stream.

Each source is shuffled and repeated on its own (seeded by the run's seed and its place in
the list), then the stream interleaves them by weight: the weights become integer shares p_s
(of at most SHARE_RESOLUTION, reduced), and every cycle of P = sum(p_s) stream positions holds
exactly p_s elements of source s, spread over the cycle by smooth weighted round robin. So
stream position t maps to (source, index in that source's stream) in O(1) (`Schedule.locate`),
the elements each source has given by any position are exact (`Schedule.consumed`), and the
mixture keeps the pipeline's contract: the same global stream for any process count, O(1)
resume (pipeline.py). grain's `MapDataset.mix` interleaves the same way but keeps its
position map private; this one also gives the counts the run logs.

Labels: every source must have the class space of the run (config.dataset's, where the run
is evaluated: the same class count, and the same class names where both name them), or say
where its labels go with a 4th entry, a label offset: its label y becomes offset + y, one of
the run's classes (a source of a subset of them).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from vit_jax.datasets import bad_examples

SHARE_RESOLUTION = 1000  # the weights as integer shares of at most this many per cycle


@dataclasses.dataclass(frozen=True)
class Source:
  """One entry of config.input.data."""
  dataset: str
  split: str
  weight: float
  label_offset: int = 0
  offset_given: bool = False

  @property
  def name(self) -> str:
    return f"{self.dataset}:{self.split}"


def sources(config) -> tuple[Source, ...]:
  """config.input.data as Sources (() when the run reads config.dataset alone); one
  ValueError for a malformed entry."""
  out = []
  for entry in tuple(config.input.data or ()):
    entry = tuple(entry)
    if len(entry) not in (3, 4):
      raise ValueError(f"config.input.data entry {entry!r} must be (dataset, split, weight) or "
                       "(dataset, split, weight, label_offset).")
    try:
      weight = float(entry[2])
      offset = int(entry[3]) if len(entry) == 4 else 0
    except (TypeError, ValueError):
      raise ValueError(f"config.input.data entry {entry!r}: the weight must be a number and "
                       "the label offset an integer.") from None
    if not weight > 0 or offset < 0:
      raise ValueError(f"config.input.data entry {entry!r}: the weight must be > 0 and the "
                       "label offset >= 0.")
    out.append(Source(str(entry[0]), str(entry[1]), weight, offset, len(entry) == 4))
  return tuple(out)


def integer_shares(weights: Sequence[float]) -> tuple[int, ...]:
  """The weights as integer shares (each >= 1) of at most SHARE_RESOLUTION, reduced by their
  greatest common divisor: (0.7, 0.3) -> (7, 3)."""
  total = float(sum(weights))
  shares = [max(1, round(w / total * SHARE_RESOLUTION)) for w in weights]
  g = math.gcd(*shares)
  return tuple(s // g for s in shares)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The interleaving of the sources (module doc): `order[o]` is the source of cycle offset o,
  `rank[o]` its index among that source's offsets in the cycle."""
  shares: tuple[int, ...]
  order: tuple[int, ...]
  rank: tuple[int, ...]

  @classmethod
  def from_weights(cls, weights: Sequence[float]) -> "Schedule":
    shares = integer_shares(weights)
    total = sum(shares)
    current = [0] * len(shares)
    order, rank, seen = [], [], [0] * len(shares)
    for _ in range(total):  # smooth weighted round robin
      current = [c + s for c, s in zip(current, shares)]
      pick = int(np.argmax(current))
      current[pick] -= total
      order.append(pick)
      rank.append(seen[pick])
      seen[pick] += 1
    return cls(shares, tuple(order), tuple(rank))

  @property
  def cycle(self) -> int:
    return len(self.order)

  def locate(self, t: int) -> tuple[int, int]:
    """(source, index in its stream) of stream position t."""
    cycles, offset = divmod(int(t), self.cycle)
    source = self.order[offset]
    return source, cycles * self.shares[source] + self.rank[offset]

  def consumed(self, t: int) -> tuple[int, ...]:
    """Elements each source has given in stream positions [0, t)."""
    cycles, offset = divmod(int(t), self.cycle)
    head = self.order[:offset]
    return tuple(cycles * s + head.count(i) for i, s in enumerate(self.shares))


@dataclasses.dataclass(frozen=True)
class Normalised:
  """A source's element as {'image', 'label' (+ its offset), 'path'}: one layout for all."""
  image_key: str
  label_key: str
  label_offset: int

  def __call__(self, element: dict) -> dict:
    out = {"image": element[self.image_key],
           "label": np.int64(int(element[self.label_key]) + self.label_offset),
           "path": element.get("path", "")}
    if bad_examples.FALLBACK in element:  # the next examples, in this layout too
      out[bad_examples.FALLBACK] = _NormalisedFallback(element[bad_examples.FALLBACK], self)
    return out


@dataclasses.dataclass(frozen=True)
class _NormalisedFallback:
  fallback: Any
  normalise: Normalised

  def __call__(self, step: int) -> dict:
    return self.normalise(self.fallback(step))


@dataclasses.dataclass(frozen=True)
class Mixed:
  """Stream position t -> the element of its source (Schedule.locate)."""
  streams: tuple  # grain MapDatasets: each source shuffled, repeated, Normalised
  schedule: Schedule

  def __call__(self, t: int) -> dict:
    source, index = self.schedule.locate(t)
    return self.streams[source][index]


def check_labels(mixture: Sequence[Source], infos: Sequence[Any], num_classes: int,
                 class_names: Sequence[str]) -> None:
  """One ValueError when a source's labels do not fit the run's `num_classes` classes."""
  for spec, info in zip(mixture, infos):
    if info.captions_key or info.multilabel_key:
      raise ValueError(f"config.input.data mixes single-label image datasets; {spec.name} has "
                       "captions or label sets.")
    top = spec.label_offset + info.num_classes
    if spec.offset_given:
      if top > num_classes:
        raise ValueError(f"config.input.data: {spec.name} has {info.num_classes} classes at "
                         f"label offset {spec.label_offset}, past the run's {num_classes} "
                         "classes (config.dataset's, where it is evaluated); lower the offset.")
      continue
    if info.num_classes != num_classes or (
        info.class_names and class_names and tuple(info.class_names) != tuple(class_names)):
      raise ValueError(
          f"config.input.data: {spec.name} has {info.num_classes} classes"
          + (" with other class names" if info.num_classes == num_classes else "")
          + f" and the run {num_classes} (config.dataset's, where it is evaluated); mix "
          "datasets of the run's label space, or give the entry a 4th value, the run's class "
          "its label 0 is (its labels y become offset + y), e.g. "
          f"('{spec.dataset}', '{spec.split}', {spec.weight:g}, 0).")


def summary(mixture: Sequence[Source], schedule: Schedule, sizes: Sequence[int],
            stream_position: int) -> list[str]:
  """Log lines: each source's weight, share of the stream and the elements it has given by
  stream position `stream_position` (and how many passes over it that is)."""
  total = schedule.cycle
  given = schedule.consumed(stream_position)
  lines = [f"Data mixture of {len(mixture)} sources, {stream_position} elements read:"]
  for spec, share, size, n in zip(mixture, schedule.shares, sizes, given):
    lines.append(f"  {spec.name}: weight {spec.weight:g} -> {share}/{total} of each cycle "
                 f"({share / total:.1%}); {n} elements, {n / max(size, 1):.2f} passes over its "
                 f"{size}")
  return lines
