"""Datasets → this process's batches: TFDS or image folders, augmented, resumable.

Design (docs/architecture.md, "Data order"): index-based sampling with grain over a
random-access source (`tfds.data_source`, array_record, or an image folder).

Train order (the same global batches whatever the number of processes P):
  * ONE global stream over the whole split: the examples shuffled afresh each epoch (grain
    `shuffle` seeded with derive_seed(seed, 1), epoch e with that seed + e; no process index)
    and repeated forever. Stream element k is augmented with an RNG that depends only on
    (derive_seed(seed, 2), k), so its image is the same for every P (random-erasing boxes
    and noise seed included: drawn there, applied to the float image in the batch transform).
  * Repeated augmentation (config.input.repeated_aug = k > 1, DeiT's RASampler): each
    shuffled image fills k consecutive slots of the stream, interleaved inside each global
    batch so the copies sit ~B/k rows apart (RepeatedStream). The copies are distinct stream
    positions, hence independently augmented. A shuffled pass over the N distinct images
    then takes k·N stream elements; an "epoch" of config.total_epochs stays N stream
    elements (N/k distinct images × k copies, the same compute as without it, as DeiT's
    epoch), so a pass over every distinct image takes k such epochs.
  * Global batch i is stream elements [i·B, (i+1)·B), B = config.batch. Process p of P takes
    the contiguous rows [p·b, (p+1)·b) of it (b = B/P): its local batch i is chunk i·P + p of
    the stream cut into chunks of b, and only those b records are read and decoded.
  * Batch level (per local batch, same result for every P): float images, random erasing,
    smoothed one-hot labels, and mixup / CutMix with one draw (applied or not, which of the
    two, λ, the CutMix box) per *global* batch (RNG from (derive_seed(seed, 3), i)) mixing
    row 2m with row 2m+1 of the global batch — pairs never straddle processes, so mixup and
    CutMix need b even.
  Concatenating the P local batches i in process order gives the 1-process batch i bit for bit.
Everything is a pure function of the global batch index, so the iterator state is
`{'step': i, ...}` (global batches consumed) and restoring it starts the pipeline at batch i
without reading the skipped data (O(1)), giving the same batches bit for bit, whatever
`config.input.num_workers` and whatever the process count of the run that saved it.

Eval: process p of P owns the contiguous examples [p·N/P, (p+1)·N/P) (as `tfds.even_splits`),
padded to the same number of batches on every process; every example is seen exactly once.

Batches (numpy, local to this process, b = global batch // process count):
  train: {'image': float32 (b, crop, crop, 3) in [-1, 1] (a pp string's value_range instead,
          preprocess.py; erased 'pixel' / 'rand' boxes hold
          unclipped N(0, 1) noise; uint8 [0, 255] for the trainer where
          batching.uint8_train_images holds: create_train_iterator(uint8_images=True)),
          'label': float32 (b, C) one-hot, label-smoothed and mixed as config.pp says (rows
          sum to 1)}
  eval:  {'image', 'label' (one-hot, no smoothing), 'mask': float32 (b,) 1 real / 0 padding};
          exactly one pass, the same number of batches on every process.
  packed sequences (config.naflex; datasets/naflex.py): 'image' is a dict of patches,
  segment ids, coordinates and image grids, 'label' (b, K, C) for the K images of each pack.
  image-text train (a caption dataset, or config.input.caption_templates over a labelled one;
  datasets/captions.py): {'image', 'tokens': int32 (b, config.pp.max_len)}, one caption per
  image drawn with the element's RNG (so the same for every P and after a resume), tokenized
  with config.pp.tokenizer on config.pp.vocab.
Config keys read: dataset, tfds_data_dir, tfds_manual_dir, train_split, eval_split, batch,
batch_eval, seed, pp.* (see preprocess.py), input.repeated_aug (copies of each image in the
stream, 1 = off), input.num_workers (worker processes, 0 = in this
process), input.prefetch (batches buffered per worker), input.num_threads (optional, threads
per process; default 1 with workers, 2 without). Sources: vit_jax/datasets/sources.py.
Workers hand batches over in shared memory: /dev/shm must hold about
num_workers × prefetch × batch bytes (e.g. `docker run --shm-size=16g`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
from typing import Any, Iterator, Optional

import numpy as np

from vit_jax import batching
from vit_jax.batching import local_batch_size
from vit_jax.datasets import (
  bad_examples,
  captions,
  image_ops,
  mixing,
  mixture,
  naflex,
  preprocess,
)
from vit_jax.datasets.sources import open_source

__all__ = ["DatasetInfo", "get_dataset_info", "dataset_info_prepared_once",
           "create_train_iterator", "create_eval_iterator", "TrainIterator", "shard_range",
           "local_batch_size", "release_shared_memory"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about the data (sizes are whole splits, all processes)."""
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  class_names: tuple[str, ...]


