"""Inverse-Hessian-vector products (iHVPs) and implicit differentiation (AID).

Math: ``../shared/design/math.md`` section 6 (chapter 7 of the book). For a bilevel problem

    min_theta F(theta) = f(theta, w*(theta)),     w*(theta) = argmin_w g(theta, w)   (g strongly convex in w)

the implicit function theorem gives the hypergradient

    grad F = grad_theta f - grad^2_{theta w} g  [grad^2_{ww} g]^{-1}  grad_w f.          (AID)

The expensive, fragile part is the iHVP ``u = (H + rho I)^{-1} v`` with ``H = grad^2_{ww} g``. This
module computes it from Hessian-vector products only (double backward through autograd, or
``torch.func`` forward-over-reverse), never from a dense Hessian except in the reference
:func:`ihvp_exact`:

* :func:`ihvp_cg`: conjugate gradient, one HVP per iteration.
* :func:`ihvp_neumann`: ``u ~ alpha sum_{j=0}^{m} (I - alpha (H + rho I))^j v``, ``m`` HVPs.
* :func:`ihvp_nystrom`: rank-``k`` Nystrom approximation ``H ~ C M^+ C^T`` from ``k`` columns
  ``C = H[:, K]`` (``k`` HVPs with unit vectors) and ``M = H[K, K]``, inverted with the Woodbury
  identity (Hataya and Yamada, 2023). No iteration, hence no divergence; the ``k x k`` core is
  solved through a symmetric eigendecomposition that drops non-positive eigenvalues, so the
  result is finite even when ``M`` is indefinite or singular.

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

from ._validation import DTYPE, as_tensor, check_positive_int, check_real

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
    """The Hessian-vector product of ``loss_fn`` at ``params`` (math.md section 6).

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
    """A solver's view of an HVP: flat in, flat out, validated, counted."""

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
        self.dim = self.flat_v.numel()
        self.dtype = self.flat_v.dtype

    def _checked(self, out: Any, shape: tuple[int, ...], call: str, n: int) -> torch.Tensor:
        """Count ``n`` HVPs and return ``out`` detached in the operator's dtype, after checking
        that the user's ``call`` returned a tensor of ``shape``."""
        self.n_hvp += n
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{call} must return a tensor, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"{call} returned shape {tuple(out.shape)}, expected {shape}")
        return out.detach().to(self.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._checked(self.hvp(x), tuple(x.shape), "hvp(v)", 1)

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``H X`` for ``X [dim, B]``: one batched call when the HVP offers ``matmat`` (as
        :class:`~birl_lite.actor_critic.derivatives.MSEHessian` does), else ``B`` HVPs."""
        batched = getattr(self.hvp, "matmat", None)
        if batched is None:
            return torch.stack([self(x) for x in X.T], dim=1)
        return self._checked(batched(X), tuple(X.shape), "hvp.matmat(X)", X.shape[1])

    def columns(self, K: torch.Tensor) -> torch.Tensor:
        """``H[:, K]`` ``[dim, k]``: the HVP's own ``columns(K)`` if it has one (a structured
        shortcut, as :class:`~birl_lite.actor_critic.derivatives.MSEHessian` has), else
        :meth:`matmat` on the unit vectors ``e_j, j in K``."""
        structured = getattr(self.hvp, "columns", None)
        if structured is None:
            E = torch.zeros(self.dim, len(K), dtype=self.dtype)
            E[K, torch.arange(len(K))] = 1.0
            return self.matmat(E)
        return self._checked(structured(K), (self.dim, len(K)), "hvp.columns(K)", len(K))

    def output(self, flat_u: torch.Tensor) -> Tree:
        if not self.as_dict:
            return flat_u
        return {k: t.clone() for k, t in self.layout.unflatten(flat_u).items()}


def _check_rho(rho, *, positive: bool = False) -> float:
    r = check_real(rho, "rho")
    if not math.isfinite(r) or r < 0.0 or (positive and r == 0.0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"rho must be a finite number {need}, got {r}")
    return r


@dataclass
class IHVPResult:
    """The output of an inverse-Hessian-vector product solver.

    Attributes:
        u: the approximate solution of ``(H + rho I) u = v``, with the structure of ``v``
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


def dense_hessian(hvp, dim: int | None = None) -> torch.Tensor:
    """The dense Hessian ``[dim, dim]`` from ``dim`` HVPs with unit vectors (symmetrized).

    For small problems and references only. ``dim`` is needed when ``hvp`` is a plain callable.
    """
    op = _operator(hvp, dim)
    H = op.matmat(torch.eye(op.dim, dtype=op.dtype))
    return 0.5 * (H + H.T)


