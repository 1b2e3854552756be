"""Checkers for the coding exercises of chapter 2 (the bilevel formulation)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..problems import synthetic_problem
from ._common import Case, run_cases

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
    cases = (
        Case(
            label=f"S={p.mdp.n_states}, A={p.mdp.n_actions}, gamma={p.mdp.gamma:.3f}, tau={p.tau}",
            args=(p.mdp, p.reward_fn, p.upper_fn, x, p.tau),
            expected=p.phi(x),
        )
        for p, x in _cases(n_cases, seed)
    )
    return run_cases(fn, cases, what="BilevelProblem.phi", atol=atol, rtol=rtol)
