"""Entropy-regularized (soft) dynamic programming on a :class:`~birl_lite.mdp.TabularMDP`.

Chapter 1 of the book, equations (eq-soft-bellman) and (eq-softmax-policy). With temperature
``tau > 0``::

    (T V)(s)  = tau * logsumexp_a( (r(s, a) + gamma * sum_s' P(s'|s, a) V(s')) / tau )       (soft Bellman)
    Q*        = r + gamma P V*,     pi*(a|s) = softmax_a(Q*(s, .) / tau) = exp((Q* - V*) / tau)

Everything is float64 and stable for small temperatures: the log-sum-exp subtracts the maximum
(``torch.logsumexp``), and no function ever exponentiates a raw ``Q / tau``. The formulas live
once in :mod:`birl_lite.kernels`; the functions here validate their inputs and call them, on dense
or sparse MDPs alike.

Two forward solvers return the same :class:`SoftVIResult`:

* :func:`soft_value_iteration`: repeated application of ``T`` (a ``gamma``-contraction; linear rate).
* :func:`soft_policy_iteration`: Newton's method on ``T V - V = 0``, i.e. soft policy evaluation of
  the softmax policy of the current values; quadratic convergence, one ``S x S`` solve per step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from . import kernels
from ._validation import (
    DTYPE,
    ArrayLike,
    as_tensor,
    check_choice,
    check_finite,
    check_positive_int,
    check_real,
    check_tau,
)
from .linear_solve import ConvergenceWarning
from .mdp import TabularMDP, check_mdp

__all__ = [
    "SoftVIResult",
    "ConvergenceWarning",
    "q_values",
    "soft_bellman",
    "bellman",
    "softmax_policy",
    "greedy_policy",
    "soft_value_iteration",
    "soft_policy_iteration",
    "value_iteration",
    "transition_under",
    "reward_under",
    "entropy",
    "evaluate_policy",
    "state_visitation",
    "soft_return",
    "expected_return",
]


@dataclass
class SoftVIResult:
    """The output of a forward solve of the (soft) Bellman equation.

    Attributes:
        V: state values ``[S]``.
        Q: action values ``r + gamma P V``, ``[S, A]``.
        pi: the policy, ``[S, A]`` (softmax of ``Q / tau``; greedy for :func:`value_iteration`).
        n_iter: number of sweeps (value iteration) or Newton steps (policy iteration) taken.
        residuals: ``residuals[k] = ||T V_k - V_k||_inf`` for every iterate ``V_0, V_1, ...``;
            the last entry is the residual of the returned ``V`` only for policy iteration (value
            iteration returns ``V_n = T V_{n-1}``, whose residual is at most ``gamma`` times the last).
        converged: whether the last residual reached ``tol``.
    """

    V: torch.Tensor
    Q: torch.Tensor
    pi: torch.Tensor
    n_iter: int
    residuals: torch.Tensor
    converged: bool


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_reward(mdp: TabularMDP, r, *, vector_ok: bool = False) -> torch.Tensor:
    r = as_tensor(r, "r")
    S, A = mdp.n_states, mdp.n_actions
    if vector_ok:
        if r.ndim < 2 or tuple(r.shape[:2]) != (S, A):
            raise ValueError(
                f"r must have shape [S, A] or [S, A, ...] = [{S}, {A}, ...], got {tuple(r.shape)}"
            )
    elif tuple(r.shape) != (S, A):
        raise ValueError(f"r must have shape [S, A] = [{S}, {A}], got {tuple(r.shape)}")
    check_finite(r.detach(), "r")
    return r


def _check_values(mdp: TabularMDP, V, name: str = "V") -> torch.Tensor:
    V = as_tensor(V, name)
    if tuple(V.shape) != (mdp.n_states,):
        raise ValueError(f"{name} must have shape [S] = [{mdp.n_states}], got {tuple(V.shape)}")
    check_finite(V.detach(), name)
    return V


def _check_policy(mdp: TabularMDP, pi, atol: float = 1e-6) -> torch.Tensor:
    pi = as_tensor(pi, "pi")
    S, A = mdp.n_states, mdp.n_actions
    if tuple(pi.shape) != (S, A):
        raise ValueError(f"pi must have shape [S, A] = [{S}, {A}], got {tuple(pi.shape)}")
    p = pi.detach()
    check_finite(p, "pi")
    if bool((p < -atol).any()) or bool(((p.sum(-1) - 1.0).abs() > atol).any()):
        raise ValueError("pi must be a stochastic policy: non-negative rows pi[s, :] summing to 1")
    return pi


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------


def q_values(mdp: TabularMDP, r: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``Q = r + gamma * P V``: action values of the next-state values ``V``.

    Args:
        mdp: the dynamics.
        r: reward ``[S, A]`` (or ``[S, A, n]`` with ``V`` of shape ``[S, n]``).
        V: next-state values ``[S]`` (or ``[S, n]``).

    Returns:
        ``[S, A]`` (or ``[S, A, n]``).
    """
    return kernels.q_values(mdp.transitions, mdp.gamma, r, V)


