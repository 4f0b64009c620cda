"""What a compiled XLA program needs per device: memory (XLA's memory analysis), the FLOPs of
one execution (loops multiplied out, hlo_program.py), XLA's own static cost analysis, and the
compiler's out-of-memory message parsed.

Read from the compiled executable alone, so the same numbers come out for the local devices
and for abstract TPU devices.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from vit_jax.planning import hlo_program


def memory(compiled: Any) -> Optional[dict[str, int]]:
  """Per-device bytes of arguments, outputs, donated (aliased) buffers, temporaries and the peak."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (a backend without memory analysis)
    return None
  if stats is None:
    return None
  out = {"argument_bytes": int(stats.argument_size_in_bytes),
         "output_bytes": int(stats.output_size_in_bytes),
         "alias_bytes": int(stats.alias_size_in_bytes),
         "temp_bytes": int(stats.temp_size_in_bytes),
         "code_bytes": int(getattr(stats, "generated_code_size_in_bytes", 0) or 0)}
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                       + out["temp_bytes"])
  return out


def cost(compiled: Any) -> dict[str, Optional[float]]:
  """{'flops', 'bytes_accessed'} per device from XLA's cost analysis (None when not reported)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    analysis = None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  analysis = analysis or {}
  flops, accessed = analysis.get("flops"), analysis.get("bytes accessed")
  return {"flops": float(flops) if flops and flops > 0 else None,
          "bytes_accessed": float(accessed) if accessed and accessed > 0 else None}


_OOM = re.compile(r"(?P<what>[\w /]+?) \((?P<need>[\d.]+)(?P<unit>[KMGT])\) exceeds available "
                  r"HBM \((?P<have>[\d.]+)(?P<unit2>[KMGT])\)")


def parse_out_of_memory(message: str) -> Optional[dict[str, Any]]:
  """{'what', 'need_bytes', 'available_bytes'} from the TPU compiler's RESOURCE_EXHAUSTED text."""
  if "RESOURCE_EXHAUSTED" not in message and "exceeds available" not in message:
    return None
  scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
  match = _OOM.search(message)
  if not match:
    return {"what": "memory", "need_bytes": None, "available_bytes": None}
  what = re.sub(r"^(the )?total memory required for ", "", match.group("what").strip())
  return {"what": what,
          "need_bytes": float(match.group("need")) * scale[match.group("unit")],
          "available_bytes": float(match.group("have")) * scale[match.group("unit2")]}


def compiled_flops(compiled: Any) -> Optional[float]:
  """FLOPs of one execution of a compiled jit function on one device, every loop body counted
  as often as it runs (XLA's cost analysis counts it once: accumulation and scanned layers
  would shrink the figure and inflate MFU)."""
  try:
    text = compiled.as_text()
  except Exception:  # pylint: disable=broad-except  (a backend without HLO text)
    return cost(compiled)["flops"]
  flops = hlo_program.executed(text).flops
  return flops if flops > 0 else cost(compiled)["flops"]
