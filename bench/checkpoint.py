r"""Checkpoint benchmark: Orbax save (blocking and total) and restore time of a train state.

  python bench/checkpoint.py                       # ViT-B/16, 1000 classes, SGD momentum
  python bench/checkpoint.py --model ViT-Ti_16 --repeats 3 --dir /tmp/ckpt_bench

The state is what the trainer checkpoints (vit_jax.run.run_state.Checkpointer, the same
code path as training): params + SGD-momentum optimizer state (float32 accumulator) + step
+ RNG + the input-pipeline position, created sharded over all local devices by
vit_jax.training.train_state. Reported per repeat, median printed:
  * save_blocking_s — time `save()` holds the training loop (device→host copy; the write
    itself is asynchronous);
  * save_total_s — until the checkpoint is committed on disk (`wait()`);
  * restore_s — `restore()` of the latest step onto the same shardings, blocked on the
    arrays;
and the bytes on disk. Use a local disk path (`--dir`); gs:// works too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ViT-B_16", help="MODEL_CONFIGS name")
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--optim_dtype", default="float32", help="momentum accumulator dtype")
  p.add_argument("--resolution", type=int, default=224,
                 help="input size (only the position-embedding shape depends on it)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
  p.add_argument("--json", default=None, help="also write the result dict to this file")
  return p.parse_args(argv)


def _config(args: argparse.Namespace):
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.model_name = args.model
  c.optimizer, c.optim_dtype = "sgd", args.optim_dtype
  c.pp.crop = args.resolution
  return c


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def run(args: argparse.Namespace) -> dict:
  """Creates the state once, then saves and restores it `repeats` times."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding
  from vit_jax.run import run_state  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state
  config = _config(args)
  setup = train_state.setup_from_config(config, sharding.make_mesh(config.mesh),
                                        args.num_classes, total_steps=1000)
  state = train_state.create_train_state(setup, seed=0)
  # A trained momentum is dense noise, not the zeros of step 0 (which compress to nothing).
  # Made on the host: XLA compiles one random-number program per leaf shape slowly.
  rng = np.random.default_rng(1)

  def noisy(x):
    if not x.ndim or not np.issubdtype(x.dtype, np.floating):
      return x
    noise = (1e-3 * rng.standard_normal(x.shape, np.float32)).astype(x.dtype)
    return x + jax.device_put(noise, x.sharding)
  state = state.replace(opt_state=jax.tree.map(noisy, state.opt_state))
  jax.block_until_ready(state)
  data_state = {"step": 0, "seed": 0}
  num_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  root = args.dir or tempfile.mkdtemp(prefix="vit_jax_ckpt_bench_")
  times = {"save_blocking_s": [], "save_total_s": [], "restore_s": []}
  try:
    for r in range(args.repeats):
      workdir = os.path.join(root, f"run{r}")
      ckpt = run_state.Checkpointer(workdir, max_to_keep=1)
      t0 = time.perf_counter()
      ckpt.save(1, state, data_state)
      t1 = time.perf_counter()
      ckpt.wait()
      t2 = time.perf_counter()
      restored, _ = ckpt.restore(1, setup.abstract_state)
      jax.block_until_ready(restored)
      t3 = time.perf_counter()
      ckpt.close()
      times["save_blocking_s"].append(t1 - t0)
      times["save_total_s"].append(t2 - t0)
      times["restore_s"].append(t3 - t2)
      disk = _dir_bytes(workdir)
      shutil.rmtree(workdir, ignore_errors=True)
  finally:
    if args.dir is None:
      shutil.rmtree(root, ignore_errors=True)
  out = {"bench": "checkpoint", "model": args.model, "devices": jax.device_count(),
         "platform": jax.default_backend(), "state_bytes": num_bytes, "disk_bytes": disk,
         "repeats": args.repeats}
  for key, values in times.items():
    out[key] = statistics.median(values)
    out[key + "_all"] = [round(v, 3) for v in values]
  return out


def main(argv: Optional[list[str]] = None) -> int:
  args = parse_args(argv)
  out = run(args)
  print(f"{out['model']} train state {out['state_bytes'] / 2**20:.0f} MiB "
        f"({out['disk_bytes'] / 2**20:.0f} MiB on disk), {out['devices']} {out['platform']} "
        f"device(s): save blocks {out['save_blocking_s']:.2f} s, committed after "
        f"{out['save_total_s']:.2f} s, restore {out['restore_s']:.2f} s "
        f"(median of {out['repeats']})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
