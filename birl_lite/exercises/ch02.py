"""Checkers for the coding exercises of chapter 2 (the bilevel formulation)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..problems import synthetic_problem

__all__ = ["check_hyperobjective"]


def _cases(n_cases: int, seed: int):
    """Small synthetic problems of [YGY] with random sizes, discounts, temperatures and points x."""
    gen = torch.Generator().manual_seed(seed)
    taus = (0.01, 0.1, 1.0, 10.0)
    for k in range(n_cases):
        S = int(torch.randint(2, 8, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        n = int(torch.randint(1, 6, (1,), generator=gen))
        gamma = 0.95 * float(torch.rand((), generator=gen))
        problem = synthetic_problem(
            seed * 1000 + k, n_states=S, n_actions=A, dim=n, gamma=gamma, tau=taus[k % len(taus)]
        )
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        yield problem, x


def check_hyperobjective(
    fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-8, rtol: float = 1e-8
) -> bool:
    """Check a reader's hyperobjective ``phi(x) = f(x, pi*_x)`` against :meth:`~birl_lite.problems.BilevelProblem.phi`.

    The reader's function is called as ``fn(mdp, reward_fn, upper_fn, x, tau)`` (a
    :class:`~birl_lite.mdp.TabularMDP`, the two torch functions of the problem, ``x [n]`` and the
    temperature) and must return ``phi(x)`` as a float or 0-dim tensor. Cases are small synthetic
    problems of [YGY] with temperatures from ``0.01`` to ``10``.

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """
    for k, (problem, x) in enumerate(_cases(n_cases, seed)):
        expected = problem.phi(x)
        mdp = problem.mdp
        try:
            got = float(fn(mdp, problem.reward_fn, problem.upper_fn, x.clone(), problem.tau))
        except Exception as exc:  # noqa: BLE001 - report any failure of the reader's code
            print(
                f"FAIL on case {k} (S={mdp.n_states}, tau={problem.tau}): raised {type(exc).__name__}: {exc}"
            )
            return False
        if not abs(got - expected) <= atol + rtol * abs(expected):
            print(
                f"FAIL on case {k} (S={mdp.n_states}, A={mdp.n_actions}, gamma={mdp.gamma:.3f}, "
                f"tau={problem.tau}): got phi = {got:.12g}, expected {expected:.12g}"
            )
            return False
    print(f"PASS: {n_cases} random bilevel problems agree with BilevelProblem.phi")
    return True
