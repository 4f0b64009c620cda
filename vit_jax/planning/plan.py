"""--plan: search meshes and memory knobs for what fits, ranked by the step-time model.

For each mesh split data x fsdp x model of the devices (model in 1, 2, 4; fsdp 1, 8, 16 or all
the rest) the memory ladder below is compiled in order, cheapest in compute first, until one
rung fits: no remat, remat keeping the matmul outputs ('dots_saveable'), keeping those without
batch dimensions, full remat, full remat with those outputs offloaded to host memory (TPU and
GPU only), then full remat with accum_steps 2 and 4 (half and a quarter of the per-chip
micro-batch), then bfloat16 optimizer moments, then the factored Adafactor (its second moment
is two vectors per matrix). So a mesh that fits costs one compile and the count is bounded by
len(LADDER) per mesh (said before it starts, each compile's time after). The last two rungs
change the optimizer state; their rows say so.

What is a row and what is an error: a mesh whose batch does not divide, a program that does not
fit, and a shape the compiler refuses are skipped rows, each with its reason. Anything else (a
typo in a config value, an unknown optimizer) is the user's error and raises, so the command
exits 2 with that one line instead of "nothing fits".

Fitting rows are ranked by the no-overlap step time (compute/HBM roofline plus communication,
step_time.py), so a plan that moves more bytes between chips ranks behind one that moves fewer
at the same FLOPs; the full-overlap time and the MFU range are shown beside it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

from vit_jax.planning import compiled_stats, dry_run

MODEL_AXES = (1, 2, 4)
FSDP_SIZES = (1, 8, 16)


@dataclasses.dataclass(frozen=True)
class Rung:
  """One setting of the memory knobs."""
  remat_policy: Optional[str]  # None: no remat
  accum_steps: int = 1
  optim_dtype: Optional[str] = None  # None: the config's
  optimizer: Optional[str] = None    # None: the config's
  backends: tuple[str, ...] = ()     # only on these platforms ('' = all)

  def overrides(self) -> dict[str, Any]:
    out: dict[str, Any] = {"model.remat": self.remat_policy is not None,
                           "accum_steps": self.accum_steps}
    out["model.remat_policy"] = self.remat_policy
    if self.optim_dtype:
      out["optim_dtype"] = self.optim_dtype
    if self.optimizer:
      out["optimizer"] = self.optimizer
    return out


LADDER = (
    Rung(None),
    Rung("dots_saveable"),
    Rung("dots_with_no_batch_dims_saveable"),
    Rung("full"),
    Rung("offload_dots_with_no_batch_dims", backends=("tpu", "gpu", "cuda", "rocm")),
    Rung("full", accum_steps=2),
    Rung("full", accum_steps=4),
    Rung("full", accum_steps=4, optim_dtype="bfloat16"),
    Rung("full", accum_steps=4, optim_dtype="bfloat16", optimizer="adafactor"),
)


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


def _variant(config, mesh, rung: Rung):
  variant = config.copy_and_resolve_references()
  with variant.unlocked():
    variant.mesh = mesh
    variant.update_from_flattened_dict(rung.overrides())
  return variant


def _flag(key: str, value: Any) -> str:
  return f"--config.{key}={value}"


def overrides(mesh, rung: Rung) -> str:
  """The --config.* flags that select one planned configuration."""
  pairs = ", ".join(f'("{a}", {s})' for a, s in mesh if s > 1) or '("data", -1)'
  return " ".join([f"--config.mesh='({pairs},)'"]
                  + [_flag(k, v) for k, v in rung.overrides().items() if v is not None])


def _batch_reason(batch: int, mesh, rung: Rung) -> Optional[str]:
  """Why the global batch cannot be split over this mesh and accumulation, or None."""
  shards = dict(mesh)["data"] * dict(mesh)["fsdp"]
  if batch % rung.accum_steps:
    return f"batch {batch} does not divide into {rung.accum_steps} micro-batches"
  if (batch // rung.accum_steps) % shards:
    return (f"micro-batch {batch // rung.accum_steps} does not divide over data x fsdp = "
            f"{shards} chips")
  return None


def _compiler_refused(error: Exception) -> Optional[str]:
  """The compiler's first line when `error` is XLA refusing the program (not a config error)."""
  name = type(error).__name__
  text = str(error)
  if name in ("XlaRuntimeError", "JaxRuntimeError") or text.startswith(
      ("INVALID_ARGUMENT", "UNIMPLEMENTED", "INTERNAL", "FAILED_PRECONDITION")):
    return text.strip().splitlines()[0][:300] if text.strip() else name
  return None


