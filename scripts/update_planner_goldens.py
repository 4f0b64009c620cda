r"""Rewrites tests/planning/planner_goldens.json: the planner's figures for the guard cases.

  python scripts/update_planner_goldens.py [--check]

Compiles each case of tests/planning/golden_cases.py for its TPU slice (libtpu, no TPU), prints
what moved against the current file and writes the new figures (--check: print only, exit 1 if
anything moved). Run it only when a change is meant to move the figures; say why in the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "planning"))
GOLDENS = ROOT / "tests" / "planning" / "planner_goldens.json"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="print the diff only")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import golden_cases  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  old = json.loads(GOLDENS.read_text())["cases"] if GOLDENS.exists() else {}
  new, moved = {}, False
  for name in sorted(golden_cases.CASES):
    new[name] = golden_cases.figures(name)
    diff = golden_cases.differences(old.get(name, {}), new[name]) if name in old else ["  new"]
    moved |= bool(diff)
    print(f"{name}: " + ("unchanged" if not diff else "\n" + "\n".join(diff)), flush=True)
  if args.check:
    return 1 if moved else 0
  import libtpu  # pylint: disable=g-import-not-at-top
  meta = {"jax": jax.__version__, "libtpu": getattr(libtpu, "__version__", "?"),
          "tolerance": golden_cases.TOLERANCE}
  GOLDENS.write_text(json.dumps({"about": meta, "cases": new}, indent=1, sort_keys=True) + "\n")
  print(f"wrote {GOLDENS}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