def get_dataset_info(config) -> DatasetInfo:
  """Class count, class names and split sizes of the run's dataset; prepares 'digits' if needed.
  With a mixture (config.input.data) the train examples are those of all its sources, the
  classes config.dataset's (where the run is evaluated)."""
  mix = mixture.sources(config)
  if mix:
    evaluation, info = open_source(config, config.eval_split)
    train = sum(len(open_source(config, m.split, m.dataset)[0]) for m in mix)
    return DatasetInfo(num_classes=info.num_classes, num_train_examples=train,
                       num_eval_examples=len(evaluation), class_names=info.class_names)
  train, info = open_source(config, config.train_split)
  evaluation, _ = open_source(config, config.eval_split)
  return DatasetInfo(num_classes=info.num_classes, num_train_examples=len(train),
                     num_eval_examples=len(evaluation), class_names=info.class_names)


def open_mixture(config, seed: int) -> tuple[Any, Any, int]:
  """(the mixed, shuffled, repeated stream, the run's SourceInfo, the examples of all
  sources) of config.input.data (datasets/mixture.py)."""
  import grain  # pylint: disable=g-import-not-at-top
  mix = mixture.sources(config)
  _, run_info = open_source(config, config.eval_split)
  num_classes = int(config.num_classes or run_info.num_classes)
  opened = [open_source(config, m.split, m.dataset) for m in mix]
  for m, (source, _) in zip(mix, opened):
    if not len(source):
      raise ValueError(f"config.input.data: split {m.split!r} of {m.dataset!r} is empty.")
  mixture.check_labels(mix, [info for _, info in opened], num_classes, run_info.class_names)
  skip = bool(config.input.skip_bad_examples)
  streams = tuple(
      grain.MapDataset.source(bad_examples.WithFallback(source) if skip else source).shuffle(
          seed=derive_seed(seed, 1, i)).repeat(None).map(
              mixture.Normalised(*info.keys, m.label_offset))
      for i, (m, (source, info)) in enumerate(zip(mix, opened)))
  schedule = mixture.Schedule.from_weights([m.weight for m in mix])
  stream = grain.MapDataset.range(sys.maxsize).map(mixture.Mixed(streams, schedule))
  info = dataclasses.replace(run_info, num_classes=num_classes, keys=("image", "label"))
  return stream, info, sum(len(source) for source, _ in opened)


def mixture_summary(config, step: int) -> list[str]:
  """Log lines of a mixture run at global step `step`: each source's share and the elements it
  has given ([] without config.input.data)."""
  mix = mixture.sources(config)
  if not mix:
    return []
  sizes = [len(open_source(config, m.split, m.dataset)[0]) for m in mix]
  schedule = mixture.Schedule.from_weights([m.weight for m in mix])
  return mixture.summary(mix, schedule, sizes, int(step) * batching.images_per_step(config))


