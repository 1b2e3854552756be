"""Inverse-Hessian-vector products (iHVPs) and implicit differentiation (AID).

Chapter 7 of the book. For a bilevel problem (chapter 7, equation (eq-aid-bilevel))

    min_theta F(theta) = f(theta, w*(theta)),     w*(theta) = argmin_w g(theta, w)   (g strongly convex in w)

the implicit function theorem gives the hypergradient (chapter 7, equation (eq-aid))

    grad F = grad_theta f - grad^2_{theta w} g  [grad^2_{ww} g]^{-1}  grad_w f.          (AID)

The expensive, fragile part is the iHVP ``u = (H + nu I)^{-1} v`` with ``H = grad^2_{ww} g``
and a damping ``nu >= 0`` (the argument ``damping``). This module computes it from
Hessian-vector products only (double backward through autograd, or ``torch.func``
forward-over-reverse, chapter 7, equation (eq-aid-hvp)), never from a dense Hessian except in the
reference :func:`ihvp_exact`. The four solvers are thin wrappers of
:func:`birl_lite.linear_solve.solve` (which holds the algorithms) that add the HVP count and the
dict-of-tensors layout:

* :func:`ihvp_cg`: conjugate gradient, one HVP per iteration.
* :func:`ihvp_neumann`: ``u ~ alpha sum_{j=0}^{m} (I - alpha (H + nu I))^j v``, ``m`` HVPs.
* :func:`ihvp_nystrom`: rank-``m`` Nystrom approximation ``H ~ C M^+ C^T`` from ``m`` columns
  ``C = H[:, I]`` (``m`` HVPs with unit vectors) and ``M = H[I, I]``, inverted with the Woodbury
  identity (Hataya and Yamada, 2023). No iteration, hence no divergence; the ``m x m`` core is
  solved through a symmetric eigendecomposition that drops non-positive eigenvalues, so the
  result is finite even when ``M`` is indefinite or singular.
* :func:`ihvp_nystrom_plus_identity`: the same columns with the ``m x m`` core that BLPO's public
  code solves, ``M + C^T C / nu + I`` (exactly the damped inverse of ``C (M + I)^{-1} C^T``),
  for comparison only.

Every solver accepts either an :class:`HVP` (from :func:`make_hvp`) or a plain callable
``hvp(v) -> H v`` on flat vectors, and returns an :class:`IHVPResult` with the number of HVPs used.
Vectors may be flat tensors or dicts of tensors (as from ``dict(module.named_parameters())``).

The module also holds the two test problems of chapter 7: a bilevel ridge regression with a
closed-form hypergradient (:func:`ridge_problem`) and the squared loss of a small tanh value
network (:func:`value_network_problem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._validation import DTYPE, ArrayLike, as_tensor, check_finite, check_positive_int, check_real
from .linear_solve import _check_damping, _nystrom_columns, _Op, nystrom_woodbury, solve

__all__ = [
    "HVP",
    "IHVPResult",
    "ImplicitHypergradientResult",
    "RidgeProblem",
    "ValueNetProblem",
    "make_hvp",
    "dense_hessian",
    "hessian_columns",
    "ihvp_exact",
    "ihvp_cg",
    "ihvp_neumann",
    "ihvp_nystrom",
    "ihvp_nystrom_plus_identity",
    "nystrom_plus_identity",
    "nystrom_woodbury",
    "implicit_hypergradient",
    "ridge_problem",
    "value_network_problem",
]

Tree = torch.Tensor | Mapping[str, torch.Tensor]
"""A parameter vector: a flat 1-D tensor or a dict of tensors (``module.named_parameters()``)."""


# --------------------------------------------------------------------------------------------
# Flat <-> dict layouts
# --------------------------------------------------------------------------------------------


class _Layout:
    """How a flat vector of length ``dim`` maps to a tree (a 1-D tensor or a dict of tensors)."""

    def __init__(self, tree: Tree, name: str) -> None:
        self.name = name
        if isinstance(tree, torch.Tensor):
            if tree.ndim != 1:
                raise ValueError(
                    f"{name} must be a flat 1-D tensor or a dict of tensors, got a tensor of "
                    f"shape {tuple(tree.shape)}"
                )
            self.keys: tuple[str, ...] | None = None
            self.shapes: tuple[torch.Size, ...] = (tree.shape,)
            ref = tree
        elif isinstance(tree, Mapping):
            if len(tree) == 0:
                raise ValueError(f"{name} must not be an empty dict")
            for k, t in tree.items():
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{name}[{k!r}] must be a tensor, got {type(t).__name__}")
            self.keys = tuple(tree.keys())
            self.shapes = tuple(tree[k].shape for k in self.keys)
            ref = tree[self.keys[0]]
        else:
            raise TypeError(
                f"{name} must be a 1-D tensor or a dict of tensors, got {type(tree).__name__}"
            )
        if not ref.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {ref.dtype}")
        self.dtype = ref.dtype
        self.device = ref.device
        self.numels = tuple(math.prod(s) for s in self.shapes)
        self.dim = int(sum(self.numels))
        if self.dim == 0:
            raise ValueError(f"{name} must have at least one entry")

    def flatten(self, tree: Tree, name: str | None = None) -> torch.Tensor:
        """The flat vector ``[dim]`` of ``tree`` (same layout as the reference tree)."""
        name = name or self.name
        if self.keys is None:
            if not isinstance(tree, torch.Tensor):
                raise TypeError(f"{name} must be a flat tensor, got {type(tree).__name__}")
            if tree.shape != (self.dim,):
                raise ValueError(f"{name} must have shape ({self.dim},), got {tuple(tree.shape)}")
            return tree.to(self.dtype)
        if isinstance(tree, torch.Tensor):
            if tree.shape != (self.dim,):
                raise ValueError(
                    f"{name} must be a dict with keys {list(self.keys)} or a flat tensor of shape "
                    f"({self.dim},), got a tensor of shape {tuple(tree.shape)}"
                )
            return tree.to(self.dtype)
        if not isinstance(tree, Mapping):
            raise TypeError(f"{name} must be a dict of tensors, got {type(tree).__name__}")
        if set(tree.keys()) != set(self.keys):
            raise ValueError(
                f"{name} must have keys {sorted(self.keys)}, got {sorted(tree.keys())}"
            )
        parts = []
        for k, shape in zip(self.keys, self.shapes, strict=True):
            t = tree[k]
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}[{k!r}] must have shape {tuple(shape)}, got {got}")
            parts.append(t.reshape(-1).to(self.dtype))
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> Tree:
        """The tree of ``flat`` ``[dim]`` (views of ``flat``; gradients flow through)."""
        if flat.shape != (self.dim,):
            raise ValueError(f"flat vector must have shape ({self.dim},), got {tuple(flat.shape)}")
        if self.keys is None:
            return flat
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for k, shape, n in zip(self.keys, self.shapes, self.numels, strict=True):
            out[k] = flat[offset : offset + n].view(shape)
            offset += n
        return out


def _scalar_loss(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {got}")
    return value.reshape(())


def _grad_or_zero(out: torch.Tensor, inp: torch.Tensor, **kwargs) -> torch.Tensor:
    """``d out / d inp`` (contracted with ``grad_outputs`` if given); zeros when independent."""
    if not out.requires_grad:
        return torch.zeros_like(inp)
    (g,) = torch.autograd.grad(out, inp, allow_unused=True, **kwargs)
    return torch.zeros_like(inp) if g is None else g


# --------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------


class HVP:
    """The Hessian-vector product ``v -> H v`` of a scalar loss at fixed parameters.

    Build it with :func:`make_hvp`. Calling it on a flat vector ``v`` ``[dim]`` returns ``H v``
    ``[dim]`` (detached) and increments :attr:`n_hvp`. The dense Hessian is never formed.

    Attributes:
        dim: number of parameters (length of the flat vectors).
        n_hvp: number of Hessian-vector products computed so far (reset with :meth:`reset_count`).
        loss: the loss value at the parameters (detached scalar).
        grad: the flat gradient of the loss at the parameters ``[dim]`` (detached).
        backend: ``"autograd"`` (double backward through a gradient graph built once) or
            ``"func"`` (``torch.func.jvp`` of ``torch.func.grad``: forward-over-reverse).
    """

    def __init__(
        self,
        layout: _Layout,
        point: torch.Tensor,
        gradient: torch.Tensor,
        loss: torch.Tensor,
        backend: str = "autograd",
        grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._layout = layout
        self._point = point
        self._gradient = gradient
        self._grad_fn = grad_fn
        self.backend = backend
        self.dim = layout.dim
        self.dtype = layout.dtype
        self.n_hvp = 0
        self.loss = loss.detach()
        self.grad = gradient.detach()

    def flatten(self, tree: Tree) -> torch.Tensor:
        """The flat vector ``[dim]`` of a tree with the parameters' layout (keys and shapes)."""
        return self._layout.flatten(tree, "tree")

    def unflatten(self, flat: torch.Tensor) -> Tree:
        """The tree (dict of tensors, or the flat tensor itself) of a flat vector ``[dim]``."""
        return self._layout.unflatten(flat)

    def reset_count(self) -> None:
        """Set :attr:`n_hvp` back to zero."""
        self.n_hvp = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` ``[dim]`` (one HVP)."""
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"v must be a tensor, got {type(v).__name__}")
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},), got {tuple(v.shape)}")
        v = v.detach().to(self.dtype)
        self.n_hvp += 1
        if self.backend == "func":
            assert self._grad_fn is not None
            _, hv = torch.func.jvp(self._grad_fn, (self._point,), (v,))
            return hv.detach()
        hv = _grad_or_zero(self._gradient, self._point, grad_outputs=v, retain_graph=True)
        return hv.detach()

    def __repr__(self) -> str:
        return f"HVP(dim={self.dim}, backend={self.backend!r}, n_hvp={self.n_hvp})"


def make_hvp(
    loss_fn: Callable[[Tree], torch.Tensor], params: Tree, *, backend: str = "autograd"
) -> HVP:
    """The Hessian-vector product of ``loss_fn`` at ``params`` (chapter 7, equation (eq-aid-hvp)).

    Args:
        loss_fn: ``loss_fn(params) -> scalar tensor``; it receives a tree with the structure of
            ``params`` (for a module, use ``torch.func.functional_call(module, params, x)``).
        params: a flat 1-D tensor ``[dim]`` or a dict of tensors; values are detached and copied.
        backend: ``"autograd"`` (default): the gradient graph is built once and every HVP is one
            double backward through it. ``"func"``: ``torch.func.jvp(torch.func.grad(loss))``
            (forward-over-reverse; ``loss_fn`` must be ``torch.func``-compatible).

    Returns:
        An :class:`HVP` ``v -> H v`` on flat vectors, with ``.dim``, ``.flatten``, ``.unflatten``
        and the counter ``.n_hvp``.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if backend not in ("autograd", "func"):
        raise ValueError(f"backend must be 'autograd' or 'func', got {backend!r}")
    layout = _Layout(params, "params")
    point = layout.flatten(params).detach().clone()
    if backend == "func":

        def flat_loss(p: torch.Tensor) -> torch.Tensor:
            return _scalar_loss(loss_fn(layout.unflatten(p)), "loss_fn")

        grad_fn = torch.func.grad(flat_loss)
        with torch.no_grad():
            loss = flat_loss(point)
        return HVP(layout, point, grad_fn(point), loss, backend="func", grad_fn=grad_fn)
    p = point.requires_grad_(True)
    loss = _scalar_loss(loss_fn(layout.unflatten(p)), "loss_fn")
    gradient = _grad_or_zero(loss, p, create_graph=True)
    return HVP(layout, p, gradient, loss)


class _Operator:
    """A solver's view of an HVP: flat in, flat out, counted. It offers ``matmat`` and
    ``columns`` exactly when the HVP does, so that :func:`~birl_lite.linear_solve.solve` uses a
    structured shortcut only where one exists; ``solve`` checks every result."""

    def __init__(self, hvp, v: Tree, name: str = "v") -> None:
        if not callable(hvp):
            raise TypeError(f"hvp must be an HVP or a callable v -> H v, got {type(hvp).__name__}")
        self.hvp = hvp
        self.n_hvp = 0
        if isinstance(hvp, HVP):
            layout = hvp._layout
            if isinstance(v, torch.Tensor) and v.shape != (hvp.dim,):
                raise ValueError(
                    f"{name} must have shape ({hvp.dim},) to match the HVP's dimension, got "
                    f"{tuple(v.shape)}"
                )
            self.flat_v = layout.flatten(v, name).detach()
            self.as_dict = not isinstance(v, torch.Tensor)
            self.layout = layout
        else:
            if isinstance(v, Mapping):
                self.layout = _Layout(v, name)
                self.flat_v = self.layout.flatten(v, name).detach()
                self.as_dict = True
            else:
                t = v if isinstance(v, torch.Tensor) else as_tensor(v, name)
                if not t.is_floating_point():
                    t = t.to(DTYPE)
                if t.ndim != 1:
                    raise ValueError(
                        f"{name} must be a flat 1-D tensor, got shape {tuple(t.shape)}"
                    )
                self.layout = _Layout(t, name)
                self.flat_v = t.detach()
                self.as_dict = False
        check_finite(self.flat_v, name)
        self.dim = self.flat_v.numel()
        self.dtype = self.flat_v.dtype
        if getattr(hvp, "matmat", None) is not None:
            self.matmat = self._matmat
        if getattr(hvp, "columns", None) is not None:
            self.columns = self._columns

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n_hvp += 1
        return self.hvp(x)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``H X`` for ``X [dim, B]`` in one call of the HVP's own ``matmat`` (``B`` HVPs)."""
        self.n_hvp += X.shape[1]
        return self.hvp.matmat(X)

    def _columns(self, K: torch.Tensor) -> torch.Tensor:
        """``H[:, I]`` from the HVP's own ``columns(K)`` (``m`` HVPs)."""
        self.n_hvp += len(K)
        return self.hvp.columns(K)

    def output(self, flat_u: torch.Tensor) -> Tree:
        if not self.as_dict:
            return flat_u
        return {k: t.clone() for k, t in self.layout.unflatten(flat_u).items()}


@dataclass
class IHVPResult:
    """The output of an inverse-Hessian-vector product solver.

    Attributes:
        u: the approximate solution of ``(H + damping I) u = v``, with the structure of ``v``
            (flat tensor in, flat tensor out; dict in, dict out).
        n_hvp: number of Hessian-vector products the solver used.
        info: solver diagnostics (documented by each solver).
    """

    u: Tree
    n_hvp: int
    info: dict = field(default_factory=dict)


def _operator(hvp, dim: int | None) -> _Operator:
    """An :class:`_Operator` for ``hvp`` without a right-hand side: ``dim`` and dtype from the
    HVP when it has them (:class:`HVP`, :class:`~birl_lite.actor_critic.derivatives.MSEHessian`),
    else ``dim`` from the argument and float64."""
    dim = getattr(hvp, "dim", None) if dim is None else dim
    if dim is None:
        raise ValueError("dim is required when hvp is a plain callable")
    dim = check_positive_int(dim, "dim")
    return _Operator(hvp, torch.zeros(dim, dtype=getattr(hvp, "dtype", DTYPE)))


def dense_hessian(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor], dim: int | None = None
) -> torch.Tensor:
    """The dense Hessian ``[dim, dim]`` from ``dim`` HVPs with unit vectors (symmetrized).

    For small problems and references only. ``dim`` is needed when ``hvp`` is a plain callable.
    """
    op = _operator(hvp, dim)
    H = _Op(op, op.dim, op.dtype).dense()
    return 0.5 * (H + H.T)


def hessian_columns(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor], K: torch.Tensor, dim: int | None = None
) -> torch.Tensor:
    """The columns ``H[:, K]`` ``[dim, m]`` of a Hessian given as an HVP, the ``C`` of Nystrom
    (``K``: the ``m`` coordinates, the book's index set I).

    Uses the HVP's own ``columns(K)`` if it has one (a structured shortcut), else its
    ``matmat`` on the unit vectors ``e_j, j in K``, else ``m`` HVPs. ``dim`` is needed when
    ``hvp`` is a plain callable.
    """
    op = _operator(hvp, dim)
    K = torch.as_tensor(K, dtype=torch.long).reshape(-1)
    return _Op(op, op.dim, op.dtype).columns(K)


def ihvp_exact(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor],
    v: Tree,
    damping: float = 0.0,
    *,
    warn: bool = False,
) -> IHVPResult:
    """Reference iHVP: build ``H`` densely from ``dim`` HVPs and solve ``(H + damping I) u = v``.

    :func:`~birl_lite.linear_solve.solve` with ``method="direct"`` (an LU solve). Small
    problems only (cost ``dim`` HVPs plus an ``O(dim^3)`` factorization).

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side, a flat tensor ``[dim]`` or a dict with the parameters' layout.
        damping: ``nu >= 0``.
        warn: issue a :class:`~birl_lite.linear_solve.ConvergenceWarning` when the relative
            residual of the solution exceeds ``1e-10`` (an ill-conditioned system).

    Returns:
        :class:`IHVPResult` with ``n_hvp = dim``; ``info["residual"]`` is the relative residual
        ``||v - (H + damping I) u|| / ||v||``.

    Raises:
        ValueError: if ``H + damping I`` is singular to working precision, or ``v`` is not finite.
        FloatingPointError: if the HVP returns NaN or inf.
    """
    op = _Operator(hvp, v)
    res = solve(op, op.flat_v, method="direct", damping=damping, warn=warn)
    return IHVPResult(op.output(res.x), op.n_hvp, {"residual": res.residual})


def ihvp_cg(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor],
    v: Tree,
    *,
    max_iter: int,
    tol: float = 1e-10,
    damping: float = 0.0,
    warn: bool = False,
) -> IHVPResult:
    """Conjugate gradient on ``(H + damping I) u = v`` from ``u_0 = 0`` (chapter 7, section 7.4).

    :func:`~birl_lite.linear_solve.solve` with ``method="cg"``: one HVP per iteration; stops when
    ``||r|| <= tol ||v||`` or after ``max_iter`` iterations. Converges for symmetric positive
    definite ``H + damping I``. On an indefinite matrix the curvature ``p^T (H + damping I) p``
    can be negative (reported as ``negative_curvature``; CG goes on without its guarantee and
    its iterates can grow) or exactly zero (``breakdown``: the step is undefined, CG stops and
    returns the last iterate).

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side (flat tensor or dict).
        max_iter: maximum number of iterations (= HVPs), ``>= 1``.
        tol: relative residual tolerance ``>= 0``.
        damping: ``nu >= 0``.
        warn: issue a :class:`~birl_lite.linear_solve.ConvergenceWarning` when CG stops above
            ``tol`` (off by default: a truncated CG with a fixed budget is the usual use).

    Returns:
        :class:`IHVPResult`; ``info`` has ``residual_norms`` (``||r_j||`` for ``j = 0..n``),
        ``converged``, ``negative_curvature`` and ``breakdown``.

    Raises:
        ValueError: if ``v`` is not finite.
        FloatingPointError: if the HVP returns NaN or inf.
    """
    op = _Operator(hvp, v)
    res = solve(op, op.flat_v, method="cg", damping=damping, tol=tol, max_iter=max_iter, warn=warn)
    info = {key: res.info[key] for key in ("residual_norms", "negative_curvature", "breakdown")}
    info["converged"] = res.converged
    return IHVPResult(op.output(res.x), op.n_hvp, info)


def ihvp_neumann(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor],
    v: Tree,
    *,
    n_terms: int,
    alpha: float,
    damping: float = 0.0,
    warn: bool = False,
) -> IHVPResult:
    """Truncated Neumann series ``u = alpha sum_{j=0}^{m} (I - alpha (H + damping I))^j v``.

    Chapter 7, equation (eq-aid-neumann). ``m = n_terms`` HVPs: the series is the Richardson
    iteration ``u <- u + alpha (v - (H + damping I) u)`` from ``u = 0`` for ``m + 1`` steps,
    whose residual after ``j`` steps is the ``j``-th term ``(I - alpha (H + damping I))^j v``.
    :func:`~birl_lite.linear_solve.solve` (``method="neumann"``, ``tol=0``) runs ``m`` steps
    and measures the residual of its result (``m`` HVPs in all); the last step adds ``alpha``
    times that residual. The series converges to ``(H + damping I)^{-1} v`` iff every eigenvalue
    of ``H + damping I`` lies in ``(0, 2 / alpha)``; its error in eigendirection ``i`` is
    ``(1 - alpha mu_i)^{m+1}`` times that of ``u = 0``, so it is slow on small eigenvalues and
    diverges geometrically on negative ones or when ``alpha >= 2 / mu_max`` (Lorraine et al.,
    2020).

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side (flat tensor or dict).
        n_terms: number of HVPs ``m >= 1``.
        alpha: scale ``> 0`` (a step size; needs ``alpha < 2 / mu_max``).
        damping: ``nu >= 0``.
        warn: passed to :func:`~birl_lite.linear_solve.solve` (with ``tol = 0`` it warns on
            every call unless the residual vanishes; off by default).

    Returns:
        :class:`IHVPResult`; ``info`` has ``term_norms`` (``||(I - alpha A)^j v||`` for
        ``j = 0..m``) and ``growing`` (whether the last term is larger than the first).

    Raises:
        ValueError: if ``v`` is not finite.
        FloatingPointError: if the HVP returns NaN or inf, or the iterate overflows.
    """
    n_terms = check_positive_int(n_terms, "n_terms")
    op = _Operator(hvp, v)
    res = solve(
        op,
        op.flat_v,
        method="neumann",
        damping=damping,
        alpha=alpha,
        tol=0.0,
        max_iter=n_terms,
        warn=warn,
    )
    u = res.x + alpha * res.info["residual_vector"]  # step m + 1: the term j = m of the series
    norms = res.info["residual_norms"]
    info = {"term_norms": norms, "growing": bool(norms[-1] > norms[0])}
    return IHVPResult(op.output(u), op.n_hvp, info)


def ihvp_nystrom(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor],
    v: Tree,
    *,
    rank: int,
    damping: float,
    generator: torch.Generator | None = None,
    indices: torch.Tensor | None = None,
    safeguard: str = "eigh",
    warn: bool = False,
) -> IHVPResult:
    """Nystrom iHVP: ``u = (H_m + damping I)^{-1} v`` with ``H_m = C M^+ C^T`` (chapter 7,
    equation (eq-aid-woodbury)).

    :func:`~birl_lite.linear_solve.solve` with ``method="nystrom"``: draws ``m = rank`` distinct
    coordinates ``I`` uniformly (``torch.randperm`` with ``generator``), computes ``C = H[:, I]``
    with ``m`` HVPs on unit vectors, ``M = C[I, :]``, and applies :func:`~birl_lite.linear_solve.nystrom_woodbury`. No
    iteration, so nothing can diverge; with the default safeguard the result is finite even when
    ``M`` is indefinite or singular. When ``m = dim``, ``H_m = H`` and the result is the exact
    ``(H + damping I)^{-1} v``.

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors. If it also has
            ``columns(I) -> H[:, I]`` or ``matmat(X) -> H X`` (``X [dim, B]``), the m columns
            come from one such call instead of m HVPs.
        v: right-hand side (flat tensor or dict).
        rank: number of columns ``1 <= m <= dim``.
        damping: ``nu > 0`` (the Woodbury identity divides by it).
        generator: ``torch.Generator`` for the column indices (same seed, same indices).
        indices: optional explicit distinct indices ``I`` (``rank`` of them), instead of drawing.
        safeguard: ``"eigh"`` (default) or ``"none"``, see :func:`~birl_lite.linear_solve.nystrom_woodbury`
            (``"none"`` is the unguarded formula, for comparison only).
        warn: passed to :func:`~birl_lite.linear_solve.solve`, which does not measure the
            residual of a Nystrom solve with an HVP (that would cost one more HVP) and so reports
            it as not converged; off by default.

    Returns:
        :class:`IHVPResult` with ``n_hvp = m``; ``info`` has ``indices``, ``eigenvalues_M`` and
        ``rank_kept``.

    Raises:
        ValueError: if ``v`` is not finite, or for a bad ``rank``, ``damping`` or ``indices``.
        FloatingPointError: if the HVP returns NaN or inf.
    """
    if safeguard not in ("eigh", "none"):
        raise ValueError(f"safeguard must be 'eigh' or 'none', got {safeguard!r}")
    op = _Operator(hvp, v)
    if safeguard == "eigh":
        res = solve(
            op,
            op.flat_v,
            method="nystrom",
            rank=rank,
            damping=damping,
            indices=indices,
            generator=generator,
            warn=warn,
        )
        u = res.x
        info = {key: res.info[key] for key in ("indices", "eigenvalues_M", "rank_kept")}
    else:  # the unguarded formula: same columns, plain LU core (not offered by solve)
        K, C = _nystrom_columns(_Op(op, op.dim, op.dtype), rank, indices, generator)
        u, info = nystrom_woodbury(C, C[K, :], op.flat_v, damping, safeguard="none")
        info["indices"] = K
    return IHVPResult(op.output(u), op.n_hvp, info)


def nystrom_plus_identity(
    C: torch.Tensor, M: torch.Tensor, v: torch.Tensor, damping: float, *, shift: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """The Nystrom iHVP as BLPO's public code computes it: an ``m x m`` core with ``+ shift I``.

    Chapter 7, section 7.4 ("What BLPO's code solves"). The authors' code returns

        u = v / nu - (1 / nu^2) C (M + C^T C / nu + shift I)^{-1} C^T v

    with ``shift = 1`` (an identity added to the core "for safety") and a plain LU solve. By the
    Woodbury identity with ``M + shift I`` in place of ``M`` this is *exactly*

        u = (C (M + shift I)^{-1} C^T + nu I)^{-1} v,

    the damped inverse of another approximation of ``H``, ``H~ = C (M + shift I)^{-1} C^T``,
    which is ``C M^{-1} C^T`` (chapter 7, equation (eq-aid-woodbury)) only when ``shift = 0``.
    For positive semi-definite ``H``, ``0 <= H~ <= C M^+ C^T`` (the shift shrinks every
    direction whose eigenvalue in ``M`` is not large against ``shift``: the correction is
    absolute, not relative to the scale of ``H``; if every eigenvalue of ``M`` is much smaller
    than ``shift``, ``H~ ~ C C^T / shift``). For ``M + shift I`` positive definite,
    ``||u|| <= ||v|| / nu``; otherwise the bound can fail, and a singular core gives inf/NaN
    (``torch.linalg.solve_ex``, no exception, as in the original code).

    This function is a reference for comparisons in chapter 7 and its benchmark; the library's
    BLPO (:mod:`birl_lite.actor_critic.blpo`) uses :func:`ihvp_nystrom` (eigendecomposition
    safeguard, no shift).

    Args:
        C: ``[n, m]`` columns ``H[:, I]``.
        M: ``[m, m]`` block ``H[I, I]`` (symmetrized here).
        v: ``[n]`` right-hand side.
        damping: ``nu > 0``.
        shift: the identity multiple added to the core, ``>= 0`` (``1`` in BLPO's code).

    Returns:
        ``(u, info)``: ``u [n]``; ``info["core_eigenvalues"]`` (ascending eigenvalues of
        ``M + shift I + C^T C / nu``) and ``info["shifted_eigenvalues_M"]`` (of ``M + shift I``).
    """
    damping = _check_damping(damping, positive=True)
    shift = check_real(shift, "shift")
    if not shift >= 0.0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if C.ndim != 2 or M.ndim != 2 or M.shape[0] != M.shape[1] or C.shape[1] != M.shape[0]:
        raise ValueError(
            f"C must be [n, k] and M [k, k]; got C {tuple(C.shape)} and M {tuple(M.shape)}"
        )
    if v.ndim != 1 or v.shape[0] != C.shape[0]:
        raise ValueError(f"v must have shape ({C.shape[0]},), got {tuple(v.shape)}")
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    shifted = 0.5 * (M + M.T) + shift * eye
    core = shifted + (C.T @ C) / damping
    sol, _ = torch.linalg.solve_ex(core, C.T @ v)
    u = v / damping - (C @ sol) / damping**2
    info = {
        "core_eigenvalues": torch.linalg.eigvalsh(0.5 * (core + core.T)),
        "shifted_eigenvalues_M": torch.linalg.eigvalsh(shifted),
    }
    return u, info


def ihvp_nystrom_plus_identity(
    hvp: HVP | Callable[[torch.Tensor], torch.Tensor],
    v: Tree,
    *,
    rank: int,
    damping: float,
    generator: torch.Generator | None = None,
    indices: torch.Tensor | None = None,
    shift: float = 1.0,
) -> IHVPResult:
    """Rank-``k`` Nystrom iHVP with BLPO's ``+ shift I`` core (:func:`nystrom_plus_identity`).

    Chapter 7, section 7.4. Same columns as :func:`ihvp_nystrom` for the same ``generator`` or
    ``indices`` (``m`` HVPs), so the two can be compared draw by draw; only the ``m x m`` solve
    differs. A reference for comparisons, not used by the library's BLPO.

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side (flat tensor or dict).
        rank: number of columns ``1 <= m <= dim``.
        damping: ``nu > 0``.
        generator: ``torch.Generator`` for the column indices.
        indices: optional explicit distinct indices ``I`` (``rank`` of them).
        shift: identity multiple added to the core (``1`` in BLPO's code).

    Returns:
        :class:`IHVPResult` with ``n_hvp = m``; ``info`` has ``indices``, ``core_eigenvalues``
        and ``shifted_eigenvalues_M``.
    """
    op = _Operator(hvp, v)
    K, C = _nystrom_columns(_Op(op, op.dim, op.dtype), rank, indices, generator)
    u, info = nystrom_plus_identity(C, C[K, :], op.flat_v, damping, shift=shift)
    info["indices"] = K
    return IHVPResult(op.output(u), op.n_hvp, info)


# --------------------------------------------------------------------------------------------
# Implicit hypergradient
# --------------------------------------------------------------------------------------------

_SOLVERS: dict[str, Callable[..., IHVPResult]] = {
    "exact": ihvp_exact,
    "cg": ihvp_cg,
    "neumann": ihvp_neumann,
    "nystrom": ihvp_nystrom,
}


@dataclass
class ImplicitHypergradientResult:
    """The output of :func:`implicit_hypergradient`.

    Attributes:
        grad: the hypergradient ``grad_theta f - grad^2_{theta w} g u`` (structure of ``theta``).
        direct: ``grad_theta f`` (structure of ``theta``).
        correction: ``grad^2_{theta w} g u`` (structure of ``theta``; subtracted from ``direct``).
        ihvp: the :class:`IHVPResult` of ``u ~ [grad^2_{ww} g]^{-1} grad_w f`` (flat ``u``).
        n_hvp: Hessian-vector products used by the iHVP solver.
    """

    grad: Tree
    direct: Tree
    correction: Tree
    ihvp: IHVPResult
    n_hvp: int


def implicit_hypergradient(
    outer_loss: Callable[[Tree, Tree], torch.Tensor],
    inner_loss: Callable[[Tree, Tree], torch.Tensor],
    theta: Tree,
    w: Tree,
    solver: str | Callable[..., IHVPResult] = "cg",
    **solver_kwargs,
) -> ImplicitHypergradientResult:
    """Implicit-differentiation hypergradient (AID, chapter 7, equation (eq-aid)).

        grad F(theta) = grad_theta f - grad^2_{theta w} g  [grad^2_{ww} g]^{-1}  grad_w f,

    all evaluated at ``(theta, w)``, where ``w`` should be (close to) the inner solution
    ``w*(theta) = argmin_w g(theta, w)`` and ``g`` strongly convex in ``w``. The iHVP
    ``u = [grad^2_{ww} g]^{-1} grad_w f`` uses ``solver``; the mixed term is one more double
    backward, ``grad_theta (grad_w g . u)``. No dense matrix is formed (unless ``solver="exact"``).

    Args:
        outer_loss: ``f(theta, w) -> scalar``.
        inner_loss: ``g(theta, w) -> scalar``.
        theta: upper-level variable, flat tensor or dict of tensors.
        w: lower-level variable at (or near) ``w*(theta)``, flat tensor or dict of tensors.
        solver: ``"exact"``, ``"cg"``, ``"neumann"``, ``"nystrom"``, or a callable
            ``solver(hvp, v, **solver_kwargs) -> IHVPResult``.
        **solver_kwargs: passed to the solver (``max_iter``, ``n_terms``, ``alpha``, ``rank``,
            ``damping``, ``generator``...).

    Returns:
        :class:`ImplicitHypergradientResult` (``.grad`` has the structure of ``theta``).
    """
    if not callable(outer_loss) or not callable(inner_loss):
        raise TypeError("outer_loss and inner_loss must be callables (theta, w) -> scalar")
    if isinstance(solver, str):
        if solver not in _SOLVERS:
            raise ValueError(
                f"solver must be one of {sorted(_SOLVERS)} or a callable, got {solver!r}"
            )
        ihvp = _SOLVERS[solver]
    elif callable(solver):
        ihvp = solver
    else:
        raise TypeError(f"solver must be a name or a callable, got {type(solver).__name__}")
    th_layout = _Layout(theta, "theta")
    w_layout = _Layout(w, "w")
    th = th_layout.flatten(theta).detach().clone().requires_grad_(True)
    ww = w_layout.flatten(w).detach().clone().requires_grad_(True)

    f = _scalar_loss(outer_loss(th_layout.unflatten(th), w_layout.unflatten(ww)), "outer_loss")
    if f.requires_grad:
        g_th, g_w = torch.autograd.grad(f, (th, ww), allow_unused=True)
    else:
        g_th = g_w = None
    grad_th_f = torch.zeros_like(th) if g_th is None else g_th.detach()
    grad_w_f = torch.zeros_like(ww) if g_w is None else g_w.detach()

    g = _scalar_loss(inner_loss(th_layout.unflatten(th), w_layout.unflatten(ww)), "inner_loss")
    grad_w_g = _grad_or_zero(g, ww, create_graph=True)
    hvp = HVP(w_layout, ww, grad_w_g, g)
    res = ihvp(hvp, grad_w_f, **solver_kwargs)
    if not isinstance(res, IHVPResult):
        raise TypeError(f"solver must return an IHVPResult, got {type(res).__name__}")
    u = res.u if isinstance(res.u, torch.Tensor) else w_layout.flatten(res.u, "u")
    correction = _grad_or_zero(grad_w_g, th, grad_outputs=u.detach(), retain_graph=False)
    correction = correction.detach()
    grad = grad_th_f - correction

    def out(x: torch.Tensor) -> Tree:
        tree = th_layout.unflatten(x)
        return x if isinstance(tree, torch.Tensor) else {k: t.clone() for k, t in tree.items()}

    return ImplicitHypergradientResult(out(grad), out(grad_th_f), out(correction), res, res.n_hvp)


# --------------------------------------------------------------------------------------------
# Test problems of chapter 7
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RidgeProblem:
    """Bilevel ridge regression with one log-penalty per feature (Pedregosa, 2016).

        g(theta, w) = 1/(2 n) ||X w - y||^2 + 1/2 sum_i exp(theta_i) w_i^2       (inner, strongly convex)
        f(theta, w) = 1/(2 n_val) ||X_val w - y_val||^2                           (outer)

    With ``A(theta) = X^T X / n + diag(exp(theta))``: ``w*(theta) = A^{-1} X^T y / n`` and
    ``grad F(theta) = -exp(theta) * w* * (A^{-1} grad_w f)`` (elementwise products), because
    ``grad^2_{ww} g = A`` and ``grad^2_{theta w} g = diag(exp(theta) * w)``.

    Attributes:
        X: ``[n, d]`` training inputs; y: ``[n]`` training targets.
        X_val: ``[n_val, d]`` validation inputs; y_val: ``[n_val]`` validation targets.
    """

    X: torch.Tensor
    y: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def dim(self) -> int:
        """Number of features ``d`` (size of both ``theta`` and ``w``)."""
        return self.X.shape[1]

    def _theta(self, theta) -> torch.Tensor:
        t = as_tensor(theta, "theta")
        if t.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {tuple(t.shape)}")
        return t

    def inner_loss(self, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``g(theta, w)``, a scalar (differentiable in both arguments)."""
        resid = self.X @ w - self.y
        return 0.5 * (resid @ resid) / self.X.shape[0] + 0.5 * (torch.exp(theta) * w * w).sum()

    def outer_loss(self, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``f(theta, w)``, a scalar (independent of ``theta``)."""
        resid = self.X_val @ w - self.y_val
        return 0.5 * (resid @ resid) / self.X_val.shape[0]

    def inner_hessian(self, theta: ArrayLike) -> torch.Tensor:
        """``A(theta) = grad^2_{ww} g = X^T X / n + diag(exp(theta))``, ``[d, d]``."""
        t = self._theta(theta)
        return self.X.T @ self.X / self.X.shape[0] + torch.diag(torch.exp(t))

    def w_star(self, theta: ArrayLike) -> torch.Tensor:
        """The inner solution ``w*(theta) = A^{-1} X^T y / n``, ``[d]``."""
        A = self.inner_hessian(theta)
        return torch.linalg.solve(A, self.X.T @ self.y / self.X.shape[0])

    def hyperobjective(self, theta: ArrayLike) -> torch.Tensor:
        """``F(theta) = f(theta, w*(theta))``, a scalar."""
        t = self._theta(theta)
        return self.outer_loss(t, self.w_star(t))

    def hypergradient(self, theta: ArrayLike) -> torch.Tensor:
        """Closed-form ``grad F(theta) = -exp(theta) * w* * (A^{-1} grad_w f)``, ``[d]``."""
        t = self._theta(theta)
        A = self.inner_hessian(t)
        w = self.w_star(t)
        grad_w_f = self.X_val.T @ (self.X_val @ w - self.y_val) / self.X_val.shape[0]
        return -torch.exp(t) * w * torch.linalg.solve(A, grad_w_f)


def ridge_problem(
    *,
    n_train: int = 40,
    n_val: int = 40,
    dim: int = 10,
    noise: float = 0.5,
    feature_scale_ratio: float = 1.0,
    seed: int = 0,
) -> RidgeProblem:
    """A random :class:`RidgeProblem` (float64, deterministic in ``seed``).

    Inputs are standard normal with column ``i`` scaled by ``feature_scale_ratio^(-i/(d-1))``
    (so ``feature_scale_ratio^2`` bounds the spread of ``X^T X``'s diagonal: use it to make the
    inner Hessian ill-conditioned); targets are ``X w_true + noise * N(0, 1)``.
    """
    n_train = check_positive_int(n_train, "n_train")
    n_val = check_positive_int(n_val, "n_val")
    dim = check_positive_int(dim, "dim")
    noise = check_real(noise, "noise")
    ratio = check_real(feature_scale_ratio, "feature_scale_ratio")
    if noise < 0.0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if not ratio >= 1.0:
        raise ValueError(f"feature_scale_ratio must be >= 1, got {ratio}")
    gen = torch.Generator().manual_seed(int(seed))
    expo = torch.arange(dim, dtype=DTYPE) / max(dim - 1, 1)
    scales = ratio ** (-expo)
    w_true = torch.randn(dim, generator=gen, dtype=DTYPE)
    X = torch.randn(n_train, dim, generator=gen, dtype=DTYPE) * scales
    X_val = torch.randn(n_val, dim, generator=gen, dtype=DTYPE) * scales
    y = X @ w_true + noise * torch.randn(n_train, generator=gen, dtype=DTYPE)
    y_val = X_val @ w_true + noise * torch.randn(n_val, generator=gen, dtype=DTYPE)
    return RidgeProblem(X, y, X_val, y_val)


@dataclass
class ValueNetProblem:
    """The squared loss of a small tanh value network (a critic) on fixed states and targets.

        L(w) = (1 / N) sum_i (V_w(s_i) - G_i)^2          (chapter 8, equation (eq-ac-follower))

    Attributes:
        module: the ``nn.Sequential`` critic (float64).
        params: ``dict(module.named_parameters())`` detached: the point where Hessians are taken.
        states: ``[N, state_dim]``; targets: ``[N]``.
    """

    module: nn.Module
    params: dict[str, torch.Tensor]
    states: torch.Tensor
    targets: torch.Tensor

    @property
    def dim(self) -> int:
        """Number of network parameters."""
        return int(sum(p.numel() for p in self.params.values()))

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``L(params)``: mean squared error of the critic with ``params`` (a dict)."""
        values = torch.func.functional_call(self.module, dict(params), (self.states,))
        return (values.squeeze(-1) - self.targets).square().mean()

    def hvp(self, *, backend: str = "autograd") -> HVP:
        """The :class:`HVP` of :meth:`loss` at :attr:`params`."""
        return make_hvp(self.loss, self.params, backend=backend)


def value_network_problem(
    *,
    n_states: int = 256,
    state_dim: int = 4,
    hidden: int = 16,
    fit_steps: int = 0,
    lr: float = 1e-2,
    seed: int = 0,
) -> ValueNetProblem:
    """A seeded two-hidden-layer tanh critic ``state_dim -> hidden -> hidden -> 1`` (float64).

    States are standard normal; targets ``G = sin(s . a) + 0.5 cos(s . b)`` for random directions
    ``a, b`` (a smooth "return"). Weights use PyTorch's default uniform initialization, drawn from
    a generator seeded with ``seed``. ``fit_steps`` full-batch Adam steps (learning rate ``lr``)
    move the critic towards a minimizer (where the Hessian is nearly positive semi-definite); with
    ``fit_steps = 0`` the Hessian is taken at initialization, where it is indefinite.
    """
    n_states = check_positive_int(n_states, "n_states")
    state_dim = check_positive_int(state_dim, "state_dim")
    hidden = check_positive_int(hidden, "hidden")
    fit_steps = check_positive_int(fit_steps, "fit_steps", minimum=0)
    lr = check_real(lr, "lr")
    if not lr > 0.0:
        raise ValueError(f"lr must be > 0, got {lr}")
    gen = torch.Generator().manual_seed(int(seed))
    states = torch.randn(n_states, state_dim, generator=gen, dtype=DTYPE)
    a = torch.randn(state_dim, generator=gen, dtype=DTYPE)
    b = torch.randn(state_dim, generator=gen, dtype=DTYPE)
    targets = torch.sin(states @ a) + 0.5 * torch.cos(states @ b)
    module = nn.Sequential(
        nn.Linear(state_dim, hidden, dtype=DTYPE),
        nn.Tanh(),
        nn.Linear(hidden, hidden, dtype=DTYPE),
        nn.Tanh(),
        nn.Linear(hidden, 1, dtype=DTYPE),
    )
    with torch.no_grad():
        for layer in module:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=gen, dtype=DTYPE) * 2 * bound - bound)
    if fit_steps > 0:
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        for _ in range(fit_steps):
            opt.zero_grad()
            loss = (module(states).squeeze(-1) - targets).square().mean()
            loss.backward()
            opt.step()
    params = {k: p.detach().clone() for k, p in module.named_parameters()}
    return ValueNetProblem(module, params, states, targets)
