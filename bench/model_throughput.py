"""Model throughput: forward and SGD train-step images/s of a named model on this backend.

  python bench/model_throughput.py --model ViT-Ti_16 --batch 32 --resolution 224
  python bench/model_throughput.py --model ViT-B_16 --batch 256 --dtype bfloat16 --steps 20

Random inputs in [-1, 1] and random labels; the batch is split over all local devices (data
parallel, parameters replicated). Forward = `model.apply(train=False)`; train step = forward
+ softmax cross-entropy + backward + SGD with momentum 0.9 (optax), parameters and optimizer
state donated. For each: compile time (lowering + XLA compile), one warm-up call (excluded),
then `--windows` timed windows of `--steps` calls that block on the results; the reported
figure is the median window's images/s. The host's load average and the CPU cores this
process actually used are printed too: on a shared CPU machine other jobs skew the figures.

Measured 2026-11-24, 2-core CPU VM (jax 0.10.2, load average ~0.2-1.1), ViT-Ti/16, 224px,
batch 32, float32: forward 88-93 img/s, SGD train step 19-20 img/s (compile 0.5 s / 1.9 s);
with --attention_impl einsum: forward 62, train 21. References on such a machine: timm
(PyTorch) ~90 / ~24, Google's vit_jax ~38 / ~15.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.linen import meta

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vit_jax import model_configs  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ViT-Ti_16", help="MODEL_CONFIGS name (AugReg short names ok)")
  p.add_argument("--batch", type=int, default=32, help="global batch (images per step)")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                 help="compute dtype (parameters stay float32)")
  p.add_argument("--mode", default="both", choices=["both", "forward", "train"])
  p.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
  p.add_argument("--steps", type=int, default=3, help="calls per timed window")
  p.add_argument("--attention_impl", default=None, help="None | xla | cudnn (ViT only)")
  p.add_argument("--remat", action="store_true", help="rematerialise blocks (ViT only)")
  p.add_argument("--scan_layers", action="store_true", help="nn.scan over blocks (ViT only)")
  return p.parse_args(argv)


def build(args: argparse.Namespace):
  """(model, params, images, labels, batch sharding) with params replicated on all devices."""
  overrides = {"dtype": jnp.dtype(args.dtype)}
  if not model_configs.is_mixer(args.model):
    overrides.update(attention_impl=args.attention_impl, remat=args.remat,
                     scan_layers=args.scan_layers)
  model = model_configs.create_model(args.model, args.num_classes, **overrides)
  devices = np.array(jax.local_devices())
  if args.batch % len(devices):
    raise SystemExit(f"--batch {args.batch} must be divisible by the {len(devices)} local devices.")
  mesh = jax.sharding.Mesh(devices, ("data",))
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = np.random.default_rng(0)
  shape = (args.batch, args.resolution, args.resolution, 3)
  images = jax.device_put(rng.uniform(-1, 1, shape).astype(np.float32), batch_sharding)
  labels = jax.device_put(rng.integers(0, args.num_classes, args.batch), batch_sharding)
  init = jax.jit(lambda x: meta.unbox(model.init(jax.random.PRNGKey(0), x, train=False)["params"]),
                 out_shardings=replicated)
  params = init(jnp.zeros((1,) + shape[1:], jnp.float32))
  return model, params, images, labels


def compile_timed(fn: Callable, *args) -> tuple[Callable, float]:
  """AOT-compiles jitted `fn` for `args`; returns (compiled, seconds)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_windows(step: Callable[[], object], windows: int, steps: int) -> dict:
  """Wall seconds per window of `steps` calls (each blocks on its last result) + CPU seconds."""
  jax.block_until_ready(step())  # warm-up, excluded
  times, cpu = [], 0.0
  for _ in range(windows):
    start, cpu_start = time.perf_counter(), time.process_time()
    out = None
    for _ in range(steps):
      out = step()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
    cpu += time.process_time() - cpu_start
  return {"times": times, "cpu_s": cpu}


def bench_forward(model, params, images, args) -> dict:
  """Forward (inference) throughput."""
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  compiled, compile_s = compile_timed(fwd, params, images)
  return {"compile_s": compile_s,
          **time_windows(lambda: compiled(params, images), args.windows, args.steps)}


def bench_train(model, params, images, labels, args) -> dict:
  """SGD-momentum train-step throughput (params and optimizer state donated)."""
  tx = optax.sgd(learning_rate=0.01, momentum=0.9)

  def train_step(p, opt_state, x, y, step):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True,
                           rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(1), step)})
      return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  state = {"params": jax.tree.map(jnp.copy, params)}
  state["opt"] = jax.jit(tx.init)(state["params"])
  step_fn = jax.jit(train_step, donate_argnums=(0, 1))
  compiled, compile_s = compile_timed(step_fn, state["params"], state["opt"], images, labels, 0)
  counter = [0]

  def one_step():
    counter[0] += 1
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], images, labels,
                                                   counter[0])
    return loss

  return {"compile_s": compile_s, **time_windows(one_step, args.windows, args.steps)}


def report(name: str, result: dict, args) -> str:
  """One line: median img/s, per-window img/s, compile time, CPU cores this process got."""
  per_window = [args.batch * args.steps / t for t in result["times"]]
  cores = result["cpu_s"] / sum(result["times"])
  return (f"{name:8s} {statistics.median(per_window):9.1f} img/s  (windows: "
          f"{', '.join(f'{v:.1f}' for v in per_window)}; compile {result['compile_s']:.1f} s; "
          f"host CPU busy {cores:.2f} of {os.cpu_count()} cores)")


def main(argv: list[str] | None = None) -> int:
  """Runs the benchmark and prints the figures."""
  args = parse_args(argv)
  model, params, images, labels = build(args)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"{args.model}: {n_params / 1e6:.2f}M params, batch {args.batch}, {args.resolution}px, "
        f"{args.dtype}, backend {jax.default_backend()} x{jax.local_device_count()} "
        f"({jax.local_devices()[0].device_kind}), {args.windows} windows x {args.steps} steps, "
        f"load average {os.getloadavg()[0]:.1f}", flush=True)
  if args.mode in ("both", "forward"):
    print(report("forward", bench_forward(model, params, images, args), args), flush=True)
  if args.mode in ("both", "train"):
    print(report("train", bench_train(model, params, images, labels, args), args), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
