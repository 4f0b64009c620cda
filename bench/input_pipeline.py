r"""Input-pipeline throughput: images/s per CPU core for the train preprocessing at 224.

Three workloads, all through the trainer's pipeline (vit_jax.datasets.pipeline over an image
folder: file read → decode → crop/resize → flip → batch, as the trainer reads it: uint8 where
the train step makes the float32 [-1, 1] values on the accelerator, float32 with mixup):
  * imagenet: synthetic ~500x375 JPEGs (quality 90, smooth noise so they compress like
    photos, ~110 KB), `inception_crop` to 224.
  * imagenet + AugReg: the same plus RandAugment(2, 15) and mixup(0.5).
  * cifar:    32x32 PNGs, `vit_finetune` (resize 256, random crop 224).
The folder lists each of its --images images under --names file names (hard links): a split
as long as a real one for the shuffle, as small as a test folder for the page cache.
It reports images/s with 0 workers (all work in this process: the per-core figure), with
`--workers` threads in one process (the JPEG decoder and the resize release the GIL) and with
`--workers` processes, plus what a 12-core host would feed. For the ImageNet-style JPEGs it
also runs, on the same files and cores, a big_vision-style tf.data pipeline (fused
`decode_and_crop_jpeg` of an inception box, bilinear resize, flip, value range,
num_parallel_calls=AUTOTUNE) and prints our best figure over its.

  python bench/input_pipeline.py [--images 512] [--batch 64] [--workers 2] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def write_folder(root: str, n: int, size: tuple[int, int], fmt: str, names: int = 1) -> None:
  """n smooth random images, 10 classes, each listed under `names` file names (hard links: the
  same bytes, so the page cache holds n images whatever the folder's length)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(n):
    folder = os.path.join(root, "train", f"c{i % 10}")
    os.makedirs(folder, exist_ok=True)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, img.size[::-1] + (3,)),
                    0, 255).astype(np.uint8)
    ext = "jpg" if fmt == "JPEG" else "png"
    path = os.path.join(folder, f"{i}.{ext}")
    Image.fromarray(noisy).save(path, fmt, quality=90)
    for j in range(1, names):
      os.link(path, os.path.join(folder, f"{i}_{j}.{ext}"))


def config_for(root: str, train: str, batch: int, workers: int, threads: int, augreg: bool):
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.dataset, c.batch, c.batch_eval = root, batch, batch
  c.train_split = c.eval_split = "train"
  c.pp.crop, c.pp.train = 224, train
  c.pp.resize = 256
  c.input.num_workers = workers
  if augreg:  # AugReg's heaviest recipe: RandAugment(2, 15) + mixup(0.5).
    c.pp.randaugment_layers, c.pp.randaugment_magnitude, c.pp.mixup_alpha = 2, 15, 0.5
  with c.unlocked():
    c.input.num_threads = threads
  return c


def measure(config, steps: int) -> tuple[float, float]:
  """(images/s wall, images per CPU-second of this process) over `steps` batches after 2 + 2
  warm-up batches per worker (start-up excluded; the CPU figure is meaningful with 0 workers)."""
  from vit_jax.datasets import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.create_train_iterator(config, process_index=0, process_count=1,
                                      uint8_images=True)
  figures = timed(it, 2 + 2 * int(config.input.num_workers), steps, config.batch)
  it.close()
  return figures


def timed(it, warmup: int, steps: int, batch: int) -> tuple[float, float]:
  """(images/s wall, images per CPU-second of this process) of `steps` batches of `it` after
  `warmup` (until every worker is running); each batch must hold 224 px images."""
  for _ in range(warmup):
    next(it)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    out = next(it)
  elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
  assert out["image"].shape[1:] == (224, 224, 3)
  return steps * batch / elapsed, steps * batch / cpu


