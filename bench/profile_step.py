r"""Where a train (or inference) step spends its time: XLA thunk times grouped by model part.

  python bench/profile_step.py                          # ViT-Ti/16 b32 224 fp32 train step
  python bench/profile_step.py --mode inference --top 20
  taskset -c 0 python bench/profile_step.py             # one core: per-op cost, no overlap

Runs the step (the same one bench/train_step.py times, library defaults applied) under
`jax.profiler.trace`, reads the per-thunk events of the trace, and maps each thunk to its
instruction in the compiled HLO (its `op_name` metadata says which module and whether it
belongs to the backward pass). Rows group thunks by model part with the layer index and
batch chunk dropped (e.g. `MlpBlock_0/Dense_1 | bwd | ynn_fusion`) and give thread-ms per
step, the share of all thunk time and calls per step. The thunk kind tells the kernel path
on CPU: `ynn_fusion` is YNNPACK (dots and what was fused into them), `dot` / `dot_general`
Eigen's matmul, other names XLA's own fused loops. Thread time summed over worker threads
exceeds the wall time when ops overlap on several cores.

Caveat (seen on XLA:CPU, jax 0.10.2): with more than one core, an Eigen matmul runs on
Eigen's intra-op pool after its thunk returns, so its event covers little more than the
launch (a (788 x 192)^T (788 x 768) weight gradient showed 0.19 ms, i.e. an impossible
1.2 TFLOP/s on 2 cores). For per-op costs profile on one core (`taskset -c 0`), where the
thunk times add up to the wall time.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import train_step as ts  # pylint: disable=g-import-not-at-top,wrong-import-position

_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ [\w\-]+\(.*?op_name=\"([^\"]*)\"")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """This script's flags; the model flags are bench/train_step.py's."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=2, help="profiled steps (after 2 warm-up steps)")
  p.add_argument("--top", type=int, default=25, help="rows to print")
  p.add_argument("--trace_dir", default=None, help="keep the trace here (default: temporary)")
  p.add_argument("--json", default=None, help="also write all rows to this file")
  own, rest = p.parse_known_args(argv)
  defaults = ["--model", "ViT-Ti_16", "--batch", "32", "--mode", "train"]
  model_args = ts.parse_args(defaults + rest)
  if model_args.mode == "both":
    raise SystemExit("--mode must be train or inference (one step is profiled at a time).")
  own.model_args = model_args
  return own


def op_names(hlo_text: str) -> dict[str, str]:
  """{instruction name: op_name metadata} of every instruction in compiled HLO text."""
  return {m.group(1): m.group(2) for m in map(_INSTRUCTION.match, hlo_text.splitlines()) if m}


def group_of(thunk: str, op_name: str) -> tuple[str, str, str]:
  """(model part without layer index, 'fwd'|'bwd', thunk kind) of one thunk."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  path = re.sub(r"^.*?VisionTransformer\)*/", "", op_name)  # jvp(...) wrappers when training
  path = re.sub(r"encoderblock_\d+\.?", "encoderblock_N", path)
  path = re.sub(r"^(Transformer/)?encoderblock_N/", "", path)
  kind = thunk.rsplit(".", 1)[0]
  return path or op_name, direction, kind


def thunk_times(trace_dir: str) -> dict[str, list[float]]:
  """{event name: [durations in microseconds]} of the complete events of the trace."""
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"no *.trace.json.gz under {trace_dir}: this jax's profiler wrote none.")
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  out: dict[str, list[float]] = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X":
      out[e["name"]].append(float(e.get("dur", 0.0)))
  return out


def run(args: argparse.Namespace) -> dict:
  """Compiles, warms up, profiles `--steps` steps; returns the grouped rows."""
  margs = args.model_args
  ts.configure_xla(margs)
  import jax  # pylint: disable=g-import-not-at-top
  model, _, params, images, labels = ts.build(margs, abstract=False)
  if margs.mode == "train":
    step_fn, tx = ts.make_train_step(model, margs.optimizer)
    opt = jax.jit(tx.init)(params)
    compiled = step_fn.lower(params, opt, images, labels, 0).compile()
    step, _ = ts.train_stepper(compiled, params, opt, images, labels)
  else:
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(
        params, images).compile()

    def step():
      return compiled(params, images)
  for _ in range(2):
    jax.block_until_ready(step())
  names = op_names(compiled.as_text())
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="vit_jax_profile_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    for _ in range(args.steps):
      jax.block_until_ready(step())
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
  groups: dict[tuple[str, str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])
  for name, durations in thunk_times(trace_dir).items():
    if name in names:
      g = groups[group_of(name, names[name])]
      g[0] += sum(durations) / 1e3 / args.steps
      g[1] += len(durations) / args.steps
  total = sum(ms for ms, _ in groups.values())
  rows = sorted(({"part": k[0], "direction": k[1], "kind": k[2], "ms_per_step": v[0],
                  "share": v[0] / total if total else 0.0, "calls_per_step": v[1]}
                 for k, v in groups.items()), key=lambda r: -r["ms_per_step"])
  return {"model": margs.model, "batch": margs.batch, "resolution": margs.resolution,
          "dtype": margs.dtype, "mode": margs.mode, "steps": args.steps,
          "platform": jax.default_backend(), "profiled_wall_ms_per_step": wall_ms,
          "thunk_thread_ms_per_step": total, "trace_dir": trace_dir, "rows": rows}


def main(argv: Optional[list[str]] = None) -> int:
  """Profiles and prints the top rows (and writes --json)."""
  args = parse_args(argv)
  res = run(args)
  print(f"{res['model']} {res['mode']} b{res['batch']} {res['resolution']}px {res['dtype']} on "
        f"{res['platform']}: {res['profiled_wall_ms_per_step']:.1f} ms wall per profiled step, "
        f"{res['thunk_thread_ms_per_step']:.1f} thread-ms in thunks (trace: {res['trace_dir']})")
  for r in res["rows"][:args.top]:
    print(f"  {r['ms_per_step']:9.1f} ms {100 * r['share']:5.1f}% {r['calls_per_step']:6.0f}x  "
          f"{r['direction']}  {r['kind']:28s} {r['part'][-70:]}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
