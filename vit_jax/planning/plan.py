"""--plan: search a small grid of meshes, remat and accumulation for what fits, fastest first.

For each mesh split data x fsdp x model of the devices (model in 1, 2, 4; fsdp 1, 8, 16 or
all the rest), compile without remat and with accum_steps 1; only when that does not fit,
try remat, then accum_steps 2 and 4 (each halves the per-chip micro-batch). So a mesh that
fits costs one compile, and the number of compiles is bounded by len(TRIES) per mesh (said
before it starts, with each compile's time after). Results are sorted by the step-time lower bound.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from vit_jax.planning import dry_run

MODEL_AXES = (1, 2, 4)
FSDP_SIZES = (1, 8, 16)
ACCUM = (1, 2, 4)
# (remat, accum_steps) in the order tried on each mesh, until one fits.
TRIES = ((False, 1), (True, 1)) + tuple((True, a) for a in ACCUM[1:])


def candidate_meshes(num_devices: int) -> list[tuple[tuple[str, int], ...]]:
  """Distinct (data, fsdp, model) splits of `num_devices` from the grid above."""
  meshes = []
  for model in MODEL_AXES:
    if num_devices % model:
      continue
    rest = num_devices // model
    for fsdp in sorted({f for f in FSDP_SIZES if rest % f == 0} | {rest}):
      mesh = (("data", rest // fsdp), ("fsdp", fsdp), ("model", model))
      if mesh not in meshes:
        meshes.append(mesh)
  return meshes


def _variant(config, mesh, remat: bool, accum: int):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.mesh = mesh
    c.model.remat = remat
    c.accum_steps = accum
  return c


def overrides(mesh, remat: bool, accum: int) -> str:
  """The --config.* flags that select one planned configuration."""
  pairs = ", ".join(f'("{a}", {s})' for a, s in mesh if s > 1) or '("data", -1)'
  return (f"--config.mesh='({pairs},)' --config.model.remat={remat} "
          f"--config.accum_steps={accum}")


def plan(config, devices: Sequence[Any]) -> dict[str, Any]:
  """Compiles the grid (pruned as the module doc says); returns every attempt and the fits."""
  meshes = candidate_meshes(len(devices))
  print(f"Plan: {len(meshes)} meshes x up to {len(TRIES)} compiles each "
        f"(at most {len(TRIES) * len(meshes)}), {len(devices)} x {devices[0].device_kind}.",
        flush=True)
  attempts, fitting = [], []
  for mesh in meshes:
    for remat, accum in TRIES:
      if config.batch % accum:
        continue
      start = time.perf_counter()
      try:
        r = dry_run.analyse(_variant(config, mesh, remat, accum), devices)
      except ValueError as e:  # The batch does not split over this mesh: not a candidate.
        attempts.append({"mesh": mesh, "remat": remat, "accum_steps": accum, "error": str(e)})
        break
      r.update(mesh_config=mesh, overrides=overrides(mesh, remat, accum))
      attempts.append(r)
      print(f"  {overrides(mesh, remat, accum)}: "
            f"{'fits' if r.get('fits') is not False else 'does not fit'} "
            f"({time.perf_counter() - start:.1f} s)", flush=True)
      if r.get("fits") is not False:
        fitting.append(r)
        break
  fitting.sort(key=lambda r: r.get("step_time_bound_s") or float("inf"))
  return {"attempts": attempts, "fitting": fitting, "compiles": sum(
      1 for a in attempts if "error" not in a)}


def format_plan(result: dict[str, Any]) -> str:
  """The table of fitting configurations, fastest bound first, with the flags to copy."""
  if not result["fitting"]:
    return (f"No configuration of the grid fits ({result['compiles']} compiles). "
            + "Try a larger slice, a smaller --config.batch or --config.optim_dtype=bfloat16.")
  lines = [f"{len(result['fitting'])} configurations fit ({result['compiles']} compiles), "
           "fastest step-time bound first:",
           f"  {'bound ms':>9}  {'best MFU':>8}  {'peak/chip':>11}  {'collectives':>11}  flags"]
  for r in result["fitting"]:
    bound = r.get("step_time_bound_s")
    mfu = r.get("best_mfu")
    lines.append(f"  {bound * 1e3 if bound else float('nan'):9.2f}  "
                 f"{(f'{mfu:.1%}' if mfu else 'n/a'):>8}  {dry_run.size(r.get('peak_bytes')):>11}  "
                 f"{dry_run.size(r.get('collective_bytes')):>11}  {r['overrides']}")
  return "\n".join(lines)
