"""--dry_run: compile the real train step for the local devices or a TPU slice, report the fit.

The step is `train_step.compile_train_step`, the one the trainer runs (same model, optimizer,
sharding rules, accumulation, remat, scan), over abstract state and batch: nothing is
allocated and no dataset is opened. With `topology` ('v5p-256', 'v5e:4x4', ...) the devices
are abstract TPU chips from libtpu and XLA's TPU compiler runs on this host, so a user learns
on a laptop whether ViT-H/14 at batch 4096 fits a v5p-256, with which mesh, and the step-time
lower bound max(FLOPs / peak, bytes / HBM bandwidth). The report is per device (per chip on
TPU); `analyse` returns the numbers, `run` prints them and returns the exit status (1 when
the program does not fit).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import jax

from vit_jax import sharding
from vit_jax.models import platform, registry
from vit_jax.planning import compiled_stats, datasheets, flops, topology
from vit_jax.training import train_state, train_step


def size(num_bytes: Optional[float]) -> str:
  """Bytes in a readable unit (B, KiB, MiB, GiB)."""
  if num_bytes is None:
    return "n/a"
  for unit in ("B", "KiB", "MiB"):
    if abs(num_bytes) < 1024:
      return f"{num_bytes:.2f} {unit}"
    num_bytes /= 1024
  return f"{num_bytes:.2f} GiB"


def num_classes_of(config) -> int:
  """config.num_classes, else the known-datasets table; the dry run opens no dataset."""
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  if config.num_classes:
    return int(config.num_classes)
  if str(config.dataset) in base.NUM_CLASSES:
    return base.NUM_CLASSES[str(config.dataset)]
  raise ValueError(f"the dry run needs the class count of dataset {config.dataset!r}: set "
                   "--config.num_classes (it opens no dataset).")


def target_devices(topology_name: Optional[str], num_slices: int = 1) -> list[Any]:
  """Abstract TPU devices of `topology_name` (times num_slices), else this process's devices."""
  if not topology_name:
    if num_slices != 1:
      raise ValueError("--num_slices needs --topology (the local devices are one slice).")
    return list(jax.devices())
  return topology.abstract_devices(topology.parse(topology_name), num_slices)


def _device_figures(device: Any) -> dict[str, Any]:
  """Peak FLOP/s, memory capacity and bandwidth of one device (None where unknown)."""
  gen = topology.generation_of(device)
  if gen is not None:
    return {"peak_flops": gen.peak_bf16_flops, "capacity_bytes": gen.hbm_bytes,
            "bandwidth_bytes_per_s": gen.hbm_bytes_per_s, "figures_source": gen.source}
  peak, _ = datasheets.peak_flops_per_device(device)
  capacity = None
  try:
    capacity = (device.memory_stats() or {}).get("bytes_limit")
  except Exception:  # pylint: disable=broad-except  (CPU devices report no memory stats)
    capacity = None
  return {"peak_flops": peak, "capacity_bytes": capacity, "bandwidth_bytes_per_s": None,
          "figures_source": "planning/datasheets.py" if peak else None}