def tfdata_reference(root: str, batch: int, steps: int) -> tuple[float, float]:
  """(images/s wall, images per CPU-second) of a big_vision-style tf.data train pipeline on the
  JPEGs under `root` (its ops: decode_jpeg_and_inception_crop(224), flip_lr, value_range(-1, 1))."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)

  def pp(path):
    data = tf.io.read_file(path)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(data), tf.zeros([0, 0, 4], tf.float32),
        area_range=(0.05, 1.0), min_object_covered=0, use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(size)
    image = tf.image.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3)
    image = tf.image.resize(image, (224, 224), method="bilinear", antialias=False)
    image = tf.image.random_flip_left_right(image)
    return {"image": image / 127.5 - 1.0}

  ds = tf.data.Dataset.from_tensor_slices(files).repeat().shuffle(len(files), seed=0)
  it = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2).as_numpy_iterator()
  return timed(it, 4, steps, batch)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--names", type=int, default=16,
                 help="file names per image (hard links): the split's length; grain's index "
                      "shuffle costs ~40 us per element on 512 entries, ~8 us on ImageNet's 1.28M")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  p.add_argument("--json", default=None, help="also write the results to this file")
  args = p.parse_args(argv)
  results = []
  cores = os.cpu_count() or 1
  print(f"host: {cores} CPU cores; batch {args.batch}; {args.steps} timed batches; "
        f"{args.images} images x {args.names} names a split")
  with tempfile.TemporaryDirectory() as tmp:
    for name, size, fmt, train, augreg in (
        ("imagenet", (500, 375), "JPEG", "inception_crop", False),
        ("imagenet", (500, 375), "JPEG", "inception_crop", True),
        ("cifar", (32, 32), "PNG", "vit_finetune", False)):
      root = os.path.join(tmp, name)
      if not os.path.isdir(root):
        write_folder(root, args.images, size, fmt, args.names)
      files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
      kb = np.mean([os.path.getsize(f) for f in files]) / 1024
      one, per_cpu = measure(config_for(root, train, args.batch, 0, 1, augreg), args.steps)
      threads, _ = measure(config_for(root, train, args.batch, 0, args.workers, augreg),
                           args.steps)
      many, _ = measure(config_for(root, train, args.batch, args.workers, 1, augreg), args.steps)
      label = train + (" +randaug(2,15)+mixup" if augreg else "")
      print(f"{name:8s} {size[0]}x{size[1]} {fmt} ({kb:.0f} KB) {label} -> 224: "
            f"0 workers, 1 thread: {one:.0f} img/s wall, {per_cpu:.0f} img per CPU-second | "
            f"0 workers x {args.workers} threads: {threads:.0f} img/s | "
            f"{args.workers} workers x 1 thread: {many:.0f} img/s | 12 cores x {per_cpu:.0f} = "
            f"{12 * per_cpu:.0f} img/s vs 3000 needed: "
            f"{'met' if 12 * per_cpu >= 3000 else f'gap {3000 - 12 * per_cpu:.0f}'}")
      row = {"workload": f"{name} {size[0]}x{size[1]} {fmt} {label} -> 224",
             "img_per_s_0_workers": one, "img_per_cpu_second": per_cpu,
             f"img_per_s_{args.workers}_threads": threads,
             f"img_per_s_{args.workers}_workers": many,
             "img_per_s_12_cores_estimate": 12 * per_cpu}
      if fmt == "JPEG" and train == "inception_crop" and not augreg:
        ref, ref_cpu = tfdata_reference(root, args.batch, args.steps)
        ours = max(threads, many)
        print(f"{'':8s} big_vision-style tf.data on the same files: {ref:.0f} img/s, "
              f"{ref_cpu:.0f} img per CPU-second; ours (best of threads / workers) / tf.data = "
              f"{ours / ref:.2f}x")
        row.update(tfdata_img_per_s=ref, tfdata_img_per_cpu_second=ref_cpu,
                   ratio_vs_tfdata=ours / ref)
      results.append(row)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"bench": "input_pipeline", "cores": cores, "batch": args.batch,
                 "results": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
