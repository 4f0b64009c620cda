r"""Regenerates docs/scaling.md's table: the real train step compiled for TPU slices on this host.

  python bench/scaling.py [--cases b16-v5e16,l16-v5p64 ...] [--json out.json] [--check old.json]

Each case is a preset of configs/pretrain_i1k.py with overrides, compiled by
vit_jax.planning.dry_run over libtpu's abstract devices (pip install -r requirements-tpu.txt;
no TPU needed). Prints one markdown row per case (model, slice, batch, mesh, remat, scan,
per-chip peak vs HBM, executed FLOPs over the formula, HBM bytes, bytes sent per chip over ICI
and DCN, the step-time model's range and binding term, the MFU range, compile time) and the
command that reproduces it. With --check, the figures the CI goldens guard (per-chip peak,
params / optimizer bytes, executed FLOPs and bytes, ICI / DCN bytes, step times, collectives by
kind) are compared with an earlier JSON at 2%: the docs rows' own regression check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests", "planning"))
import golden_cases  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# name: (preset, slice, overrides)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "b16-v5e16": ("b16", "v5e-16", {}),
    "b16-v5e16-remat": ("b16", "v5e-16", {"model.remat": True}),
    "l16-v5p64": ("l16", "v5p-64", {"model.remat": True, "model.scan_layers": True}),
    "h14-v5p128": ("h14", "v5p-128", {"model.remat": True, "model.scan_layers": True,
                                      "mesh": (("fsdp", -1),)}),
    "g14-v5p256": ("g14", "v5p-256", {"model.remat": True, "model.scan_layers": True,
                                      "mesh": (("fsdp", -1),)}),
    "G14-v5p256": ("G14", "v5p-256", {"model.remat": True, "model.scan_layers": True,
                                      "mesh": (("fsdp", -1),)}),
    "22b-v5p1024": ("22b14", "v5p-1024", {"model.remat": True, "model.scan_layers": True,
                                          "model.dtype": "bfloat16",
                                          "mesh": (("fsdp", -1), ("model", 4))}),
    # The published anchor (Dehghani et al. 2023: 54.9% MFU on TPU v4): v4 chips, bf16 compute,
    # weights and activations sharded over two axes (fsdp x model), scanned + rematerialised.
    "22b-v4-2048": ("22b14", "v4-2048", {"model.remat": True, "model.scan_layers": True,
                                         "model.dtype": "bfloat16", "batch": 16384,
                                         "mesh": (("fsdp", -1), ("model", 4))}),
}


def _flag(value: Any) -> str:
  return "'" + repr(value).replace("'", '"') + "'" if isinstance(value, tuple) else str(value)


def command(preset: str, slice_name: str, overrides: dict[str, Any]) -> str:
  flags = " ".join(f"--config.{k}={_flag(v)}" for k, v in overrides.items())
  return (f"python -m vit_jax.main --dry_run --config=configs/pretrain_i1k.py:{preset} "
          f"--topology={slice_name} {flags}").strip()


def run_case(name: str) -> dict[str, Any]:
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  preset, slice_name, overrides = CASES[name]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config_file = base.load_config_file(os.path.join(root, "configs", "pretrain_i1k.py"))
  config = config_file.get_config(preset)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.update_from_flattened_dict(overrides)
  result = dry_run.analyse(config, dry_run.target_devices(slice_name))
  result.update(case=name, slice=slice_name, command=command(preset, slice_name, overrides))
  return result


def markdown_row(r: dict[str, Any]) -> str:
  from vit_jax.planning import dry_run, step_time  # pylint: disable=g-import-not-at-top
  mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
  if r.get("compiler_error") is not None:
    peak = f"needs {dry_run.size(r.get('need_bytes'))} (OOM)"
  else:
    peak = dry_run.size(r.get("peak_bytes"))
  step = "—"
  if r.get("step_time_bound_s"):
    step = (f"{step_time.seconds(r['step_time_bound_s'])} .. "
            f"{step_time.seconds(r['step_time_no_overlap_s'])}")
  mfu = "—"
  if r.get("mfu_range"):
    mfu = f"{r['mfu_range'][0]:.0%} .. {r['mfu_range'][1]:.0%}"
  ratio = "—"
  if r.get("flops_per_device") and r.get("formula_flops_per_device"):
    ratio = f"{r['flops_per_device'] / r['formula_flops_per_device']:.3f}"
  sent = f"{dry_run.size(r.get('ici_bytes'))} / {dry_run.size(r.get('dcn_bytes'))}"
  bound = str(r.get("bound_by") or "—").split(" (")[0]
  return (f"| {r['model']} | {r['slice']} ({r['devices']} chips) | {r['batch']} | {mesh} | "
          f"{'yes' if r['remat'] else 'no'} | {'yes' if r['scan_layers'] else 'no'} | "
          f"{peak} / {dry_run.size(r.get('capacity_bytes'))} | {ratio} | "
          f"{dry_run.size(r.get('bytes_accessed_per_device'))} | {sent} | {step} | {bound} | "
          f"{mfu} | {r['compile_s']:.0f} s | `{r['command']}` |")


HEADER = ("| model | slice | batch | mesh | remat | scan | peak / HBM per chip | executed / "
          "formula FLOPs | HBM bytes | sent per chip ICI / DCN | step time (overlap .. none) | "
          "bound by | MFU range | compile | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
  p.add_argument("--json", default=None, help="also write every case's figures here")
  p.add_argument("--check", default=None,
                 help="a figures JSON written before (docs/bench_results/...): print every "
                      "figure that moved by more than 2%% and exit 1 if any did")
  args = p.parse_args(argv)
  before = {}
  if args.check:
    with open(args.check, encoding="utf-8") as f:
      before = {r["case"]: r for r in json.load(f)}
  results, moved = [], []
  print(HEADER, flush=True)
  for name in args.cases.split(","):
    results.append(run_case(name.strip()))
    print(markdown_row(results[-1]), flush=True)
    if name.strip() in before:
      diff = golden_cases.differences(golden_cases.guarded(before[name.strip()]),
                                       golden_cases.guarded(results[-1]))
      moved += [f"{name}:{line}" for line in diff]
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(json.loads(json.dumps(results, default=str)), f, indent=1)
  if args.check:
    print("\n".join(moved) if moved else f"No figure moved by more than 2% against {args.check}")
  return 1 if moved else 0


if __name__ == "__main__":
  sys.exit(main())
