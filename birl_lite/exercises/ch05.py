"""Checkers for the coding exercises of chapter 5 (Monte Carlo returns with geometric restarts)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..model_free import Transitions, mc_returns
from ._common import Case, run_cases

__all__ = ["check_mc_returns"]


def _case(k: int, seed: int):
    """A random batch: rewards ``c [N, m]`` and episode ends (the last step always ends one)."""
    rng = np.random.default_rng([seed, k])
    N = int(rng.integers(1, 40))
    m = int(rng.integers(1, 4))
    c = rng.standard_normal((N, m))
    end = rng.random(N) < 0.3
    end[-1] = True
    zeros = np.zeros(N, dtype=np.int64)
    batch = Transitions(
        s=zeros,
        a=zeros,
        s_next=zeros,
        a_next=zeros,
        reward=c[:, 0].copy(),
        terminated=np.zeros(N, dtype=bool),
        truncated=np.zeros(N, dtype=bool),
        end=end,
        n_states=1,
        n_actions=1,
        gamma=0.9,
    )
    return c, end, batch


def check_mc_returns(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-10) -> bool:
    """Check a reader's Monte Carlo returns against :func:`birl_lite.model_free.critics.mc_returns`.

    The reader's function is called as ``fn(c, end)`` with ``c`` a float array ``[N, m]`` (one
    reward vector per step) and ``end`` a bool array ``[N]`` (``end[t]``: the episode ends after
    step ``t``; ``end[-1]`` is always true). It must return ``G [N, m]`` with
    ``G[t] = sum_{k = t}^{e(t)} c[k]``, ``e(t)`` the last step of the episode of ``t``.

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """
    cases = (
        Case(label=f"N={len(end)}", args=(c, end), expected=mc_returns(batch, c))
        for c, end, batch in (_case(k, seed) for k in range(n_cases))
    )
    return run_cases(fn, cases, what="birl_lite.model_free.mc_returns", atol=atol, rtol=0.0)