def softmax_policy(Q: ArrayLike, tau: float) -> torch.Tensor:
    """``pi(a|s) = softmax_a(Q(s, .) / tau)``, computed stably (max-subtraction).

    Chapter 1, equation (eq-softmax-policy).

    Args:
        Q: action values ``[S, A]``.
        tau: temperature ``> 0``.

    Returns:
        ``[S, A]``, rows summing to 1.
    """
    return kernels.softmax_policy(as_tensor(Q, "Q"), check_tau(tau))


def greedy_policy(Q: ArrayLike) -> torch.Tensor:
    """The deterministic greedy policy (one-hot ``argmax_a Q(s, a)``, first maximizer on ties)."""
    Q = as_tensor(Q, "Q")
    return torch.nn.functional.one_hot(Q.argmax(dim=-1), Q.shape[-1]).to(DTYPE)


def soft_bellman(mdp: TabularMDP, r: ArrayLike, V: ArrayLike, tau: float) -> torch.Tensor:
    """The soft Bellman optimality operator ``(T V)(s) = tau * logsumexp_a(Q(s, a) / tau)``.

    Chapter 1, equation (eq-soft-bellman), with ``Q = r + gamma P V``.

    Args:
        mdp: the dynamics.
        r: reward ``[S, A]``.
        V: values ``[S]``.
        tau: temperature ``> 0``.

    Returns:
        ``T V``, shape ``[S]``.
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = _check_reward(mdp, r)
    V = _check_values(mdp, V)
    return kernels.soft_backup(mdp.transitions, mdp.gamma, r, V, tau)


def bellman(mdp: TabularMDP, r: ArrayLike, V: ArrayLike) -> torch.Tensor:
    """The (hard) Bellman optimality operator ``(T_0 V)(s) = max_a Q(s, a)``: the ``tau -> 0`` limit."""
    mdp = check_mdp(mdp)
    r = _check_reward(mdp, r)
    V = _check_values(mdp, V)
    return kernels.q_values(mdp.transitions, mdp.gamma, r, V).max(dim=-1).values


# --------------------------------------------------------------------------------------------
# Forward solvers
# --------------------------------------------------------------------------------------------

#: Linear solvers for the systems with ``I - gamma P_pi`` (see :func:`birl_lite.linear_solve.solve`).
LINEAR_SOLVERS = ("auto", "direct", "neumann", "gmres", "bicgstab")


def resolve_linear_solver(mdp: TabularMDP, linear_solver: str) -> str:
    """``"auto"``: dense LU for dense MDPs, BiCGSTAB for sparse ones (sparse LU fills in on
    random supports: chapter 3, section on large MDPs); any other name is returned as is."""
    check_choice(linear_solver, "linear_solver", LINEAR_SOLVERS)
    if linear_solver == "auto":
        return "bicgstab" if mdp.is_sparse else "direct"
    return linear_solver


def _start(mdp: TabularMDP, V0) -> torch.Tensor:
    return torch.zeros(mdp.n_states, dtype=DTYPE) if V0 is None else _check_values(mdp, V0, "V0")


def _warn_unconverged(what: str, max_iter: int, residual: float, tol: float, unit: str) -> None:
    warnings.warn(
        f"{what} stopped after max_iter={max_iter} {unit} with residual {residual:.3g} > "
        f"tol={tol:.3g}",
        ConvergenceWarning,
        stacklevel=3,
    )


def soft_value_iteration(
    mdp: TabularMDP,
    r: ArrayLike,
    tau: float,
    V0: ArrayLike | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200_000,
) -> SoftVIResult:
    """Soft value iteration: ``V_{k+1} = T V_k`` until ``||V_{k+1} - V_k||_inf <= tol``.

    ``T`` is a ``gamma``-contraction in the sup norm, so the iterates converge linearly (error
    times ``gamma`` per sweep) to the unique fixed point ``V*`` from any start. Differentiable: if
    ``r`` requires grad, autograd flows through all the sweeps (unrolled differentiation).

    Args:
        mdp: the dynamics (dense or sparse).
        r: reward ``[S, A]``.
        tau: temperature ``> 0``.
        V0: warm start ``[S]``; zeros when ``None``.
        tol: stopping tolerance on the sup-norm change between sweeps; raised to the round-off
            floor :func:`birl_lite.kernels.residual_floor` of the value scale when below it.
        max_iter: maximum number of sweeps (a :class:`ConvergenceWarning` is issued if reached).

    Returns:
        :class:`SoftVIResult` with ``V`` ``[S]``, ``Q`` ``[S, A]``, ``pi`` ``[S, A]``, ``n_iter``,
        ``residuals`` (one per sweep) and ``converged``.
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = _check_reward(mdp, r)
    tol = _check_tol(tol)
    max_iter = check_positive_int(max_iter, "max_iter")
    V = _start(mdp, V0)
    trans, g = mdp.transitions, mdp.gamma
    tol_eff = max(tol, kernels.residual_floor(kernels.value_scale(r, tau, mdp.n_actions, g)))
    V, residuals, ok = kernels.fixed_point(
        lambda V: kernels.soft_backup(trans, g, r, V, tau), V, tol_eff, max_iter
    )
    if not ok:
        _warn_unconverged("soft_value_iteration", max_iter, residuals[-1], tol_eff, "sweeps")
    Q = kernels.q_values(trans, g, r, V)
    return SoftVIResult(
        V,
        Q,
        kernels.softmax_policy(Q, tau),
        len(residuals),
        torch.tensor(residuals, dtype=DTYPE),
        ok,
    )


