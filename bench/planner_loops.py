r"""Executed FLOPs vs the formula for every scan x accum x remat combination (issue: loop-aware
planner costs). Prints one markdown row per compile and, with --json, writes the figures.

  python bench/planner_loops.py [--cases b16-v5e8,h14-v5p8] [--json out.json]

Each row compiles the real train step (configs/pretrain_i1k.py preset) for a TPU slice through
libtpu's abstract devices (no TPU). "executed / formula" should be 1 without remat and 4/3 with
full remat (the forward pass runs twice); XLA's static count (loop bodies once) is shown beside
it. Minutes per compile on a 2-core host: not a CI test.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (preset, slice, global batch, mesh)
CASES = {"b16-v5e8": ("b16", "v5e-8", 256, (("data", -1),)),
         "h14-v5p8": ("h14", "v5p-8", 64, (("fsdp", -1),))}


def run(name: str, scan: bool, accum: int, remat: bool) -> dict:
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  preset, slice_name, batch, mesh = CASES[name]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = base.load_config_file(os.path.join(root, "configs", "pretrain_i1k.py")).get_config(
      preset).copy_and_resolve_references()
  with config.unlocked():
    config.update_from_flattened_dict({"model.scan_layers": scan, "model.remat": remat,
                                       "accum_steps": accum, "batch": batch, "mesh": mesh})
  start = time.perf_counter()
  r = dry_run.analyse(config, dry_run.target_devices(slice_name))
  formula = r["formula_flops_per_device"]
  return {"case": name, "model": r["model"], "slice": slice_name, "batch": batch,
          "scan": scan, "accum": accum, "remat": remat, "fits": r["fits"],
          "executed_over_formula": r["flops_per_device"] / formula,
          "expected": 4 / 3 if remat else 1.0,
          "xla_static_over_formula": (r["xla_static"]["flops"] or 0) / formula,
          "step_time_bound_s": r.get("step_time_bound_s"), "mfu_range": r.get("mfu_range"),
          "loops": [x["trip_count"] for x in r["loops"]],
          "seconds": time.perf_counter() - start}


def row(r: dict) -> str:
  off = r["executed_over_formula"] / r["expected"] - 1
  return (f"| {r['model']} | {r['slice']} | {r['batch']} | {'on' if r['scan'] else 'off'} | "
          f"{r['accum']} | {'full' if r['remat'] else 'no'} | {r['executed_over_formula']:.3f} | "
          f"{r['expected']:.3f} | {off:+.1%} | {r['xla_static_over_formula']:.3f} | "
          f"{r['seconds']:.0f} s |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cases", default=",".join(CASES))
  p.add_argument("--json", default=None)
  p.add_argument("--scan", default="both", choices=("on", "off", "both"))
  p.add_argument("--accum", default="1,2,4", help="accum_steps values, comma-separated")
  args = p.parse_args(argv)
  print("| model | slice | batch | scan | accum | remat | executed / formula | expected | off | "
        "XLA static / formula | compile |\n|---|---|---|---|---|---|---|---|---|---|---|",
        flush=True)
  results = []
  for name in args.cases.split(","):
    scans = {"on": (True,), "off": (False,), "both": (True, False)}[args.scan]
    accums = [int(a) for a in args.accum.split(",")]
    for scan, accum, remat in itertools.product(scans, accums, (False, True)):
      results.append(run(name, scan, accum, remat))
      print(row(results[-1]), flush=True)
      if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
          json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
