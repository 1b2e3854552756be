"""The tabular core: every soft-Bellman and policy-evaluation formula of the book, written once.

Pure, unchecked functions (no input validation, no data-dependent Python branches in the
operators), so that they run inside ``torch.func`` transforms and inside hot loops. The public
functions of :mod:`birl_lite.soft`, :mod:`birl_lite.first_order`, :mod:`birl_lite.model_based`,
:mod:`birl_lite.preference` and the tabular BLPO check validate their inputs once and call these.

Transitions come in two backends with one interface (chapter 1, section "The model"):

* :class:`DenseTransitions`: ``P[s, a, s']`` as a float64 torch tensor ``[S, A, S]``; the policy
  kernel ``P_pi`` is a dense ``[S, S]`` tensor and its systems are solved by LU
  (``torch.linalg.solve``, differentiable, ``torch.func``-compatible).
* :class:`SparseTransitions`: ``P`` as a scipy CSR matrix ``[S*A, S]`` (row ``s*A + a``); ``P_pi``
  is a sparse ``[S, S]`` matrix and its systems ``(I - gamma P_pi) x = b`` are solved through
  :func:`birl_lite.linear_solve.solve` (sparse LU, or a Krylov method where LU fills in).
  Values are computed in numpy and returned as torch tensors (no autograd through ``P``).

The formulas (chapter 1, equations (eq-soft-bellman), (eq-softmax-policy), (eq-soft-eval) and
(eq-newton); chapter 3, equations (eq-dV) and (eq-H2))::

    Q = r + gamma P V                       q_values
    (T V)(s) = tau logsumexp_a Q(s, a)/tau  soft_backup, soft_max
    pi = softmax(Q / tau)                   softmax_policy
    P_pi(s, s') = sum_a pi(a|s) P(s'|s, a)  policy_kernel
    r_pi(s) = sum_a pi(a|s) r(s, a)         policy_reward
    V^pi = (I - gamma P_pi)^{-1} r_pi       evaluate
    d = (I - gamma P_pi^T)^{-1} rho         visitation (and the adjoint w of (H2), with b for rho)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from ._threads import blas_threads
from .linear_solve import ConvergenceWarning, SolveResult, solve

__all__ = [
    "DenseTransitions",
    "SparseTransitions",
    "q_values",
    "soft_max",
    "soft_backup",
    "softmax_policy",
    "entropy",
    "policy_reward",
    "policy_kernel",
    "solve_policy_system",
    "policy_system_residual",
    "evaluate",
    "visitation",
    "adjoint_rhs",
    "adjoint_gradient_step",
    "value_scale",
    "residual_floor",
    "fixed_point",
    "soft_policy_iteration",
]

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# Transition backends
# --------------------------------------------------------------------------------------------


class DenseTransitions:
    """``P[s, a, s']`` as a dense float64 tensor ``[S, A, S]`` (rows already stochastic)."""

    sparse = False

    def __init__(self, P: torch.Tensor):
        self.P = P
        S, A, _ = P.shape
        self.n_states, self.n_actions = S, A
        self.P2 = P.reshape(S * A, S)  # row s*A + a
        self.P2T = self.P2.T.contiguous()

    def expect(self, V: torch.Tensor) -> torch.Tensor:
        """``sum_s' P(s'|s, a) V(s', ...)``: ``V [S]`` or ``[S, ...]`` -> ``[S, A]`` or ``[S, A, ...]``."""
        S, A = self.n_states, self.n_actions
        if V.ndim == 1:
            return torch.mv(self.P2, V).view(S, A)
        return torch.tensordot(self.P, V, dims=([2], [0]))

    def q_values(self, gamma: float, r: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``r + gamma P V``, one fused product for scalar values; ``r`` may be flat ``[S*A]``."""
        if r.ndim == 1:  # flat [S*A], as hot loops keep it
            return torch.addmv(r, self.P2, V, alpha=gamma).view(self.n_states, self.n_actions)
        if V.ndim == 1 and r.ndim == 2:
            return torch.addmv(r.reshape(-1), self.P2, V, alpha=gamma).view(r.shape)
        return r + gamma * self.expect(V)

    def pushforward(self, G: torch.Tensor) -> torch.Tensor:
        """``sum_{s,a} G(s, a, ...) P(.|s, a)``: ``G [S, A, ...]`` -> ``[S, ...]`` (``P^T G``)."""
        S, A = self.n_states, self.n_actions
        if G.ndim == 2:
            return torch.mv(self.P2T, G.reshape(-1))
        return (self.P2T @ G.reshape(S * A, -1)).reshape((S, *G.shape[2:]))

    def policy_kernel(self, pi: torch.Tensor) -> torch.Tensor:
        """``P_pi [S, S]`` (dense tensor)."""
        S, A = self.n_states, self.n_actions
        return torch.bmm(pi.reshape(S, 1, A), self.P).view(S, S)

    def to_dense(self) -> torch.Tensor:
        return self.P


class SparseTransitions:
    """``P`` as a scipy CSR matrix ``[S*A, S]`` (row ``s*A + a``, rows already stochastic)."""

    sparse = True

    def __init__(self, P2: sp.csr_matrix, n_actions: int):
        self.P2 = P2
        self.P2T = P2.T.tocsr()
        self.n_actions = n_actions
        self.n_states = P2.shape[1]
        S, A = self.n_states, n_actions
        self._rows = np.repeat(np.arange(S), A)  # row index of the pi-weighting matrix
        self._cols = np.arange(S * A)

    def q_values(self, gamma: float, r: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return r + gamma * self.expect(V)

    def expect(self, V: torch.Tensor) -> torch.Tensor:
        S, A = self.n_states, self.n_actions
        _no_autograd(V)
        v = V.detach().reshape(S, -1).numpy()
        return torch.from_numpy(np.asarray(self.P2 @ v)).reshape((S, A, *V.shape[1:]))

    def pushforward(self, G: torch.Tensor) -> torch.Tensor:
        S, A = self.n_states, self.n_actions
        _no_autograd(G)
        g = G.detach().reshape(S * A, -1).numpy()
        return torch.from_numpy(np.asarray(self.P2T @ g)).reshape((S, *G.shape[2:]))

    def policy_kernel(self, pi: torch.Tensor) -> sp.csr_matrix:
        """``P_pi = Pi P`` as a sparse CSR ``[S, S]``, with ``Pi[s, s*A + a] = pi(a|s)``."""
        S, A = self.n_states, self.n_actions
        _no_autograd(pi)
        weights = sp.csr_matrix(
            (pi.detach().reshape(-1).numpy(), (self._rows, self._cols)), shape=(S, S * A)
        )
        return (weights @ self.P2).tocsr()

    def to_dense(self) -> torch.Tensor:
        S, A = self.n_states, self.n_actions
        return torch.from_numpy(self.P2.toarray()).reshape(S, A, S)


Transitions = DenseTransitions | SparseTransitions
#: ``P_pi``: a dense ``[S, S]`` tensor (dense backend) or a scipy CSR matrix (sparse backend).
PolicyKernel = torch.Tensor | sp.csr_matrix


def _no_autograd(t: torch.Tensor) -> None:
    if t.requires_grad and torch.is_grad_enabled():
        raise TypeError(
            "autograd does not flow through sparse transitions: differentiate on a dense MDP "
            "(mdp.to_dense()), or use the first-order formulas, which need no autograd through P"
        )


# --------------------------------------------------------------------------------------------
# The soft Bellman kernel
# --------------------------------------------------------------------------------------------


def q_values(trans: Transitions, gamma: float, r: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``Q = r + gamma P V``: ``r [S, A, ...]``, ``V [S, ...]`` -> ``[S, A, ...]`` (dense
    transitions also take a flat reward ``r [S*A]`` with ``V [S]``)."""
    return trans.q_values(gamma, r, V)


def soft_max(Q: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau logsumexp_a(Q(s, a) / tau)`` over the last axis, stable for small ``tau``.

    Computed as ``tau (Z_0 - log_softmax(Z)_0)`` with ``Z = Q / tau``: ``log_softmax`` subtracts
    the maximum (no overflow at ``tau = 1e-3``), and the form costs half of ``torch.logsumexp``
    on small tables (it is the hot loop of M-SoBiRL). Its round-off is ``eps * (max_a Z - Z_0)``,
    that is relative to the scale of ``Q / tau`` (the same floor as the Bellman residual's).
    """
    Z = Q if tau == 1.0 else Q / tau
    lse = torch.sub(Z, torch.log_softmax(Z, dim=-1)).select(-1, 0)
    return lse if tau == 1.0 else tau * lse


def soft_backup(
    trans: Transitions, gamma: float, r: torch.Tensor, V: torch.Tensor, tau: float
) -> torch.Tensor:
    """The soft Bellman operator ``(T V)(s) = tau logsumexp_a((r + gamma P V)(s, a) / tau)``, ``[S]``."""
    return soft_max(q_values(trans, gamma, r, V), tau)


def softmax_policy(Q: torch.Tensor, tau: float) -> torch.Tensor:
    """``pi(a|s) = softmax_a(Q(s, .) / tau)``, ``[S, A]``."""
    return torch.softmax(Q if tau == 1.0 else Q / tau, dim=-1)


def entropy(pi: torch.Tensor) -> torch.Tensor:
    """``H(pi(.|s)) = -sum_a pi log pi`` with ``0 log 0 = 0``, ``[S]``."""
    return -torch.special.xlogy(pi, pi).sum(dim=-1)


def policy_reward(pi: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``r_pi(s, ...) = sum_a pi(a|s) r(s, a, ...)``; ``r`` may be vector-valued ``[S, A, ...]``."""
    return torch.einsum("sa,sa...->s...", pi, r)


def policy_kernel(trans: Transitions, pi: torch.Tensor) -> PolicyKernel:
    """``P_pi(s, s') = sum_a pi(a|s) P(s'|s, a)``: a dense tensor or a scipy CSR matrix ``[S, S]``."""
    return trans.policy_kernel(pi)


# --------------------------------------------------------------------------------------------
# Linear systems with I - gamma P_pi
# --------------------------------------------------------------------------------------------


def solve_policy_system(
    P_pi: PolicyKernel,
    gamma: float,
    b: torch.Tensor,
    *,
    transpose: bool = False,
    method: str = "direct",
    tol: float = 1e-12,
    max_iter: int | None = None,
    x0: torch.Tensor | None = None,
) -> SolveResult:
    """Solve ``(I - gamma P_pi) x = b`` (or the transposed system) for ``b [S]`` or ``[S, k]``.

    Dense ``P_pi`` with ``method="direct"``: ``torch.linalg.solve`` called directly (differentiable
    and ``torch.func``-compatible; ``I - gamma P_pi`` is invertible for every policy because
    ``gamma < 1``). Every other case goes through :func:`birl_lite.linear_solve.solve`:
    ``"direct"`` on a sparse ``P_pi`` is sparse LU; ``"neumann"`` is the sweep
    ``x <- b + gamma P_pi x`` (a ``gamma``-contraction); ``"gmres"`` / ``"bicgstab"`` are Krylov
    methods for sparse systems whose LU would fill in (BiCGSTAB falls back to GMRES, warm-started,
    if it breaks down).

    Returns:
        :class:`~birl_lite.linear_solve.SolveResult`.
    """
    M = P_pi.T if transpose else P_pi
    if method == "direct" and isinstance(M, torch.Tensor):
        eye = torch.eye(M.shape[0], dtype=M.dtype)
        x = torch.linalg.solve(eye - gamma * M, b)
        return SolveResult(
            x=x, iterations=0, residual=float("nan"), converged=True, method="direct", info={}
        )
    if isinstance(M, torch.Tensor):
        A = torch.eye(M.shape[0], dtype=M.dtype) - gamma * M
    else:
        A = (sp.identity(M.shape[0], format="csr") - gamma * M).tocsr()
    with _one_blas_thread():
        if method != "bicgstab":
            return solve(A, b, method=method, tol=tol, max_iter=max_iter, x0=x0)
        # BiCGSTAB is the fastest Krylov method here but can break down (e.g. on the adjoint
        # system of a maze with absorbing states): then GMRES continues from where it stopped.
        res = solve(A, b, method="bicgstab", tol=tol, max_iter=max_iter, x0=x0, warn=False)
        if res.converged:
            return res
        again = solve(A, b, method="gmres", tol=tol, max_iter=max_iter, x0=res.x)
        again.info["bicgstab_first"] = {"iterations": res.iterations, "residual": res.residual}
        return again


def _one_blas_thread():
    """One BLAS thread for the vector operations of Krylov methods on sparse systems: they are
    memory-bound, and BLAS threads competing with other processes made BiCGSTAB up to 10x slower
    on two busy cores (measured: 0.76 s vs 2-6 s on an 80,000-state maze)."""
    return blas_threads(1)


def policy_system_residual(
    P_pi: PolicyKernel, gamma: float, x: torch.Tensor, b: torch.Tensor, *, transpose: bool = False
) -> float:
    """``||(I - gamma P_pi) x - b||_inf`` (or with ``P_pi^T``), for a dense or sparse ``P_pi``."""
    if isinstance(P_pi, torch.Tensor):
        M = P_pi.T if transpose else P_pi
        Mx = M @ x
    else:
        M = P_pi.T if transpose else P_pi
        Mx = torch.from_numpy(np.asarray(M @ x.detach().numpy()))
    return float((x - gamma * Mx - b).detach().abs().max())


def adjoint_gradient_step(
    P_pi: torch.Tensor, gamma: float, w: torch.Tensor, b: torch.Tensor, zeta: float
) -> torch.Tensor:
    """One gradient step on ``1/2 ||A w - b||^2`` with ``A = (I - gamma P_pi)^T`` (dense ``P_pi``):
    ``w - zeta A^T (A w - b)``, the amortized adjoint of M-SoBiRL (chapter 4, equation
    (eq-ch4-msobirl))."""
    u = torch.addmv(w - b, P_pi.T, w, alpha=-gamma)  # A w - b
    return torch.add(w, torch.addmv(u, P_pi, u, alpha=-gamma), alpha=-zeta)


def evaluate(
    trans: Transitions, gamma: float, pi: torch.Tensor, r_pi: torch.Tensor, **solve_kwargs
) -> torch.Tensor:
    """``V = (I - gamma P_pi)^{-1} r_pi`` for ``r_pi [S]`` or ``[S, ...]`` (policy evaluation)."""
    flat = r_pi.reshape(r_pi.shape[0], -1) if r_pi.ndim > 1 else r_pi
    res = solve_policy_system(policy_kernel(trans, pi), gamma, flat, **solve_kwargs)
    return res.x.reshape(r_pi.shape)


def visitation(
    trans: Transitions, gamma: float, pi: torch.Tensor, rho: torch.Tensor, **solve_kwargs
) -> torch.Tensor:
    """``d = (I - gamma P_pi^T)^{-1} rho``: the discounted visitation (unnormalized, sums to
    ``sum(rho) / (1 - gamma)``); with ``b`` for ``rho``, the adjoint ``w`` of (H2)."""
    return solve_policy_system(
        policy_kernel(trans, pi), gamma, rho, transpose=True, **solve_kwargs
    ).x


def adjoint_rhs(trans: Transitions, gamma: float, G: torch.Tensor) -> torch.Tensor:
    """``b(s') = sum_a G(s', a) - gamma sum_{s,a} G(s, a) P(s'|s, a)``: the right-hand side of the
    adjoint system of (H2) (chapter 3, equation (eq-H2)), ``[S]``."""
    if not trans.sparse and G.ndim == 2:  # one fused product (the M-SoBiRL hot loop)
        return torch.addmv(G.sum(dim=1), trans.P2T, G.view(-1), alpha=-gamma)
    return G.sum(dim=1) - gamma * trans.pushforward(G)


# --------------------------------------------------------------------------------------------
# Forward solvers
# --------------------------------------------------------------------------------------------


def value_scale(r: torch.Tensor, tau: float, n_actions: int, gamma: float) -> float:
    """An upper bound on ``||V*||_inf``: ``(||r||_inf + tau log A) / (1 - gamma)``."""
    return (float(r.detach().abs().max()) + tau * math.log(n_actions)) / (1.0 - gamma)


def residual_floor(scale: float) -> float:
    """The smallest sup-norm Bellman residual float64 can certify for values of size ``scale``:
    ``32 * eps * max(1, scale)`` (about ``7e-15`` relative). Solvers stop at
    ``max(tol, residual_floor)``, so a converged solution is never flagged as unconverged, however
    large the rewards."""
    return 32 * torch.finfo(DTYPE).eps * max(1.0, scale)


def fixed_point(
    step: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor, tol: float, max_iter: int
) -> tuple[torch.Tensor, list[float], bool]:
    """Iterate ``V <- step(V)`` until the sup-norm change is ``<= tol``: ``(V, changes, converged)``.

    The nonlinear sweeps of the book (soft and hard value iteration) use it; linear sweeps are
    the ``"neumann"`` method of :func:`birl_lite.linear_solve.solve`. Autograd flows through the
    sweeps when ``step`` is differentiable.
    """
    changes: list[float] = []
    for _ in range(max_iter):
        V_new = step(V)
        change = float((V_new - V).detach().abs().max())
        changes.append(change)
        V = V_new
        if not math.isfinite(change):
            raise FloatingPointError("fixed-point iteration diverged (non-finite change)")
        if change <= tol:
            return V, changes, True
    return V, changes, False


def soft_policy_iteration(
    trans: Transitions,
    gamma: float,
    r: torch.Tensor,
    tau: float,
    V: torch.Tensor,
    tol: float,
    max_iter: int,
    *,
    method: str = "direct",
) -> tuple[torch.Tensor, list[float], bool]:
    """Newton's method on ``T V - V = 0`` (soft policy iteration); returns ``(V, residuals, ok)``.

    Each step evaluates the softmax policy of the current values:
    ``V <- V + (I - gamma P_pi)^{-1} (T V - V)``. With an iterative ``method`` the steps are
    inexact Newton steps whose relative linear tolerance shrinks with the residual
    (``min(0.1, residual / scale)``, floored at ``1e-13``), which keeps the quadratic rate.
    ``residuals[k] = ||T V_k - V_k||_inf``; the last entry is that of the returned ``V``.
    """
    residuals: list[float] = []
    scale = max(1.0, float(V.abs().max()) if V.numel() else 1.0)
    for _ in range(max_iter + 1):
        Q = q_values(trans, gamma, r, V)
        TV = soft_max(Q, tau)
        g = TV - V
        res = float(g.detach().abs().max())
        residuals.append(res)
        if not math.isfinite(res):
            raise FloatingPointError("soft policy iteration diverged (non-finite residual)")
        if res <= tol:
            return V, residuals, True
        if len(residuals) > max_iter:
            break
        pi = softmax_policy(Q, tau)
        kwargs = {}
        if method != "direct":
            scale = max(scale, float(TV.detach().abs().max()))
            kwargs = {"tol": max(1e-13, min(0.1, res / scale))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # judged by the Newton residual
            step = solve_policy_system(policy_kernel(trans, pi), gamma, g, method=method, **kwargs)
        V = V + step.x
    return V, residuals, False
