#!/usr/bin/env bash
# Chapter 10's experiment: neural RLHF on LunarLander-v3 (birl_lite.rlhf, issue 16), the
# true-reward baseline (arm "true": the same discrete SAC on the environment's reward) and the
# arms A-E (loss truncated full flipped ensemble), 10 seeds each, 150k agent steps after 5k
# random ones, 2,000 comparisons (200 initial), fragments of 25 steps, the agent's defaults of
# birl_lite.rlhf.loop (_default_sac: the configuration tuned on the true reward).
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run in the folder).
#   bash tools/sweep_rlhf.sh
# Estimated cost: ~4-5 min of CPU per run on this machine kind (2.5-4.5 ms of wall time per agent
# step on a busy 2-core machine, one core per run; arms C/D ~1.2x), so 60 runs ~ 5 h of one core,
# 6-10 h of wall time when the machine is shared. Two at a time with `... --seeds 0-4` and
# `... --seeds 5-9` in two shells (runs in progress are locked, so overlapping plans are safe).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=results/rlhf
COMMON=(--envs LunarLander-v3 --steps 150000 --alternate 5000 --budget 2000
        --initial-comparisons 200 --fragment-length 25 --out "$OUT" "$@")
# the true-reward baseline and the standard RLHF loop first (the issue's "arm A learns" target)
"$PY" -m birl_lite.rlhf --arms true loss --seeds 0-9 "${COMMON[@]}"
# the hyper-term arms and the exploration control
"$PY" -m birl_lite.rlhf --arms truncated full flipped ensemble --seeds 0-9 "${COMMON[@]}"