def hessian_columns(hvp, K: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The columns ``H[:, K]`` ``[dim, k]`` of a Hessian given as an HVP, the ``C`` of Nystrom.

    Uses the HVP's own ``columns(K)`` if it has one (a structured shortcut), else its
    ``matmat`` on the unit vectors ``e_j, j in K``, else ``k`` HVPs. ``dim`` is needed when
    ``hvp`` is a plain callable.
    """
    op = _operator(hvp, dim)
    return op.columns(torch.as_tensor(K, dtype=torch.long).reshape(-1))


def ihvp_exact(hvp, v: Tree, rho: float = 0.0) -> IHVPResult:
    """Reference iHVP: build ``H`` densely from ``dim`` HVPs and solve ``(H + rho I) u = v``.

    Small problems only (cost ``dim`` HVPs plus an ``O(dim^3)`` eigendecomposition).

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side, a flat tensor ``[dim]`` or a dict with the parameters' layout.
        rho: damping ``>= 0``.

    Returns:
        :class:`IHVPResult` with ``n_hvp = dim`` and ``info`` holding ``eigenvalues`` (of
        ``H + rho I``, ascending) and ``condition`` (``max |lambda| / min |lambda|``).

    Raises:
        ValueError: if ``H + rho I`` is singular to working precision.
    """
    rho = _check_rho(rho)
    op = _Operator(hvp, v)
    eye = torch.eye(op.dim, dtype=op.dtype)
    H = op.matmat(eye)
    A = 0.5 * (H + H.T) + rho * eye
    lam, U = torch.linalg.eigh(A)
    scale = float(lam.abs().max())
    tiny = op.dim * torch.finfo(op.dtype).eps * scale
    if scale == 0.0 or float(lam.abs().min()) <= tiny:
        raise ValueError(
            "H + rho I is singular to working precision; ihvp_exact needs a nonsingular system "
            "(increase rho)"
        )
    u = U @ ((U.T @ op.flat_v) / lam)
    info = {"eigenvalues": lam, "condition": scale / float(lam.abs().min())}
    return IHVPResult(op.output(u), op.n_hvp, info)


def ihvp_cg(hvp, v: Tree, *, max_iter: int, tol: float = 1e-10, rho: float = 0.0) -> IHVPResult:
    """Conjugate gradient on ``(H + rho I) u = v`` from ``u_0 = 0`` (math.md section 6).

    One HVP per iteration; stops when ``||r|| <= tol ||v||`` or after ``max_iter`` iterations.
    Converges for symmetric positive definite ``H + rho I``; on an indefinite matrix the
    curvature ``p^T (H + rho I) p`` can be negative or near zero and the iterates can blow up
    (reported in ``info``, not prevented). An exactly zero or non-finite curvature stops the
    iteration (no division by zero).

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side (flat tensor or dict).
        max_iter: maximum number of iterations (= HVPs), ``>= 1``.
        tol: relative residual tolerance ``>= 0``.
        rho: damping ``>= 0``.

    Returns:
        :class:`IHVPResult`; ``info`` has ``residual_norms`` (``||r_j||`` for ``j = 0..n``),
        ``converged``, ``negative_curvature`` (some ``p^T A p <= 0`` was met) and ``breakdown``.
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_real(tol, "tol")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    rho = _check_rho(rho)
    op = _Operator(hvp, v)
    b = op.flat_v
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    b_norm = math.sqrt(rr)
    residuals = [b_norm]
    info = {"converged": b_norm == 0.0, "negative_curvature": False, "breakdown": False}
    if b_norm == 0.0:
        info["residual_norms"] = torch.tensor(residuals, dtype=torch.float64)
        return IHVPResult(op.output(u), 0, info)
    for _ in range(max_iter):
        Ap = op(p) + rho * p
        pAp = float(p @ Ap)
        if pAp <= 0.0:
            info["negative_curvature"] = True
        if pAp == 0.0 or not math.isfinite(pAp):
            info["breakdown"] = True
            break
        step = rr / pAp
        u = u + step * p
        r = r - step * Ap
        rr_new = float(r @ r)
        residuals.append(math.sqrt(rr_new))
        if math.sqrt(rr_new) <= tol * b_norm:
            info["converged"] = True
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    info["residual_norms"] = torch.tensor(residuals, dtype=torch.float64)
    return IHVPResult(op.output(u), op.n_hvp, info)


def ihvp_neumann(hvp, v: Tree, *, n_terms: int, alpha: float, rho: float = 0.0) -> IHVPResult:
    """Truncated Neumann series ``u = alpha sum_{j=0}^{m} (I - alpha (H + rho I))^j v``.

    ``m = n_terms`` HVPs (the ``j = 0`` term is free). The series converges to
    ``(H + rho I)^{-1} v`` iff every eigenvalue of ``H + rho I`` lies in ``(0, 2 / alpha)``; its
    error in eigendirection ``i`` is ``(1 - alpha lambda_i)^{m+1}`` times that of ``u = 0``, so it
    is slow on small eigenvalues and diverges geometrically on negative ones or when
    ``alpha >= 2 / lambda_max`` (math.md section 6; Lorraine et al., 2020).

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors.
        v: right-hand side (flat tensor or dict).
        n_terms: number of HVPs ``m >= 1``.
        alpha: scale ``> 0`` (a step size; needs ``alpha < 2 / lambda_max``).
        rho: damping ``>= 0``.

    Returns:
        :class:`IHVPResult`; ``info`` has ``term_norms`` (``||(I - alpha A)^j v||`` for
        ``j = 0..m``) and ``growing`` (whether the last term is larger than the first).
    """
    n_terms = check_positive_int(n_terms, "n_terms")
    alpha = check_real(alpha, "alpha")
    if not (alpha > 0.0) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    rho = _check_rho(rho)
    op = _Operator(hvp, v)
    term = op.flat_v.clone()
    total = term.clone()
    norms = [float(term.norm())]
    for _ in range(n_terms):
        term = term - alpha * (op(term) + rho * term)
        total = total + term
        norms.append(float(term.norm()))
    u = alpha * total
    info = {
        "term_norms": torch.tensor(norms, dtype=torch.float64),
        "growing": bool(norms[-1] > norms[0]),
    }
    return IHVPResult(op.output(u), op.n_hvp, info)


def nystrom_woodbury(
    C: torch.Tensor, M: torch.Tensor, v: torch.Tensor, rho: float, *, safeguard: str = "eigh"
) -> tuple[torch.Tensor, dict]:
    """``(C M^+ C^T + rho I)^{-1} v`` by the Woodbury identity, with a ``k x k`` core.

    For symmetric positive definite ``M`` this is (math.md section 6)

        (C M^{-1} C^T + rho I)^{-1} v = v / rho - (1 / rho^2) C (M + C^T C / rho)^{-1} C^T v.

    ``safeguard="eigh"`` (default, never NaN for finite inputs): eigendecompose
    ``M = U diag(lambda) U^T``, keep the eigenvalues ``lambda_i > k eps max|lambda|`` (the rest,
    including every negative one, are clipped: ``M^+`` is the pseudo-inverse of the positive
    part), write ``C M_+^+ C^T = Z Z^T`` with ``Z = C U_+ diag(lambda_+)^{-1/2}``, take a thin
    SVD ``Z = Q diag(sigma) R^T`` and return

        u = (1 / rho) (v - Q diag(sigma^2 / (sigma^2 + rho)) Q^T v)
          = Q diag(1 / (sigma^2 + rho)) Q^T v + (I - Q Q^T) v / rho     (computed this way),

    which equals the formula above when ``M`` is positive definite, and whose weights lie in
    ``(0, 1 / rho]`` whatever ``M`` (so ``||u|| <= ||v|| / rho``). ``safeguard="none"``: the formula above with a plain LU solve
    (as in Hataya and Yamada's reference code); it can return inf or NaN when the core
    ``M + C^T C / rho`` is singular. It is offered for comparison only.

    Args:
        C: ``[n, k]`` columns ``H[:, K]``.
        M: ``[k, k]`` block ``H[K, K]`` (symmetrized here).
        v: ``[n]`` right-hand side.
        rho: damping ``> 0``.
        safeguard: ``"eigh"`` or ``"none"``.

    Returns:
        ``(u [n], info)`` with ``info["eigenvalues_M"]`` (ascending) and ``info["rank_kept"]``.
    """
    rho = _check_rho(rho, positive=True)
    if safeguard not in ("eigh", "none"):
        raise ValueError(f"safeguard must be 'eigh' or 'none', got {safeguard!r}")
    if C.ndim != 2 or M.ndim != 2 or M.shape[0] != M.shape[1] or C.shape[1] != M.shape[0]:
        raise ValueError(
            f"C must be [n, k] and M [k, k]; got C {tuple(C.shape)} and M {tuple(M.shape)}"
        )
    if v.shape != (C.shape[0],):
        raise ValueError(f"v must have shape ({C.shape[0]},), got {tuple(v.shape)}")
    k = M.shape[0]
    Ms = 0.5 * (M + M.T)
    if safeguard == "none":
        core = Ms + (C.T @ C) / rho
        sol, _ = torch.linalg.solve_ex(core, C.T @ v)
        u = v / rho - (C @ sol) / rho**2
        return u, {"eigenvalues_M": torch.linalg.eigvalsh(Ms), "rank_kept": k}
    lam, U = torch.linalg.eigh(Ms)
    scale = float(lam.abs().max()) if k > 0 else 0.0
    keep = lam > k * torch.finfo(lam.dtype).eps * scale
    if scale == 0.0 or not bool(keep.any()):
        return v / rho, {"eigenvalues_M": lam, "rank_kept": 0}
    # Z = C U_+ diag(lambda_+)^{-1/2}, formed as Z^T (a k x k by k x n product is much faster
    # than n x k by k x k, and the column-major Z is what the SVD wants)
    Zt = (U[:, keep].T @ C.T) / torch.sqrt(lam[keep]).unsqueeze(1)
    Q, sigma, _ = torch.linalg.svd(Zt.T, full_matrices=False)
    # u = Q diag(1 / (sigma^2 + rho)) Q^T v + (I - Q Q^T) v / rho: the same as the formula in the
    # docstring, without its cancellation when rho is tiny; every factor is in (0, 1 / rho]
    coef = Q.T @ v
    u = Q @ (coef / (sigma.square() + rho))
    if Q.shape[1] < Q.shape[0]:
        u = u + (v - Q @ coef) / rho
    return u, {"eigenvalues_M": lam, "rank_kept": int(keep.sum())}


def ihvp_nystrom(
    hvp,
    v: Tree,
    *,
    rank: int,
    rho: float,
    generator: torch.Generator | None = None,
    indices: torch.Tensor | None = None,
    safeguard: str = "eigh",
) -> IHVPResult:
    """Nystrom iHVP: ``u = (H_k + rho I)^{-1} v`` with ``H_k = C M^+ C^T`` (math.md section 6).

    Draws ``k = rank`` distinct coordinates ``K`` uniformly (``torch.randperm`` with
    ``generator``), computes ``C = H[:, K]`` with ``k`` HVPs on unit vectors, ``M = C[K, :]``,
    and applies :func:`nystrom_woodbury`. No iteration, so nothing can diverge; with the default
    safeguard the result is finite even when ``M`` is indefinite or singular. When ``k = dim``,
    ``H_k = H`` and the result is the exact ``(H + rho I)^{-1} v``.

    Args:
        hvp: an :class:`HVP` or a callable ``v -> H v`` on flat vectors. If it also has
            ``columns(K) -> H[:, K]`` or ``matmat(X) -> H X`` (``X [dim, B]``), the k columns
            come from one such call instead of k HVPs.
        v: right-hand side (flat tensor or dict).
        rank: number of columns ``1 <= k <= dim``.
        rho: damping ``> 0`` (the Woodbury identity divides by it).
        generator: ``torch.Generator`` for the column indices (same seed, same indices).
        indices: optional explicit distinct indices ``K`` (``rank`` of them), instead of drawing.
        safeguard: ``"eigh"`` (default) or ``"none"``, see :func:`nystrom_woodbury`.

    Returns:
        :class:`IHVPResult` with ``n_hvp = k``; ``info`` has ``indices``, ``eigenvalues_M`` and
        ``rank_kept``.
    """
    rank = check_positive_int(rank, "rank")
    rho = _check_rho(rho, positive=True)
    op = _Operator(hvp, v)
    if rank > op.dim:
        raise ValueError(f"rank must be <= the dimension {op.dim}, got {rank}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if indices is None:
        K = torch.randperm(op.dim, generator=generator)[:rank]
    else:
        K = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if K.numel() != rank or len(set(K.tolist())) != rank:
            raise ValueError(f"indices must hold {rank} distinct entries, got {K.tolist()}")
        if bool((K < 0).any()) or bool((K >= op.dim).any()):
            raise ValueError(f"indices must lie in [0, {op.dim}), got {K.tolist()}")
    C = op.columns(K)  # the k columns H[:, K]
    M = C[K, :]
    u, info = nystrom_woodbury(C, M, op.flat_v, rho, safeguard=safeguard)
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
    """Implicit-differentiation hypergradient (AID, math.md section 6).

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
            ``rho``, ``generator``...).

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
        solve = _SOLVERS[solver]
    elif callable(solver):
        solve = solver
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
    res = solve(hvp, grad_w_f, **solver_kwargs)
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

    def inner_hessian(self, theta) -> torch.Tensor:
        """``A(theta) = grad^2_{ww} g = X^T X / n + diag(exp(theta))``, ``[d, d]``."""
        t = self._theta(theta)
        return self.X.T @ self.X / self.X.shape[0] + torch.diag(torch.exp(t))

    def w_star(self, theta) -> torch.Tensor:
        """The inner solution ``w*(theta) = A^{-1} X^T y / n``, ``[d]``."""
        A = self.inner_hessian(theta)
        return torch.linalg.solve(A, self.X.T @ self.y / self.X.shape[0])

    def hyperobjective(self, theta) -> torch.Tensor:
        """``F(theta) = f(theta, w*(theta))``, a scalar."""
        t = self._theta(theta)
        return self.outer_loss(t, self.w_star(t))

    def hypergradient(self, theta) -> torch.Tensor:
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

        L(w) = (1 / N) sum_i (V_w(s_i) - G_i)^2          (math.md section 7, follower loss)

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
