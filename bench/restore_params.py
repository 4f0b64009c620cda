r"""Restoring a run's weights: the params alone (Orbax partial restore) vs the whole train state.

  python bench/restore_params.py                     # ViT-L/16, 1000 classes, AdamW
  python bench/restore_params.py --model ViT-B_16 --dir /tmp/restore_bench

Builds one AdamW train state the trainer would checkpoint (vit_jax.training.train_state,
sharded over the local devices; the moments filled with noise, as after training), saves it
once with vit_jax.run.run_state.Checkpointer in a workdir beside its config.json (in a
process of its own), then in a fresh process per mode restores it and reports that process's
peak RSS (resource.getrusage; VmHWM of /proc/self/status beside it on Linux), the time and
the bytes it holds afterwards:
  * params — run_state.read_params: only the params, into host numpy (what exports,
    vit_jax.inference / evaluate / visualize --workdir read);
  * state — Checkpointer.restore of the whole TrainState (params + both AdamW moments +
    step + RNG) onto its shardings, then the params to the host (what export did before).
`baseline_rss` is the process's peak after its imports, before the restore. Every process is
started by a small parent: Linux carries a parent's peak RSS (ru_maxrss) into its children.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import numpy as np

from vit_jax import checkpoint, sharding
from vit_jax.configs import base
from vit_jax.run import run_state
from vit_jax.training import train_state

MODES = ("params", "state")
STEPS = ("write",) + MODES


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ViT-L_16", help="MODEL_CONFIGS name")
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--resolution", type=int, default=224,
                 help="input size (only the position-embedding shape depends on it)")
  p.add_argument("--dir", default=None, help="workdir to write (default: a temporary folder)")
  p.add_argument("--json", default=None, help="also write the result dict to this file")
  p.add_argument("--step", choices=STEPS, default=None,
                 help="internal: write or restore --dir in this process, print one JSON line")
  return p.parse_args(argv)


def _peak_rss_bytes() -> int:
  """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == "darwin" else peak * 1024)


def _vm_hwm_bytes() -> Optional[int]:
  """The kernel's high-water mark of this process's RSS (Linux), or None."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _config(args: argparse.Namespace):
  c = base.defaults()
  c.model_name, c.num_classes = args.model, args.num_classes
  c.optimizer, c.pp.crop, c.total_steps = "adamw", args.resolution, 1000
  return c


def write_checkpoint(args: argparse.Namespace, workdir: str) -> dict:
  """config.json and one checkpoint (step 1) of a noisy AdamW state in `workdir`."""
  config = _config(args)
  run_state.check_or_write_config(workdir, config, has_checkpoint=False)
  setup = train_state.setup_from_config(config, sharding.make_mesh(config.mesh),
                                        args.num_classes, int(config.total_steps))
  start = time.perf_counter()
  state = train_state.create_train_state(setup, seed=0)
  rng = np.random.default_rng(1)

  def noisy(x):  # Trained moments are dense noise, not step 0's zeros (which compress away).
    if not x.ndim or not np.issubdtype(x.dtype, np.floating):
      return x
    return x + jax.device_put((1e-3 * rng.standard_normal(x.shape, np.float32)).astype(x.dtype),
                              x.sharding)
  state = state.replace(opt_state=jax.tree.map(noisy, state.opt_state))
  jax.block_until_ready(state)
  created = time.perf_counter() - start
  ckpt = run_state.Checkpointer(workdir, async_save=False)
  start = time.perf_counter()
  ckpt.save(1, state, {})
  ckpt.close()
  return {"params_bytes": _tree_bytes(state.params), "state_bytes": _tree_bytes(state),
          "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
          "create_s": round(created, 2), "save_s": round(time.perf_counter() - start, 2)}


def restore(mode: str, workdir: str) -> dict:
  """Restores `workdir`'s checkpoint in this process as `mode` says; what it cost."""
  jax.devices()  # Backend start-up belongs to the baseline.
  baseline = _peak_rss_bytes()
  start = time.perf_counter()
  if mode == "params":
    params, _, _ = run_state.read_params(workdir)
    held = params
  else:
    config = run_state.read_config(workdir)
    setup = train_state.setup_from_config(config, sharding.make_mesh(config.mesh),
                                          int(config.num_classes), int(config.total_steps))
    ckpt = run_state.Checkpointer(workdir)
    try:
      state, _ = ckpt.restore(1, setup.abstract_state)
    finally:
      ckpt.close()
    jax.block_until_ready(state)
    params = checkpoint.to_host(state.params)
    held = state  # What the process holds restored (the host params copy besides).
  seconds = time.perf_counter() - start
  return {"mode": mode, "peak_rss_bytes": _peak_rss_bytes(), "vm_hwm_bytes": _vm_hwm_bytes(),
          "baseline_rss_bytes": baseline, "restore_s": round(seconds, 2),
          "params_bytes": _tree_bytes(params), "held_bytes": _tree_bytes(held)}


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB"


def main(argv: Optional[list[str]] = None) -> int:
  """Writes the checkpoint, restores it once per mode in a fresh process, prints the table."""
  args = parse_args(argv)
  if args.step:
    done = write_checkpoint(args, args.dir) if args.step == "write" else restore(args.step,
                                                                                  args.dir)
    print(json.dumps(done))
    return 0
  workdir = args.dir or tempfile.mkdtemp(prefix="restore_bench_")
  try:
    out = []
    for step in STEPS:
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--step", step,
                             "--dir", workdir, "--model", args.model, "--num_classes",
                             str(args.num_classes), "--resolution", str(args.resolution)],
                            capture_output=True, text=True, check=False)
      if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
      out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    written, runs = out[0], out[1:]
  finally:
    if args.dir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  result = {"model": args.model, "num_classes": args.num_classes, "resolution": args.resolution,
            "optimizer": "adamw", **written, "runs": runs}
  print(f"{args.model} @ {args.resolution}px, {written['params']:,} params: params "
        f"{_gib(written['params_bytes'])}, whole AdamW state {_gib(written['state_bytes'])} "
        f"(created {written['create_s']} s, saved {written['save_s']} s)")
  for r in runs:
    grown = r["peak_rss_bytes"] - r["baseline_rss_bytes"]
    hwm = f", VmHWM {_gib(r['vm_hwm_bytes'])}" if r["vm_hwm_bytes"] else ""
    print(f"  restore {r['mode']:<6}  peak RSS {_gib(r['peak_rss_bytes'])} (after imports "
          f"{_gib(r['baseline_rss_bytes'])}, +{_gib(grown)}{hwm})  {r['restore_s']:>6.2f} s  "
          f"params {_gib(r['params_bytes'])}, held {_gib(r['held_bytes'])}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
