"""What every exercise checker does: run the reader's function on reference cases and report.

A chapter's checker only builds its cases (random instances with the expected answer computed by
``birl_lite``) and calls :func:`run_cases`, which calls the reader's function on fresh copies of the
arguments, compares, prints ``PASS`` or ``FAIL`` with the first mismatch, and returns a bool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Case", "run_cases"]


@dataclass
class Case:
    """One reference case: the arguments for the reader's function and the expected result.

    Attributes:
        label: a short description printed on failure (sizes, temperature, ...).
        args: positional arguments; tensors and arrays are copied before each call.
        expected: the reference answer (tensor, array or number).
    """

    label: str
    args: tuple
    expected: Any


def _copy(a):
    if isinstance(a, torch.Tensor):
        return a.detach().clone()
    if isinstance(a, np.ndarray):
        return a.copy()
    return a


def _as_float64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    # a fresh copy: reversed views (negative strides) are valid answers too
    return torch.from_numpy(np.array(x, dtype=np.float64, copy=True, order="C"))


def run_cases(
    fn: Callable,
    cases: Iterable[Case],
    *,
    what: str,
    atol: float = 0.0,
    rtol: float = 1e-9,
    relative_norm: bool = False,
    hint: str = "",
) -> bool:
    """Call ``fn(*case.args)`` for every case and compare with ``case.expected``.

    Args:
        fn: the reader's function.
        cases: the reference cases.
        what: what the reference is, for the ``PASS`` line.
        atol, rtol: elementwise tolerance ``|got - expected| <= atol + rtol |expected|``; with
            ``relative_norm=True`` instead ``||got - expected|| <= rtol ||expected||``.
        relative_norm: compare whole vectors by their relative error (for results, like
            hypergradients, whose small entries carry no separate meaning).
        hint: appended to the message of a non-finite result (e.g. how to avoid overflow).

    Returns:
        ``True`` if every case matched; prints ``PASS: ...`` or ``FAIL on case k (...): ...``.
    """
    n = 0
    for k, case in enumerate(cases):
        n += 1
        where = f"FAIL on case {k} ({case.label})"
        try:
            raw = fn(*(_copy(a) for a in case.args))
        except Exception as exc:  # noqa: BLE001 - any failure of the reader's code is reported
            print(f"{where}: raised {type(exc).__name__}: {exc}")
            return False
        try:
            got = _as_float64(raw)
        except (TypeError, ValueError):
            print(f"{where}: returned {type(raw).__name__}, not an array of numbers")
            return False
        expected = _as_float64(case.expected)
        if tuple(got.shape) != tuple(expected.shape):
            print(f"{where}: returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
            return False
        if not bool(torch.isfinite(got).all()):
            print(f"{where}: non-finite output {got.tolist()}" + (f" ({hint})" if hint else ""))
            return False
        diff = (got - expected).abs()
        if relative_norm:
            err = float((got - expected).norm()) / max(float(expected.norm()), 1e-300)
            ok = err <= rtol
            detail = f"relative error {err:.3e} > {rtol:g}"
        else:
            bad = diff > atol + rtol * expected.abs()
            ok = not bool(bad.any())
            detail = ""
            if not ok:
                diff = bad.to(torch.float64) * (1.0 + diff)  # locate the first failing entry
        if not ok:
            if got.ndim == 0:
                print(f"{where}: got {float(got):.12g}, expected {float(expected):.12g} {detail}")
            else:
                flat = int(diff.reshape(-1).argmax())
                idx = tuple(int(i) for i in np.unravel_index(flat, tuple(got.shape)))
                print(
                    f"{where}: entry {list(idx)}: got {float(got[idx]):.12g}, "
                    f"expected {float(expected[idx]):.12g} {detail}".rstrip()
                )
            return False
    print(f"PASS: {n} random cases agree with {what}")
    return True
