"""--dry_run: compile the train step for the configured mesh and report what it needs per device.

Nothing is allocated: the state is abstract (ShapeDtypeStructs with shardings), so a user
learns on a laptop-sized slice whether e.g. ViT-L/16 at batch 4096 fits, and the
FLOPs/step with the step time a given MFU would give.
"""
from __future__ import annotations

from typing import Any

import jax

from vit_jax import metrics, optim, sharding, train_state, train_step


def _size(num_bytes: float) -> str:
  """Bytes in a readable unit (B, KiB, MiB, GiB)."""
  for unit in ("B", "KiB", "MiB"):
    if abs(num_bytes) < 1024:
      return f"{num_bytes:7.2f} {unit}"
    num_bytes /= 1024
  return f"{num_bytes:7.2f} GiB"


def _num_classes_and_steps(config) -> tuple[int, int]:
  """From the config when it says; else from the dataset info (needs the prepared dataset)."""
  if config.num_classes and config.total_steps:
    return int(config.num_classes), int(config.total_steps)
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TFDS)
  info = input_pipeline.get_dataset_info(config)
  return (int(config.num_classes or info.num_classes),
          optim.total_steps(config, info.num_train_examples))


def analyse(config) -> dict[str, Any]:
  """Compiles the train step and returns per-device memory (bytes), FLOPs and time bounds."""
  mesh = sharding.mesh_for_config(config)
  num_classes, total = _num_classes_and_steps(config)
  setup = train_state.setup_from_config(config, mesh, num_classes, total)
  compiled = train_step.compile_train_step(setup, config, num_classes)
  shardings = setup.state_shardings
  out = {
      "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
      "mesh": dict(mesh.shape),
      "params_bytes": sharding.bytes_per_device(setup.abstract_state.params, shardings.params),
      "opt_state_bytes": sharding.bytes_per_device(setup.abstract_state.opt_state, shardings.opt_state),
  }
  mem = compiled.memory_analysis()
  if mem is not None:
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["argument_bytes"] = int(mem.argument_size_in_bytes)
    out["output_bytes"] = int(mem.output_size_in_bytes)
    out["alias_bytes"] = int(mem.alias_size_in_bytes)
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  flops = metrics.compiled_flops(compiled)
  peak, reason = metrics.peak_flops_per_device()
  out.update(flops_per_device=flops, peak_flops_per_device=peak, mfu_note=reason)
  if flops and peak:
    out["step_time_at_100pct_mfu"] = flops / peak
    out["step_time_at_40pct_mfu"] = flops / peak / 0.4
  return out


def format_report(r: dict[str, Any], config) -> str:
  """Human-readable lines for `analyse`'s result."""
  lines = [f"Dry run: {config.model_name}, global batch {config.batch} "
           f"(accum_steps {config.accum_steps}), crop {config.pp.crop}, "
           f"{r['devices']} x {r['device_kind']}, mesh {r['mesh']}",
           f"  params per device:          {_size(r['params_bytes'])}",
           f"  optimizer state per device: {_size(r['opt_state_bytes'])}"]
  if "temp_bytes" in r:
    lines += [f"  activations/temp per device:{_size(r['temp_bytes'])}",
              f"  peak memory per device:     {_size(r['peak_bytes'])} (args + outputs - donated + temp)"]
  else:
    lines.append("  activation memory: not reported by this backend")
  if r["flops_per_device"]:
    lines.append(f"  FLOPs per step: {r['flops_per_device']:.4g} per device, "
                 f"{r['flops_per_device'] * r['devices']:.4g} total")
  if "step_time_at_100pct_mfu" in r:
    lines.append(f"  step time >= {r['step_time_at_100pct_mfu'] * 1e3:.2f} ms at 100% MFU, "
                 f"{r['step_time_at_40pct_mfu'] * 1e3:.2f} ms at 40% MFU "
                 f"(peak {r['peak_flops_per_device']:.3g} FLOP/s per device)")
  elif r["mfu_note"]:
    lines.append("  " + r["mfu_note"])
  return "\n".join(lines)


def run(config) -> dict[str, Any]:
  """Analyses and prints (process 0) the dry-run report; returns the numbers."""
  result = analyse(config)
  if jax.process_index() == 0:
    print(format_report(result, config), flush=True)
  return result
