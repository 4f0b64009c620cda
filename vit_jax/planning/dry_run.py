"""--dry_run: compile the real train step for the local devices or a TPU slice, report the fit.

The step is `train_step.compile_train_step`, the one the trainer runs (same model, optimizer,
sharding rules, accumulation, remat, scan), over abstract state and batch: nothing is
allocated and no dataset is opened. With `topology` ('v5p-256', 'v5e:4x4', ...) the devices
are abstract TPU chips from libtpu and XLA's TPU compiler runs on this host, so a user learns
on a laptop whether ViT-H/14 at batch 4096 fits a v5p-256, with which mesh, and what a step
costs: executed FLOPs, HBM bytes and collectives (loops multiplied out, hlo_program.py) and the
step-time model with its communication term (step_time.py). The report is per device (per chip
on TPU); `analyse` returns the numbers, `run` prints them and returns the exit status (1 when
the program does not fit).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import jax
import ml_collections

from vit_jax import batching, sharding
from vit_jax.models import factory, platform
from vit_jax.planning import (
  compile_memo,
  compiled_stats,
  datasheets,
  flops,
  hlo_program,
  step_time,
  topology,
)
from vit_jax.training import flexi, train_state, train_step


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
  sheet = datasheets.for_kind(getattr(device, "device_kind", ""))
  capacity = sheet.hbm_bytes if sheet is not None else None
  if capacity is None:
    try:
      capacity = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # pylint: disable=broad-except  (CPU devices report no memory stats)
      capacity = None
  if sheet is None:
    return {"peak_flops": None, "capacity_bytes": capacity, "bandwidth_bytes_per_s": None,
            "figures_source": None}
  return {"peak_flops": sheet.peak_bf16_flops, "capacity_bytes": capacity,
          "bandwidth_bytes_per_s": sheet.hbm_bytes_per_s, "ici_bytes_per_s": sheet.ici_bytes_per_s,
          "dcn_bytes_per_s": sheet.dcn_bytes_per_s, "figures_source": sheet.source,
          "link_source": sheet.link_source}


def analyse(config, devices: Optional[Sequence[Any]] = None) -> dict[str, Any]:
  """Compiles the train step for `devices` (default: local) and returns the per-device figures.

  Never raises for a program that does not fit: then 'fits' is False and 'compiler_error'
  holds the compiler's message. Other errors (a bad mesh, an unknown key) raise.
  """
  devices = list(jax.devices() if devices is None else devices)
  device = devices[0]
  image_text = factory.is_image_text_run(config)
  # An image-text run's tokenizer settings, a packed run's patch size, as the trainer fills them.
  config = factory.with_pipeline_settings(config)
  num_classes = 0 if image_text else num_classes_of(config)
  # The schedule's length does not change the program: no training-length keys needed.
  steps = max(int(config.total_steps or 0), int(config.warmup_steps or 0) + 1, 1)
  mesh = sharding.mesh_for_config(config, devices)
  fields = factory.run_model_config(config)
  out: dict[str, Any] = {
      "model": config.model_name, "batch": int(config.batch), "crop": int(config.pp.crop),
      "accum_steps": int(config.accum_steps), "devices": len(devices),
      "device_kind": device.device_kind, "platform": device.platform,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "remat": bool(fields.get("remat", False)),
      "remat_policy": fields.get("remat_policy") or ("full" if fields.get("remat") else None),
      "scan_layers": bool(fields.get("scan_layers", False))}
  out.update(_device_figures(device))
  with platform.compile_target(device.platform):
    setup = train_state.setup_from_config(config, mesh, num_classes, steps)
    sizes = flexi.patch_sizes(config)
    if sizes:  # FlexiViT: the step of the smallest patch size, the most tokens (the peak)
      setup = flexi.at_patch_size(setup, min(sizes))
      fields = ml_collections.ConfigDict(fields.to_dict())
      fields.patches = {"size": (min(sizes), min(sizes))}
      out["flexi_patch_size"] = min(sizes)
    shardings = setup.state_shardings
    out["params_bytes"] = sharding.bytes_per_device(setup.abstract_state.params, shardings.params)
    out["opt_state_bytes"] = sharding.bytes_per_device(setup.abstract_state.opt_state,
                                                       shardings.opt_state)
    out["total_params"] = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
    start = time.perf_counter()
    stages = batching.resolution_stages(config)
    if stages:  # Progressive resolution: the stage of the most pixels per step (the peak)
      peak = max(stages, key=lambda st: st.resolution ** 2 * st.batch)
      out.update(batch=peak.batch, crop=peak.resolution,
                 resolution_stage=(peak.start, peak.resolution, peak.batch))
    step_config = batching.stage_config(config, peak) if stages else config
    lowered = train_step.lower_train_step(setup, step_config, num_classes)
    memo = compile_memo.directory(config)
    name = compile_memo.key(lowered.as_text(), devices) if memo else ""
    figures = compile_memo.load(memo, name)
    out["compile_memo_hit"] = figures is not None
    if figures is None:
      figures = _compile(lowered)
      compile_memo.save(memo, name, figures)
  out["compile_s"] = time.perf_counter() - start
  if figures.get("compiler_error") is not None:
    oom = compiled_stats.parse_out_of_memory(figures["compiler_error"])
    out.update(fits=False, compiler_error=figures["compiler_error"],
               need_bytes=oom["need_bytes"], available_bytes=oom["available_bytes"],
               oom_what=oom["what"])
    return out
  out.update(figures["memory"] or {})
  out["xla_static"] = figures["xla_static"]  # loop bodies counted once (for reference)
  run = hlo_program.executed(figures["hlo"], len(devices),
                             hlo_program.slices_of(mesh.devices.flat))
  out["flops_per_device"] = run.flops or None
  out["bytes_accessed_per_device"] = run.bytes_accessed or None
  out["loops"] = run.loops
  out["unknown_loops"] = sum(1 for loop in run.loops if loop["trip_count"] is None)
  if image_text:
    formula = flops.formula_flops_per_pair(fields, int(out["crop"]))
  elif batching.packed_run(config):  # packed sequences: the batch counts sequences
    formula = flops.formula_flops_per_sequence(fields, int(config.naflex.seq_len),
                                               int(config.naflex.images_per_pack), num_classes)
    out["packed"] = (int(config.naflex.seq_len), int(config.naflex.images_per_pack))
  else:
    formula = flops.formula_flops_per_image(fields, int(out["crop"]), num_classes)
  out["formula_flops_per_device"] = (3 * formula * out["batch"] / len(devices)) or None
  out["collectives"] = {k: dict(v) for k, v in run.collectives.items()}
  out["collective_bytes"] = sum(c["bytes"] for c in out["collectives"].values())
  moved = run.collective_moved_bytes
  out["ici_bytes"], out["dcn_bytes"] = moved["ici"], moved["dcn"]
  _add_step_time(out, datasheets.for_kind(device.device_kind))
  capacity, peak_bytes = out.get("capacity_bytes"), out.get("peak_bytes")
  out["fits"] = None if capacity is None or peak_bytes is None else peak_bytes <= capacity
  if capacity and peak_bytes is not None:
    out["headroom_bytes"] = capacity - peak_bytes
  return out


def _compile(lowered: Any) -> dict[str, Any]:
  """What the planner keeps of one compile: the optimised HLO, the memory analysis and XLA's
  static cost, or the compiler's out-of-memory message (other compiler errors raise)."""
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError and kin)
    if compiled_stats.parse_out_of_memory(str(e)) is None:
      raise
    return {"compiler_error": str(e)}
  return {"hlo": compiled.as_text(), "memory": compiled_stats.memory(compiled),
          "xla_static": compiled_stats.cost(compiled)}


