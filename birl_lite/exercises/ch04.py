"""Checkers for the coding exercises of chapter 4 (M-SoBiRL's amortized adjoint, the myopic control)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model_based import amortized_adjoint_step
from ..soft import transition_under
from ._common import Case, run_cases

__all__ = ["check_adjoint_step", "check_myopic_direction"]


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


def _myopic_cases(n_cases: int, seed: int):
    """Random ``(pi, G, dr_dx, df_dx, tau)``; odd cases have state-only rewards (``dr_dx`` equal
    over actions), even cases action-dependent ones."""
    gen = torch.Generator().manual_seed(seed)
    for k in range(n_cases):
        S = int(torch.randint(2, 8, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        n = int(torch.randint(1, 6, (1,), generator=gen))
        pi = torch.softmax(torch.randn(S, A, generator=gen, dtype=torch.float64), dim=1)
        G = torch.randn(S, A, generator=gen, dtype=torch.float64)
        if k % 2:
            dr_dx = torch.randn(S, 1, n, generator=gen, dtype=torch.float64).expand(S, A, n).clone()
        else:
            dr_dx = torch.randn(S, A, n, generator=gen, dtype=torch.float64)
        df_dx = torch.randn(n, generator=gen, dtype=torch.float64)
        tau = (0.05, 0.3, 1.0, 3.0)[k % 4]
        yield pi, G, dr_dx, df_dx, tau


def check_myopic_direction(
    fn: Callable, n_cases: int = 20, seed: int = 0, rtol: float = 1e-10
) -> bool:
    """Check a reader's truncated-bracket control (chapter 4, exercise 4.4; exercise 3.3's bracket).

    The reader's function is called as ``fn(pi, G, dr_dx, df_dx, tau)`` with ``pi [S, A]``,
    ``G [S, A]``, ``dr_dx [S, A, n]``, ``df_dx [n]`` (float64) and a float ``tau``; it must return
    ``df_dx + (1/tau) sum_{s,a} G(s,a) (dr_dx(s,a) - sum_a' pi(a'|s) dr_dx(s,a'))`` (shape ``[n]``),
    the direction :func:`birl_lite.model_based.m_sobirl` follows with ``direction="myopic"``. The
    reference uses that function's form, ``(G - pi w)`` with ``w(s) = sum_a G(s, a)``.

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """

    def cases():
        for pi, G, dr_dx, df_dx, tau in _myopic_cases(n_cases, seed):
            S, A, n = dr_dx.shape
            coef = (G - pi * G.sum(dim=1, keepdim=True)).reshape(-1)
            expected = df_dx + dr_dx.reshape(S * A, n).T @ coef / tau
            kind = "state-only" if bool((dr_dx == dr_dx[:, :1]).all()) else "action-dependent"
            yield Case(
                label=f"S={S}, A={A}, n={n}, tau={tau}, {kind} rewards",
                args=(pi, G, dr_dx, df_dx, tau),
                expected=expected,
            )

    return run_cases(
        fn,
        cases(),
        what="the myopic control of birl_lite.model_based.m_sobirl",
        rtol=rtol,
        relative_norm=True,
    )