def analyse(config, devices: Optional[Sequence[Any]] = None) -> dict[str, Any]:
  """Compiles the train step for `devices` (default: local) and returns the per-device figures.

  Never raises for a program that does not fit: then 'fits' is False and 'compiler_error'
  holds the compiler's message. Other errors (a bad mesh, an unknown key) raise.
  """
  devices = list(jax.devices() if devices is None else devices)
  device = devices[0]
  num_classes = num_classes_of(config)
  # The schedule's length does not change the program: no training-length keys needed.
  steps = max(int(config.total_steps or 0), int(config.warmup_steps or 0) + 1, 1)
  mesh = sharding.mesh_for_config(config, devices)
  fields = registry.run_model_config(config)
  out: dict[str, Any] = {
      "model": config.model_name, "batch": int(config.batch), "crop": int(config.pp.crop),
      "accum_steps": int(config.accum_steps), "devices": len(devices),
      "device_kind": device.device_kind, "platform": device.platform,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "remat": bool(fields.get("remat", False)),
      "scan_layers": bool(fields.get("scan_layers", False))}
  out.update(_device_figures(device))
  with platform.compile_target(device.platform):
    setup = train_state.setup_from_config(config, mesh, num_classes, steps)
    shardings = setup.state_shardings
    out["params_bytes"] = sharding.bytes_per_device(setup.abstract_state.params, shardings.params)
    out["opt_state_bytes"] = sharding.bytes_per_device(setup.abstract_state.opt_state,
                                                       shardings.opt_state)
    out["total_params"] = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
    start = time.perf_counter()
    try:
      compiled = train_step.compile_train_step(setup, config, num_classes)
    except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError and kin)
      oom = compiled_stats.parse_out_of_memory(str(e))
      if oom is None:
        raise
      out.update(fits=False, compile_s=time.perf_counter() - start, compiler_error=str(e),
                 need_bytes=oom["need_bytes"], available_bytes=oom["available_bytes"],
                 oom_what=oom["what"])
      return out
  out["compile_s"] = time.perf_counter() - start
  out.update(compiled_stats.memory(compiled) or {})
  cost = compiled_stats.cost(compiled)
  out["flops_per_device"] = cost["flops"]
  out["bytes_accessed_per_device"] = cost["bytes_accessed"]
  formula = flops.formula_flops_per_image(fields, int(config.pp.crop), num_classes)
  out["formula_flops_per_device"] = (3 * formula * config.batch / len(devices)) or None
  out["collectives"] = compiled_stats.collectives(compiled.as_text())
  out["collective_bytes"] = sum(c["bytes"] for c in out["collectives"].values())
  _add_bounds(out)
  capacity, peak_bytes = out.get("capacity_bytes"), out.get("peak_bytes")
  out["fits"] = None if capacity is None or peak_bytes is None else peak_bytes <= capacity
  if capacity and peak_bytes is not None:
    out["headroom_bytes"] = capacity - peak_bytes
  return out


def _add_bounds(out: dict[str, Any]) -> None:
  """Step-time lower bound max(FLOPs / peak, bytes / bandwidth) and the MFU it allows.

  XLA's cost analysis counts the body of a loop once: with scan_layers the compiled FLOPs
  and bytes cover one encoder layer, so the compute term uses the formula FLOPs (x 4/3 with
  remat, which recomputes the forward pass) and the bytes term is left out (a note says so).
  """
  peak, bandwidth = out.get("peak_flops"), out.get("bandwidth_bytes_per_s")
  flops, accessed = out.get("flops_per_device"), out.get("bytes_accessed_per_device")
  if out.get("scan_layers"):
    formula = out.get("formula_flops_per_device")
    flops = formula * (4 / 3 if out.get("remat") else 1) if formula else None
    accessed = None
    out["bound_note"] = ("scan_layers: XLA's cost analysis counts the scanned layer once, so the "
                         "bound is the formula's compute term only; compile with "
                         "--config.model.scan_layers=False for the bytes term")
  bounds = {}
  if peak and flops:
    bounds["compute"] = flops / peak
  if bandwidth and accessed:
    bounds["memory"] = accessed / bandwidth
  if not bounds:
    return
  out["step_time_bound_s"] = max(bounds.values())
  out["bound_by"] = max(bounds, key=bounds.get)
  model_flops = out.get("formula_flops_per_device") or flops
  if peak and model_flops:
    out["best_mfu"] = min(model_flops / (out["step_time_bound_s"] * peak), 1.0)


KNOBS = ("--config.model.remat=True (recompute activations in the backward pass)",
         "a larger fsdp axis, e.g. --config.mesh='((\"fsdp\", -1),)' (parameters and optimizer "
         "state sharded over more chips)",
         "a model axis, e.g. --config.mesh='((\"fsdp\", -1), (\"model\", 4))' (tensor parallel)",
         "--config.accum_steps=2 (or more: smaller micro-batches, same global batch)",
         "a smaller --config.batch, or --config.optim_dtype=bfloat16 (half the momentum memory)")


