"""The guard for compiled programs: per-chip figures of a few tiny TPU compiles vs the goldens.

A change that moves any figure by more than 2% fails with the diff. If the move is intended,
regenerate the file with `python scripts/update_planner_goldens.py` and say why in the commit.
"""
import json
import pathlib

import golden_cases
import pytest

GOLDENS = pathlib.Path(__file__).with_name("planner_goldens.json")

try:
  import libtpu  # noqa: F401  pylint: disable=unused-import
  HAS_LIBTPU = True
except ImportError:
  HAS_LIBTPU = False


@pytest.mark.skipif(not HAS_LIBTPU, reason="pip install -r requirements-tpu.txt")
@pytest.mark.parametrize("name", sorted(golden_cases.CASES))
def test_compiled_figures_match_the_goldens(name):
  goldens = json.loads(GOLDENS.read_text())
  assert name in goldens["cases"], f"{name}: no golden; run scripts/update_planner_goldens.py"
  diff = golden_cases.differences(goldens["cases"][name], golden_cases.figures(name))
  assert not diff, (f"{name}: figures moved by more than {golden_cases.TOLERANCE:.0%}:\n"
                    + "\n".join(diff) + "\nIf intended: python scripts/update_planner_goldens.py "
                    "and say why in the commit message.")


def test_every_golden_has_a_case():
  goldens = json.loads(GOLDENS.read_text())
  assert set(goldens["cases"]) == set(golden_cases.CASES)
