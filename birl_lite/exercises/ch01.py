"""Checkers for the coding exercises of chapter 1 (the soft Bellman fixed point)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..mdp import random_mdp, random_reward
from ..soft import soft_bellman
from ._common import Case, run_cases

__all__ = ["check_soft_bellman"]


def _cases(n_cases: int, seed: int):
    """Random (mdp, r, V, tau) cases, including tiny temperatures and large values."""
    gen = torch.Generator().manual_seed(seed)
    taus = (1e-3, 1e-2, 0.1, 1.0, 10.0)
    for k in range(n_cases):
        S = int(torch.randint(2, 8, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        gamma = float(torch.rand((), generator=gen)) * 0.99
        mdp = random_mdp(S, A, seed=seed * 1000 + k, gamma=gamma)
        scale = 10.0 ** float(torch.randint(0, 3, (1,), generator=gen))
        r = scale * (2 * random_reward(S, A, seed=seed * 1000 + k + 500) - 1)
        V = scale * torch.randn(S, generator=gen, dtype=torch.float64)
        yield mdp, r, V, taus[k % len(taus)]


def check_soft_bellman(
    fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9, rtol: float = 1e-9
) -> bool:
    """Check a reader's soft Bellman operator against :func:`birl_lite.soft.soft_bellman`.

    The reader's function is called as ``fn(P, r, V, gamma, tau)`` with tensors ``P [S, A, S]``,
    ``r [S, A]``, ``V [S]`` (float64) and floats ``gamma``, ``tau``; it must return
    ``(T V) [S]``. Cases include ``tau = 1e-3`` with values up to 100, where a naive
    ``exp(Q / tau)`` overflows.

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """
    cases = (
        Case(
            label=f"S={mdp.n_states}, A={mdp.n_actions}, gamma={mdp.gamma:.3f}, tau={tau}",
            args=(mdp.P, r, V, mdp.gamma, tau),
            expected=soft_bellman(mdp, r, V, tau),
        )
        for mdp, r, V, tau in _cases(n_cases, seed)
    )
    return run_cases(
        fn,
        cases,
        what="birl_lite.soft_bellman (tau down to 1e-3)",
        atol=atol,
        rtol=rtol,
        hint="subtract the maximum before exponentiating",
    )
