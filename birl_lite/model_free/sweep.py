"""Seed sweeps behind chapter 5 of the book (resumable; one JSON file per setting and seed).

Two experiments, each too long for the chapter's one-minute budget, so the chapter reads their
files from ``results/sobirl/`` and runs one small live instance:

* ``convergence``: the relative error of the sampled hypergradient
  (:func:`~birl_lite.model_free.estimators.hypergradient_from_batch`) against the exact (H1) on the
  chapter's random MDP (10 states, 4 actions, ``r_x = tanh(Phi x)``, ``gamma = 0.9``,
  ``tau = 0.5``), at several sample sizes ``N``; one batch per ``(seed, N)`` feeds every estimator
  (full with empirical centring, full with policy centring, truncated), so they are paired.
  The seed changes the samples only; the instance is fixed (:func:`convergence_instance`).
* ``sobirl``: :func:`~birl_lite.model_free.algorithm.sobirl` on the chapter's small-map reward
  design problem (:func:`small_map_design`), recording the true return of ``pi*_{x_k}`` at every
  iterate, the sampled return ``J_U`` of every batch and ``||h_k||``. The seed changes the
  samples only.

Command (from the repository root; a file that exists is skipped, so an interrupted run resumes)::

    python -m birl_lite.model_free.sweep convergence --seeds 0-19
    python -m birl_lite.model_free.sweep sobirl --seeds 0-19 --beta 0.1 0.3 1 --n-transitions 1000
    python -m birl_lite.model_free.sweep sobirl --seeds 0-19 --beta 0.3 --n-transitions 250 4000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import soft
from .._io import write_json_atomic
from ..envs import TabularEnv
from ..experiments import parse_seeds
from ..first_order import return_hypergradient
from ..mdp import TabularTask, gridworld, random_mdp, random_reward
from ..problems import BilevelProblem, reward_design_problem
from .algorithm import sobirl
from .estimators import hypergradient_from_batch
from .problem import model_free_problem
from .sampling import sample_transitions

__all__ = [
    "SMALL_MAP",
    "convergence_instance",
    "convergence_run",
    "small_map_design",
    "sobirl_run",
    "true_return_of",
    "main",
]

#: the chapter's small map (16 free cells; S start, G goal)
SMALL_MAP = ("#######", "#S....#", "#.##..#", "#...#.#", "#.#..G#", "#######")

#: sample sizes of the convergence sweep
SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)


def convergence_instance(gamma: float = 0.9, mdp_seed: int = 0) -> tuple:
    """The chapter's random MDP: ``(env, reward_fn, x, tau, gamma, exact)``.

    10 states, 4 actions, ``r_U = random_reward(10, 4, 1)``, ``r_x = tanh(Phi x)`` with ``Phi`` and
    ``x`` drawn from ``torch.Generator().manual_seed(mdp_seed)``, ``tau = 0.5``; ``exact`` is
    :func:`~birl_lite.first_order.return_hypergradient` (the model-based (H1)).
    """
    S, A, n, tau = 10, 4, 8, 0.5
    mdp = random_mdp(S, A, mdp_seed, gamma=gamma)
    r_U = random_reward(S, A, mdp_seed + 1)
    gen = torch.Generator().manual_seed(mdp_seed)
    Phi = torch.randn(S, A, n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, generator=gen, dtype=torch.float64)

    def reward_fn(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(Phi @ z)

    exact = return_hypergradient(mdp, reward_fn, r_U, x, tau)
    return TabularEnv(mdp, r_U), reward_fn, x, tau, gamma, exact


def convergence_run(seed: int, sizes: tuple[int, ...] = SIZES) -> dict:
    """Relative errors ``||h_N - grad phi|| / ||grad phi||`` of three estimators at each ``N``.

    One batch of ``N`` transitions (seed ``[seed, N]``) drawn with ``pi*_x`` feeds the full
    estimator with empirical centring (the default), the full estimator with policy centring and
    the truncated estimator (all with the TD critic).
    """
    env, reward_fn, x, tau, gamma, exact = convergence_instance()
    pi, dr = exact.pi, exact.dr_dx
    r = reward_fn(x).detach()
    norm = float(exact.grad.norm())
    variants = {
        "full_empirical": dict(estimator="full", centring="empirical"),
        "full_policy": dict(estimator="full", centring="policy"),
        "truncated": dict(estimator="truncated", centring="empirical"),
    }
    errors: dict[str, list[float]] = {k: [] for k in variants}
    n_sampled = []
    for N in sizes:
        batch = sample_transitions(env, pi, int(N), gamma, seed=[seed, int(N)])
        n_sampled.append(len(batch))
        for key, kw in variants.items():
            h = hypergradient_from_batch(batch, pi, x, tau, r, dr, **kw).grad
            errors[key].append(float((h - exact.grad).norm()) / norm)
    return {
        "experiment": "convergence",
        "seed": seed,
        "sizes": [int(N) for N in sizes],
        "n_sampled": n_sampled,
        "gamma": gamma,
        "tau": tau,
        "grad_norm": norm,
        "errors": errors,
    }


def small_map_design() -> tuple[TabularTask, BilevelProblem]:
    """The chapter's reward-design problem: ``(task, design)`` on :data:`SMALL_MAP`
    (``gamma = 0.9``, slip 0.1, ``tau = 0.1``, ``ridge = 1e-3``)."""
    task = gridworld(SMALL_MAP, gamma=0.9, slip=0.1, name="small map")
    return task, reward_design_problem(task, tau=0.1, ridge=1e-3)


def true_return_of(task: TabularTask, pi: torch.Tensor) -> float:
    """The unregularized return ``rho^T V^pi`` of the task's reward (computed with the model)."""
    return float(soft.expected_return(task.mdp, pi, task.r))


