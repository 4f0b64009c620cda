r"""The benchmark suite in one command: runs each bench/ script, writes one JSON of results.

  python bench/run_suite.py --out bench_results.json                # the standard cases
  python bench/run_suite.py --quick                                 # smallest settings
  python bench/run_suite.py --torch_python /path/to/venv/bin/python # timm side by side

Each case runs as its own process (so XLA flags and device state do not leak between
cases) with `--json`; the suite collects the dicts, adds the machine (CPU model, cores,
accelerator, versions, load average) and prints one line per case. Cases:
  * train_step: ViT-Ti/16 224 b32 fp32 train + inference (the CPU target's case) — on an
    accelerator ViT-B/16 b256 and ViT-L/16 b128 bf16 instead;
  * compile: ViT-L/16 train-step compile time, unrolled and with scan over layers
    (`--compile_only`, nothing runs; `--batch_chunks 1`, the GPU/TPU default, so the
    figure is not multiplied by the CPU's encoder chunking);
  * input_pipeline: images/s per CPU core (ImageNet-style and CIFAR-style at 224);
  * checkpoint: Orbax save (blocking / total) and restore of a ViT-B/16 train state;
  * side_by_side: ours vs timm in one process, interleaved — only when `--torch_python`
    (or this interpreter) can import torch and timm.
A case that fails is recorded with its exit status and the tail of its output; the suite
goes on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Optional

BENCH = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="bench_results.json", help="JSON file to write")
  p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run, seconds)")
  p.add_argument("--only", default=None, help="comma-separated case names to run")
  p.add_argument("--torch_python", default=None,
                 help="interpreter with torch + timm for side_by_side (default: this one)")
  p.add_argument("--timeout", type=int, default=1800, help="seconds per case")
  return p.parse_args(argv)


def _has_accelerator() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() != "cpu"


def cases(args: argparse.Namespace, accelerator: bool) -> list[tuple[str, list[str]]]:
  """(name, argv after the interpreter) of every case to run."""
  py = os.path.join
  if args.quick:
    small = ["--model", "testing", "--batch", "8", "--resolution", "32", "--num_classes", "10"]
    out = [("train_step", [py(BENCH, "train_step.py"), *small, "--windows", "1", "--steps", "1"]),
           ("compile", [py(BENCH, "train_step.py"), *small, "--compile_only", "--scan_layers"]),
           ("input_pipeline", [py(BENCH, "input_pipeline.py"), "--images", "16", "--batch", "8",
                               "--steps", "2", "--workers", "1"]),
           ("checkpoint", [py(BENCH, "checkpoint.py"), "--model", "testing", "--repeats", "1"])]
    torch_case = [py(BENCH, "side_by_side.py"), "--model", "ViT-Ti_16", "--batch", "2",
                  "--resolution", "32", "--windows", "1", "--steps", "1"]
  else:
    if accelerator:
      steps = [("train_step_b16", ["--model", "ViT-B_16", "--batch", "256", "--dtype",
                                   "bfloat16", "--matmul_ceiling", "--steps", "10"]),
               ("train_step_l16", ["--model", "ViT-L_16", "--batch", "128", "--dtype",
                                   "bfloat16", "--steps", "5"])]
    else:
      steps = [("train_step", ["--model", "ViT-Ti_16", "--batch", "32", "--resolution", "224",
                               "--matmul_ceiling"])]
    out = [(name, [py(BENCH, "train_step.py"), *a]) for name, a in steps]
    compile_l16 = [py(BENCH, "train_step.py"), "--model", "ViT-L_16", "--batch", "8",
                   "--compile_only", "--mode", "train", "--batch_chunks", "1"]
    out += [("compile_l16_unrolled", compile_l16),
            ("compile_l16_scan", compile_l16 + ["--scan_layers"]),
            ("input_pipeline", [py(BENCH, "input_pipeline.py")]),
            ("checkpoint", [py(BENCH, "checkpoint.py"), "--model", "ViT-B_16"])]
    torch_case = [py(BENCH, "side_by_side.py")] + (
        ["--model", "ViT-B_16", "--batch", "256"] if accelerator else [])
  torch_python = args.torch_python or sys.executable
  probe = subprocess.run([torch_python, "-c", "import torch, timm"], capture_output=True)
  if probe.returncode == 0:
    out.append(("side_by_side", ["@torch", *torch_case]))
  if args.only:
    wanted = set(args.only.split(","))
    out = [c for c in out if c[0] in wanted]
  return out


def machine() -> dict:
  """Where the figures come from."""
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 cpu)
  except OSError:
    pass
  import flax  # pylint: disable=g-import-not-at-top
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
          "devices": [d.device_kind for d in jax.devices()], "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__,
          "load_average": os.getloadavg()}


def run_case(name: str, argv: list[str], args: argparse.Namespace) -> dict:
  """Runs one case with --json into a temporary file; returns its dict (or the failure)."""
  python = sys.executable
  if argv and argv[0] == "@torch":
    python, argv = args.torch_python or sys.executable, argv[1:]
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    path = f.name
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(BENCH), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  command = [python, *argv, "--json", path]
  try:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    status, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
  except subprocess.TimeoutExpired:
    status, tail = "timeout", ""
  result = {"case": name, "command": " ".join(command[1:-2]), "status": status}
  if status == 0:
    with open(path) as f:
      result["result"] = json.load(f)
    result["stdout"] = proc.stdout.strip().splitlines()[-6:]
  else:
    result["output_tail"] = tail
  os.remove(path)
  return result


def main(argv: Optional[list[str]] = None) -> int:
  args = parse_args(argv)
  info = machine()
  print(f"machine: {info['cpu']}, {info['cores']} cores, backend {info['backend']} "
        f"{sorted(set(info['devices']))}, jax {info['jax']}, load {info['load_average']}")
  results = []
  for name, case_argv in cases(args, info["backend"] != "cpu"):
    shown = " ".join(os.path.relpath(a) if a.startswith(BENCH) else a for a in case_argv)
    print(f"[{name}] {shown}", flush=True)
    r = run_case(name, case_argv, args)
    results.append(r)
    lines = (r.get("stdout", []) if r["status"] == 0 else
             [f"FAILED ({r['status']}):"] + r.get("output_tail", "").splitlines()[-8:])
    for line in lines:
      print("   ", line, flush=True)
  with open(args.out, "w") as f:
    json.dump({"machine": info, "cases": results}, f, indent=1)
  print(f"wrote {args.out}")
  return 0 if all(r["status"] == 0 for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