def soft_policy_iteration(
    mdp: TabularMDP,
    r: ArrayLike,
    tau: float,
    V0: ArrayLike | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
    linear_solver: str = "auto",
) -> SoftVIResult:
    """Soft policy iteration = Newton's method on the soft Bellman equation ``T V - V = 0``.

    Each step takes the softmax policy of the current values and evaluates it exactly:
    ``V_{k+1} = (I - gamma P_pi)^{-1} (r_pi + tau H(pi))``. Because ``dT/dV = gamma P_pi``, this
    is exactly the Newton step ``V_k + (I - gamma P_pi)^{-1} (T V_k - V_k)``; convergence is
    monotone and, near ``V*``, quadratic, so a handful of ``S x S`` solves replace the thousands
    of sweeps value iteration needs when ``gamma`` is close to 1.

    Args: as :func:`soft_value_iteration` (``n_iter`` counts Newton steps;
    ``residuals[k] = ||T V_k - V_k||_inf`` of the k-th iterate, the last one of the returned
    ``V``), and ``linear_solver`` for the Newton systems: ``"auto"`` (dense LU, or BiCGSTAB on
    sparse MDPs, with a tolerance that shrinks with the residual), ``"direct"`` (LU, sparse LU on
    sparse MDPs), ``"gmres"``, ``"bicgstab"`` or ``"neumann"``
    (:func:`birl_lite.linear_solve.solve`).
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = _check_reward(mdp, r)
    tol = _check_tol(tol)
    max_iter = check_positive_int(max_iter, "max_iter")
    method = resolve_linear_solver(mdp, linear_solver)
    V = _start(mdp, V0)
    trans, g = mdp.transitions, mdp.gamma
    tol_eff = max(tol, kernels.residual_floor(kernels.value_scale(r, tau, mdp.n_actions, g)))
    V, residuals, converged = kernels.soft_policy_iteration(
        trans, g, r, tau, V, tol_eff, max_iter, method=method
    )
    if not converged:
        _warn_unconverged("soft_policy_iteration", max_iter, residuals[-1], tol_eff, "steps")
    Q = kernels.q_values(trans, g, r, V)
    return SoftVIResult(
        V,
        Q,
        kernels.softmax_policy(Q, tau),
        len(residuals) - 1,
        torch.tensor(residuals, dtype=DTYPE),
        converged,
    )


def value_iteration(
    mdp: TabularMDP,
    r: ArrayLike,
    V0: ArrayLike | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200_000,
) -> SoftVIResult:
    """Hard value iteration ``V_{k+1} = max_a (r + gamma P V_k)``: the ``tau -> 0`` reference.

    Returns a :class:`SoftVIResult` whose ``pi`` is the greedy (one-hot) policy.
    """
    mdp = check_mdp(mdp)
    r = _check_reward(mdp, r)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = _check_tol(tol)
    trans, g = mdp.transitions, mdp.gamma
    V, residuals, ok = kernels.fixed_point(
        lambda V: kernels.q_values(trans, g, r, V).max(dim=-1).values,
        _start(mdp, V0),
        tol,
        max_iter,
    )
    if not ok:
        _warn_unconverged("value_iteration", max_iter, residuals[-1], tol, "sweeps")
    Q = kernels.q_values(trans, g, r, V)
    return SoftVIResult(
        V, Q, greedy_policy(Q), len(residuals), torch.tensor(residuals, dtype=DTYPE), ok
    )


# --------------------------------------------------------------------------------------------
# Policy evaluation and occupancy
# --------------------------------------------------------------------------------------------


def transition_under(mdp: TabularMDP, pi: ArrayLike) -> kernels.PolicyKernel:
    """``P_pi[s, s'] = sum_a pi(a|s) P(s'|s, a)``, the state-to-state kernel of ``pi``.

    Returns:
        ``[S, S]``: a dense tensor, or a scipy CSR matrix for a sparse MDP.
    """
    mdp = check_mdp(mdp)
    pi = _check_policy(mdp, pi)
    return kernels.policy_kernel(mdp.transitions, pi)


def reward_under(pi: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``r_pi[s, ...] = sum_a pi(a|s) r(s, a, ...)``; ``r`` may be vector-valued ``[S, A, ...]``."""
    return kernels.policy_reward(pi, r)


