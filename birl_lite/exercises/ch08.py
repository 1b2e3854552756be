"""Checker for the coding exercise of chapter 8 (the causal sums of BLPO's mixed term)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..actor_critic.rollout import discount_matrix

__all__ = ["check_causal_sums", "causal_sums_reference"]


def causal_sums_reference(q: np.ndarray, dones: np.ndarray) -> np.ndarray:
    """``C[t, e] = sum_{t' > t} q[t', e]`` over the later steps of the same episode (``[T, E]``);
    ``dones[t, e] = 1`` marks the last step of an episode."""
    M = discount_matrix(dones, 1.0, strict=True).astype(np.float64)
    return np.einsum("etu,ue->te", M, q)


def check_causal_sums(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9) -> bool:
    """Check a reader's ``fn(q, dones) -> C`` (numpy arrays ``[T, E]``, float64) against
    :func:`causal_sums_reference` on random cases. Prints PASS or FAIL with the first mismatch;
    returns whether all cases passed."""
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        T, E = int(rng.integers(1, 12)), int(rng.integers(1, 5))
        q = rng.standard_normal((T, E))
        dones = (rng.random((T, E)) < 0.25).astype(np.float64)
        expected = causal_sums_reference(q, dones)
        try:
            got = np.asarray(fn(q.copy(), dones.copy()), dtype=np.float64)
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
                f"FAIL on case {k} (T={T}, E={E}): C[{t}, {e}] = {got[t, e]:.10g}, expected "
                f"{expected[t, e]:.10g} (dones[:, {e}] = {dones[:, e].astype(int).tolist()})"
            )
            return False
    print(f"PASS: {n_cases} random cases agree with the reference (max error <= {atol:g})")
    return True
