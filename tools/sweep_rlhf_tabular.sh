#!/usr/bin/env bash
# The experiment of chapter 6: reward learning from comparisons, arms A-E (birl_lite.rlhf_tabular).
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run).
#   bash tools/sweep_rlhf_tabular.sh          (about 45 minutes on one core)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GRID=(--lengths 1 5 25 --budgets 60 600)
# 1. step sizes, per arm and setting, on tuning seeds 100-104 (kept apart from the reported seeds)
"$PY" -m birl_lite.rlhf_tabular "${GRID[@]}" --lrs 0.01 0.03 0.1 0.3 1 3 10 30 100 --hyper-scales 1 0.1 0.01 \
    --seeds 100-104 --out results/rlhf_tabular/tuning --quiet
# 2. the reported runs: 20 seeds at each setting's tuned step size
"$PY" -m birl_lite.rlhf_tabular "${GRID[@]}" --tuned-from results/rlhf_tabular/tuning \
    --hyper-scales 1 0.1 0.01 --seeds 0-19 --out results/rlhf_tabular/runs --quiet
# 3. the authors' optimizer: Adam (step lr, not lr / L) for arms A-D at the exact coefficient
"$PY" -m birl_lite.rlhf_tabular "${GRID[@]}" --arms loss truncated full flipped --optimizer adam \
    --lrs 0.001 0.003 0.01 0.03 0.1 0.3 --seeds 100-104 --out results/rlhf_tabular/tuning --quiet
"$PY" -m birl_lite.rlhf_tabular "${GRID[@]}" --arms loss truncated full flipped --optimizer adam \
    --tuned-from results/rlhf_tabular/tuning --seeds 0-19 --out results/rlhf_tabular/runs --quiet
