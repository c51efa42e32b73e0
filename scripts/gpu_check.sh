#!/usr/bin/env bash
# The GPU check of issues 13 and 14, in under 10 minutes on one GPU:
#   1. the CUDA-only tests (tests/test_cuda.py: kill and resume, deterministic repeat, bf16, TF32,
#      CPU against CUDA, host syncs under torch.cuda.set_sync_debug_mode);
#   2. `evcf bench` at ML-20M's shape for Mult-VAE and Vamp on CUDA, params.yaml's recipes, 20 timed
#      steps of each path after 3 warm-up ones, written to results/bench/cuda.json (commit it);
#   3. TF32's and bf16's effect on test NDCG@100: Mult-VAE on the synthetic data, 3 seeds, trained in
#      fp32, TF32 and bf16 (scripts/numerics_check.py), written to results/bench/numerics-cuda.json.
# Run from anywhere, with the environment whose torch sees CUDA active (or PYTHON=/path/to/python):
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ] && [ "$PYTHON" = python ]; then
    PYTHON=.venv/bin/python
fi
OUT=${OUT:-results/bench/cuda.json}
started=$(date +%s)

"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} cannot see CUDA (CUDA build: {torch.version.cuda}); "
             "install the CUDA wheel that matches the driver, or run this on a GPU node")
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

echo "gpu_check: 1/3 CUDA tests"
timeout 180 "$PYTHON" -m pytest -q -rxXs -p no:cacheprovider tests/test_cuda.py

echo "gpu_check: 2/3 evcf bench at the ML-20M shape on CUDA -> $OUT"
mkdir -p "$(dirname "$OUT")"
timeout 240 "$PYTHON" -m evcf.cli --log-level INFO bench --shape ml-20m --models mult-vae vamp \
    --params params.yaml --device cuda --steps 20 --warmup 3 --skip-preprocess --out "$OUT"

NUMERICS=$(dirname "$OUT")/numerics-cuda.json
echo "gpu_check: 3/3 fp32 / TF32 / bf16 test NDCG@100 on the synthetic data -> $NUMERICS"
timeout 200 "$PYTHON" scripts/numerics_check.py --device cuda --models mult-vae --seeds 1 2 3 \
    --settings fp32 tf32 bf16 --out "$NUMERICS"

echo "gpu_check: done in $(( $(date +%s) - started )) s; commit $OUT and $NUMERICS"