def dataset_info_prepared_once(config) -> DatasetInfo:
  """Dataset info; with several processes, process 0 prepares the dataset while the others wait.

  Preparing (e.g. the embedded 'digits' builder) writes into tfds_data_dir, which is usually
  shared between the processes of one host; letting every process prepare it at once races.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return get_dataset_info(config)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  info = get_dataset_info(config) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("vit_jax:dataset_prepared")
  return info or get_dataset_info(config)


def shard_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[lo, hi) of the examples process `process_index` reads (contiguous, disjoint, covering)."""
  return (process_index * num_examples // process_count,
          (process_index + 1) * num_examples // process_count)


def _processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
  return int(process_index), int(process_count)


def derive_seed(*parts: int) -> int:
  """A 32-bit seed from integers (stable across runs, platforms and worker counts)."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class TrainElement:
  """Element transform: {'image': encoded, 'label'} → uint8 crop + int label (an undecodable
  image: bad_examples.decode_or_skip)."""
  opts: preprocess.PreprocessOptions
  image_key: str = "image"
  label_key: str = "label"
  skip_bad: bool = False

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    image, element, skipped = bad_examples.decode_or_skip(
        element, lambda e: preprocess.train_image(e[self.image_key], self.opts, rng),
        self.skip_bad)
    out = {"image": image, "label": np.int32(element[self.label_key])}
    if self.skip_bad:
      bad_examples.record(out, skipped)
    if self.opts.random_erase_prob > 0:  # Drawn here (position-keyed), applied on floats later.
      out["erase"] = mixing.sample_erase_boxes(image.shape[0], image.shape[1], self.opts, rng)
      out["erase_seed"] = np.int64(rng.integers(0, 2**63 - 1))
    return out


@dataclasses.dataclass(frozen=True)
class TrainBatch:
  """Batch transform: float32 [-1, 1] images, random erasing, smoothed one-hot labels, then
  mixup / CutMix. uint8=True (the trainer's batches when batching.uint8_train_images allows)
  keeps the uint8 crops: the train step makes the floats on the accelerator.

  Applied to a local batch with the RNG of its *global* batch index, so λ, the CutMix box and
  the mixup/CutMix choice are the same on every process; pairs are rows 2m and 2m+1 (see
  mixing.mix_batch). Erasing uses each row's own boxes and noise seed (drawn by
  TrainElement from the element's RNG), so it does not depend on the batch either.
  """
  opts: preprocess.PreprocessOptions
  num_classes: int
  uint8: bool = False

  def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
    if self.uint8:
      labels = mixing.one_hot(batch["label"], self.num_classes, self.opts.label_smoothing)
      return bad_examples.carry(batch, {"image": batch["image"], "label": labels})
    images = preprocess.train_values(batch["image"], self.opts)
    if "erase" in batch:
      images = np.stack([mixing.random_erase(im, boxes, seed, self.opts.random_erase_mode)
                         for im, boxes, seed in zip(images, batch["erase"], batch["erase_seed"])])
    labels = mixing.one_hot(batch["label"], self.num_classes, self.opts.label_smoothing)
    images, labels = mixing.mix_batch(images, labels, self.opts, rng)
    return bad_examples.carry(batch, {"image": images, "label": labels})


@dataclasses.dataclass(frozen=True)
class Indexed:
  """A source whose elements also carry their index ('_index'): the row of a precomputed
  image embedding."""
  source: Any

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return {**self.source[index], "_index": np.int64(index)}


@dataclasses.dataclass
class EmbeddingRows:
  """Rows of a (N, D) .npy of image embeddings, memory-mapped on first use in each process."""
  path: str
  _rows: Any = dataclasses.field(default=None, repr=False)

  def __getitem__(self, index: int) -> np.ndarray:
    if self._rows is None:
      self._rows = np.load(self.path, mmap_mode="r")
    return np.asarray(self._rows[index], np.float32)

  def __getstate__(self) -> dict:
    return {"path": self.path, "_rows": None}


@dataclasses.dataclass(frozen=True)
class CaptionTrainElement:
  """Element transform of image-text data: encoded image + captions -> uint8 crop + one
  caption, drawn uniformly from the image's captions with the element's RNG; with
  `embeddings` (LiT's precomputed image embeddings) the image's row instead of its pixels."""
  opts: preprocess.PreprocessOptions
  captions_key: str
  embeddings: Optional[EmbeddingRows] = None
  skip_bad: bool = False

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    skipped: list[str] = []
    if self.embeddings is not None:
      out = {"zimg": self.embeddings[int(element["_index"])]}
    else:
      image, element, skipped = bad_examples.decode_or_skip(
          element, lambda e: preprocess.train_image(e["image"], self.opts, rng), self.skip_bad)
      out = {"image": image}
    texts = captions.element_captions(element, self.captions_key)
    out = {**out, "text": texts[int(rng.integers(len(texts)))]}
    return bad_examples.record(out, skipped) if self.skip_bad else out


@dataclasses.dataclass(frozen=True)
class TextSettings:
  """The tokenizer of an image-text run: config.pp.tokenizer on config.pp.vocab, max_len tokens."""
  tokenizer: str
  vocab: str
  max_len: int

  def tokenize(self, texts: Any) -> np.ndarray:
    """(len(texts), max_len) int32 tokens (the tokenizer is built once per process)."""
    return np.asarray(_tokenizer(self)([str(t) for t in texts]), np.int32)


@functools.lru_cache(maxsize=4)
def _tokenizer(settings: TextSettings) -> Any:
  from vit_jax.datasets import text  # pylint: disable=g-import-not-at-top
  return text.model_tokenizer({"tokenizer_name": settings.tokenizer,
                               "max_len": settings.max_len}, settings.vocab)


def text_settings(config) -> TextSettings:
  """config.pp.tokenizer / vocab / max_len of an image-text run (factory.py fills the first and
  the last from the model); one error naming the missing key."""
  pp = config.pp
  if not pp.vocab:
    raise ValueError("an image-text run tokenizes its captions on the host: set "
                     "--config.pp.vocab to the tokenizer's vocabulary (a BERT WordPiece .txt, "
                     "one piece per line, or a sentencepiece .model; the file published beside "
                     "a LiT / SigLIP checkpoint for tuning it).")
  if not pp.tokenizer or not pp.max_len:
    raise ValueError("an image-text run needs --config.pp.tokenizer ('bert' | 'sentencepiece') "
                     "and --config.pp.max_len (tokens per text).")
  return TextSettings(str(pp.tokenizer), str(pp.vocab), int(pp.max_len))


@dataclasses.dataclass(frozen=True)
class CaptionTrainBatch:
  """Batch transform of image-text data: float32 images (preprocess.train_values) and the
  tokens of each row's caption."""
  opts: preprocess.PreprocessOptions
  text: TextSettings

  def __call__(self, batch: dict) -> dict:
    out = ({"zimg": batch["zimg"].astype(np.float32)} if "zimg" in batch
           else {"image": preprocess.train_values(batch["image"], self.opts)})
    return bad_examples.carry(batch, {**out, "tokens": self.text.tokenize(batch["text"])})


@dataclasses.dataclass(frozen=True)
class RepeatedStream:
  """Repeated augmentation (DeiT's RASampler): stream position t → an element of `shuffled`.

  The repeated sequence has slot q ↦ shuffled image q // k (k copies of each image, one after
  the other). Global batch i (positions t = i·B + j) holds slots [i·B, (i+1)·B) interleaved:
  row j gets slot i·B + offset(j) with the offsets ordered 0, k, 2k, ..., then 1, k+1, ...,
  then 2, ... So the k copies of an image (consecutive slots) sit about B/k rows apart: on
  different processes and devices once there are >= k of them (as DeiT spreads copies over
  GPUs), and never in one mixup/CutMix pair (rows 2m, 2m+1 are >= k slots apart when B >= 3k;
  consecutive copies would otherwise mix an image with itself). Each copy is its own stream
  position, so it gets its own augmentation RNG.
  """
  shuffled: Any  # grain MapDataset: the shuffled split, repeated forever.
  global_batch: int
  repeats: int

  def slot(self, t: int) -> int:
    """Slot q of the repeated sequence that stream position t holds (its image is q // k)."""
    window, j = divmod(int(t), self.global_batch)
    k = self.repeats
    for c in range(k):  # Group c holds the offsets c, c + k, c + 2k, ... < B.
      size = (self.global_batch - c + k - 1) // k
      if j < size:
        return window * self.global_batch + c + j * k
      j -= size
    raise AssertionError("unreachable: the groups cover the batch")

  def __call__(self, t: int) -> dict:
    return self.shuffled[self.slot(t) // self.repeats]


def _read_options(config, grain):
  inp = config.input
  workers = int(inp.num_workers or 0)
  buffered = max(int(inp.prefetch or 1), 1)
  threads = int(inp.num_threads or (1 if workers else 2))
  return workers, grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffered), buffered


def _iterate(dataset, config, grain):
  """MapDataset of batches → iterator, through `num_workers` processes when > 0."""
  workers, read_options, buffered = _read_options(config, grain)
  it_ds = dataset.to_iter_dataset(read_options)
  if workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags in mp_prefetch; outside
      flags.FLAGS.mark_as_parsed()   # an absl app (tests, notebooks) use their defaults.
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=buffered))
  return iter(it_ds)


def release_shared_memory() -> None:
  """Unlinks now the shared memory of worker batches this process no longer references.

  grain hands batches from worker processes over in shared memory and unlinks each one on
  a background thread when the batch is freed; at interpreter exit that thread's pending
  work is dropped, and Python's resource tracker then unlinks the segments itself with a
  "leaked shared_memory objects" warning. Call once at the end of a run, after the
  iterators are closed (vit_jax.main does); later frees unlink synchronously. A no-op when
  grain's internals differ from the pinned version's.
  """
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()  # Batches kept alive only by reference cycles are freed (and queued) now.
  try:
    from grain._src.python.ipc import shared_memory_array  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  cls = shared_memory_array.SharedMemoryArray
  pool = getattr(cls, "_del_thread_pool", None)
  if pool is None or not hasattr(pool, "join"):
    return
  cls._del_thread_pool = None  # pylint: disable=protected-access
  pool.close()
  pool.join()


class TrainIterator(Iterator[dict]):
  """Infinite iterator of local train batches whose position is a small, restorable state.

  get_state() → {'step', 'epoch', 'position', 'seed', 'batch', 'num_examples', 'repeated_aug'}:
  the number of *global* batches consumed plus what identifies the run ('epoch' and 'position'
  of the next distinct example in the shuffled passes over the split are informational; with
  repeated_aug = k a pass takes k·N stream elements). set_state(state) makes the next batch the
  local part of global batch number state['step'] of the same run; it uses only 'step' (and
  checks the rest), so the state saved by process 0 restores every process, and a state saved
  by a run with another process count restores this one exactly (the order does not depend on
  the process count). A run that skips undecodable examples also has 'skipped_examples' in
  the state (bad_examples.with_count / restored_count).
  """

  def __init__(self, batches, config, *, seed: int, global_batch: int, num_examples: int,
               repeated_aug: int = 1, process_index: int = 0):
    import grain  # pylint: disable=g-import-not-at-top
    self._grain, self._batches, self._config = grain, batches, config
    self._meta = {"seed": int(seed), "batch": int(global_batch), "num_examples": int(num_examples),
                  "repeated_aug": int(repeated_aug)}
    self._step, self._it, self._process_index = 0, None, int(process_index)
    # Undecodable examples skipped in the batches read so far (config.input.skip_bad_examples):
    # this process's, plus on process 0 the run's total before the restored state.
    self.skipped_examples = 0

  def __next__(self) -> dict:
    if self._it is None:
      self._it = _iterate(self._batches[self._step:], self._config, self._grain)
    batch = next(self._it)
    self._step += 1
    if bad_examples.SKIPPED in batch:  # config.input.skip_bad_examples: count, log, drop
      batch = dict(batch)
      self.skipped_examples += int(np.sum(batch.pop(bad_examples.SKIPPED)))
      for ids in np.asarray(batch.pop(bad_examples.SKIPPED_IDS)).reshape(-1):
        for name in str(ids).split("\n"):
          if name:
            logging.warning("Skipped undecodable example %s (config.input.skip_bad_examples).",
                            name)
    return batch

  def get_state(self) -> dict[str, int]:
    distinct = self._step * self._meta["batch"] // self._meta["repeated_aug"]
    epoch, position = divmod(distinct, self._meta["num_examples"])
    state = {"step": self._step, "epoch": epoch, "position": position, **self._meta}
    return bad_examples.with_count(state, self._config, self.skipped_examples)

  def set_state(self, state: dict[str, Any]) -> None:
    if int(state["seed"]) != self._meta["seed"]:
      raise ValueError(f"the data state was saved with seed {state['seed']} but config.seed is "
                       f"{self._meta['seed']}; resume with the same --config.seed.")
    # 'process_count' (in states of older versions) is ignored: it no longer changes the order.
    saved = {"repeated_aug": 1, **state}  # States of older versions had no repeated_aug.
    changed = {k: (saved.get(k), v) for k, v in self._meta.items() if saved.get(k, v) != v}
    if changed:
      logging.warning("Resuming the input pipeline with changed %s (saved, now): the order of "
                      "examples differs from the original run from here on.", changed)
    self.close()
    self._step = int(state["step"])
    self.skipped_examples = bad_examples.restored_count(state, self._process_index)

  def close(self) -> None:
    """Stops worker processes (also done on garbage collection)."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


class StagedTrainIterator(Iterator[dict]):
  """The train batches of a progressive-resolution schedule (config.resolution_schedule):
  stage k's batches at its resolution and batch size, read from the one train stream from
  where stage k - 1 stopped. get_state() / set_state() speak of global steps like
  TrainIterator's (a state restores into the stage it falls in, in O(1))."""

  def __init__(self, config, stages, make, process_index: int = 0):
    self._config, self._stages, self._make = config, stages, make
    self._process_index = int(process_index)
    self._step, self._it, self._stage = 0, None, None
    self._skipped = 0

  def _open(self) -> None:
    stage = batching.stage_at(self._stages, self._step)
    if self._it is not None:
      self._skipped += self._it.skipped_examples
      self._it.close()
    self._stage, self._it = stage, self._make(stage)
    inner = self._it.get_state()
    self._it.set_state(dict(inner, step=self._step - stage.start))

  def __next__(self) -> dict:
    if self._it is None or batching.stage_at(self._stages, self._step) != self._stage:
      self._open()
    batch = next(self._it)
    self._step += 1
    return batch

  @property
  def skipped_examples(self) -> int:
    """Undecodable examples skipped by this process's stage iterators."""
    return self._skipped + (self._it.skipped_examples if self._it is not None else 0)

  def get_state(self) -> dict[str, Any]:
    if self._it is None:
      self._open()
    state = dict(self._it.get_state(), step=self._step, stage_start=self._stage.start,
                 batch=int(self._config.batch))
    return bad_examples.with_count(state, self._config, self.skipped_examples)

  def set_state(self, state: dict[str, Any]) -> None:
    if int(state["seed"]) != int(self._config.seed):
      raise ValueError(f"the data state was saved with seed {state['seed']} but config.seed is "
                       f"{self._config.seed}; resume with the same --config.seed.")
    self.close()
    self._step = int(state["step"])
    self._skipped = bad_examples.restored_count(state, self._process_index)

  def close(self) -> None:
    if self._it is not None:
      self._skipped += self._it.skipped_examples
      self._it.close()
    self._it, self._stage = None, None


def create_train_iterator(config, *, process_index: Optional[int] = None,
                          process_count: Optional[int] = None,
                          image_embeddings: Optional[str] = None,
                          uint8_images: bool = False) -> Iterator[dict]:
  """This process's rows of the global shuffled, augmented train batches (module docstring);
  image-text data with `image_embeddings` (a (N, D) .npy in source order,
  run/image_embeddings.py) gives {'zimg', 'tokens'} batches; a progressive-resolution
  schedule (config.resolution_schedule) a StagedTrainIterator.

  uint8_images=True (the trainer): where batching.uint8_train_images(config.pp) holds, image
  batches stay uint8 [0, 255] and the train step makes the float32 [-1, 1] values (the same
  numbers) on the accelerator; otherwise, and by default, images are float32.
  """
  stages = batching.resolution_stages(config)
  if stages:
    process_index, process_count = _processes(process_index, process_count)
    return StagedTrainIterator(config, stages, lambda stage: _train_iterator(
        batching.stage_config(config, stage), process_index, process_count, image_embeddings,
        stream_offset=stage.offset, uint8_images=uint8_images), process_index)
  return _train_iterator(config, process_index, process_count, image_embeddings,
                         uint8_images=uint8_images)


def _train_iterator(config, process_index: Optional[int], process_count: Optional[int],
                    image_embeddings: Optional[str], stream_offset: int = 0,
                    uint8_images: bool = False) -> TrainIterator:
  """create_train_iterator of one batch geometry; the stream starts at element
  `stream_offset` (a later stage of a resolution schedule)."""
  import grain  # pylint: disable=g-import-not-at-top
  process_index, process_count = _processes(process_index, process_count)
  global_batch = int(config.batch)
  local_batch = local_batch_size(global_batch, process_count, "batch")
  opts = preprocess.options_from_config(config.pp)
  if opts.pairs_rows and local_batch % 2:
    raise ValueError(
        f"mixup / CutMix (config.pp.mixup_alpha={opts.mixup_alpha}, config.pp.cutmix_alpha="
        f"{opts.cutmix_alpha}) pair rows 2m and 2m+1 of the global "
        f"batch inside each process, so the per-process batch config.batch / processes = "
        f"{global_batch} / {process_count} = {local_batch} must be even; set --config.batch to "
        f"e.g. {(local_batch + 1) * process_count}.")
  repeats = repeated_aug_from_config(config, opts)
  seed = int(config.seed)
  skip_bad = bool(config.input.skip_bad_examples)
  mixed = mixture.sources(config)
  if mixed:  # config.input.data: the sources, each shuffled and repeated, interleaved
    stream, info, num_examples = open_mixture(config, seed)
    source, captions_key = None, None
  else:
    source, info = open_source(config, config.train_split)
    if not len(source):
      raise ValueError(f"split {config.train_split!r} of {config.dataset!r} is empty.")
    source, captions_key = image_text_source(config, source, info)
    num_examples = len(source)
    if skip_bad:  # an undecodable image: replaced by its source's next
      source = bad_examples.WithFallback(source)
  if image_embeddings and captions_key is None:
    raise ValueError("precomputed image embeddings pair images with captions; this run's data "
                     "has labels only.")
  rows = None
  if image_embeddings:
    source, rows = Indexed(source), EmbeddingRows(str(image_embeddings))
  if captions_key is None:
    preprocess.check_label_classes(opts, info.num_classes)
  else:
    check_image_text_options(opts)
  # The global stream: element k = (shuffled example, augmented with an RNG of (seed, k)).
  if not mixed:
    stream = grain.MapDataset.source(source).shuffle(seed=derive_seed(seed, 1)).repeat(None)
  if repeats > 1:  # Position t holds a copy of shuffled image ~t // k (RepeatedStream).
    stream = grain.MapDataset.range(sys.maxsize).map(
        RepeatedStream(stream, global_batch, repeats))
  packed = naflex.settings_from_config(config) if batching.packed_run(config) else None
  if packed is not None:
    if captions_key is not None:
      raise ValueError("packed sequences (config.naflex) train image classifiers; this run's "
                       "data has captions. Unset config.naflex.seq_len.")
    element = naflex.PackElement(opts, packed, *info.keys, skip_bad=skip_bad)
  elif captions_key is None:
    element = TrainElement(opts, *info.keys, skip_bad=skip_bad)
  else:
    element = CaptionTrainElement(opts, captions_key, rows, skip_bad=skip_bad)
  stream = stream.random_map(element, seed=derive_seed(seed, 2))
  if stream_offset:  # After random_map: element t keeps the RNG of its global position.
    stream = stream[int(stream_offset):]
  if packed is not None:  # Pack j = stream elements [jK, (j+1)K) (datasets/naflex.py).
    stream = stream.batch(packed.images_per_pack, drop_remainder=True,
                          batch_fn=tuple).map(naflex.PackImages(packed))
  # Chunks of b elements; global batch i = chunks [i·P, (i+1)·P); this process reads chunk
  # i·P + p only (lazy random access: the other processes' rows are never read).
  ds = stream.batch(local_batch, drop_remainder=True)[process_index::process_count]
  # Index i of `ds` is the global batch index, so the batch RNG (mixup λ) is P-independent.
  if packed is not None:
    ds = ds.map(naflex.PackedTrainBatch(info.num_classes, opts.label_smoothing))
  elif captions_key is None:
    ds = ds.random_map(TrainBatch(opts, info.num_classes,
                                  uint8=uint8_images and batching.uint8_train_images(opts)),
                       seed=derive_seed(seed, 3))
  else:
    ds = ds.map(CaptionTrainBatch(opts, text_settings(config)))
  return TrainIterator(ds, config, seed=seed, global_batch=global_batch,
                       num_examples=num_examples, repeated_aug=repeats,
                       process_index=process_index)


def image_text_source(config, source: Any, info: Any) -> tuple[Any, Optional[str]]:
  """(source, captions key) of image-text training: a caption dataset as it is, a labelled one
  with config.input.caption_templates as captions.LabelCaptions; (source, None) otherwise."""
  templates = tuple(config.input.caption_templates or ())
  if info.captions_key:
    if templates:
      raise ValueError(f"config.input.caption_templates turns class labels into captions, but "
                       f"{config.dataset!r} already has captions; unset it.")
    return source, info.captions_key
  if not templates:
    return source, None
  if not info.class_names:
    raise ValueError(f"config.input.caption_templates needs class names; {config.dataset!r} "
                     "does not name its classes.")
  names = tuple(config.input.caption_classnames or ()) or tuple(info.class_names)
  if len(names) != len(info.class_names):
    raise ValueError(f"config.input.caption_classnames has {len(names)} names but "
                     f"{config.dataset!r} has {len(info.class_names)} classes; give one name "
                     "per class, in label order.")
  return captions.LabelCaptions(source, names, templates, info.keys[1]), "captions"


def is_image_text_data(config) -> bool:
  """True when the run's train data gives image-text batches ({'image', 'tokens'}): the dataset
  has captions, or config.input.caption_templates makes them from its labels."""
  if tuple(config.input.caption_templates or ()):
    return True
  return bool(open_source(config, config.train_split)[1].captions_key)


def check_image_text_options(opts: preprocess.PreprocessOptions) -> None:
  """Label-mixing options have no meaning for image-text pairs: one error naming them."""
  if opts.pairs_rows or opts.label_smoothing or opts.random_erase_prob:
    raise ValueError("image-text training pairs each image with its caption: mixup / CutMix, "
                     "label smoothing and random erasing (config.pp.mixup_alpha, cutmix_alpha, "
                     "label_smoothing, random_erase_prob) do not apply; set them to 0.")


def repeated_aug_from_config(config, opts: preprocess.PreprocessOptions) -> int:
  """Validated config.input.repeated_aug (copies of each image, 1 = off)."""
  value = config.input.repeated_aug
  try:
    repeats = int(value)
  except (TypeError, ValueError):
    repeats = 0
  if repeats < 1 or repeats != value:
    raise ValueError(f"config.input.repeated_aug={value!r} must be an integer >= 1 (copies of "
                     "each image in the stream, 1 = off; DeiT uses 3).")
  batch = int(config.batch)
  if repeats > 1 and opts.pairs_rows and batch < 3 * repeats:
    raise ValueError(f"config.input.repeated_aug={repeats} with mixup / CutMix needs "
                     f"config.batch >= {3 * repeats} (got {batch}), so that the rows paired "
                     "for mixing are never two copies of one image.")
  return repeats


@dataclasses.dataclass(frozen=True)
class EvalElement:
  """Index i of the padded shard → preprocessed example, or a zero image with mask 0."""
  source: Any
  lo: int
  hi: int
  opts: preprocess.PreprocessOptions
  image_key: str = "image"
  label_key: str = "label"
  multilabel_key: Optional[str] = None  # label sets -> 'real': multi-hot (num_classes,) uint8
  num_classes: int = 0
  skip_bad: bool = False  # an undecodable image: left out (mask 0) and logged

  def __call__(self, i: int) -> dict:
    if self.lo + i >= self.hi:
      return self._padding()
    if not self.skip_bad:
      return self._example(i)
    try:
      return self._example(i)
    except ValueError as e:
      logging.warning("Left undecodable eval example %d out (config.input.skip_bad_examples): "
                      "%s", self.lo + i, e)
      return self._padding()

  def _padding(self) -> dict:
    """A zero image with mask 0 (shard padding, or a skipped example)."""
    crop, extra = self.opts.crop, {}
    if self.multilabel_key:
      extra["real"] = np.zeros(self.num_classes, np.uint8)
    return {"image": np.zeros((crop, crop, 3), np.uint8), "label": np.int32(0),
            "mask": np.float32(0.0), "index": np.int32(-1), **extra}

  def _example(self, i: int) -> dict:
    extra = {}
    element = self.source[self.lo + i]
    try:
      image = preprocess.eval_image(element[self.image_key], self.opts)
    except Exception as e:  # pylint: disable=broad-except
      raise bad_examples.hint(element, e) from e
    if self.multilabel_key:
      real = np.zeros(self.num_classes, np.uint8)
      real[np.asarray(element[self.multilabel_key], np.int64).reshape(-1)] = 1
      extra["real"] = real
    return {"image": image, "label": np.int32(element[self.label_key]), "mask": np.float32(1.0),
            "index": np.int32(self.lo + i), **extra}


@dataclasses.dataclass(frozen=True)
class _NoLabel:
  """A caption source's images with label 0: the eval pass of a retrieval evaluator."""
  source: Any
  image_key: str

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    element = self.source[index]
    return {self.image_key: element[self.image_key], "label": 0,
            "path": element.get("path", "")}


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """Batch transform: model inputs (preprocess.eval_values), one-hot labels, mask, index."""
  num_classes: int
  opts: Optional[preprocess.PreprocessOptions] = None  # None: to_float (a named eval recipe)

  def __call__(self, batch: dict) -> dict:
    images = batch["image"]
    out = {"image": (image_ops.to_float(images) if self.opts is None
                     else preprocess.eval_values(images, self.opts)),
           "label": mixing.one_hot(batch["label"], self.num_classes),
           "mask": batch["mask"].astype(np.float32), "index": batch["index"]}
    if "real" in batch:
      out["real"] = batch["real"].astype(np.float32)
    return out


class EvalIterable:
  """One masked pass per `iter()`; len() = batches, the same on every process."""

  def __init__(self, batches, config, num_batches: int):
    self._batches, self._config, self._num_batches = batches, config, num_batches

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self) -> Iterator[dict]:
    import grain  # pylint: disable=g-import-not-at-top
    it = _iterate(self._batches, self._config, grain)
    try:
      for _ in range(self._num_batches):
        yield next(it)
    finally:
      if hasattr(it, "close"):
        it.close()


