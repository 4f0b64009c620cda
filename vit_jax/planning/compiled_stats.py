"""What a compiled XLA program needs per device: memory, FLOPs, bytes, collectives.

Read from the compiled executable alone (`memory_analysis`, `cost_analysis`, the optimised
HLO text), so the same numbers come out for the local devices and for abstract TPU devices.
Collectives are counted in the HLO text: every all-gather, reduce-scatter, all-reduce,
all-to-all and collective-permute (async `-start` forms included, `-done` not), with the
bytes of its result (for an async start, the last element of its tuple: the result buffer).
"""
from __future__ import annotations

import collections
import re
from typing import Any, Optional

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s(?P<op>" + "|".join(COLLECTIVES)
    + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[bsuf]\d+|bf16|c64|c128|f8e\w+)\[(?P<dims>[\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


def _dtype_bytes(dtype: str) -> float:
  if dtype in _DTYPE_BYTES:
    return _DTYPE_BYTES[dtype]
  if dtype.startswith("f8"):
    return 1
  bits = int(re.sub(r"\D", "", dtype) or 32)
  return bits / 8


def _array_bytes(match: re.Match) -> float:
  dims = [int(d) for d in match.group("dims").split(",") if d]
  count = 1
  for d in dims:
    count *= d
  return count * _dtype_bytes(match.group("dtype"))


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
  """{kind: {'count': n, 'bytes': total result bytes}} over the program's collectives."""
  out: dict[str, dict[str, float]] = collections.OrderedDict(
      (k, {"count": 0, "bytes": 0.0}) for k in COLLECTIVES)
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    arrays = list(_ARRAY.finditer(match.group("shape")))
    if not arrays:
      continue
    size = _array_bytes(arrays[-1]) if match.group("start") else sum(map(_array_bytes, arrays))
    entry = out[match.group("op")]
    entry["count"] += 1
    entry["bytes"] += size
  return out


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
  """FLOPs of one execution of a compiled jit function on one device (XLA cost analysis)."""
  return cost(compiled)["flops"]
