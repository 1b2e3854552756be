"""The numbers that a task's reading in chapter 9, section 9.11 quotes, from ``results/mujoco``.

For each algorithm: seeds present, final returns, their mean, the mean return at 200k steps and
the wall and CPU time of each run in minutes; then the paired differences of section 9.7 (area
under the whole curve and final return: mean, 95% half-width, seeds ahead, ties) for the
comparisons the chapter tabulates, and the per-seed ratios of wall and of CPU time to PPO's
(where both runs have one: runs written before ``cpu_time`` was recorded lack it). The chapter's
hidden asserts check the same numbers; this script is for writing the text.

Run:  python tools/mujoco_numbers.py InvertedDoublePendulum-v5 [--dir results/mujoco]
"""

from __future__ import annotations

import argparse

import numpy as np

from birl_lite.experiments import (
    curve_auc,
    curve_value_at,
    group_results,
    load_results,
    paired_table,
    per_seed_ratios,
)

ALGOS = ("ppo", "ppo-nested", "blpo-cg", "blpo-nystrom")
MAIN = (
    ("nested - ppo", "ppo-nested", "ppo"),
    ("nystrom - nested", "blpo-nystrom", "ppo-nested"),
    ("cg - nested", "blpo-cg", "ppo-nested"),
    ("nystrom - ppo", "blpo-nystrom", "ppo"),
)
METRICS = {
    "AUC 0-1M": lambda r: curve_auc(r, 1_000_000),
    "final": lambda r: r["final_return"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", help="gymnasium id, e.g. HalfCheetah-v5")
    parser.add_argument("--dir", default="results/mujoco", help="results folder")
    args = parser.parse_args()
    groups = group_results([r for r in load_results(args.dir) if r["env_id"] == args.env])
    if not groups:
        raise SystemExit(f"no runs of {args.env} in {args.dir}")
    for algo in ALGOS:
        runs = groups.get((args.env, algo), [])
        if not runs:
            print(f"{algo:<14} no runs")
            continue
        finals = [r["final_return"] for r in runs]
        print(
            f"{algo:<14} seeds {[r['seed'] for r in runs]}  final {[round(x) for x in finals]}"
            f"  mean {np.mean(finals):.0f}  at 200k "
            f"{np.mean([curve_value_at(r, 200_000) for r in runs]):.0f}"
            f"  minutes {[round(r['wall_time'] / 60, 1) for r in runs]}"
            f"  CPU minutes {[_cpu_minutes(r) for r in runs]}"
        )
    print(f"\n{'paired (a - b)':<18}{'n':>3}" + "".join(f"{m:>26}" for m in METRICS))
    for name, a, b in MAIN:
        A, B = groups.get((args.env, a), []), groups.get((args.env, b), [])
        common = sorted({r["seed"] for r in A} & {r["seed"] for r in B})
        if not common:
            continue
        rows = paired_table(A, B, METRICS, seeds=common)
        cells = "".join(f"{r.mean:+10.1f} ± {r.half:7.1f} >{r.wins} ={r.ties}" for r in rows)
        print(f"{name:<18}{len(common):>3}{cells}")
    ppo = groups.get((args.env, "ppo"), [])
    ppo_seeds = {r["seed"] for r in ppo}
    for key, what in (("wall_time", "wall time"), ("cpu_time", "CPU time")):
        print(f"\n{what} / PPO's, per seed (where both runs have one)")
        for algo in ALGOS[1:]:
            runs = [r for r in groups.get((args.env, algo), []) if r["seed"] in ppo_seeds]
            ratios = per_seed_ratios(runs, ppo, key)
            cells = [f"{r['seed']}: {x:.2f}" for r, x in zip(runs, ratios, strict=True) if x]
            print(f"{algo:<14} {', '.join(cells)}")


def _cpu_minutes(record: dict) -> float | None:
    cpu = record.get("cpu_time")
    return None if cpu is None else round(cpu / 60, 1)


if __name__ == "__main__":
    main()
