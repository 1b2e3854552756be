#!/usr/bin/env bash
# Continuous control (issue 14, chapter 9): PPO, PPO + nesting, BLPO-CG and BLPO-Nystrom on four
# MuJoCo tasks, 5 seeds, 1M steps, with CleanRL's continuous-control settings (make_config applies
# CONTINUOUS_PRESET to every MuJoCo id: 1 env x 2048 steps, 32 minibatches, 10 epochs, lr 3e-4
# annealed, normalized observations and rewards; ppo on shuffled single transitions, the nested
# algorithms on 64-step chunks; see birl_lite/actor_critic/config.py).
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run in the folder).
#   bash tools/sweep_mujoco.sh [--workers N]
#
# Estimated cost (measured: 20,480 steps of each algorithm on Hopper-v5, one core, nice, on a
# loaded 2-core machine, extrapolated): per 1M steps ppo ~10-12 min, ppo-nested ~15, blpo-cg ~19.5,
# blpo-nystrom ~18.7, i.e. ~64 min per (task, seed) for the four algorithms. Walker2d-v5 steps at
# about Hopper's speed, HalfCheetah-v5 and InvertedDoublePendulum-v5 faster (+-3 min per run).
# 4 tasks x 5 seeds x ~64 min = ~21 hours of one core; --workers 2 on an idle 2-core machine ~11 h.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=results/mujoco
# one task at a time (seed-major inside each command), so that early results cover whole tasks
for ENV in Hopper-v5 Walker2d-v5 HalfCheetah-v5 InvertedDoublePendulum-v5; do
    "$PY" -m birl_lite.experiments --algos ppo ppo-nested blpo-cg blpo-nystrom --envs "$ENV" \
        --seeds 0 1 2 3 4 --steps 1000000 --out "$OUT" --no-progress "$@"
done
