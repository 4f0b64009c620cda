"""The planner's step-time model: compute, HBM and communication terms of one training step.

Per chip, from the executed program (hlo_program.py) and the datasheet (datasheets.py):
  compute = executed FLOPs / peak bf16 FLOP/s
  memory  = executed HBM bytes / HBM bandwidth
  comm    = bytes sent inside the slice / ICI bandwidth + bytes sent across slices / DCN bandwidth
A chip overlaps compute with its own memory traffic (a roofline), so the local time is
max(compute, memory). Communication may run fully behind it (XLA's async collectives and
latency-hiding scheduler at best) or not at all, which bounds the step time:
  full overlap: max(compute, memory, comm)      (a lower bound: nothing runs faster)
  no overlap:   max(compute, memory) + comm     (what a step costs if nothing overlaps)
MFU = formula FLOPs / (step time x peak) gives the range; the largest term is the one that
binds. Terms whose figures are unknown (a CPU device, a link without a published figure) are
left out and named in `missing`.
"""
from __future__ import annotations

from typing import Any, Optional

from vit_jax.planning import datasheets


def estimate(*, flops: Optional[float], bytes_accessed: Optional[float], ici_bytes: float,
             dcn_bytes: float, model_flops: Optional[float],
             sheet: Optional[datasheets.Datasheet]) -> dict[str, Any]:
  """{'terms_s', 'bound_by', 'step_time_full_overlap_s', 'step_time_no_overlap_s',
  'mfu_range', 'missing'} for one step on one chip (an empty dict without a peak figure)."""
  if sheet is None or not flops:
    return {}
  terms: dict[str, float] = {"compute": flops / sheet.peak_bf16_flops}
  missing = []
  if bytes_accessed and sheet.hbm_bytes_per_s:
    terms["memory"] = bytes_accessed / sheet.hbm_bytes_per_s
  elif bytes_accessed:
    missing.append("memory (no HBM bandwidth figure)")
  links = (("ici", ici_bytes, sheet.ici_bytes_per_s, "no interconnect figure"),
           ("dcn", dcn_bytes, sheet.dcn_bytes_per_s, "no data-centre network figure"))
  for link, sent, bandwidth, unknown in links:
    if sent and bandwidth:
      terms[link] = sent / bandwidth
    elif sent:
      missing.append(f"{link} ({unknown})")
  comm = terms.get("ici", 0.0) + terms.get("dcn", 0.0)
  local = max(terms["compute"], terms.get("memory", 0.0))
  full, none = max(local, comm), local + comm
  bound_by = max(terms, key=terms.get)
  if comm > local:
    bound_by = "communication (" + " + ".join(k for k in ("ici", "dcn") if k in terms) + ")"
  out = {"terms_s": terms, "bound_by": bound_by, "step_time_full_overlap_s": full,
         "step_time_no_overlap_s": none, "missing": missing}
  if model_flops:
    peak = sheet.peak_bf16_flops
    out["mfu_range"] = (model_flops / (none * peak), model_flops / (full * peak))
  return out


def seconds(t: float) -> str:
  """A duration in ms (or us below 0.1 ms)."""
  return f"{t * 1e3:.2f} ms" if t >= 1e-4 else f"{t * 1e6:.1f} us"


def describe(model: dict[str, Any]) -> list[str]:
  """Report lines for an `estimate` result."""
  if not model:
    return []
  terms = model["terms_s"]
  parts = ", ".join(f"{k} {seconds(v)}" for k, v in terms.items())
  lines = [f"  step time: {seconds(model['step_time_full_overlap_s'])} (communication fully "
           f"overlapped) .. {seconds(model['step_time_no_overlap_s'])} (none overlapped); "
           f"bound by {model['bound_by']}",
           f"    terms per chip: {parts}"]
  if model.get("mfu_range"):
    lo, hi = model["mfu_range"]
    lines.append(f"    MFU {lo:.1%} .. {hi:.1%} (formula FLOPs over those step times)")
  if model.get("missing"):
    lines.append("    left out: " + "; ".join(model["missing"]))
  return lines
