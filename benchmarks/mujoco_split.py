"""Where a MuJoCo run's time goes (chapter 9, section 9.11): the rollout against the minibatch
updates, for PPO, PPO-nested, BLPO-CG and BLPO-Nystrom (and BLPO-Nystrom with the numpy backend,
``ACConfig(backend="numpy")``) with the continuous-control settings
(``CONTINUOUS_PRESET``: one env, rollouts of 2,048 steps, 10 epochs of 32 minibatches), one thread.

Each run is short (``--rollouts`` rollouts from a fresh start) and is timed by this thread's CPU
time, which a loaded machine (a sweep beside it) disturbs less than the wall clock. The update's
part is the CPU time spent inside the minibatch updates (the ``update`` hook of ``train``); the
rest of the run is the rollout's part (environment steps, the actor's forward pass, observation
and reward normalization, GAE and the nested algorithms' GAE matrices). Runs are interleaved over
the algorithms and repeated; the table gives medians.

The first rollouts of a run are what is timed, so the numbers describe the start of training:
later episodes are longer (fewer resets) and the learning rate is annealed, neither of which
changes the work per step much. Every algorithm first runs one untimed warm-up rollout.

Measured (2-core AMD EPYC, beside a two-worker MuJoCo sweep, ``nice -n 19``; defaults: 2 rollouts
per run, 3 repeats), CPU seconds per run and ratio to PPO:

    task                        ppo   rollout part   ppo-nested   blpo-cg   blpo-nystrom
    Hopper-v5                   4.71  2.66 (57%)     1.07x        1.94x     1.48x
    Walker2d-v5                 5.27  2.87 (54%)     0.96x        1.74x     1.54x
    HalfCheetah-v5              4.27  1.99 (46%)     1.00x        1.80x     1.46x
    InvertedDoublePendulum-v5   4.49  2.21 (49%)     1.07x        1.81x     1.46x

A later run with the numpy backend's row (same machine, beside the sweep; ``python
benchmarks/mujoco_split.py``, defaults): ratio to PPO of BLPO-Nystrom with the torch backend / with
the numpy backend: Hopper-v5 1.49x / 1.16x, Walker2d-v5 1.35x / 1.06x, HalfCheetah-v5 1.58x /
1.25x, InvertedDoublePendulum-v5 1.41x / 1.12x (the rollout 44-53% of PPO's run).

The rollout, whose cost is the same for every algorithm, takes about half of PPO's run on these
tasks; this is why BLPO-Nystrom's ratio is lower here than on CartPole (``benchmarks/blpo.py``).

Run:  python benchmarks/mujoco_split.py [--quick] [--envs ENV ...] [--rollouts N] [--repeats R]
      (--quick: Hopper-v5, one rollout per run, two repeats, < 60 s)
Ends with a ``RESULT`` line: per task, BLPO-Nystrom's CPU time over PPO's (torch backend, then
numpy backend), and the rollout's share of PPO's run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from threadpoolctl import threadpool_limits

from birl_lite.actor_critic import make_config, train
from birl_lite.actor_critic.blpo import blpo_update
from birl_lite.actor_critic.blpo_numpy import blpo_update_numpy
from birl_lite.actor_critic.ppo import ppo_update

ALGOS = ("ppo", "ppo-nested", "blpo-cg", "blpo-nystrom", "blpo-nystrom-numpy")
ENVS = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "InvertedDoublePendulum-v5")


def time_run(algo: str, env_id: str, rollouts: int, seed: int) -> tuple[float, float]:
    """(total, update) CPU seconds of this thread for one run of ``rollouts`` rollouts."""
    name, numpy_ = algo.removesuffix("-numpy"), algo.endswith("-numpy")
    kw = {"backend": "numpy"} if numpy_ else {}
    cfg = make_config(name, env_id, seed=seed, **kw)
    cfg = make_config(name, env_id, seed=seed, total_steps=rollouts * cfg.batch_size, **kw)
    inner = ppo_update if name == "ppo" else (blpo_update_numpy if numpy_ else blpo_update)
    spent = [0.0]

    def timed_update(state, mb, cfg):
        t0 = time.thread_time()
        info = inner(state, mb, cfg)
        spent[0] += time.thread_time() - t0
        return info

    t0 = time.thread_time()
    train(cfg, update=timed_update)
    return time.thread_time() - t0, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Hopper-v5, 1 rollout, 2 repeats")
    parser.add_argument("--envs", nargs="+", default=list(ENVS), help="gymnasium MuJoCo ids")
    parser.add_argument("--rollouts", type=int, default=2, help="timed rollouts per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per (task, algorithm)")
    args = parser.parse_args()
    if args.quick:
        args.envs, args.rollouts, args.repeats = ["Hopper-v5"], 1, 2
    if args.rollouts < 1 or args.repeats < 1:
        raise ValueError(
            f"--rollouts and --repeats must be >= 1, got {args.rollouts}, {args.repeats}"
        )
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")  # numpy's BLAS (the numpy backend) in this thread
    for algo in ALGOS:  # warm-up, not timed
        time_run(algo, args.envs[0], 1, seed=0)
    result = []
    print(f"{'task':<28}{'algorithm':<20}{'run s':>8}{'update s':>10}{'rollout s':>11}{'/ PPO':>7}")
    for env_id in args.envs:
        times: dict[str, list[tuple[float, float]]] = {algo: [] for algo in ALGOS}
        for rep in range(args.repeats):  # interleaved: every algorithm once per repeat
            for algo in ALGOS:
                times[algo].append(time_run(algo, env_id, args.rollouts, seed=rep))
        med = {
            algo: (
                statistics.median(t for t, _ in runs),
                statistics.median(u for _, u in runs),
            )
            for algo, runs in times.items()
        }
        for algo, (total, upd) in med.items():
            ratio = total / med["ppo"][0]
            print(
                f"{env_id:<28}{algo:<20}{total:>8.2f}{upd:>10.2f}{total - upd:>11.2f}{ratio:>7.2f}"
            )
        ppo_total, ppo_update_s = med["ppo"]
        result.append(
            f"{env_id} nystrom/ppo {med['blpo-nystrom'][0] / ppo_total:.2f}x "
            f"numpy {med['blpo-nystrom-numpy'][0] / ppo_total:.2f}x "
            f"(rollout {1 - ppo_update_s / ppo_total:.0%} of ppo)"
        )
    print(
        f"(CPU seconds of this thread per run of {args.rollouts} rollouts, medians of {args.repeats})"
    )
    print("RESULT " + "; ".join(result))


if __name__ == "__main__":
    main()
