r"""Micro-benchmark of the CPU formulations in vit_jax.models.cpu_ops against the plain ones.

  python bench/cpu_formulations.py              # ViT-Ti/16 shapes: 6304 and 788 tokens
  taskset -c 0 python bench/cpu_formulations.py # one core: per-op cost without overlap

Prints, per token count, milliseconds (median of `--windows` windows of `--steps` calls):
  * dense weight gradient of a (Din, Dout) kernel: JAX's x^T dy vs `cpu_ops.matmul`'s
    (dy^T x)^T (only differs for Din > Dout, e.g. the MLP's second layer 768 -> 192);
  * LayerNorm forward + backward over width 192: `nn.LayerNorm` differentiated by JAX vs
    `cpu_ops.layer_norm`.
The library's start-up defaults (vit_jax.runtime_defaults) are applied as the trainer applies them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tokens", type=int, nargs="+", default=[6304, 788],
                 help="rows of the token matrix (ViT-Ti/16 b32: 6304; one of 8 chunks: 788)")
  p.add_argument("--width", type=int, default=192)
  p.add_argument("--mlp_dim", type=int, default=768)
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--steps", type=int, default=20)
  return p.parse_args(argv)


def time_ms(fn: Callable[..., Any], args: tuple, windows: int, steps: int) -> float:
  """Median milliseconds per call of the compiled `fn(*args)`."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax.planning import timing  # pylint: disable=g-import-not-at-top
  compiled = jax.jit(fn).lower(*args).compile()
  window_s = timing.time_windows(lambda: compiled(*args), windows, steps, warmup=1)["window_s"]
  return statistics.median(window_s) / steps * 1e3


def run(args: argparse.Namespace) -> list[dict]:
  """Times every case; returns one dict per (tokens, case)."""
  from vit_jax import runtime_defaults  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_defaults()
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vit_jax.models import cpu_ops  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_host_defaults()
  rng = np.random.default_rng(0)
  # The functions timed: the same for every token count (defined once, outside the loops).
  wgrad = lambda mm: (lambda x, w, dy: jax.vjp(lambda w_: mm(x, w_), w)[1](dy)[0])

  def fwd_bwd(fn):
    def step(x, s, b, dy):
      y, vjp = jax.vjp(fn, x, s, b)
      return y, vjp(dy)
    return step

  ln = nn.LayerNorm(epsilon=1e-6)
  flax_ln = lambda x, s, b: ln.apply({"params": {"scale": s, "bias": b}}, x)
  results = []
  for n in args.tokens:
    for din, dout in ((args.mlp_dim, args.width), (args.width, args.mlp_dim)):
      x = jnp.asarray(rng.normal(size=(n, din)).astype(np.float32))
      w = jnp.asarray(rng.normal(size=(din, dout)).astype(np.float32))
      dy = jnp.asarray(rng.normal(size=(n, dout)).astype(np.float32))
      plain = time_ms(wgrad(lambda a, b: a @ b), (x, w, dy), args.windows, args.steps)
      ours = time_ms(wgrad(cpu_ops.matmul), (x, w, dy), args.windows, args.steps)
      results.append(dict(tokens=n, case=f"weight gradient ({din}, {dout})", plain_ms=plain,
                          cpu_ops_ms=ours))
    x = jnp.asarray((rng.normal(size=(n, args.width)) * 2 + 0.5).astype(np.float32))
    dy = jnp.asarray(rng.normal(size=(n, args.width)).astype(np.float32))
    scale, bias = jnp.ones((args.width,)), jnp.zeros((args.width,))
    plain = time_ms(fwd_bwd(flax_ln), (x, scale, bias, dy), args.windows, args.steps)
    ours = time_ms(fwd_bwd(cpu_ops.layer_norm), (x, scale, bias, dy), args.windows, args.steps)
    results.append(dict(tokens=n, case=f"LayerNorm fwd+bwd (width {args.width})",
                        plain_ms=plain, cpu_ops_ms=ours))
  return results


def main(argv: Optional[list[str]] = None) -> int:
  args = parse_args(argv)
  for r in run(args):
    print(f"tokens {r['tokens']:6d}  {r['case']:34s} plain {r['plain_ms']:8.3f} ms   "
          f"cpu_ops {r['cpu_ops_ms']:8.3f} ms   "
          f"plain/cpu_ops {r['plain_ms'] / r['cpu_ops_ms']:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
