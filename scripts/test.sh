#!/usr/bin/env bash
# Sets up the test environment and runs the whole test suite (CPU, offline).
#   usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python -m pytest -q "$@"
