#!/usr/bin/env bash
# Sets up the test environment and runs the test suite (CPU, offline).
#   usage: bash scripts/test.sh [--fast] [--lint] [extra pytest args]
#     --fast  the fast tier: every test not marked `slow` (kill / multi-process / notebook /
#             long end-to-end runs / big compiles), a few minutes on 2 cores
#     --lint  also run the linter (ruff, configured in pyproject.toml) first
# Tests run in VIT_JAX_TEST_WORKERS parallel pytest workers (default: the CPU count, at most
# 4; 0 runs them in this process) and share one JAX compilation cache (tests/conftest.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FAST=0
LINT=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --fast) FAST=1 ;;
    --lint) LINT=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [[ "$LINT" == "1" ]]; then
  echo "[lint] ruff check ."
  ruff check .
fi
cpus="$(nproc 2>/dev/null || echo 2)"
WORKERS="${VIT_JAX_TEST_WORKERS:-$(( cpus < 4 ? cpus : 4 ))}"
PYTEST=(python -m pytest -q --durations=20)
if [[ "$WORKERS" != "0" ]]; then
  PYTEST+=(-n "$WORKERS" --dist worksteal)
fi
if [[ "$FAST" == "1" ]]; then
  PYTEST+=(-m "not slow")
fi
"${PYTEST[@]}" ${ARGS[@]+"${ARGS[@]}"}
