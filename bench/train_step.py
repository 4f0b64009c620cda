r"""Train-step (and inference) benchmark: img/s, ms/step, MFU, compile time, memory.

  python bench/train_step.py --model ViT-Ti_16 --batch 32 --resolution 224
  python bench/train_step.py --model ViT-B_16 --batch 256 --dtype bfloat16 --steps 20
  python bench/train_step.py --model ViT-L_16 --batch 8 --compile_only --scan_layers \
      --batch_chunks 1
  python bench/train_step.py --model ViT-Ti_16 --xla_flags=--xla_cpu_prefer_vector_width=512

Model flags: --model, --batch, --resolution, --num_classes, --dtype (compute; params stay
float32), --attention_impl (default: the library's per-platform choice), --remat,
--scan_layers, --batch_chunks (model sub-batches, an upper bound; default: the library's
per-platform choice, 1 = off), --optimizer (sgd: SGD momentum 0.9 | adamw).

The step is forward + softmax cross-entropy + backward + optimizer update (optax),
parameters and optimizer state donated; inference is `model.apply(train=False)`. Synthetic
batches (uniform [-1, 1] images, random labels) live on the devices before timing, the batch
split over all local devices (data parallel, parameters replicated). Two warm-up calls are
excluded; then `--windows` windows of `--steps` calls, each window blocking on its last
result; the median window is reported, with the others, the host's load average (other jobs
skew CPU figures) and the CPU cores the process used. The library's start-up defaults
(vit_jax.runtime_defaults: XLA flags, CPU synchronous dispatch, host allocator) are applied as the
trainer applies them; --no_library_xla_flags measures without them.

FLOPs per step come from the compiled executable's cost analysis (XLA) and, as a cross-check,
from the standard formula (2 x multiply-adds of every matmul, x3 for forward + backward).
MFU is model FLOPs / step time / peak: the peak is `--peak_flops` or the device's dense bf16
datasheet figure (vit_jax.run.metrics; 989 TFLOP/s for H100/H200). CPUs have no datasheet figure
here, so on CPU MFU is omitted and the step is instead compared with a measured matmul
ceiling (`--matmul_ceiling`: the best FLOP/s of large square matmuls in the compute dtype,
measured in the same process), which is reported on every backend.
`--compile_only` lowers and compiles on abstract inputs (nothing is allocated or run): use it
for compile time of big models (e.g. ViT-L/16 with and without `--scan_layers`) on a CPU.
Memory: peak bytes from the device's allocator when it reports them (GPU/TPU), and always
the compiled step's static footprint (arguments + outputs + temporaries, XLA memory analysis).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ViT-Ti_16", help="MODEL_CONFIGS name (AugReg short names ok)")
  p.add_argument("--batch", type=int, default=32, help="global batch (images per step)")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                 help="compute dtype (parameters stay float32)")
  p.add_argument("--attention_impl", default=None, help="None | xla | cudnn | einsum (ViT only)")
  p.add_argument("--remat", action="store_true", help="rematerialise blocks (ViT only)")
  p.add_argument("--scan_layers", action="store_true", help="nn.scan over blocks (ViT only)")
  p.add_argument("--batch_chunks", type=int, default=None,
                 help="model sub-batches, an upper bound (ViT only; default: the per-platform "
                      "choice, see vit_jax/models/vit.py; 1 = off)")
  p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                 help="sgd: SGD with momentum 0.9; adamw: optax AdamW")
  p.add_argument("--mode", default="both", choices=["both", "train", "inference"])
  p.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
  p.add_argument("--steps", type=int, default=3, help="calls per timed window")
  p.add_argument("--compile_only", action="store_true",
                 help="only lower + compile on abstract inputs (compile time, FLOPs, memory)")
  p.add_argument("--peak_flops", type=float, default=None,
                 help="peak FLOP/s of one device for MFU (default: datasheet table; none on CPU)")
  p.add_argument("--matmul_ceiling", action="store_true",
                 help="also measure the best matmul FLOP/s on this device (compute dtype)")
  p.add_argument("--xla_flags", default="",
                 help="extra XLA_FLAGS for this run (set before jax starts)")
  p.add_argument("--no_library_xla_flags", action="store_true",
                 help="do not apply vit_jax.runtime_defaults defaults (XLA flags, CPU synchronous "
                      "dispatch, host allocator) to measure what they buy")
  p.add_argument("--json", default=None, help="also write the result dict to this file")
  return p.parse_args(argv)


def configure_xla(args: argparse.Namespace) -> None:
  """Applies the library's XLA flag defaults (unless disabled) and `--xla_flags`, before jax
  starts."""
  if args.no_library_xla_flags:  # Before vit_jax is imported: its import applies them.
    os.environ["VIT_JAX_NO_XLA_DEFAULTS"] = "1"
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  from vit_jax import runtime_defaults  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_defaults()       # (no-ops with VIT_JAX_NO_XLA_DEFAULTS=1)
  runtime_defaults.apply_host_defaults()


def build(args: argparse.Namespace, abstract: bool):
  """(model, config, params, images, labels); params replicated, batch sharded on 'data'."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  overrides = {"dtype": jnp.dtype(args.dtype)}
  if not registry.is_mixer(args.model):
    overrides.update(attention_impl=args.attention_impl, remat=args.remat,
                     scan_layers=args.scan_layers)
    if args.batch_chunks is not None:
      overrides["batch_chunks"] = args.batch_chunks
  model = registry.create_model(args.model, args.num_classes, **overrides)
  cfg = registry.get_model_config(args.model)
  devices = np.array(jax.local_devices())
  if args.batch % len(devices):
    raise SystemExit(f"--batch {args.batch} must be divisible by the {len(devices)} local devices.")
  mesh = sharding.make_mesh(base.DEFAULT_MESH, list(devices))
  batch_sh, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  shape = (args.batch, args.resolution, args.resolution, 3)
  init = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"],
                 out_shardings=replicated)
  sample = jax.ShapeDtypeStruct((1,) + shape[1:], jnp.float32)
  if abstract:
    params = jax.eval_shape(init, sample)
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                          params)
    images = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sh)
    labels = jax.ShapeDtypeStruct((args.batch,), jnp.int32, sharding=batch_sh)
    return model, cfg, params, images, labels
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.uniform(-1, 1, shape).astype(np.float32), batch_sh)
  labels = jax.device_put(rng.integers(0, args.num_classes, args.batch).astype(np.int32), batch_sh)
  return model, cfg, init(jnp.zeros(sample.shape, sample.dtype)), images, labels


