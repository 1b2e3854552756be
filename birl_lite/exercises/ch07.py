"""Checkers for the coding exercises of chapter 7 (implicit differentiation, Nystrom iHVP)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import Case, run_cases

__all__ = ["check_woodbury"]


def _cases(n_cases: int, seed: int):
    """Random Nystrom blocks ``(C, M, damping, v)`` of random SPD Hessians ``[p, p]``, ranks 1..p."""
    gen = torch.Generator().manual_seed(seed)
    dampings = (1e-2, 0.1, 1.0, 10.0, 50.0)
    for k in range(n_cases):
        n = int(torch.randint(3, 25, (1,), generator=gen))
        rank = int(torch.randint(1, n + 1, (1,), generator=gen))
        Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        lam = torch.logspace(-1, 2, n, dtype=torch.float64)
        H = Q @ torch.diag(lam) @ Q.T
        H = 0.5 * (H + H.T)
        K = torch.randperm(n, generator=gen)[:rank]
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        yield H[:, K].clone(), H[K][:, K].clone(), dampings[k % len(dampings)], v


def check_woodbury(fn: Callable, n_cases: int = 20, seed: int = 0, rtol: float = 1e-8) -> bool:
    """Check a reader's Woodbury solve of the damped Nystrom system.

    The reader's function is called as ``fn(C, M, damping, v)`` with ``C [p, m]`` (columns
    ``H[:, I]`` of a symmetric positive definite ``H``), ``M [m, m]`` (``H[I, I]``), a float
    ``damping > 0`` (the ``nu`` of chapter 7) and ``v [p]`` (float64). It must return
    ``u = (C M^{-1} C^T + damping I)^{-1} v``
    ``[p]`` without forming a ``p x p`` inverse. The expected value is a dense solve; the
    relative error ``||u - u_ref|| / ||u_ref||`` must be at most ``rtol``. The library's own
    answer is :func:`birl_lite.linear_solve.nystrom_woodbury`.

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """

    def cases():
        for C, M, damping, v in _cases(n_cases, seed):
            n, rank = C.shape
            H_k = C @ torch.linalg.solve(M, C.T)
            eye = torch.eye(n, dtype=C.dtype)
            expected = torch.linalg.solve(0.5 * (H_k + H_k.T) + damping * eye, v)
            yield Case(
                label=f"p={n}, m={rank}, damping={damping}",
                args=(C, M, damping, v),
                expected=expected,
            )

    return run_cases(
        fn,
        cases(),
        what=f"the dense solve (relative error <= {rtol:g})",
        rtol=rtol,
        relative_norm=True,
    )
