"""Benchmark: the sampled (model-free) hypergradient against the exact one, as samples grow.

Relative error ``||h_N - grad phi|| / ||grad phi||`` of :func:`birl_lite.model_free.sampled_hypergradient`
at N = 1e3, 1e4, 1e5 sampled transitions (root-mean-square over seeds) on a random MDP with a
nonlinear designed reward and f = -J_U, for the full estimator (TD and Monte Carlo critics) and
the truncated one (immediate-reward term only). The full estimators get a fitted log-log slope
(theory: -1/2); the truncated one gets none (its error tends to the bias of its limit, not to
zero: a slope through that plateau measures nothing). Chapter 5's 20-seed sweep with a bootstrap
interval on the slope is ``python -m birl_lite.model_free.sweep convergence``.

    python benchmarks/model_free.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import birl_lite as bl
from birl_lite.first_order import return_hypergradient
from birl_lite.model_free import sampled_hypergradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds (< 60 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_seeds = 3 if args.quick else 10
    sizes = (1_000, 10_000, 100_000)

    S, A, n, gamma, tau = 10, 4, 8, 0.9, 0.5
    mdp = bl.random_mdp(S, A, 0, gamma=gamma)
    r_U = bl.random_reward(S, A, 1)
    gen = torch.Generator().manual_seed(0)
    Phi = torch.randn(S, A, n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, generator=gen, dtype=torch.float64)

    def reward_fn(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(Phi @ z)

    exact = return_hypergradient(mdp, reward_fn, r_U, x, tau)
    env = bl.TabularEnv(mdp, r_U)
    variants = (
        ("full, TD critic", "td", "full"),
        ("full, MC critic", "mc", "full"),
        ("truncated", "td", "truncated"),
    )
    print(
        f"random MDP S={S} A={A} gamma={gamma} tau={tau}, x in R^{n}, f = -J_U; "
        f"RMS relative error over {n_seeds} seeds"
    )
    print(
        f"{'estimator':<18}"
        + "".join(f"{'N=' + format(N, ','):>14}" for N in sizes)
        + f"{'slope':>9}{'err ratio 1e3/1e5':>19}{'us/transition':>15}"
    )
    slopes = {}
    for label, critic, estimator in variants:
        med = []
        seconds, count = 0.0, 0
        for N in sizes:
            errs = []
            for seed in range(n_seeds):
                t0 = time.perf_counter()
                est = sampled_hypergradient(
                    env,
                    reward_fn,
                    x,
                    tau,
                    gamma,
                    exact.pi,
                    N,
                    critic=critic,
                    estimator=estimator,
                    seed=seed,
                )
                seconds += time.perf_counter() - t0
                count += est.n_transitions
                errs.append(float((est.grad - exact.grad).norm() / exact.grad.norm()))
            med.append(float(np.sqrt(np.mean(np.square(errs)))))
        slope = float(np.polyfit(np.log10(sizes), np.log10(med), 1)[0])
        slopes[label] = slope
        slope_txt = f"{slope:>9.2f}" if estimator == "full" else f"{'-':>9}"
        print(
            f"{label:<18}"
            + "".join(f"{m:>14.4f}" for m in med)
            + f"{slope_txt}{med[0] / med[-1]:>19.1f}{1e6 * seconds / count:>15.1f}"
        )
    print(
        f"RESULT full-estimator (TD critic) error slope {slopes['full, TD critic']:.2f} "
        f"(theory -0.50); truncated: no slope (its error tends to its bias)"
    )


if __name__ == "__main__":
    main()