def sobirl_run(
    seed: int,
    *,
    beta: float = 0.3,
    n_transitions: int = 1000,
    max_iter: int = 100,
    warmup_transitions: int = 5000,
    estimator: str = "full",
) -> dict:
    """One SoBiRL run on :func:`small_map_design` with sampling seed ``seed``.

    Records, for ``k = 0..K``, the true (unregularized) return of ``pi*_{x_k}`` computed with the
    model (``true_return``; never seen by the algorithm) and ``||x_k||``; for ``k = 0..K-1`` the
    sampled return ``J_U`` of the batch of step ``k`` and ``||h_k||``; at the end, the true return
    of the algorithm's own policy ``softmax(Q_K / tau)``, its distance to ``pi*_{x_K}`` and both
    visitations.
    """
    task, design = small_map_design()

    def true_return(z: torch.Tensor) -> float:
        return true_return_of(task, design.lower(z).pi)

    t0 = time.perf_counter()
    res = sobirl(
        model_free_problem(design),
        evaluate=true_return,
        beta=beta,
        n_transitions=n_transitions,
        max_iter=max_iter,
        warmup_transitions=warmup_transitions,
        estimator=estimator,
        seed=seed,
        progress=False,
        record_iterates=True,
    )
    h = res.history
    lower = design.lower(res.x)
    return {
        "experiment": "sobirl",
        "seed": seed,
        "beta": beta,
        "n_transitions": n_transitions,
        "max_iter": max_iter,
        "warmup_transitions": warmup_transitions,
        "estimator": estimator,
        "lam": float(design.info["ridge"]),  # key kept: the committed results use it
        "true_return": [float(v) for v in h.phi],
        "x_norm": [float(v) for v in h.x.norm(dim=1)],
        "J_U_sampled": [float(v) for v in h.J_U],
        "h_norm": [float(v) for v in h.h_norm],
        "n_sampled": int(h.n_transitions[-1]) if max_iter > 0 else 0,
        "x_final": [float(v) for v in res.x],
        # the algorithm's own lower level at the end, against pi*_{x_K} (computed with the model)
        "learned_true_return": true_return_of(task, res.pi),
        "policy_gap": float((res.pi - lower.pi).abs().max()),
        "q_gap": float((res.Q - lower.Q).abs().max()),
        "visitation_star": [float(v) for v in soft.state_visitation(task.mdp, lower.pi)],
        "visitation_learned": [float(v) for v in soft.state_visitation(task.mdp, res.pi)],
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: ``convergence`` or ``sobirl`` sweeps (module docstring), resumable."""
    parser = argparse.ArgumentParser(description="Chapter 5 seed sweeps (resumable)")
    parser.add_argument("experiment", choices=("convergence", "sobirl"))
    parser.add_argument("--seeds", nargs="+", default=["0-19"], help="e.g. 0-19 or 0 3 5")
    parser.add_argument("--out", type=Path, default=Path("results/sobirl"))
    parser.add_argument("--beta", type=float, nargs="+", default=[0.3])
    parser.add_argument("--n-transitions", type=int, nargs="+", default=[1000])
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5000)
    parser.add_argument("--estimator", default="full", choices=("full", "truncated"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    if args.experiment == "convergence":
        sizes = "-".join(str(N) for N in SIZES)
        for seed in parse_seeds(args.seeds):
            name = f"convergence_gamma0.9_tau0.5_sizes{sizes}_seed{seed}.json"
            jobs.append((name, lambda s=seed: convergence_run(s)))
    else:
        for beta in args.beta:
            for n in args.n_transitions:
                for seed in parse_seeds(args.seeds):
                    # the name holds every setting of the run, so another setting never reuses it
                    name = (
                        f"sobirl_{args.estimator}_beta{beta:g}_n{n}_iter{args.max_iter}"
                        f"_warm{args.warmup}_seed{seed}.json"
                    )
                    kw = dict(
                        beta=beta,
                        n_transitions=n,
                        max_iter=args.max_iter,
                        warmup_transitions=args.warmup,
                        estimator=args.estimator,
                    )
                    jobs.append((name, lambda s=seed, kw=kw: sobirl_run(s, **kw)))
    for name, job in jobs:
        path = args.out / name
        if path.exists():
            print(f"skip {name} (done)")
            continue
        write_json_atomic(path, job())
        print(f"wrote {name}", flush=True)


if __name__ == "__main__":
    main()
