"""Checker for the coding exercise of chapter 9 (generalized advantage estimation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..actor_critic.rollout import gae

__all__ = ["check_gae"]


def check_gae(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9) -> bool:
    """Check a reader's ``fn(rewards, values, next_values, terminated, dones, gamma, lam)``
    (numpy arrays ``[T, E]`` float64, floats) against :func:`birl_lite.actor_critic.gae` on random
    cases with terminations and truncations. Prints PASS or FAIL with the first mismatch; returns
    whether all cases passed."""
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        T, E = int(rng.integers(1, 15)), int(rng.integers(1, 5))
        rewards, values, next_values = (rng.standard_normal((T, E)) for _ in range(3))
        dones = (rng.random((T, E)) < 0.3).astype(np.float64)
        terminated = dones * (rng.random((T, E)) < 0.5)
        gamma, lam = float(rng.uniform(0.5, 0.999)), float(rng.uniform(0.0, 1.0))
        args = (rewards, values, next_values, terminated, dones, gamma, lam)
        expected = gae(*args)
        try:
            got = np.asarray(
                fn(*(a.copy() if isinstance(a, np.ndarray) else a for a in args)), dtype=np.float64
            )
        except Exception as exc:  # noqa: BLE001 - report any failure of the reader's code
            print(f"FAIL on case {k} (T={T}, E={E}): raised {type(exc).__name__}: {exc}")
            return False
        if got.shape != expected.shape:
            print(f"FAIL on case {k}: returned shape {got.shape}, expected {expected.shape}")
            return False
        err = np.abs(got - expected)
        if not np.all(np.isfinite(got)) or err.max() > atol:
            t, e = np.unravel_index(np.argmax(err), err.shape)
            print(
                f"FAIL on case {k} (T={T}, E={E}, gamma={gamma:.3f}, lam={lam:.3f}): "
                f"A[{t}, {e}] = {got[t, e]:.10g}, expected {expected[t, e]:.10g}"
            )
            return False
    print(f"PASS: {n_cases} random cases agree with the reference (max error <= {atol:g})")
    return True
