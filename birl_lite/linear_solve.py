"""One interface for linear systems ``(A + damping I) x = b`` (JAXopt / TorchOpt style).

The book meets the same linear system in many places: policy evaluation
``(I - gamma P_pi) V = r_pi + tau H(pi)`` (chapter 1, equation (eq-soft-eval)), the adjoint of
the first-order hypergradient (chapter 3), and the damped inverse-Hessian-vector products of
implicit differentiation (chapter 7, equation (eq-aid)). :func:`solve` solves all of them with one
signature, whatever form ``A`` takes and whichever method fits:

===============  ================================================================================
``"direct"``     LU factorization: ``torch.linalg`` for a dense tensor, SuperLU
                 (``scipy.sparse.linalg.splu``) for a scipy sparse matrix, and for an operator
                 given only by its products, the dense matrix built from ``n`` unit-vector products
``"cg"``         conjugate gradient (symmetric positive definite systems), one product per iteration
``"neumann"``    Richardson / fixed-point iteration ``x <- x + alpha (b - (A + damping I) x)``, the
                 truncated Neumann series of chapter 7, equation (eq-aid-neumann); with
                 ``alpha = 1`` and ``A = I - gamma P`` it is the sweep ``x <- b + gamma P x``
``"gmres"``      ``scipy.sparse.linalg.gmres`` (any nonsingular system)
``"bicgstab"``   ``scipy.sparse.linalg.bicgstab`` (any nonsingular system)
``"nystrom"``    rank-``m`` Nystrom approximation ``A ~ C M^+ C^T`` from ``m`` columns, inverted by
                 the Woodbury identity (chapter 7, equation (eq-aid-woodbury)); symmetric ``A``
===============  ================================================================================

Every failure is loud: a non-finite right-hand side or operator output raises, a singular direct
system raises, and an iterative solve that stops above its tolerance reports ``converged=False``
and issues a :class:`ConvergenceWarning` (unless ``warn=False``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ._validation import check_positive_int, check_real

__all__ = ["ConvergenceWarning", "SolveResult", "solve", "nystrom_woodbury", "METHODS"]

#: The methods of :func:`solve`.
METHODS = ("direct", "cg", "neumann", "gmres", "bicgstab", "nystrom")

#: ``max_iter=None`` means this many iterations for the Richardson / Neumann iteration; for
#: ``cg``, ``gmres`` and ``bicgstab`` it means ``10 n`` (CG is exact after ``n`` steps in exact
#: arithmetic).
NEUMANN_MAX_ITER = 10_000

_HUGE = 1e100  # an input this large to A suggests that the iteration diverges


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance."""


@dataclass
class SolveResult:
    """The output of :func:`solve`.

    Attributes:
        x: the solution, same shape and dtype as ``b`` (``[n]`` or ``[n, nrhs]``).
        iterations: iterations performed (0 for ``"direct"`` and ``"nystrom"``); for several
            right-hand sides solved iteratively, the maximum over the columns.
        residual: the relative residual ``||b - (A + damping I) x||_2 / ||b||_2`` of the returned
            ``x`` (0.0 for a zero column of ``b``), the maximum over the columns. CG with an
            operator given as a callable reports its recurrence residual (the same quantity,
            updated from the products it made, without one more product); a Nystrom solve with an
            operator given as a callable does not measure it (one more product) and reports NaN.
        converged: ``residual <= tol``.
        method: the method used.
        info: method-specific diagnostics (documented in :func:`solve`); ``info["products"]`` is
            the number of products with ``A`` (matrix columns count one each).
    """

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    method: str
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Operators: one checked view of a dense tensor, a scipy matrix / LinearOperator or a callable
# --------------------------------------------------------------------------------------------


