"""Checkers for the coding exercises of chapter 6 (the Bradley-Terry loss, computed stably)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..preference import bradley_terry_loss
from ._common import Case, run_cases

__all__ = ["check_bradley_terry_loss"]


def check_bradley_terry_loss(
    fn: Callable, n_cases: int = 20, seed: int = 0, rtol: float = 1e-10
) -> bool:
    """Check a reader's Bradley-Terry loss against :func:`birl_lite.preference.bradley_terry_loss`.

    The reader's function is called as ``fn(z, p)`` with float64 tensors of the same shape (``z``
    reward differences, some as large as ``+-1000``; ``p`` in ``[0, 1]``) and must return
    ``-p log sigmoid(z) - (1 - p) log sigmoid(-z)`` elementwise, finite for every ``z``.

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """

    def cases():
        gen = torch.Generator().manual_seed(seed)
        for k in range(n_cases):
            m = int(torch.randint(1, 30, (1,), generator=gen))
            scale = [1.0, 10.0, 1000.0][k % 3]
            z = scale * torch.randn(m, generator=gen, dtype=torch.float64)
            p = torch.rand(m, generator=gen, dtype=torch.float64)
            yield Case(
                label=f"m={m}, |z| ~ {scale:g}", args=(z, p), expected=bradley_terry_loss(z, p)
            )

    return run_cases(
        fn,
        cases(),
        what="bradley_terry_loss (including |z| ~ 1000)",
        atol=1e-12,
        rtol=rtol,
        hint="use log-sigmoid (softplus) instead of log(sigmoid(z))",
    )