def plan(config, devices: Sequence[Any]) -> dict[str, Any]:
  """Compiles the grid (pruned as the module doc says); returns every attempt and the fits."""
  meshes = candidate_meshes(len(devices))
  platform = devices[0].platform
  ladder = [r for r in LADDER if not r.backends or platform in r.backends]
  print(f"Plan: {len(meshes)} meshes x up to {len(ladder)} compiles each "
        f"(at most {len(ladder) * len(meshes)}), {len(devices)} x {devices[0].device_kind}.",
        flush=True)
  attempts, fitting, skipped = [], [], []
  for mesh in meshes:
    for rung in ladder:
      flags = overrides(mesh, rung)
      reason = _batch_reason(int(config.batch), mesh, rung)
      if reason:
        skipped.append({"overrides": flags, "reason": reason})
        continue
      start = time.perf_counter()
      try:
        r = dry_run.analyse(_variant(config, mesh, rung), devices)
      except Exception as e:  # pylint: disable=broad-except  (only compiler refusals are rows)
        refused = _compiler_refused(e)
        if refused is None or compiled_stats.parse_out_of_memory(str(e)) is not None:
          raise
        skipped.append({"overrides": flags, "reason": f"compiler refused: {refused}"})
        print(f"  {flags}: compiler refused ({time.perf_counter() - start:.1f} s)", flush=True)
        continue
      r.update(mesh_config=mesh, overrides=flags, rung=dataclasses.asdict(rung))
      attempts.append(r)
      fits = r.get("fits") is not False
      print(f"  {flags}: {'fits' if fits else 'does not fit'} "
            f"({time.perf_counter() - start:.1f} s)", flush=True)
      if fits:
        fitting.append(r)
        break
      skipped.append({"overrides": flags, "reason": _does_not_fit(r)})
  fitting.sort(key=_rank)
  return {"attempts": attempts, "fitting": fitting, "skipped": skipped,
          "compiles": len(attempts)}


def _does_not_fit(r: dict[str, Any]) -> str:
  need = r.get("need_bytes") if r.get("compiler_error") else r.get("peak_bytes")
  have = r.get("available_bytes") if r.get("compiler_error") else r.get("capacity_bytes")
  return f"does not fit: needs {dry_run.size(need)} per chip, {dry_run.size(have)} available"


def _rank(r: dict[str, Any]) -> tuple[float, float]:
  inf = float("inf")
  return (r.get("step_time_no_overlap_s") or inf, r.get("step_time_bound_s") or inf)


def _ms(t: Optional[float]) -> str:
  return f"{t * 1e3:.2f}" if t else "n/a"


def format_plan(result: dict[str, Any]) -> str:
  """The table of fitting configurations, fastest first, the flags to copy, the skipped rows."""
  lines = []
  if not result["fitting"]:
    lines.append(f"No configuration of the grid fits ({result['compiles']} compiles). "
                 "Try a larger slice or a smaller --config.batch.")
  else:
    lines += [f"{len(result['fitting'])} configurations fit ({result['compiles']} compiles), "
              "fastest first (step time with no communication overlapped):",
              f"  {'step ms':>9}  {'overlap':>8}  {'MFU':>13}  {'bound by':>10}  "
              f"{'peak/chip':>11}  {'sent/chip':>10}  flags"]
    for r in result["fitting"]:
      mfu = r.get("mfu_range")
      mfu_text = f"{mfu[0]:.0%}..{mfu[1]:.0%}" if mfu else "n/a"
      sent = (r.get("ici_bytes") or 0.0) + (r.get("dcn_bytes") or 0.0)
      bound = str(r.get("bound_by") or "n/a").split(" ")[0]
      lines.append(f"  {_ms(r.get('step_time_no_overlap_s')):>9}  "
                   f"{_ms(r.get('step_time_bound_s')):>8}  {mfu_text:>13}  {bound:>10}  "
                   f"{dry_run.size(r.get('peak_bytes')):>11}  {dry_run.size(sent):>10}  "
                   f"{r['overrides']}")
      if r["rung"].get("optimizer") or r["rung"].get("optim_dtype"):
        lines.append("      (this row changes the optimizer state: check the recipe still holds)")
  if result.get("skipped"):
    lines.append(f"Skipped ({len(result['skipped'])}):")
    lines += [f"  {s['overrides']}: {s['reason']}" for s in result["skipped"]]
  return "\n".join(lines)