class _Op:
    """``A`` seen by the solvers: products ``A X`` for ``X [n]`` or ``[n, c]`` in the dtype of
    ``b``, every result checked (type, shape, finite) and counted. :mod:`birl_lite.ihvp` uses it
    for Hessian columns too."""

    def __init__(self, A, n: int | None, dtype: torch.dtype) -> None:
        self.A = A
        self.dtype = dtype
        self.products = 0
        if isinstance(A, torch.Tensor):
            if A.ndim != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be a square matrix [n, n], got shape {tuple(A.shape)}")
            if not A.is_floating_point():
                raise TypeError(f"A must be a floating-point tensor, got dtype {A.dtype}")
            self.kind = "dense"
            self.matrix = A.detach().to(dtype)
            size = A.shape[0]
        elif sp.issparse(A) or isinstance(A, spla.LinearOperator):
            if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be a square matrix [n, n], got shape {tuple(A.shape)}")
            self.kind = "sparse" if sp.issparse(A) else "linop"
            size = A.shape[0]
        elif callable(A):
            self.kind = "callable"
            size = n
        else:
            raise TypeError(
                "A must be a torch tensor [n, n], a scipy sparse matrix or LinearOperator, or a "
                f"callable x -> A x, got {type(A).__name__}"
            )
        if n is not None and size != n:
            raise ValueError(f"A is {size} x {size} but b has {n} rows")
        self.n = int(size)

    @property
    def cheap(self) -> bool:
        """Whether one more product is free (a matrix), as opposed to a user callable."""
        return self.kind != "callable"

    def _check(self, out, shape: tuple[int, ...], call: str, x: torch.Tensor, it: int):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{call} must return a tensor, got {type(out).__name__}")
        if tuple(out.shape) != shape:
            raise ValueError(f"{call} returned shape {tuple(out.shape)}, expected {shape}")
        out = out.detach().to(self.dtype)
        if not bool(torch.isfinite(out).all()):
            if not bool(torch.isfinite(x).all()):
                note = " (its input was already non-finite)"
            elif x.is_floating_point() and float(x.abs().max()) > _HUGE:
                note = f" (its input has entries up to {float(x.abs().max()):.1e}: diverging?)"
            else:
                note = ""
            raise FloatingPointError(
                f"the operator A returned a non-finite value (NaN or inf) at iteration {it}{note}"
            )
        return out

    def _numpy_product(self, X: torch.Tensor) -> torch.Tensor:
        out = self.A @ X.detach().to(torch.float64).numpy()
        return torch.as_tensor(np.asarray(out, dtype=np.float64)).to(self.dtype)

    def apply(self, X: torch.Tensor, it: int = 0) -> torch.Tensor:
        """``A X`` for ``X [n]`` or ``[n, c]`` (``c`` products)."""
        shape = tuple(X.shape)
        self.products += 1 if X.ndim == 1 else shape[1]
        if self.kind == "dense":
            out = self.matrix @ X
        elif self.kind in ("sparse", "linop"):
            out = self._numpy_product(X)
        elif X.ndim == 1:
            return self._check(self.A(X), shape, "A(x)", X, it)
        elif getattr(self.A, "matmat", None) is not None:
            return self._check(self.A.matmat(X), shape, "A.matmat(X)", X, it)
        else:
            cols = [self._check(self.A(x), (self.n,), "A(x)", x, it) for x in X.T]
            return torch.stack(cols, dim=1)
        return self._check(out, shape, "A @ x", X, it)

    def columns(self, K: torch.Tensor) -> torch.Tensor:
        """``A[:, I]`` ``[n, m]``: ``A.columns(I)`` when the callable offers it (a structured
        shortcut), else the products with the unit vectors ``e_j, j in I``."""
        if self.kind == "dense":
            return self._check(self.matrix[:, K], (self.n, len(K)), "A[:, K]", K, 0)
        if self.kind == "sparse":
            cols = sp.csc_matrix(self.A)[:, K.numpy()].toarray()
            out = torch.as_tensor(np.asarray(cols, dtype=np.float64)).to(self.dtype)
            return self._check(out, (self.n, len(K)), "A[:, K]", K, 0)
        structured = getattr(self.A, "columns", None) if self.kind == "callable" else None
        if structured is not None:
            self.products += len(K)
            return self._check(structured(K), (self.n, len(K)), "A.columns(K)", K, 0)
        E = torch.zeros(self.n, len(K), dtype=self.dtype)
        E[K, torch.arange(len(K))] = 1.0
        return self.apply(E)

    def dense(self) -> torch.Tensor:
        """The dense matrix ``[n, n]`` (``n`` unit-vector products for a callable or a
        LinearOperator; ``A.matmat`` in one call when offered, else ``A.columns``)."""
        if self.kind == "dense":
            return self._check(self.matrix, (self.n, self.n), "A", self.matrix, 0)
        if self.kind == "sparse":
            out = torch.as_tensor(np.asarray(self.A.toarray(), dtype=np.float64)).to(self.dtype)
            return self._check(out, (self.n, self.n), "A", out, 0)
        if self.kind == "callable" and getattr(self.A, "matmat", None) is None:
            if getattr(self.A, "columns", None) is not None:
                return self.columns(torch.arange(self.n))
        return self.apply(torch.eye(self.n, dtype=self.dtype))

    def scipy_operator(self, damping: float) -> spla.LinearOperator:
        """``A + damping I`` as a float64 scipy LinearOperator whose products are checked."""
        calls = [0]

        def matvec(x):
            calls[0] += 1
            xt = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1)).to(self.dtype)
            y = self.apply(xt, calls[0]) + damping * xt
            return y.to(torch.float64).numpy()

        return spla.LinearOperator((self.n, self.n), matvec=matvec, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_b(b) -> torch.Tensor:
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch tensor [n] or [n, k], got {type(b).__name__}")
    if not b.is_floating_point():
        raise TypeError(f"b must be a floating-point tensor, got dtype {b.dtype}")
    if b.ndim not in (1, 2) or b.shape[0] == 0 or (b.ndim == 2 and b.shape[1] == 0):
        raise ValueError(f"b must have shape [n] or [n, k] with n, k >= 1, got {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("b must be finite (it contains NaN or inf)")
    return b.detach()


def _check_damping(damping, *, positive: bool) -> float:
    d = check_real(damping, "damping")
    if not math.isfinite(d) or d < 0.0 or (positive and d == 0.0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"damping must be a finite number {need}, got {d}")
    return d


def _check_options(method, damping, tol, max_iter, x0, alpha, rank, indices, generator, b):
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    damping = _check_damping(damping, positive=method == "nystrom")
    tol = check_real(tol, "tol")
    if not (math.isfinite(tol) and tol >= 0.0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    iterative = method in ("cg", "neumann", "gmres", "bicgstab")
    if max_iter is not None:
        if not iterative:
            raise ValueError(f"max_iter is only used by iterative methods, not {method!r}")
        max_iter = check_positive_int(max_iter, "max_iter")
    if x0 is not None:
        if not iterative:
            raise ValueError(f"x0 is only used by iterative methods, not {method!r}")
        if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != tuple(b.shape):
            got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ValueError(f"x0 must be a tensor of the shape of b {tuple(b.shape)}, got {got}")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 must be finite (it contains NaN or inf)")
        x0 = x0.detach().to(b.dtype)
    alpha = check_real(alpha, "alpha")
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if method != "neumann" and alpha != 1.0:
        raise ValueError(f"alpha is only used by method='neumann', not {method!r}")
    if method != "nystrom" and (rank is not None or indices is not None or generator is not None):
        raise ValueError(
            f"rank, indices and generator are only used by method='nystrom', not {method!r}"
        )
    return damping, tol, max_iter, x0, alpha


def _nystrom_indices(n: int, rank, indices, generator) -> torch.Tensor:
    """The ``m`` distinct coordinates ``I``: ``indices`` checked, or drawn uniformly."""
    if rank is None and indices is None:
        raise ValueError("method='nystrom' needs rank (or explicit indices)")
    if rank is not None:
        rank = check_positive_int(rank, "rank")
        if rank > n:
            raise ValueError(f"rank must be <= the dimension {n}, got {rank}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if indices is None:
        return torch.randperm(n, generator=generator)[:rank]
    K = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if rank is None:
        rank = check_positive_int(K.numel(), "rank (the number of indices)")
    if K.numel() != rank or len(set(K.tolist())) != rank:
        raise ValueError(f"indices must hold {rank} distinct entries, got {K.tolist()}")
    if bool((K < 0).any()) or bool((K >= n).any()):
        raise ValueError(f"indices must lie in [0, {n}), got {K.tolist()}")
    return K


def _nystrom_columns(op: _Op, rank, indices, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I, C = A[:, I])`` for the Nystrom approximation."""
    K = _nystrom_indices(op.n, rank, indices, generator)
    return K, op.columns(K)


# --------------------------------------------------------------------------------------------
# Residuals and results
# --------------------------------------------------------------------------------------------


def _relative(r_norm: float, b_norm: float) -> float:
    if b_norm == 0.0:
        return 0.0 if r_norm == 0.0 else math.inf
    return r_norm / b_norm


def _measured_residual(op: _Op, x: torch.Tensor, b: torch.Tensor, damping: float) -> float:
    """``max_j ||b_j - (A + damping I) x_j|| / ||b_j||`` with fresh products."""
    r = b - (op.apply(x) + damping * x)
    if b.ndim == 1:
        return _relative(float(r.norm()), float(b.norm()))
    rn, bn = r.norm(dim=0).tolist(), b.norm(dim=0).tolist()
    return max(_relative(a, c) for a, c in zip(rn, bn, strict=True))


def _finish(x, iterations, residual, tol, method, info, warn, op, max_iter=None):
    info["products"] = op.products
    converged = bool(residual <= tol)
    if not converged and warn:
        if math.isnan(residual):
            why = "its residual was not measured (it would cost one more product of A)"
        else:
            why = f"relative residual {residual:.3e} > tol {tol:.1e}"
        if info.get("breakdown"):
            why += " (it broke down: see info)"
        limit = "" if max_iter is None else f" (max_iter={max_iter})"
        warnings.warn(
            f"solve(method={method!r}) did not reach the tolerance after {iterations} "
            f"iterations{limit}: {why}",
            ConvergenceWarning,
            stacklevel=4,  # the caller of solve
        )
    return SolveResult(x, int(iterations), float(residual), converged, method, info)


def _columns_of(b: torch.Tensor, x0: torch.Tensor | None):
    """``(b_j, x0_j)`` for each column (one pair for a 1-D ``b``)."""
    if b.ndim == 1:
        return [(b, x0)]
    return [
        (b[:, j].contiguous(), None if x0 is None else x0[:, j].contiguous())
        for j in range(b.shape[1])
    ]


def _stack(xs: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    return xs[0] if b.ndim == 1 else torch.stack(xs, dim=1)


def _merge(infos: list[dict], b: torch.Tensor) -> dict:
    """One column: its info; several: ``{"columns": [...]}`` plus the flags any column raised."""
    if b.ndim == 1:
        return infos[0]
    merged: dict = {"columns": infos}
    for key in ("negative_curvature", "breakdown"):
        if key in infos[0]:
            merged[key] = any(i[key] for i in infos)
    return merged


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def _singular(damping: float) -> ValueError:
    return ValueError(
        f"A + damping I is singular to working precision (damping = {damping:g}); a direct "
        "solve needs a nonsingular system (increase damping, or use an iterative method)"
    )


def _dense_solve(Ad: torch.Tensor, b: torch.Tensor, damping: float) -> torch.Tensor:
    """LU solve of ``Ad x = b`` with a pivot test for (numerical) singularity."""
    n = Ad.shape[0]
    LU, piv, status = torch.linalg.lu_factor_ex(Ad)
    pivots = LU.diagonal().abs()
    top = float(pivots.max())
    if int(status) != 0 or top == 0.0 or float(pivots.min()) <= n * torch.finfo(Ad.dtype).eps * top:
        raise _singular(damping)
    B = b.unsqueeze(1) if b.ndim == 1 else b
    x = torch.linalg.lu_solve(LU, piv, B)
    return x.squeeze(1) if b.ndim == 1 else x


def _direct(op: _Op, b, damping, tol, warn) -> SolveResult:
    info: dict = {}
    if op.kind == "sparse":
        Acsc = sp.csc_matrix(op.A, dtype=np.float64)
        if not np.all(np.isfinite(Acsc.data)):
            raise FloatingPointError("the operator A has a non-finite entry (NaN or inf)")
        Ad = Acsc + damping * sp.identity(op.n, format="csc")
        try:
            lu = spla.splu(sp.csc_matrix(Ad))
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise _singular(damping) from exc
        sol = lu.solve(b.to(torch.float64).numpy())
        x = torch.as_tensor(np.asarray(sol, dtype=np.float64)).to(b.dtype)
        if not bool(torch.isfinite(x).all()):
            raise _singular(damping)
        info["factorization"] = "splu"
        residual = _measured_residual(op, x, b, damping)
    else:
        D = op.dense()
        Ad = D + damping * torch.eye(op.n, dtype=D.dtype)
        x = _dense_solve(Ad, b, damping)
        info["factorization"] = "lu"
        # the residual with the matrix just built: no further product of a callable A
        residual = _measured_residual(_Op(D, op.n, D.dtype), x, b, damping)
    return _finish(x, 0, residual, tol, "direct", info, warn, op)


def _cg_column(op: _Op, b, x0, damping, tol, max_iter):
    """Conjugate gradient on one column; returns ``(x, iterations, residual, info)``."""
    b_norm = math.sqrt(float(b @ b))
    if b_norm == 0.0:
        return (
            torch.zeros_like(b),
            0,
            0.0,
            {
                "residual_norms": torch.zeros(1, dtype=torch.float64),
                "negative_curvature": False,
                "breakdown": False,
            },
        )
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - (op.apply(x, 0) + damping * x)
    p = r.clone()
    rr = float(r @ r)
    norms = [math.sqrt(rr)]
    info = {"negative_curvature": False, "breakdown": False}
    iterations = 0
    if math.sqrt(rr) > tol * b_norm:
        for j in range(max_iter):
            Ap = op.apply(p, j + 1) + damping * p
            pAp = float(p @ Ap)
            if pAp <= 0.0:  # A + damping I is not positive definite: CG's guarantee is lost
                info["negative_curvature"] = True
            if pAp == 0.0 or not math.isfinite(pAp):  # the step is undefined: stop, report
                info["breakdown"] = True
                info["breakdown_iteration"] = j + 1
                info["curvature"] = pAp
                break
            step = rr / pAp
            x = x + step * p
            r = r - step * Ap
            rr_new = float(r @ r)
            norms.append(math.sqrt(rr_new))
            iterations = j + 1
            if math.sqrt(rr_new) <= tol * b_norm:
                break
            p = r + (rr_new / rr) * p
            rr = rr_new
    info["residual_norms"] = torch.tensor(norms, dtype=torch.float64)
    if op.cheap:
        residual = _measured_residual(op, x, b, damping)
    else:  # the CG recurrence r = b - (A + damping I) x, no extra product
        residual = norms[-1] / b_norm
    return x, iterations, residual, info


def _neumann_column(op: _Op, b, x0, damping, tol, max_iter, alpha):
    """Richardson iteration on one column; returns ``(x, iterations, residual, info)``."""
    b_norm = float(b.norm())
    if b_norm == 0.0:
        zero = torch.zeros_like(b)
        info = {"residual_norms": torch.zeros(1, dtype=torch.float64), "residual_vector": zero}
        return zero, 0, 0.0, info
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - (op.apply(x, 0) + damping * x)
    norms = [float(r.norm())]
    iterations = 0
    while norms[-1] > tol * b_norm and iterations < max_iter:
        x = x + alpha * r
        iterations += 1
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(
                f"the Richardson / Neumann iteration diverged: the iterate overflowed at "
                f"iteration {iterations} (alpha = {alpha:g} too large, or A + damping I has an "
                "eigenvalue outside (0, 2 / alpha))"
            )
        r = b - (op.apply(x, iterations) + damping * x)
        norms.append(float(r.norm()))
    info = {"residual_norms": torch.tensor(norms, dtype=torch.float64), "residual_vector": r}
    return x, iterations, norms[-1] / b_norm, info


def _scipy_column(op: _Op, b, x0, damping, tol, max_iter, method):
    """GMRES or BiCGSTAB (scipy, float64) on one column."""
    b64 = b.to(torch.float64).numpy()
    if float(np.linalg.norm(b64)) == 0.0:
        return torch.zeros_like(b), 0, 0.0, {"scipy_info": 0}
    A = op.scipy_operator(damping)
    count = [0]

    def callback(_):
        count[0] += 1

    kwargs = {
        "x0": None if x0 is None else x0.to(torch.float64).numpy(),
        "rtol": tol,
        "atol": 0.0,
        "maxiter": max_iter,
        "callback": callback,
    }
    if method == "gmres":
        kwargs["callback_type"] = "pr_norm"
        sol, status = spla.gmres(A, b64, **kwargs)
    else:
        sol, status = spla.bicgstab(A, b64, **kwargs)
    x = torch.as_tensor(np.asarray(sol, dtype=np.float64)).to(b.dtype)
    info = {"scipy_info": int(status)}
    if status < 0:
        info["breakdown"] = True
    return x, count[0], _measured_residual(op, x, b, damping), info


def _iterative(op: _Op, b, x0, method, damping, tol, max_iter, alpha, warn) -> SolveResult:
    if max_iter is None:
        max_iter = NEUMANN_MAX_ITER if method == "neumann" else 10 * op.n
    xs, its, residuals, infos = [], [], [], []
    for bj, x0j in _columns_of(b, x0):
        if method == "cg":
            out = _cg_column(op, bj, x0j, damping, tol, max_iter)
        elif method == "neumann":
            out = _neumann_column(op, bj, x0j, damping, tol, max_iter, alpha)
        else:
            out = _scipy_column(op, bj, x0j, damping, tol, max_iter, method)
        for acc, value in zip((xs, its, residuals, infos), out, strict=True):
            acc.append(value)
    info = _merge(infos, b)
    if method == "neumann" and b.ndim == 2:
        info["residual_vector"] = torch.stack([i["residual_vector"] for i in infos], dim=1)
    x = _stack(xs, b)
    return _finish(x, max(its), max(residuals), tol, method, info, warn, op, max_iter)


def nystrom_woodbury(
    C: torch.Tensor, M: torch.Tensor, v: torch.Tensor, damping: float, *, safeguard: str = "eigh"
) -> tuple[torch.Tensor, dict]:
    """``(C M^+ C^T + damping I)^{-1} v`` by the Woodbury identity, with an ``m x m`` core.

    For symmetric positive definite ``M`` this is chapter 7, equation (eq-aid-woodbury), with
    ``nu = damping``:

        (C M^{-1} C^T + nu I)^{-1} v = v / nu - (1 / nu^2) C (M + C^T C / nu)^{-1} C^T v.

    ``safeguard="eigh"`` (default, never NaN for finite inputs): eigendecompose
    ``M = U diag(mu) U^T``, keep the eigenvalues ``mu_i > m eps max|mu|`` (the rest, including
    every negative one, are clipped: ``M^+`` is the pseudo-inverse of the positive part), write
    ``C M_+^+ C^T = Z Z^T`` with ``Z = C U_+ diag(mu_+)^{-1/2}``, take a thin SVD
    ``Z = Q diag(sigma) R^T`` and return

        u = (1 / nu) (v - Q diag(sigma^2 / (sigma^2 + nu)) Q^T v)
          = Q diag(1 / (sigma^2 + nu)) Q^T v + (I - Q Q^T) v / nu     (computed this way),

    which equals the formula above when ``M`` is positive definite, and whose weights lie in
    ``(0, 1 / nu]`` whatever ``M`` (so ``||u|| <= ||v|| / nu``). ``safeguard="none"``: the
    formula above with a plain LU solve (as in Hataya and Yamada's reference code); it can return
    inf or NaN when the core ``M + C^T C / nu`` is singular. It is offered for comparison only.

    Args:
        C: ``[n, m]`` columns ``A[:, I]``.
        M: ``[m, m]`` block ``A[I, I]`` (symmetrized here).
        v: ``[n]`` or ``[n, nrhs]`` right-hand side(s).
        damping: ``nu > 0``.
        safeguard: ``"eigh"`` or ``"none"``.

    Returns:
        ``(u, info)``: ``u`` of the shape of ``v``; ``info["eigenvalues_M"]`` (ascending) and
        ``info["rank_kept"]``.
    """
    damping = _check_damping(damping, positive=True)
    if safeguard not in ("eigh", "none"):
        raise ValueError(f"safeguard must be 'eigh' or 'none', got {safeguard!r}")
    if C.ndim != 2 or M.ndim != 2 or M.shape[0] != M.shape[1] or C.shape[1] != M.shape[0]:
        raise ValueError(
            f"C must be [n, k] and M [k, k]; got C {tuple(C.shape)} and M {tuple(M.shape)}"
        )
    if v.ndim not in (1, 2) or v.shape[0] != C.shape[0]:
        raise ValueError(
            f"v must have shape ({C.shape[0]},) or ({C.shape[0]}, m), got {tuple(v.shape)}"
        )
    k = M.shape[0]
    Ms = 0.5 * (M + M.T)
    if safeguard == "none":
        core = Ms + (C.T @ C) / damping
        sol, _ = torch.linalg.solve_ex(core, C.T @ v)
        u = v / damping - (C @ sol) / damping**2
        return u, {"eigenvalues_M": torch.linalg.eigvalsh(Ms), "rank_kept": k}
    lam, U = torch.linalg.eigh(Ms)
    eigenvalues = lam
    scale = float(lam.abs().max()) if k > 0 else 0.0
    keep = lam > k * torch.finfo(lam.dtype).eps * scale
    kept = int(keep.sum())
    if scale == 0.0 or kept == 0:
        return v / damping, {"eigenvalues_M": lam, "rank_kept": 0}
    # the kept eigenpairs (row-major U, as the mask's copy gives it: the same product below)
    U, lam = (U[:, keep], lam[keep]) if kept < k else (U.contiguous(), lam)
    # Z = C U_+ diag(mu_+)^{-1/2}, formed as Z^T (an m x m by m x n product is much faster
    # than n x m by m x m, and the column-major Z is what the SVD wants)
    Zt = (U.T @ C.T) / torch.sqrt(lam).unsqueeze(1)
    Q, sigma, _ = torch.linalg.svd(Zt.T, full_matrices=False)
    # u = Q diag(1 / (sigma^2 + nu)) Q^T v + (I - Q Q^T) v / nu: the same as the formula
    # in the docstring, without its cancellation when nu is tiny; every factor is in
    # (0, 1 / nu]
    coef = Q.T @ v
    weights = sigma.square() + damping
    u = Q @ (coef / (weights if v.ndim == 1 else weights.unsqueeze(1)))
    if Q.shape[1] < Q.shape[0]:
        u = u + (v - Q @ coef) / damping
    return u, {"eigenvalues_M": eigenvalues, "rank_kept": kept}


def _nystrom(op: _Op, b, damping, tol, rank, indices, generator, warn) -> SolveResult:
    K, C = _nystrom_columns(op, rank, indices, generator)
    x, info = nystrom_woodbury(C, C[K, :], b, damping)
    info["indices"] = K
    if op.cheap:
        residual = _measured_residual(op, x, b, damping)
        info["residual_measured"] = True
    else:
        residual = math.nan
        info["residual_measured"] = False
    return _finish(x, 0, residual, tol, "nystrom", info, warn, op)


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


def solve(
    A: Any,
    b: torch.Tensor,
    *,
    method: str = "direct",
    damping: float = 0.0,
    tol: float = 1e-10,
    max_iter: int | None = None,
    x0: torch.Tensor | None = None,
    alpha: float = 1.0,
    rank: int | None = None,
    indices: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    warn: bool = True,
) -> SolveResult:
    """Solve ``(A + damping I) x = b``.

    Args:
        A: the matrix, as a dense tensor ``[n, n]``, a scipy sparse matrix (any format), a
            ``scipy.sparse.linalg.LinearOperator``, or a callable ``x [n] -> A x [n]`` (torch).
            A callable may also offer ``matmat(X [n, c]) -> A X`` and ``columns(I) -> A[:, I]``
            (as the Hessian-vector products of :mod:`birl_lite.ihvp` do); ``"direct"`` and
            ``"nystrom"`` then use them instead of one product per unit vector.
        b: right-hand side ``[n]``, or ``[n, nrhs]`` for ``nrhs`` systems with the same ``A``
            (``"direct"`` and ``"nystrom"`` solve them at once, iterative methods one column
            after the other). Its dtype is kept (float64 for tabular systems, float32 for
            network Hessians); scipy-based paths compute in float64.
        method: ``"direct"``, ``"cg"`` (symmetric positive definite ``A + damping I``),
            ``"neumann"`` (Richardson: ``x <- x + alpha (b - (A + damping I) x)``, converges when
            every eigenvalue of ``alpha (A + damping I)`` lies in the disc of radius 1 around 1),
            ``"gmres"``, ``"bicgstab"`` or ``"nystrom"`` (symmetric ``A``).
        damping: ``nu >= 0`` added to the diagonal (``> 0`` for ``"nystrom"``).
        tol: relative residual tolerance ``>= 0``. Iterative methods stop when
            ``||b - (A + damping I) x|| <= tol ||b||``; every method reports ``converged`` against
            it. With ``tol = 0``, ``"neumann"`` and ``"cg"`` run exactly ``max_iter`` iterations
            (unless the residual becomes exactly zero). Float32 systems need ``tol >= 1e-6``.
        max_iter: iteration limit of the iterative methods (``None``: 10 000 for ``"neumann"``,
            ``10 n`` for the others); for ``"gmres"`` it counts restart cycles, as in scipy.
        x0: starting point of an iterative method (shape of ``b``; ``None``: zeros).
        alpha: step of ``"neumann"`` (``> 0``).
        rank: number ``m`` of Nystrom columns, ``1 <= m <= n``.
        indices: explicit distinct Nystrom coordinates ``I`` (``m`` of them) instead of a draw.
        generator: ``torch.Generator`` for drawing ``I`` (``torch.randperm``; same seed, same I).
        warn: issue a :class:`ConvergenceWarning` when ``converged`` is False.

    Returns:
        :class:`SolveResult` ``(x, iterations, residual, converged, method, info)``. ``info``:

        * ``"direct"``: ``factorization`` (``"lu"`` or ``"splu"``).
        * ``"cg"``: ``residual_norms`` (``||r_j||``, ``j = 0..iterations``),
          ``negative_curvature`` (CG met a curvature ``p^T (A + damping I) p <= 0``: the system
          is not positive definite and CG's guarantee is lost; it goes on, and ``converged``
          says whether it still reached ``tol``) and ``breakdown`` (a curvature exactly zero or
          not finite, where CG's step is undefined: it stops there, with
          ``breakdown_iteration`` and ``curvature``, and reports the last iterate).
        * ``"neumann"``: ``residual_norms`` (``||r_j||``) and ``residual_vector``
          (``b - (A + damping I) x`` at the returned ``x``).
        * ``"gmres"``, ``"bicgstab"``: ``scipy_info`` (scipy's status; < 0: breakdown).
        * ``"nystrom"``: ``indices``, ``eigenvalues_M``, ``rank_kept`` (see
          :func:`nystrom_woodbury`) and ``residual_measured``.

        Several columns: ``info["columns"]`` holds one such dict per column.

    Raises:
        ValueError: ``b`` or ``x0`` not finite; a singular direct system; an unknown method;
            bad ``damping``, ``tol``, ``max_iter``, ``alpha``, ``rank`` or ``indices``; ``A`` not
            square or of another size than ``b``; an option given to a method that ignores it.
        TypeError: ``A``, ``b`` or ``generator`` of the wrong type; ``A`` returning a non-tensor.
        FloatingPointError: ``A`` returned a non-finite value (the message gives the
            iteration), or the Richardson iterate overflowed.
    """
    b = _check_b(b)
    op = _Op(A, b.shape[0], b.dtype)
    damping, tol, max_iter, x0, alpha = _check_options(
        method, damping, tol, max_iter, x0, alpha, rank, indices, generator, b
    )
    if not isinstance(warn, bool):
        raise TypeError(f"warn must be a bool, got {type(warn).__name__}")
    if method == "direct":
        return _direct(op, b, damping, tol, warn)
    if method == "nystrom":
        return _nystrom(op, b, damping, tol, rank, indices, generator, warn)
    return _iterative(op, b, x0, method, damping, tol, max_iter, alpha, warn)