def create_eval_iterator(config, *, split: Optional[str] = None,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> EvalIterable:
  """One pass over `split` (default config.eval_split), padded and masked (module docstring)."""
  import grain  # pylint: disable=g-import-not-at-top
  process_index, process_count = _processes(process_index, process_count)
  local_batch = local_batch_size(int(config.batch_eval), process_count, "batch_eval")
  opts = preprocess.options_from_config(config.pp)
  source, info = open_source(config, split or config.eval_split)
  lo, hi = shard_range(len(source), process_index, process_count)
  largest_shard = math.ceil(len(source) / process_count)
  num_batches = math.ceil(largest_shard / local_batch)
  ds = grain.MapDataset.range(num_batches * local_batch)
  keys = info.keys
  if info.captions_key:  # Image-text data: images only, label 0 ('index' finds the captions).
    source, keys = _NoLabel(source, info.keys[0]), (info.keys[0], "label")
  num_classes = max(info.num_classes, 1)
  if batching.packed_run(config):  # One image per sequence, its aspect ratio kept.
    if info.multilabel_key or info.captions_key:
      raise ValueError(f"packed-sequence evaluation (config.naflex) reads single-label "
                       f"images; {config.dataset!r} ({split or config.eval_split}) has label "
                       "sets or captions.")
    ds = ds.map(naflex.PackEvalElement(source, lo, hi, naflex.settings_from_config(config, False),
                                       *keys))
    return EvalIterable(ds.batch(local_batch).map(naflex.PackedEvalBatch(num_classes)),
                        config, num_batches)
  ds = ds.map(EvalElement(source, lo, hi, opts, *keys, info.multilabel_key, num_classes,
                          bool(config.input.skip_bad_examples)))
  ds = ds.batch(local_batch).map(EvalBatch(num_classes, opts))
  return EvalIterable(ds, config, num_batches)