def does_not_fit_message(r: dict[str, Any]) -> str:
  """The one message for a program that does not fit: need vs capacity and what to change."""
  where = f"{r['devices']} x {r['device_kind']}"
  if r.get("compiler_error") is not None:
    need, have = r.get("need_bytes"), r.get("available_bytes")
    what = r.get("oom_what", "memory")
    head = (f"Does not fit: {r['model']} at batch {r['batch']} on {where} (mesh {r['mesh']}) "
            f"needs {size(need)} per chip ({what}), {size(have)} available.")
  else:
    head = (f"Does not fit: {r['model']} at batch {r['batch']} on {where} (mesh {r['mesh']}) "
            f"needs {size(r.get('peak_bytes'))} per device, capacity "
            f"{size(r.get('capacity_bytes'))}.")
  lines = [head, "Knobs that lower per-chip memory:"] + [f"  - {k}" for k in KNOBS]
  lines.append("Or search them: add --plan.")
  if r.get("compiler_error"):
    lines += ["", "Compiler message (for experts):", r["compiler_error"].strip()[:4000]]
  return "\n".join(lines)


def format_report(r: dict[str, Any]) -> str:
  """Human-readable lines for `analyse`'s result (a fitting or non-fitting program)."""
  lines = [f"Dry run: {r['model']}, global batch {r['batch']} (accum_steps {r['accum_steps']}), "
           f"crop {r['crop']}, {r['devices']} x {r['device_kind']}, mesh {r['mesh']}, "
           f"remat {r['remat']}, scan {r['scan_layers']}; compiled in {r['compile_s']:.1f} s",
           f"  params:           {r['total_params'] / 1e6:.1f}M total",
           f"  params per device:          {size(r['params_bytes'])}",
           f"  optimizer state per device: {size(r['opt_state_bytes'])}"]
  if r.get("fits") is False and r.get("compiler_error") is not None:
    return "\n".join(lines + [does_not_fit_message(r)])
  if "temp_bytes" in r:
    lines += [f"  activations/temp per device:{size(r['temp_bytes'])}",
              f"  peak memory per device:     {size(r['peak_bytes'])} "
              "(args + outputs - donated + temp)"]
    if r.get("headroom_bytes") is not None:
      lines.append(f"  capacity per device:        {size(r['capacity_bytes'])}; headroom "
                   f"{size(r['headroom_bytes'])} ({r['headroom_bytes'] / r['capacity_bytes']:.1%})")
  else:
    lines.append("  activation memory: not reported by this backend")
  if r.get("flops_per_device"):
    formula = r.get("formula_flops_per_device")
    loop = " (scanned layer counted once)" if r.get("scan_layers") else ""
    lines.append(f"  FLOPs per step per device: {r['flops_per_device']:.4g} (compiled{loop}), "
                 + (f"{formula:.4g} (formula)" if formula else "formula n/a (hybrid / Mixer)"))
  if r.get("bytes_accessed_per_device"):
    lines.append(f"  bytes accessed per device: {size(r['bytes_accessed_per_device'])}")
  active = {k: v for k, v in r.get("collectives", {}).items() if v["count"]}
  if active:
    lines.append("  collectives: " + ", ".join(
        f"{k} {int(v['count'])} ({size(v['bytes'])})" for k, v in active.items()))
  elif "collectives" in r:
    lines.append("  collectives: none")
  if r.get("step_time_bound_s"):
    mfu = f", best MFU {r['best_mfu']:.1%}" if r.get("best_mfu") else ""
    lines.append(f"  step time >= {r['step_time_bound_s'] * 1e3:.2f} ms ({r['bound_by']}-bound; "
                 f"peak {r['peak_flops']:.3g} FLOP/s"
                 + (f", HBM {r['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s" if r.get(
                     "bandwidth_bytes_per_s") else "") + f"){mfu}")
    if r.get("bound_note"):
      lines.append(f"  ({r['bound_note']})")
  elif not r.get("peak_flops"):
    lines.append(f"  step-time bound omitted: no peak FLOP/s known for {r['device_kind']!r}")
  if r.get("fits") is False:
    lines.append(does_not_fit_message(r))
  elif r.get("fits"):
    lines.append("  fits: yes")
  return "\n".join(lines)
