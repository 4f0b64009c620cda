"""The planner's guard cases: tiny ViTs compiled for small TPU slices (seconds each on 2 cores).

Shared by tests/planning/test_planner_goldens.py (checks the figures against
planner_goldens.json) and scripts/update_planner_goldens.py (rewrites that file, deliberately).
"""
from __future__ import annotations

from typing import Any

# name: (slice, num_slices, config overrides)
CASES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "ti-v5e8-data": ("v5e:2x4", 1, {"mesh": (("data", -1),)}),
    "ti-v5p8-fsdp": ("v5p:2x2x1", 1, {"mesh": (("fsdp", -1),)}),
    "ti-v5e8-fsdp2-model2-scan-accum2-remat": (
        "v5e:2x4", 1, {"mesh": (("fsdp", -1), ("model", 2)), "model.scan_layers": True,
                       "accum_steps": 2, "model.remat": True}),
    "ti-2xv5e4-data": ("v5e:2x2", 2, {"mesh": (("data", -1),)}),
}
# The figures compared, per chip; each must stay within TOLERANCE (relative) of its golden.
FIGURES = ("peak_bytes", "params_bytes", "opt_state_bytes", "flops_per_device",
           "bytes_accessed_per_device", "ici_bytes", "dcn_bytes", "step_time_bound_s",
           "step_time_no_overlap_s")
TOLERANCE = 0.02


def config(overrides: dict[str, Any]):
  """A 2-layer ViT (width 64, 8x8 patches, 32 px) pretraining config; opens no dataset."""
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.model_name = "ViT-Ti_16"
  with c.unlocked():
    c.model.hidden_size = 64
    c.model.patches = {"size": (8, 8)}
    c.model.transformer.mlp_dim = 128
    c.model.transformer.num_heads = 4
    c.model.transformer.num_layers = 2
  c.dataset, c.num_classes = "cifar10", None
  c.optimizer, c.pp.crop, c.batch, c.batch_eval = "adamw", 32, 32, 32
  c.total_steps, c.warmup_steps = 0, 500
  with c.unlocked():
    c.update_from_flattened_dict(overrides)
  return c


def figures(name: str) -> dict[str, Any]:
  """The golden figures of one case, freshly compiled."""
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  slice_name, num_slices, overrides = CASES[name]
  r = dry_run.analyse(config(overrides), dry_run.target_devices(slice_name, num_slices))
  return guarded(r)


def guarded(r: dict[str, Any]) -> dict[str, Any]:
  """The figures of an analyse() result that the guard compares."""
  out = {k: r.get(k) for k in FIGURES}
  out["collectives"] = {k: {"count": v["count"], "bytes": v["bytes"],
                            "sent": v["ici_bytes"] + v["dcn_bytes"]}
                        for k, v in (r.get("collectives") or {}).items() if v["count"]}
  return out


def flatten(figs: dict[str, Any]) -> dict[str, float]:
  """{'flops_per_device': x, 'collectives.all-reduce.bytes': y, ...} for comparison."""
  flat = {k: v for k, v in figs.items() if k != "collectives"}
  for kind, entry in figs.get("collectives", {}).items():
    for key, value in entry.items():
      flat[f"collectives.{kind}.{key}"] = value
  return flat


def differences(golden: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """One line per figure that moved by more than TOLERANCE (or appeared / disappeared)."""
  old, new = flatten(golden), flatten(now)
  lines = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if a is None or b is None:
      if a != b:
        lines.append(f"  {key}: {a} -> {b}")
      continue
    if abs(b - a) > TOLERANCE * max(abs(a), 1e-30):
      lines.append(f"  {key}: {a:.6g} -> {b:.6g} ({(b - a) / a:+.1%})" if a else
                   f"  {key}: {a} -> {b}")
  return lines
