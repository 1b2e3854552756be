"""Checkers for the coding exercises of chapter 4 (M-SoBiRL's amortized adjoint)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model_based import amortized_adjoint_step
from ..soft import transition_under
from ._common import Case, run_cases

__all__ = ["check_adjoint_step"]


def _cases(n_cases: int, seed: int):
    """Random ``(P_pi, gamma, w, b, zeta)``: kernels of random softmax policies on random MDPs."""
    from ..mdp import random_mdp

    gen = torch.Generator().manual_seed(seed)
    for k in range(n_cases):
        S = int(torch.randint(2, 9, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        gamma = 0.99 * float(torch.rand((), generator=gen))
        mdp = random_mdp(S, A, seed=seed * 1000 + k, gamma=gamma, support=(1, S))
        pi = torch.softmax(torch.randn(S, A, generator=gen, dtype=torch.float64), dim=1)
        P_pi = transition_under(mdp, pi)
        w = torch.randn(S, generator=gen, dtype=torch.float64)
        b = torch.randn(S, generator=gen, dtype=torch.float64)
        zeta = 0.05 + 0.5 * float(torch.rand((), generator=gen))
        yield P_pi, gamma, w, b, zeta


def check_adjoint_step(
    fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-12, rtol: float = 1e-10
) -> bool:
    """Check a reader's amortized adjoint step against :func:`birl_lite.model_based.amortized_adjoint_step`.

    The reader's function is called as ``fn(P_pi, gamma, w, b, zeta)`` with ``P_pi [S, S]``,
    ``w [S]``, ``b [S]`` (float64) and floats ``gamma``, ``zeta``; it must return
    ``w - zeta A^T (A w - b)`` with ``A = (I - gamma P_pi)^T`` (shape ``[S]``).

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """
    cases = (
        Case(
            label=f"S={P_pi.shape[0]}, gamma={gamma:.3f}, zeta={zeta:.3f}",
            args=(P_pi, gamma, w, b, zeta),
            expected=amortized_adjoint_step(P_pi, gamma, w, b, zeta),
        )
        for P_pi, gamma, w, b, zeta in _cases(n_cases, seed)
    )
    return run_cases(
        fn, cases, what="birl_lite.model_based.amortized_adjoint_step", atol=atol, rtol=rtol
    )
