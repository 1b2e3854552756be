"""Input checks shared by every module: one place for the error messages users see.

Every tabular quantity in ``birl_lite`` is a ``torch.float64`` tensor, whatever torch's default
dtype is. Inputs may be tensors, numpy arrays or nested lists (annotated :data:`ArrayLike`); they
are converted with :func:`as_tensor`.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

DTYPE = torch.float64
"""The dtype of every tabular tensor in birl_lite (float64 keeps fixed points exact to 1e-12)."""

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]
"""An array input: a tensor, a numpy array or a (nested) sequence of numbers, converted by
:func:`as_tensor` to a ``torch.float64`` tensor (gradients kept)."""


def as_tensor(x: ArrayLike, name: str, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    """Convert ``x`` (tensor, numpy array or nested sequence of numbers) to a tensor of ``dtype``.

    Raises ``TypeError`` naming ``name`` when ``x`` is not numeric.
    Gradients are preserved: a float64 tensor that requires grad is returned as is.
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real-valued tensor, got dtype {x.dtype}")
        return x if x.dtype == dtype else x.to(dtype)
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}") from exc
    return torch.as_tensor(arr, dtype=dtype)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` contains NaN or infinity."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (it contains NaN or inf)")


def check_real(value: object, name: str) -> float:
    """Return ``value`` as a Python float; ``TypeError`` if it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
            return float(value)
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_gamma(gamma: float) -> float:
    """Discount factor: a real number in [0, 1)."""
    g = check_real(gamma, "gamma")
    if not (0.0 <= g < 1.0):
        raise ValueError(f"gamma must lie in [0, 1), got {g}")
    return g


def check_tau(tau: float) -> float:
    """Temperature of the entropy regularization: a real number > 0."""
    t = check_real(tau, "tau")
    if not (t > 0.0) or not np.isfinite(t):
        raise ValueError(f"tau must be a finite number > 0, got {t}")
    return t


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(value: str, name: str, choices: Collection[str]) -> str:
    """One of the allowed option strings; ``ValueError`` naming ``name`` and the choices otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_distribution(p: ArrayLike, name: str, size: int, atol: float = 1e-8) -> torch.Tensor:
    """A probability vector of length ``size``: non-negative, summing to 1 within ``atol``."""
    t = as_tensor(p, name)
    if t.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(t.shape)}")
    check_finite(t, name)
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be non-negative (a probability distribution)")
    total = float(t.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"{name} must sum to 1 (a probability distribution), got sum {total:.6g}")
    return t / t.sum()
