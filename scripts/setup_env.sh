#!/usr/bin/env bash
# Creates (or reuses) the virtualenv at $VENV (default: .venv) and installs the
# pinned requirements plus this package in editable mode.
#   usage: source scripts/setup_env.sh [runtime|test]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
KIND="${1:-runtime}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Nothing to install when the requirement files and setup.cfg are unchanged since the last
# successful setup of this kind (a second quickstart run prints no pip output).
stamp_file="$VENV/.vit_jax_setup_$KIND"
stamp="$(cat "$ROOT"/requirements*.txt "$ROOT/setup.cfg" 2>/dev/null | sha256sum | cut -d' ' -f1) ${VIT_JAX_INTEROP_TESTS:-1}"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] && python -c "import vit_jax" 2>/dev/null; then
  echo "[setup] environment up to date: $VENV ($(python --version))"
  # Sourced (the usual way): return to the caller; run directly: exit.
  # shellcheck disable=SC2317
  return 0 2>/dev/null || exit 0
fi
rm -f "$stamp_file"
pip install -q --upgrade pip
if [[ "$KIND" == "test" ]]; then
  pip install -q -r "$ROOT/requirements-test.txt"
  # Independent reference implementations for the interop tests (PyTorch CPU
  # + Hugging Face transformers). Optional: tests that need them are skipped,
  # with a reason, when they cannot be installed.
  if [[ "${VIT_JAX_INTEROP_TESTS:-1}" == "1" ]]; then
    pip install -q -r "$ROOT/requirements-interop.txt" \
      || echo "[setup] interop test dependencies not installed; those tests will be skipped"
    # timm's own dependencies (torch, safetensors, huggingface-hub, PyYAML) are
    # pinned above; --no-deps keeps pip from pulling torchvision, which does not
    # import beside the CPU torch wheel (the tests stub the one import timm makes).
    pip install -q --no-deps "timm==1.0.31" \
      || echo "[setup] timm not installed; the timm interop tests will be skipped"
  fi
else
  pip install -q -r "$ROOT/requirements.txt"
fi
# Wheels that require `tensorflow` (we install tensorflow-cpu): without their dependencies.
pip install -q --no-deps -r "$ROOT/requirements-nodeps.txt"
pip install -q --no-deps -e "$ROOT"
echo "$stamp" > "$stamp_file"
echo "[setup] environment ready: $VENV ($(python --version))"