def entropy(pi: ArrayLike) -> torch.Tensor:
    """Per-state entropy ``H(pi(.|s)) = -sum_a pi log pi`` (``0 log 0 = 0``); ``[S]``."""
    return kernels.entropy(as_tensor(pi, "pi"))


#: ``evaluate_policy`` method names: the book's two, and the solvers of ``linear_solve.solve``.
_EVAL_METHODS = {
    "exact": "direct",
    "iterative": "neumann",
    "direct": "direct",
    "neumann": "neumann",
    "gmres": "gmres",
    "bicgstab": "bicgstab",
    "auto": "auto",
}


def evaluate_policy(
    mdp: TabularMDP,
    pi: ArrayLike,
    r: ArrayLike,
    *,
    tau: float = 0.0,
    method: str = "exact",
    tol: float = 1e-12,
    max_iter: int = 200_000,
) -> torch.Tensor:
    """Value of a fixed policy: ``V = (I - gamma P_pi)^{-1} (r_pi + tau H(pi))``.

    The same linear operator evaluates a **vector-valued** reward (``r`` of shape ``[S, A, n]``
    gives ``V`` of shape ``[S, n]``), which is what the hypergradient of chapter 3 needs.

    Args:
        mdp: the dynamics (dense or sparse).
        pi: policy ``[S, A]``.
        r: reward ``[S, A]`` or ``[S, A, ...]``.
        tau: temperature of the entropy bonus; ``0`` for the unregularized value (the only
            option for vector-valued rewards).
        method: ``"exact"`` (LU: dense, or sparse LU), ``"iterative"`` (sweeps
            ``V <- r_pi + gamma P_pi V`` until the relative residual is ``<= tol``), or a
            solver of :func:`birl_lite.linear_solve.solve` (``"gmres"``, ``"bicgstab"``), or
            ``"auto"`` (see :func:`soft_policy_iteration`).
        tol, max_iter: for the iterative methods (relative residual, iteration cap).

    Returns:
        ``V`` of shape ``[S]`` or ``[S, ...]``.
    """
    mdp = check_mdp(mdp)
    pi = _check_policy(mdp, pi)
    r = _check_reward(mdp, r, vector_ok=True)
    tau = check_real(tau, "tau")
    if tau < 0:
        raise ValueError(f"tau must be >= 0 for policy evaluation, got {tau}")
    if method not in _EVAL_METHODS:
        raise ValueError(
            "method must be 'exact' or 'iterative' (or a solver of birl_lite.linear_solve: "
            f"'direct', 'neumann', 'gmres', 'bicgstab', 'auto'), got {method!r}"
        )
    solver = resolve_linear_solver(mdp, _EVAL_METHODS[method])
    r_pi = kernels.policy_reward(pi, r)
    if tau > 0:
        if r.ndim != 2:
            raise ValueError("tau > 0 (entropy bonus) needs a scalar reward r of shape [S, A]")
        r_pi = r_pi + tau * kernels.entropy(pi)
    kwargs = {}
    if solver != "direct":
        kwargs = {"tol": _check_tol(tol), "max_iter": check_positive_int(max_iter, "max_iter")}
    return kernels.evaluate(mdp.transitions, mdp.gamma, pi, r_pi, method=solver, **kwargs)


