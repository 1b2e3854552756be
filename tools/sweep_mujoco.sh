#!/usr/bin/env bash
# Continuous control (issue 14, chapter 9): PPO, PPO + nesting, BLPO-CG and BLPO-Nystrom on four
# MuJoCo tasks, 5 seeds, 1M steps, with CleanRL's continuous-control settings (make_config applies
# CONTINUOUS_PRESET to every MuJoCo id: 1 env x 2048 steps, 32 minibatches, 10 epochs, lr 3e-4
# annealed, normalized observations and rewards; ppo on shuffled single transitions, the nested
# algorithms on 64-step chunks; see birl_lite/actor_critic/config.py).
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run in the folder).
#   bash tools/sweep_mujoco.sh [--workers N]
#
# Measured cost (Hopper-v5, 1M steps, seeds 2-4, --workers 2 on an otherwise idle 2-core machine,
# nice): ppo 9-11 min per run, ppo-nested 9-11, blpo-nystrom 14-16, blpo-cg 18-20, i.e. ~54 core-
# minutes (~27 min of the machine) per (task, seed) for the four algorithms. An earlier estimate from
# 20,480-step runs said Walker2d-v5 steps at about Hopper's speed, HalfCheetah-v5 and
# InvertedDoublePendulum-v5 faster: 4 tasks x 5 seeds x ~27 min = ~9 hours of the 2-core machine.
# Walker2d-v5, seeds 2-4, on a slower 2-core machine (AMD EPYC, ~1.45x the CPU time per step) and
# under changing load: 24-37 min per run. HalfCheetah-v5 on that machine, seeds 2-4, two instances
# of this script with --workers 1: ppo 15 min, ppo-nested 16-17, blpo-nystrom 24-26, blpo-cg 32-33.
# With --workers 1 the runs go through no Ray at all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=results/mujoco
# one task at a time (seed-major inside each command), so that early results cover whole tasks
for ENV in Hopper-v5 Walker2d-v5 HalfCheetah-v5 InvertedDoublePendulum-v5; do
    "$PY" -m birl_lite.experiments --algos ppo ppo-nested blpo-cg blpo-nystrom --envs "$ENV" \
        --seeds 0 1 2 3 4 --steps 1000000 --out "$OUT" --no-progress "$@"
done
