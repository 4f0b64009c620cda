#!/usr/bin/env bash
# Sets up the environment and runs the main job: trains configs/quickstart.py on
# the embedded offline 'digits' dataset, then exports the weights as .npz.
#   usage: bash scripts/quickstart.sh [WORKDIR] [extra vit_jax.main flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh" runtime
cd "$ROOT"
# libtpu (pulled in by the test requirements, for planning TPU jobs on a CPU host) probes for
# TPU chips at start-up and prints warnings where there are none: pick the backend then.
if [[ -z "${JAX_PLATFORMS:-}" ]] && ! compgen -G "/dev/accel*" >/dev/null \
    && [[ ! -e /dev/vfio/0 ]] && python -c "import libtpu" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then export JAX_PLATFORMS=cuda,cpu; else export JAX_PLATFORMS=cpu; fi
fi
WORKDIR="${1:-workdirs/quickstart}"
shift || true
python -m vit_jax.main --config=configs/quickstart.py --workdir="$WORKDIR" "$@"
python -m vit_jax.export --workdir="$WORKDIR" --output="$WORKDIR/model.npz" --overwrite
echo "[quickstart] TensorBoard logs: tensorboard --logdir $WORKDIR"
echo "[quickstart] exported weights: $WORKDIR/model.npz (architecture: $WORKDIR/model.json)"
echo "[quickstart] classify digits: python -m vit_jax.datasets.digits /tmp/digits 3 &&" \
  "python -m vit_jax.inference --checkpoint $WORKDIR/model.npz /tmp/digits/*.png"
