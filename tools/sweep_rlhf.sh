#!/usr/bin/env bash
# Chapter 10's experiment: neural RLHF on LunarLander-v3 (birl_lite.rlhf, issue 16), the
# true-reward baseline (arm "true": the same discrete SAC on the environment's reward) and the
# arms A-E (loss truncated full flipped ensemble), 10 seeds each, 150k agent steps after 5k
# random ones, 2,000 comparisons (200 initial), fragments of 25 steps, the agent's defaults of
# birl_lite.rlhf.loop (_default_sac: the configuration tuned on the true reward).
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run in the folder).
#   bash tools/sweep_rlhf.sh
# Estimated cost: measured 480-750 s of wall time per run (true 632 s; arm A 478 and 754 s) on the
# busy 2-core machine, one process (~2.5-4.5 ms per agent step; arms C/D ~1.2-1.3x arm A), so the
# 60 runs take ~10-12 h of wall time one at a time, ~6 h with two in parallel on an idle machine:
# `bash tools/sweep_rlhf.sh --seeds 0-4` and `... --seeds 5-9` in two shells (a later --seeds
# replaces the one below; runs in progress are locked, so overlapping plans are safe).
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