def state_visitation(
    mdp: TabularMDP,
    pi: ArrayLike,
    *,
    rho: ArrayLike | None = None,
    normalize: bool = False,
    linear_solver: str = "auto",
) -> torch.Tensor:
    """Discounted state visitation ``d = (I - gamma P_pi^T)^{-1} rho``, ``d(s) = sum_t gamma^t Pr(s_t = s)``.

    Args:
        mdp: the dynamics (dense or sparse).
        pi: policy ``[S, A]``.
        rho: start distribution ``[S]``; ``mdp.rho`` when ``None``.
        normalize: multiply by ``1 - gamma`` so that ``d`` sums to 1 (a distribution); the default
            (unnormalized, sums to ``1 / (1 - gamma)``) is the ``d`` of chapter 3.
        linear_solver: as :func:`soft_policy_iteration`.

    Returns:
        ``d`` of shape ``[S]``.
    """
    mdp = check_mdp(mdp)
    pi = _check_policy(mdp, pi)
    rho = mdp.rho if rho is None else _check_values(mdp, rho, "rho")
    method = resolve_linear_solver(mdp, linear_solver)
    d = kernels.visitation(mdp.transitions, mdp.gamma, pi, rho, method=method)
    return d * (1.0 - mdp.gamma) if normalize else d


def soft_return(mdp: TabularMDP, pi: ArrayLike, r: ArrayLike, tau: float) -> torch.Tensor:
    """Soft (entropy-regularized) return ``E_{s0 ~ rho}[V^pi_tau(s0)]``, a 0-dim tensor."""
    tau = check_tau(tau)
    return mdp.rho @ evaluate_policy(mdp, pi, r, tau=tau, method="auto")


def expected_return(mdp: TabularMDP, pi: ArrayLike, r: ArrayLike) -> torch.Tensor:
    """Unregularized return ``J(pi) = E_{s0 ~ rho}[V^pi(s0)]`` (``r`` may be vector-valued)."""
    return torch.tensordot(mdp.rho, evaluate_policy(mdp, pi, r, method="auto"), dims=([0], [0]))


def _check_tol(tol) -> float:
    tol = check_real(tol, "tol")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    return tol
