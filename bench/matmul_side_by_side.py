r"""The model's own matmuls, XLA vs PyTorch, in one process: how fast is each BLAS here?

  python bench/matmul_side_by_side.py                   # ViT-Ti/16 b32 224 fp32 shapes
  python bench/matmul_side_by_side.py --chunks 8        # + the per-chunk shapes (CPU default)

For the four dense layers of an encoder block (fused q/k/v, attention output, MLP in, MLP
out) on the (tokens, width) matrix of one batch, times an fp32 (or --dtype) matmul in XLA
(`jax.jit(jnp.dot)`, the library's start-up defaults applied) and, when torch imports, in
PyTorch (`a @ b`, torch.set_num_threads(<cores>)), and prints GFLOP/s of each. The
ours-vs-timm ratio of bench/side_by_side.py is dominated by these kernels on CPU, so this
says how much of it is the BLAS rather than the model code.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ViT-Ti_16", help="MODEL_CONFIGS name (ViT only)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--chunks", type=int, default=1,
                 help="also time the shapes of one of this many batch chunks (1: whole batch only)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--json", default=None, help="also write the results to this file")
  return p.parse_args(argv)


def shapes(model: str, batch: int, resolution: int, chunks: int) -> list[tuple[str, int, int, int]]:
  """(layer, M, K, N) of an encoder block's dense layers, per batch and per chunk."""
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  cfg = registry.get_model_config(model)
  if "transformer" not in cfg or cfg.get("resnet") is not None:
    raise SystemExit(f"--model {model}: only plain ViT configs have these shapes.")
  from vit_jax.planning import flops  # pylint: disable=g-import-not-at-top
  tokens = flops.tokens_per_image(cfg, resolution)
  d, m = cfg.hidden_size, cfg.transformer.mlp_dim
  rows = [(batch * tokens, "")] + ([(batch // chunks * tokens, f" (1/{chunks} batch)")]
                                   if chunks > 1 else [])
  return [(f"{name}{suffix}", n, k, out) for n, suffix in rows
          for name, k, out in (("qkv", d, 3 * d), ("attention out", d, d), ("mlp in", d, m),
                               ("mlp out", m, d))]


def _seconds_per_call(call: Callable[[], Any], args: argparse.Namespace) -> float:
  """Median over `--windows` windows of `--steps` calls (after train_step's warm-up)."""
  windows = train_step.time_windows(call, args.windows, args.steps)["window_s"]
  return statistics.median(windows) / args.steps


def run(args: argparse.Namespace) -> dict:
  """Times every shape in both frameworks; returns the result dict."""
  from vit_jax import runtime_defaults  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_defaults()
  runtime_defaults.apply_host_defaults()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(side_by_side.cores())
  except ImportError:
    torch = None
  rng = np.random.default_rng(0)
  dot = jax.jit(jnp.dot)
  rows = []
  for name, m, k, n in shapes(args.model, args.batch, args.resolution, args.chunks):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ja, jb = jnp.asarray(a, args.dtype), jnp.asarray(b, args.dtype)
    gflop = 2.0 * m * k * n / 1e9
    row = {"layer": name, "m": m, "k": k, "n": n,
           "xla_gflops": gflop / _seconds_per_call(lambda ja=ja, jb=jb: dot(ja, jb), args)}
    if torch is not None:  # CPU torch ops are synchronous; block_until_ready passes them by
      ta = torch.from_numpy(a).to(getattr(torch, args.dtype))
      tb = torch.from_numpy(b).to(getattr(torch, args.dtype))
      row["torch_gflops"] = gflop / _seconds_per_call(lambda ta=ta, tb=tb: ta @ tb, args)
    rows.append(row)
  return {"model": args.model, "batch": args.batch, "resolution": args.resolution,
          "dtype": args.dtype, "platform": jax.default_backend(), "jax": jax.__version__,
          "torch": torch.__version__ if torch is not None else None,
          "torch_threads": torch.get_num_threads() if torch is not None else None, "rows": rows}


def main(argv: Optional[list[str]] = None) -> int:
  """Prints one line per shape (and writes --json)."""
  args = parse_args(argv)
  res = run(args)
  print(f"{res['model']} b{res['batch']} {res['resolution']}px {res['dtype']} matmuls on "
        f"{res['platform']}: jax {res['jax']}, torch {res['torch'] or 'not installed'} "
        f"(threads {res['torch_threads']})")
  for r in res["rows"]:
    torch_part = (f"torch {r['torch_gflops']:7.1f}  "
                  f"xla/torch {r['xla_gflops'] / r['torch_gflops']:.2f}"
                  if "torch_gflops" in r else "torch n/a")
    print(f"  {r['layer']:28s} ({r['m']:6d} x {r['k']:5d}) @ ({r['k']:5d} x {r['n']:5d})  "
          f"GFLOP/s: xla {r['xla_gflops']:7.1f}  {torch_part}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
