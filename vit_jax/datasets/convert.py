r"""Convert a dataset to ArrayRecord shards: `python -m vit_jax.datasets.convert SRC DST`.

  python -m vit_jax.datasets.convert /data/my_folder /data/my_folder_ar [--splits train,test]
      [--shard_size 4096] [--workers 8]

SRC: an image folder (<SRC>/<split>/<class>/<image>), a WebDataset folder (<SRC>/<split>/*.tar
of <key>.jpg + <key>.txt), a caption folder, or a Hugging Face dataset (hf:DIR, or
hf:ORG/NAME downloaded from the Hub) — any config.dataset that is a folder
(datasets/sources.py). DST gets the layout of datasets/array_records.py; train on it with
--config.dataset=DST, so a pod reads a few large sequential shards instead of millions of
small files. The encoded images are copied as they are (nothing is re-encoded).

Shards are written in parallel (`--workers` processes), each to a temporary name renamed
when complete, with a progress bar; an interrupted conversion restarts where it stopped (the
finished shards are kept). At the end every shard's record count is checked against the
source, and only then is DST/dataset.json written. A DST that holds anything else is refused.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from vit_jax.datasets import array_records, captions as captions_lib, sources

DONE = ".done.json"  # beside each finished shard: its example count


def _config(src: str):
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  config = base.defaults()
  config.dataset = src
  return config


def _open(src: str, split: str):
  return sources.open_source(_config(src), split)


def _splits(src: str, asked: Optional[str]) -> list[str]:
  """The splits to convert: --splits, else those of train / validation / test SRC has."""
  names = [s for s in (asked.split(",") if asked else ("train", "validation", "test")) if s]
  found = []
  for name in names:
    try:
      _open(src, name)
    except (ValueError, FileNotFoundError):
      if asked:
        raise
      continue
    found.append(name)
  if not found:
    raise ValueError(f"{src} has none of the splits {names}; name them with --splits.")
  return found


def _write_shard(src: str, split: str, dst: str, name: str, start: int, stop: int) -> int:
  """Writes examples [start, stop) of `split` to DST/name (via a temporary name); their count."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  source, info = _open(src, split)
  final, tmp = os.path.join(dst, name), os.path.join(dst, f".{name}.tmp")
  image_key, label_key = info.keys
  writer = array_record_module.ArrayRecordWriter(tmp, array_records.WRITER_OPTIONS)
  try:
    for i in range(start, stop):
      element = source[i]
      captions = (captions_lib.element_captions(element, info.captions_key)
                  if info.captions_key else None)
      writer.write(array_records.encode(element, image_key, label_key, captions))
  finally:
    writer.close()
  os.replace(tmp, final)
  with open(final + DONE, "w") as f:
    json.dump({"num_examples": stop - start}, f)
  return stop - start


def _finished(dst: str, name: str, count: int) -> bool:
  path = os.path.join(dst, name)
  if not (os.path.isfile(path) and os.path.isfile(path + DONE)):
    return False
  with open(path + DONE) as f:
    return json.load(f).get("num_examples") == count


def _check_destination(dst: str, src: str) -> None:
  if not os.path.isdir(dst):
    os.makedirs(dst)
    return
  ours = lambda f: f.endswith((".array_record", DONE, ".tmp", ".json"))  # noqa: E731
  others = [f for f in os.listdir(dst) if not ours(f)]
  if others:
    raise ValueError(f"{dst} holds other files ({others[:3]}...); convert into a new or empty "
                     "folder (nothing there is overwritten).")
  if array_records.is_array_record_dir(dst):
    previous = array_records.read_index(dst).get("source")
    if previous != src:
      raise ValueError(f"{dst} is already the conversion of {previous!r}; choose another "
                       "folder.")


def convert(src: str, dst: str, splits: Optional[str] = None, shard_size: int = 4096,
            workers: int = 0, progress: bool = True) -> dict:
  """Converts SRC into DST (module doc); returns the index written to DST/dataset.json."""
  src = os.path.abspath(src) if not src.startswith("hf:") else src
  _check_destination(dst, src)
  names = _splits(src, splits)
  jobs, index = [], {"format": array_records.FORMAT, "source": src, "splits": {}}
  for split in names:
    source, info = _open(src, split)
    n = len(source)
    count = max(1, math.ceil(n / max(int(shard_size), 1)))
    bounds = [(i * n // count, (i + 1) * n // count) for i in range(count)]
    shards = [array_records.shard_name(split, i, count) for i in range(count)]
    index["splits"][split] = {"num_examples": n, "shards": shards}
    index.update(num_classes=info.num_classes, class_names=list(info.class_names),
                 captions=bool(info.captions_key))
    jobs += [(split, name, lo, hi) for name, (lo, hi) in zip(shards, bounds)
             if not _finished(dst, name, hi - lo)]
  total = sum(hi - lo for _, _, lo, hi in jobs)
  bar = tqdm(total=total, unit="img", desc=f"converting to {dst}", disable=not progress,
             file=sys.stderr)
  if workers > 0 and len(jobs) > 1:
    # fork is fast, but not safe once JAX's threads run in this process (a notebook).
    fork = "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = [pool.submit(_write_shard, src, split, dst, name, lo, hi)
                 for split, name, lo, hi in jobs]
      for future in concurrent.futures.as_completed(futures):
        bar.update(future.result())
  else:
    for split, name, lo, hi in jobs:
      bar.update(_write_shard(src, split, dst, name, lo, hi))
  bar.close()
  _verify(dst, index)
  tmp = os.path.join(dst, f".{array_records.INDEX}.tmp")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=1)
  os.replace(tmp, os.path.join(dst, array_records.INDEX))
  return index


def _verify(dst: str, index: dict) -> None:
  """Every shard's record count against the source's examples; one error naming a mismatch."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  for split, entry in index["splits"].items():
    found = 0
    for name in entry["shards"]:
      reader = array_record_module.ArrayRecordReader(os.path.join(dst, name))
      found += reader.num_records()
      reader.close()
    if found != entry["num_examples"]:
      raise ValueError(f"{dst}: split {split!r} has {found} records but the source "
                       f"{entry['num_examples']} examples; delete {dst} and convert again.")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="python -m vit_jax.datasets.convert",
                              description="Convert a dataset to ArrayRecord shards.")
  p.add_argument("src", help="image folder, WebDataset / caption folder, hf:DIR or hf:ORG/NAME "
                 "(a Hub dataset, downloaded)")
  p.add_argument("dst", help="the new folder of ArrayRecord shards")
  p.add_argument("--splits", default=None,
                 help="comma-separated splits (default: those of train,validation,test there)")
  p.add_argument("--shard_size", type=int, default=4096, help="examples per shard")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="processes writing shards (0: this process)")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  args = p.parse_args(argv)
  try:
    index = convert(args.src, args.dst, args.splits, args.shard_size, args.workers)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    return exits.report_input_error(e, verbose=args.verbose)
  counts = ", ".join(f"{s} {v['num_examples']} ({len(v['shards'])} shards)"
                     for s, v in index["splits"].items())
  print(f"Converted {args.src} to {args.dst}: {counts}; verified. Train on it with "
        f"--config.dataset={args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
