"""What `--dry_run` and `--plan` print and write (main.py's planning entry point): one
analysis (dry_run.py) or the search (plan.py) on the local devices or a TPU slice."""
from __future__ import annotations

import json
from typing import Any, Optional

import jax

from vit_jax.planning import dry_run, plan as plan_lib


def _jsonable(r: dict[str, Any]) -> dict[str, Any]:
  return json.loads(json.dumps(r, default=str))


def run(config, *, topology_name: Optional[str] = None, num_slices: int = 1,
        plan: bool = False, json_path: Optional[str] = None) -> int:
  """Analyses (or plans) and prints on process 0; returns the exit status (1: does not fit)."""
  devices = dry_run.target_devices(topology_name, num_slices)
  if plan:
    result = plan_lib.plan(config, devices)
    text, status = plan_lib.format_plan(result), 0 if result["fitting"] else 1
  else:
    result = dry_run.analyse(config, devices)
    text, status = dry_run.format_report(result), 1 if result.get("fits") is False else 0
  if jax.process_index() == 0:
    print(text, flush=True)
    if json_path:
      with open(json_path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(result), f, indent=1)
  return status
