#!/usr/bin/env bash
# On a machine with a CUDA GPU: the GPU-marked tests, then the estimate-vs-CUDA proof.
# Both together stay under 8 minutes on one GPU; results in bench/results/gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
run() { if command -v uv >/dev/null 2>&1; then uv run "$@"; else "$@"; fi; }
if ! run python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run_gpu_checks: no CUDA GPU here; nothing to do" >&2
  exit 2
fi
status=0
timeout 200 bash -c "$(declare -f run); run python -m pytest -q -m gpu -p no:cacheprovider" || status=$?
timeout 280 bash -c "$(declare -f run); run python bench/gpu_check.py" || status=$?
exit "$status"
