"""Checker for the coding exercise of chapter 8 (the causal sums of BLPO's mixed term)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..actor_critic.rollout import discount_matrix
from ._common import Case, run_cases

__all__ = ["check_causal_sums", "causal_sums_reference"]


def causal_sums_reference(q: np.ndarray, dones: np.ndarray) -> np.ndarray:
    """``C[t, e] = sum_{t' > t} q[t', e]`` over the later steps of the same episode (``[T, E]``);
    ``dones[t, e] = 1`` marks the last step of an episode."""
    M = discount_matrix(dones, 1.0, strict=True).astype(np.float64)
    return np.einsum("etu,ue->te", M, q)


def check_causal_sums(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9) -> bool:
    """Check a reader's ``fn(q, dones) -> C`` (numpy arrays ``[T, E]``, float64) against
    ``causal_sums_reference`` on random cases. Prints PASS or FAIL with the first mismatch;
    returns whether all cases passed."""

    def cases():
        rng = np.random.default_rng(seed)
        for _ in range(n_cases):
            T, E = int(rng.integers(1, 12)), int(rng.integers(1, 5))
            q = rng.standard_normal((T, E))
            dones = (rng.random((T, E)) < 0.25).astype(np.float64)
            yield Case(
                label=f"T={T}, E={E}, dones={dones.astype(int).T.tolist()}",
                args=(q, dones),
                expected=causal_sums_reference(q, dones),
            )

    return run_cases(fn, cases(), what="the causal-sum reference", atol=atol, rtol=0.0)