def _add_step_time(out: dict[str, Any], sheet: Optional[datasheets.Datasheet]) -> None:
  """The step-time model's figures (step_time.py) from the executed per-chip costs."""
  model = step_time.estimate(
      flops=out.get("flops_per_device"), bytes_accessed=out.get("bytes_accessed_per_device"),
      ici_bytes=out.get("ici_bytes", 0.0), dcn_bytes=out.get("dcn_bytes", 0.0),
      model_flops=out.get("formula_flops_per_device"), sheet=sheet)
  out["step_time"] = model
  if not model:
    return
  out["step_time_bound_s"] = model["step_time_full_overlap_s"]
  out["step_time_no_overlap_s"] = model["step_time_no_overlap_s"]
  out["bound_by"] = model["bound_by"]
  if model.get("mfu_range"):
    out["mfu_range"] = model["mfu_range"]
    out["best_mfu"] = model["mfu_range"][1]


KNOBS = ("--config.model.remat=True (recompute activations in the backward pass; "
         "--config.model.remat_policy=dots_saveable or dots_with_no_batch_dims_saveable keeps "
         "the matmul outputs and recomputes less, offload_dots_with_no_batch_dims moves them to "
         "host memory on TPU/GPU)",
         "a larger fsdp axis, e.g. --config.mesh='((\"fsdp\", -1),)' (parameters and optimizer "
         "state sharded over more chips)",
         "a model axis, e.g. --config.mesh='((\"fsdp\", -1), (\"model\", 4))' (tensor parallel)",
         "--config.accum_steps=2 (or more: smaller micro-batches, same global batch)",
         "a smaller --config.batch, --config.optim_dtype=bfloat16 (half the momentum memory) or "
         "--config.optimizer=adafactor (factored second moment: two vectors per matrix)")


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
           f"crop {r['crop']}"
           + (f" (FlexiViT: the step at patch size {r['flexi_patch_size']}, the smallest)"
              if r.get("flexi_patch_size") else "")
           + (" (progressive resolution: the stage of the most pixels per step)"
              if r.get("resolution_stage") else "")
           + f", {r['devices']} x {r['device_kind']}, mesh {r['mesh']}, "
           f"remat {r['remat']}, scan {r['scan_layers']}; "
           + (f"read from the dry-run memo in {r['compile_s']:.1f} s" if r.get("compile_memo_hit")
              else f"compiled in {r['compile_s']:.1f} s"),
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
    ratio = (f" = {r['flops_per_device'] / formula:.3f} x the formula's {formula:.4g}"
             if formula else " (formula n/a: hybrid / Mixer)")
    lines.append(f"  FLOPs per step per device: {r['flops_per_device']:.4g} executed{ratio}")
    loops = [x for x in r.get("loops", []) if x["trip_count"]]
    if loops:
      trips = sorted({int(x["trip_count"]) for x in loops})
      lines.append(f"    ({len(loops)} loops run {', '.join(map(str, trips))} times each; "
                   f"XLA's static count, bodies once: {r['xla_static']['flops']:.4g})")
    if r.get("unknown_loops"):
      lines.append(f"    ({r['unknown_loops']} loops of unknown trip count counted once: "
                   "figures are a lower bound)")
  if r.get("bytes_accessed_per_device"):
    lines.append(f"  HBM bytes per step per device: {size(r['bytes_accessed_per_device'])}")
  active = {k: v for k, v in r.get("collectives", {}).items() if v["count"]}
  if active:
    lines.append("  collectives per step (count, buffer, sent per chip): " + ", ".join(
        f"{k} {v['count']:g} ({size(v['bytes'])}, {size(v['ici_bytes'] + v['dcn_bytes'])})"
        for k, v in active.items()))
    lines.append(f"    sent per chip: {size(r.get('ici_bytes'))} inside the slice (ICI), "
                 f"{size(r.get('dcn_bytes'))} across slices (DCN)")
  elif "collectives" in r:
    lines.append("  collectives: none")
  if r.get("step_time"):
    lines += step_time.describe(r["step_time"])
  elif not r.get("peak_flops"):
    lines.append(f"  step-time model omitted: no peak FLOP/s known for {r['device_kind']!r}")
  if r.get("fits") is False:
    lines.append(does_not_fit_message(r))
  elif r.get("fits"):
    lines.append("  fits: yes")
  return "\n".join(lines)
