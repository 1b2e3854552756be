#!/usr/bin/env bash
# The controls of the BLPO ablation (chapter 9): 10 seeds on CartPole-v1 and Acrobot-v1, 500k steps.
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run in the folder).
#   bash tools/sweep_blpo_ablation.sh [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=results/blpo_ablation
COMMON=(--envs CartPole-v1 Acrobot-v1 --seeds 0 1 2 3 4 5 6 7 8 9 --steps 500000 --out "$OUT" --no-progress "$@")
# the four algorithms on CartPole seeds 5-9 (results/blpo has seeds 0-4 there, and 10 on Acrobot)
"$PY" -m birl_lite.experiments --algos ppo ppo-nested blpo-cg blpo-nystrom --envs CartPole-v1 \
    --seeds 5 6 7 8 9 --steps 500000 --out "$OUT" --no-progress "$@"
# a random correction of the same norm
"$PY" -m birl_lite.experiments --algos blpo-nystrom --set correction_control=random "${COMMON[@]}"
# more critic optimisation without nesting: PPO with 3 critic steps on the rollout's advantages
"$PY" -m birl_lite.experiments --algos ppo --set ppo_critic_steps=3 "${COMMON[@]}"
# the correction bound beta in {0, 0.2} (1 is the default above)
"$PY" -m birl_lite.experiments --algos blpo-nystrom --set correction_bound=0.2 "${COMMON[@]}"
"$PY" -m birl_lite.experiments --algos blpo-nystrom --set correction_bound=0.0 "${COMMON[@]}"
# the authors' settings (chapter 9, section 9.10; AUTHORS_PRESET), then also their estimator
"$PY" -m birl_lite.experiments --algos ppo ppo-nested blpo-cg blpo-nystrom --set preset=authors "${COMMON[@]}"
"$PY" -m birl_lite.experiments --algos blpo-nystrom \
    --set preset=authors mixed_term=authors nystrom_indices=fixed "${COMMON[@]}"
