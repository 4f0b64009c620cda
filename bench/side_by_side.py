r"""Side by side with timm (PyTorch): our train step and inference vs timm's, in ONE process.

  python bench/side_by_side.py                       # ViT-Ti/16, 224px, batch 32 (CPU defaults)
  python bench/side_by_side.py --model ViT-B_16 --batch 256 --windows 5 --steps 10   # on a GPU

Both frameworks get the same model (ours: `--model`; timm's: the matching `vit_*_patch*_224`
or `--timm_model`), batch, resolution, synthetic data resident on the device, loss
(softmax cross-entropy on integer labels) and optimizer. Per platform:
  * CPU: float32, SGD with momentum 0.9 (both), torch.set_num_threads(<cores>), eager PyTorch
    (timm's attention is `F.scaled_dot_product_attention`), our model as the library builds it
    (library XLA defaults applied, attention implementation chosen by the library).
  * GPU: bfloat16 compute for us (params float32) vs timm under `torch.autocast(bfloat16)`
    with `torch.compile`, SDPA, and fused AdamW (`torch.optim.AdamW(fused=True)`); ours uses
    optax AdamW. TF32 matmuls are allowed for torch (its fastest fp32 path).
Override with --dtype / --optimizer / --torch_compile.

Timing is interleaved so that load from other jobs hits both alike: after compile and
warm-up of all four workloads and `--warmup_rounds` interleaved rounds of one call each
(reported apart, not counted: the shared heap settles), each of `--windows` rounds times
one window of `--steps`
calls of: ours train, timm train, ours inference, timm inference (each window blocks on its
result; `--gap_s` idle seconds between windows let spinning thread pools go to sleep). The
median window per workload is reported with all windows, and the ratios ours / timm: of
the medians, per round (adjacent windows see the same load from other jobs; their median is
the figure to trust on a shared machine) and best window over best window.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Our model name -> timm model name (224px, patch size as in the name).
TIMM_MODELS = {
    "ViT-Ti_16": "vit_tiny_patch16_224", "ViT-S_16": "vit_small_patch16_224",
    "ViT-S_32": "vit_small_patch32_224", "ViT-B_16": "vit_base_patch16_224",
    "ViT-B_32": "vit_base_patch32_224", "ViT-L_16": "vit_large_patch16_224",
    "ViT-L_32": "vit_large_patch32_224", "ViT-H_14": "vit_huge_patch14_224",
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ViT-Ti_16", help="our MODEL_CONFIGS name")
  p.add_argument("--timm_model", default=None, help="timm name (default: from --model)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                 help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
  p.add_argument("--optimizer", default=None, choices=["sgd", "adamw"],
                 help="default: sgd (momentum 0.9) on CPU, adamw on GPU")
  p.add_argument("--torch_compile", default=None, choices=["on", "off"],
                 help="torch.compile timm's model (default: on for GPU, off on CPU)")
  p.add_argument("--attention_impl", default=None,
                 help="ours: None (library choice) | xla | einsum | einsum_vjp | cudnn")
  p.add_argument("--batch_chunks", type=int, default=None,
                 help="ours: model sub-batches (default: the library's choice; 1 = off; an "
                      "upper bound)")
  p.add_argument("--no_library_defaults", action="store_true",
                 help="do not apply vit_jax.runtime_defaults start-up defaults (to measure them)")
  p.add_argument("--mode", default="both", choices=["both", "train", "inference"])
  p.add_argument("--windows", type=int, default=3, help="interleaved rounds (median reported)")
  p.add_argument("--steps", type=int, default=2, help="calls per timed window")
  p.add_argument("--warmup_rounds", type=int, default=1,
                 help="interleaved rounds run first and left out of the figures (reported "
                      "apart): the one process's heap settles to hold both frameworks")
  p.add_argument("--gap_s", type=float, default=0.3, help="idle seconds between windows")
  p.add_argument("--threads", type=int, default=None,
                 help="torch.set_num_threads on CPU (default: the cores this process may use)")
  p.add_argument("--json", default=None, help="also write the results to this file")
  return p.parse_args(argv)


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


# ---------------------------------------------------------------- ours (JAX)

def build_ours(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
  """{'train': step thunk, 'inference': thunk}, compiled and warmed up (one call each)."""
  import jax  # pylint: disable=g-import-not-at-top
  import train_step as ts  # pylint: disable=g-import-not-at-top  (bench/train_step.py)
  targs = ts.parse_args(["--model", args.model, "--batch", str(args.batch), "--resolution",
                         str(args.resolution), "--num_classes", str(args.num_classes),
                         "--dtype", args.dtype, "--optimizer", args.optimizer]
                        + (["--attention_impl", args.attention_impl] if args.attention_impl else [])
                        + (["--batch_chunks", str(args.batch_chunks)] if args.batch_chunks else []))
  model, cfg, params, images, labels = ts.build(targs, abstract=False)
  args.library_choices = ts.library_choices(targs, cfg)
  out: dict[str, Callable[[], Any]] = {}
  if args.mode in ("both", "train"):
    step_fn, tx = ts.make_train_step(model, args.optimizer)
    own = jax.tree.map(jax.numpy.copy, params)  # the step donates them; inference keeps params
    opt = jax.jit(tx.init)(own)
    compiled = step_fn.lower(own, opt, images, labels, 0).compile()
    out["train"], _ = ts.train_stepper(compiled, own, opt, images, labels)
  if args.mode in ("both", "inference"):
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(
        params, images).compile()
    out["inference"] = lambda: fwd(params, images)
  for fn in out.values():  # warm-up, twice (as for timm): the host heap grows to size
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  return out


def block_ours(x: Any) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(x)


# ---------------------------------------------------------------- timm (PyTorch)

def build_timm(args: argparse.Namespace, device: str) -> dict[str, Callable[[], Any]]:
  """timm's train step and inference as thunks, compiled (if asked) and warmed up."""
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  name = args.timm_model or TIMM_MODELS.get(args.model)
  if name is None:
    raise SystemExit(f"no timm model known for {args.model}; pass --timm_model.")
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, num_classes=args.num_classes,
                            img_size=args.resolution).to(device)
  if device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  images = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
  labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
  if args.optimizer == "adamw":
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4,
                            fused=(device == "cuda"))
  else:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  amp = args.dtype == "bfloat16"
  net = torch.compile(model) if args.torch_compile == "on" else model

  def autocast():
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp)

  def train():
    model.train()
    with autocast():
      loss = F.cross_entropy(net(images).float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def inference():
    model.eval()
    with torch.inference_mode(), autocast():
      return net(images)

  out = {}
  if args.mode in ("both", "train"):
    out["train"] = train
  if args.mode in ("both", "inference"):
    out["inference"] = inference
  for fn in out.values():  # warm-up (torch.compile compiles here), twice for autotuning
    fn()
    fn()
  block_timm(device)
  return out


def block_timm(device: str, _x: Any = None) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  if device == "cuda":
    torch.cuda.synchronize()


# ---------------------------------------------------------------- timing

def run(args: argparse.Namespace) -> dict:
  """Builds both, times them interleaved, returns the result dict."""
  import jax  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  platform = jax.default_backend()
  gpu = platform == "gpu"
  args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
  args.optimizer = args.optimizer or ("adamw" if gpu else "sgd")
  args.torch_compile = args.torch_compile or ("on" if gpu else "off")
  device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
  threads = args.threads or cores()
  if device == "cpu":
    torch.set_num_threads(threads)
  t0 = time.perf_counter()
  ours = build_ours(args)
  ours_build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  theirs = build_timm(args, device)
  timm_build_s = time.perf_counter() - t0
  workloads = [(f"{fw} {mode}", fn, blk) for mode in ("train", "inference")
               for fw, fns, blk in (("ours", ours, block_ours),
                                    ("timm", theirs, lambda x: block_timm(device, x)))
               if mode in fns for fn in [fns[mode]]]
  times: dict[str, list[float]] = {name: [] for name, _, _ in workloads}
  warmup: dict[str, list[float]] = {name: [] for name, _, _ in workloads}
  usage = {name: [0.0, 0.0, 0] for name, _, _ in workloads}  # user s, system s, page faults
  load_before = os.getloadavg()
  # The first round after both warm-ups pays the heap's regrowth (ours' temporaries no longer
  # fit where timm's freed blocks sit; hundreds of thousands of page faults), a cost of
  # sharing one process that neither framework has alone: warm-up rounds hold it.
  for round_ in range(args.warmup_rounds + args.windows):
    for name, fn, blk in workloads:
      if round_ < args.warmup_rounds:
        start = time.perf_counter()
        blk(fn())
        warmup[name].append(args.batch / (time.perf_counter() - start))
        continue
      time.sleep(args.gap_s)
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      start = time.perf_counter()
      out = None
      for _ in range(args.steps):
        out = fn()
      blk(out)
      times[name].append(time.perf_counter() - start)
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      usage[name][0] += r1.ru_utime - r0.ru_utime
      usage[name][1] += r1.ru_stime - r0.ru_stime
      usage[name][2] += r1.ru_minflt - r0.ru_minflt
  res = {"model": args.model, "timm_model": args.timm_model or TIMM_MODELS.get(args.model),
         "batch": args.batch, "resolution": args.resolution, "dtype": args.dtype,
         "optimizer": args.optimizer, "torch_compile": args.torch_compile,
         "platform": platform, "device_kind": jax.local_devices()[0].device_kind,
         "torch_device": device, "torch_threads": torch.get_num_threads() if device == "cpu"
         else None, "jax": jax.__version__, "torch": torch.__version__,
         "timm": timm.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "build_s": {"ours": ours_build_s, "timm": timm_build_s},
         "ours_library_choices": getattr(args, "library_choices", {}),
         "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "img_per_s": {},
         "img_per_s_windows": {}, "ratio_ours_over_timm": {},
         "warmup_rounds": args.warmup_rounds, "warmup_img_per_s": warmup,
         "per_step_user_s": {}, "per_step_system_s": {}, "per_step_page_faults": {}}
  for name, ts_ in times.items():
    per = [args.batch * args.steps / t for t in ts_]
    res["img_per_s_windows"][name] = per
    res["img_per_s"][name] = args.batch * args.steps / statistics.median(ts_)
    n = args.windows * args.steps
    res["per_step_user_s"][name] = usage[name][0] / n
    res["per_step_system_s"][name] = usage[name][1] / n
    res["per_step_page_faults"][name] = usage[name][2] / n
  res["ratio_per_window"], res["ratio_best_over_best"] = {}, {}
  for mode in ("train", "inference"):
    if f"ours {mode}" in res["img_per_s"]:
      ours_w = res["img_per_s_windows"][f"ours {mode}"]
      timm_w = res["img_per_s_windows"][f"timm {mode}"]
      res["ratio_ours_over_timm"][mode] = (res["img_per_s"][f"ours {mode}"]
                                           / res["img_per_s"][f"timm {mode}"])
      # Adjacent windows see the same load: their ratio is robust to load that drifts.
      res["ratio_per_window"][mode] = [o / t for o, t in zip(ours_w, timm_w)]
      res["ratio_best_over_best"][mode] = max(ours_w) / max(timm_w)
  return res


def main(argv: Optional[list[str]] = None) -> int:
  """Runs the comparison and prints the table (and writes --json)."""
  args = parse_args(argv)
  if args.no_library_defaults:  # Before vit_jax is imported: its import applies them.
    os.environ["VIT_JAX_NO_XLA_DEFAULTS"] = "1"
  from vit_jax import runtime_defaults  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_defaults()       # (no-ops with VIT_JAX_NO_XLA_DEFAULTS=1)
  runtime_defaults.apply_host_defaults()
  res = run(args)
  print(f"{res['model']} vs timm {res['timm_model']}: batch {res['batch']}, "
        f"{res['resolution']}px, {res['dtype']}, {res['optimizer']}, platform {res['platform']} "
        f"({res['device_kind']}), torch threads {res['torch_threads']}, torch.compile "
        f"{res['torch_compile']}; ours: {res['ours_library_choices']}; "
        f"jax {res['jax']}, torch {res['torch']}, timm {res['timm']}; "
        f"load average {res['loadavg_before'][0]:.2f} -> {res['loadavg_after'][0]:.2f}")
  for name, v in res["img_per_s"].items():
    print(f"  {name:15s} {v:8.1f} img/s  (windows "
          + "/".join(f"{w:.1f}" for w in res["img_per_s_windows"][name])
          + f"; per step: user {res['per_step_user_s'][name]:.2f} s, system "
          f"{res['per_step_system_s'][name]:.2f} s, "
          f"{res['per_step_page_faults'][name]:.0f} page faults)"
          + ("; warm-up rounds, not counted: "
             + "/".join(f"{w:.1f}" for w in res["warmup_img_per_s"][name]) if args.warmup_rounds
             else ""))
  for mode, r in res["ratio_ours_over_timm"].items():
    per = res["ratio_per_window"][mode]
    print(f"  ratio ours/timm {mode:9s} {r:.3f} (medians); per window "
          + "/".join(f"{v:.2f}" for v in per) + f", median {statistics.median(per):.3f}; "
          f"best/best {res['ratio_best_over_best'][mode]:.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