def make_optimizer(name: str) -> Any:
  """optax SGD with momentum 0.9, or AdamW (the GPU comparison's optimizer)."""
  import optax  # pylint: disable=g-import-not-at-top
  if name == "adamw":
    return optax.adamw(learning_rate=1e-3, weight_decay=1e-4)
  return optax.sgd(learning_rate=0.01, momentum=0.9)


def make_train_step(model: Any, optimizer: str = "sgd") -> tuple[Callable, Any]:
  """(jitted train step (params, opt, x, y, step) -> (params, opt, loss), tx)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  tx = make_optimizer(optimizer)

  def train_step(params, opt_state, x, y, step):
    def loss_fn(p):
      rngs = {"dropout": jax.random.fold_in(jax.random.PRNGKey(1), step)}
      logits = model.apply({"params": p}, x, train=True, rngs=rngs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(train_step, donate_argnums=(0, 1)), tx


def train_stepper(compiled: Any, params: Any, opt_state: Any, images: Any,
                  labels: Any) -> tuple[Callable[[], Any], dict]:
  """(call, state): `call()` runs the compiled train step once on `state` ('p' params, 'o'
  optimizer state, 'i' step number), which it updates (the step donates its inputs), and
  returns the loss."""
  state = {"p": params, "o": opt_state, "i": 0}

  def call():
    state["i"] += 1
    state["p"], state["o"], loss = compiled(state["p"], state["o"], images, labels, state["i"])
    return loss
  return call, state


def compile_timed(fn: Callable, *args) -> tuple[Any, float, float]:
  """AOT lower + compile; returns (compiled, lower seconds, compile seconds)."""
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t1


def static_memory_bytes(compiled: Any) -> Optional[int]:
  """Arguments + outputs + temporaries of a compiled executable (XLA memory analysis)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if m is None:
    return None
  alias = getattr(m, "alias_size_in_bytes", 0)
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - alias)


