"""Checker for the coding exercise of chapter 9 (generalized advantage estimation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..actor_critic.rollout import gae
from ._common import Case, run_cases

__all__ = ["check_gae"]


def check_gae(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9) -> bool:
    """Check a reader's ``fn(rewards, values, next_values, terminated, dones, gamma, lam)``
    (numpy arrays ``[T, E]`` float64, floats) against :func:`birl_lite.actor_critic.rollout.gae` on random
    cases with terminations and truncations. Prints PASS or FAIL with the first mismatch; returns
    whether all cases passed."""

    def cases():
        rng = np.random.default_rng(seed)
        for _ in range(n_cases):
            T, E = int(rng.integers(1, 15)), int(rng.integers(1, 5))
            rewards, values, next_values = (rng.standard_normal((T, E)) for _ in range(3))
            dones = (rng.random((T, E)) < 0.3).astype(np.float64)
            terminated = dones * (rng.random((T, E)) < 0.5)
            gamma, lam = float(rng.uniform(0.5, 0.999)), float(rng.uniform(0.0, 1.0))
            args = (rewards, values, next_values, terminated, dones, gamma, lam)
            yield Case(
                label=f"T={T}, E={E}, gamma={gamma:.3f}, lam={lam:.3f}",
                args=args,
                expected=gae(*args),
            )

    return run_cases(fn, cases(), what="birl_lite.actor_critic.gae", atol=atol, rtol=0.0)
