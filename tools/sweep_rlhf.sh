#!/usr/bin/env bash
# Chapter 10's experiment: neural RLHF (birl_lite.rlhf, issue 16): the true-reward baseline (arm
# "true": the same discrete SAC on the environment's reward) and the arms A-E (loss truncated full
# flipped ensemble) on
#   * LunarLander-v3, 10 seeds: 150k agent steps after 5k random ones, 2,000 comparisons (200
#     initial), fragments of 25 steps, the agent's defaults of birl_lite.rlhf.loop (_default_sac,
#     tuned on the true reward); fragments inside episodes (absorbing=False, the default: padding
#     fragments with the absorbing state was measured worse on arm A, see RLHFConfig.absorbing);
#   * MinAtar/Breakout-v1, 5 seeds, into results/rlhf_minatar (chapter 10 reads results/rlhf as
#     one task; MinAtar runs can be committed as they finish): the LunarLander agent (not tuned for
#     MinAtar) with the CNN of birl_lite.rlhf.sac.ImageEncoder and one update every 4 environment
#     steps (the authors' and CleanRL's setting, half the LunarLander agent's updates: a pilot of the
#     true-reward arm, seed 0, rose from 1.4 to 5.6 in 100k agent steps), 100k agent steps, and
#     absorbing fragments: random Breakout episodes last ~10 steps (losing the ball ends them; 6%
#     last 25 steps or more), so windows of 25 steps inside episodes would come from those few only.
# Resumable: rerun to continue; finished runs are skipped (one JSON file per run in the folder);
# runs in progress elsewhere are locked, so two commands may share the folder.
#   bash tools/sweep_rlhf.sh                  (WORKERS=2 runs in parallel on a local Ray instance)
#   WORKERS=1 bash tools/sweep_rlhf.sh --seeds 0-4   (a later --seeds replaces the ones below)
# Measured cost, one run a core on the busy 2-core machine: LunarLander 480-1340 s per run (true
# 316-632 s; arm A 323-1340 s; arms C/D ~1.1-1.3x arm A), so its 60 runs take ~10-12 h one at a
# time, ~6 h with two workers on an idle machine; MinAtar Breakout (one update every 4 steps): its
# 30 committed runs took 501-996 s each, 5.9 core-hours in all (about 3 h with two workers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
COMMON=(--alternate 5000 --budget 2000 --initial-comparisons 200 --fragment-length 25
        --workers "$WORKERS" --no-progress)
LUNAR=(--envs LunarLander-v3 --steps 150000 --seeds 0-9 "${COMMON[@]}" --out results/rlhf)
MINATAR=(--envs MinAtar/Breakout-v1 --steps 100000 --seeds 0-4 --set absorbing=true
         --sac update_every=4 "${COMMON[@]}" --out results/rlhf_minatar)
# the true-reward baseline and the standard RLHF loop first (the issue's "arm A learns" target)
"$PY" -m birl_lite.rlhf --arms true loss "${LUNAR[@]}" "$@"
# arm A with the learned reward standardized for the agent (RLHFConfig.normalize_reward; chapter 10,
# section 10.4), all seeds: a variant of arm A, compared with plain arm A on the same seeds
NORM=(--set normalize_reward=true --sac reward_scale=1)
"$PY" -m birl_lite.rlhf --arms loss "${LUNAR[@]}" "${NORM[@]}" "$@"
# the hyper-term arms and the exploration control in the plain setting of arm A (the normalized
# variant was measured level with it on 10 seeds, so the arms are compared with the plain arm A's
# 10 committed seeds, paired)
"$PY" -m birl_lite.rlhf --arms truncated "${LUNAR[@]}" "$@"
# arm B with the authors' delay: the hyper term off for the first 100k agent steps (their code:
# `global_step <= 1e5`), so that it starts on a reward model learned without it
"$PY" -m birl_lite.rlhf --arms truncated "${LUNAR[@]}" --hyper-delay 100000 "$@"
"$PY" -m birl_lite.rlhf --arms full flipped ensemble "${LUNAR[@]}" "$@"
# MinAtar Breakout, all arms
"$PY" -m birl_lite.rlhf --arms true loss truncated full flipped ensemble "${MINATAR[@]}" "$@"