def allocator_peak_bytes() -> Optional[int]:
  """Peak bytes in use reported by the first device's allocator (None on CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def time_windows(call: Callable[[], Any], windows: int, steps: int) -> dict:
  """Seconds per window of `steps` calls after two untimed warm-up calls, and the CPU cores
  used: the library's timing loop (vit_jax.planning.timing), also Google's inference_time."""
  from vit_jax.planning import timing  # pylint: disable=g-import-not-at-top
  return timing.time_windows(call, windows, steps, warmup=2)


def matmul_ceiling(dtype: str, sizes=(1024, 2048)) -> float:
  """Best FLOP/s of square matmuls of the given sizes (one device, compute dtype)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  best = 0.0
  for n in sizes:
    a = jnp.ones((n, n), dtype) * 0.5
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    reps = max(1, int(4e9 // (2 * n ** 3)))
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(reps):
        out = f(a)
      out.block_until_ready()
      best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
  return best


def summarise(kind: str, compiled: Any, lower_s: float, compile_s: float, timing: Optional[dict],
              args: argparse.Namespace, formula_flops: float, peak: Optional[float],
              ceiling: Optional[float]) -> dict:
  """The result dict of one benchmark (train or inference)."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax.planning import compiled_stats  # pylint: disable=g-import-not-at-top
  xla_flops = compiled_stats.compiled_flops(compiled)  # per device, one call
  n_dev = jax.local_device_count()
  r = {"kind": kind, "lower_s": lower_s, "compile_s": compile_s,
       "xla_flops_per_image": xla_flops * n_dev / args.batch if xla_flops else None,
       "formula_flops_per_image": formula_flops * (3 if kind == "train" else 1) or None,
       "static_memory_bytes": static_memory_bytes(compiled)}
  if timing is None:
    return r
  med = statistics.median(timing["window_s"]) / args.steps
  r.update(ms_per_step=1e3 * med, img_per_s=args.batch / med,
           img_per_s_windows=[args.batch * args.steps / t for t in timing["window_s"]],
           cpu_cores_used=timing["cpu_cores_used"], peak_bytes_in_use=allocator_peak_bytes())
  model_flops = r["formula_flops_per_image"] or r["xla_flops_per_image"]
  if model_flops:
    achieved = model_flops * r["img_per_s"] / n_dev
    r["achieved_flops_per_device"] = achieved
    r["mfu"] = achieved / peak if peak else None
    r["fraction_of_matmul_ceiling"] = achieved / ceiling if ceiling else None
  return r


def run(args: argparse.Namespace) -> dict:
  """Builds, compiles and (unless --compile_only) times; returns the full result dict."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax.planning import datasheets, flops  # pylint: disable=g-import-not-at-top
  model, cfg, params, images, labels = build(args, abstract=args.compile_only)
  peak, why = (args.peak_flops, "") if args.peak_flops else datasheets.peak_flops_per_device()
  if args.dtype == "float32" and not args.peak_flops and peak:
    why = "MFU against the bf16 datasheet peak (fp32 compute)"
  ceiling = matmul_ceiling(args.dtype) if args.matmul_ceiling and not args.compile_only else None
  from vit_jax.planning import datasheets  # pylint: disable=g-import-not-at-top
  formula = flops.formula_flops_per_image(cfg, args.resolution, args.num_classes)
  out = {"model": args.model, "batch": args.batch, "resolution": args.resolution,
         "dtype": args.dtype, "attention_impl": args.attention_impl, "remat": args.remat,
         "scan_layers": args.scan_layers, "backend": jax.default_backend(),
         "devices": jax.local_device_count(), "device_kind": jax.local_devices()[0].device_kind,
         "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "peak_flops": peak, "mfu_note": why or None, "matmul_ceiling_flops": ceiling,
         "loadavg_before": os.getloadavg(), "results": []}
  out.update(library_choices(args, cfg))
  if args.mode in ("both", "train"):
    step_fn, tx = make_train_step(model, args.optimizer)
    opt = (jax.eval_shape(tx.init, params) if args.compile_only else jax.jit(tx.init)(params))
    compiled, lo, co = compile_timed(step_fn, params, opt, images, labels, 0)
    timing = None
    if not args.compile_only:
      call, state = train_stepper(compiled, params, opt, images, labels)
      timing = time_windows(call, args.windows, args.steps)
      params = state["p"]
    out["results"].append(summarise("train", compiled, lo, co, timing, args, formula, peak,
                                    ceiling))
  if args.mode in ("both", "inference"):
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    compiled, lo, co = compile_timed(fwd, params, images)
    timing = None if args.compile_only else time_windows(
        lambda: compiled(params, images), args.windows, args.steps)
    out["results"].append(summarise("inference", compiled, lo, co, timing, args, formula, peak,
                                    ceiling))
  out["loadavg_after"] = os.getloadavg()
  return out


def library_choices(args: argparse.Namespace, cfg: Any) -> dict:
  """The per-platform choices the library makes for this run (ViT: attention, chunks)."""
  if "transformer" not in cfg:
    return {}
  from vit_jax.models import attention, vit  # pylint: disable=g-import-not-at-top
  if not hasattr(vit, "resolve_batch_chunks"):  # an older library version (before/after runs)
    return {}
  ph, pw = tuple(cfg.patches.size)
  tokens = (args.resolution // ph) * (args.resolution // pw) + (cfg.classifier == "token")
  shape = (args.batch, tokens, cfg.hidden_size)
  layers = 1 if args.scan_layers else cfg.transformer.num_layers
  chunks = lambda train: vit.resolve_batch_chunks(args.batch_chunks, shape, train,
                                                  unrolled_layers=layers)
  return {"attention_impl_resolved": attention.resolve_attention_impl(args.attention_impl),
          "batch_chunks_train": chunks(True), "batch_chunks_inference": chunks(False)}


def format_line(out: dict, r: dict) -> str:
  """One human-readable line per result."""
  head = f"{out['model']} {r['kind']:9s} b{out['batch']} {out['resolution']}px {out['dtype']}"
  parts = [f"compile {r['compile_s']:.2f} s (lower {r['lower_s']:.2f} s)"]
  if "img_per_s" in r:
    parts.insert(0, f"{r['img_per_s']:8.1f} img/s  {r['ms_per_step']:8.1f} ms/step  windows "
                    + "/".join(f"{v:.1f}" for v in r["img_per_s_windows"]))
    parts.append(f"cores used {r['cpu_cores_used']:.2f}")
    if r.get("mfu") is not None:
      parts.append(f"MFU {100 * r['mfu']:.1f}%")
    if r.get("fraction_of_matmul_ceiling") is not None:
      parts.append(f"{100 * r['fraction_of_matmul_ceiling']:.0f}% of matmul ceiling")
  if r.get("xla_flops_per_image"):
    parts.append(f"{r['xla_flops_per_image'] / 1e9:.2f} GFLOP/img (XLA)")
  if r.get("formula_flops_per_image"):
    parts.append(f"{r['formula_flops_per_image'] / 1e9:.2f} GFLOP/img (formula)")
  if r.get("static_memory_bytes"):
    parts.append(f"static mem {r['static_memory_bytes'] / 2**20:.0f} MiB")
  if r.get("peak_bytes_in_use"):
    parts.append(f"peak mem {r['peak_bytes_in_use'] / 2**20:.0f} MiB")
  return head + "  " + ", ".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
  """Runs the benchmark, prints the figures (and writes --json)."""
  args = parse_args(argv)
  configure_xla(args)
  out = run(args)
  print(f"{out['backend']} x{out['devices']} ({out['device_kind']}), jax {out['jax']}, "
        f"scan={out['scan_layers']} remat={out['remat']} attention={out['attention_impl']} "
        f"(runs as {out.get('attention_impl_resolved')}), batch chunks train/inference "
        f"{out.get('batch_chunks_train')}/{out.get('batch_chunks_inference')}, "
        f"XLA_FLAGS='{out['xla_flags']}', load average {out['loadavg_before'][0]:.2f} -> "
        f"{out['loadavg_after'][0]:.2f}")
  if out["matmul_ceiling_flops"]:
    print(f"matmul ceiling {out['matmul_ceiling_flops'] / 1e9:.1f} GFLOP/s ({out['dtype']})")
  if not out["peak_flops"]:
    print(out["mfu_note"] or "MFU omitted: no peak FLOP/s for this device")
  for r in out["results"]:
    print(format_line(out, r), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
