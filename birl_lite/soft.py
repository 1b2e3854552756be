"""Entropy-regularized (soft) dynamic programming on a :class:`~birl_lite.mdp.TabularMDP`.

Math: ``../shared/design/math.md`` section 1 (chapter 1 of the book). With temperature ``tau > 0``::

    (T V)(s)  = tau * logsumexp_a( (r(s, a) + gamma * sum_s' P(s'|s, a) V(s')) / tau )       (soft Bellman)
    Q*        = r + gamma P V*,     pi*(a|s) = softmax_a(Q*(s, .) / tau) = exp((Q* - V*) / tau)

Everything is float64 and stable for small temperatures: the log-sum-exp subtracts the maximum
(``torch.logsumexp``), and no function ever exponentiates a raw ``Q / tau``.

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

from ._validation import DTYPE, as_tensor, check_finite, check_positive_int, check_real, check_tau
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


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance."""


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


def q_values(mdp: TabularMDP, r, V) -> torch.Tensor:
    """``Q = r + gamma * P V``: action values of the next-state values ``V``.

    Args:
        mdp: the dynamics.
        r: reward ``[S, A]`` (or ``[S, A, n]`` with ``V`` of shape ``[S, n]``).
        V: next-state values ``[S]`` (or ``[S, n]``).

    Returns:
        ``[S, A]`` (or ``[S, A, n]``).
    """
    return r + mdp.gamma * mdp.expect_next(V)


def softmax_policy(Q, tau: float) -> torch.Tensor:
    """``pi(a|s) = softmax_a(Q(s, .) / tau)``, computed stably (max-subtraction).

    Args:
        Q: action values ``[S, A]``.
        tau: temperature ``> 0``.

    Returns:
        ``[S, A]``, rows summing to 1.
    """
    tau = check_tau(tau)
    Q = as_tensor(Q, "Q")
    return torch.softmax(Q / tau, dim=-1)


def greedy_policy(Q) -> torch.Tensor:
    """The deterministic greedy policy (one-hot ``argmax_a Q(s, a)``, first maximizer on ties)."""
    Q = as_tensor(Q, "Q")
    return torch.nn.functional.one_hot(Q.argmax(dim=-1), Q.shape[-1]).to(DTYPE)


def soft_bellman(mdp: TabularMDP, r, V, tau: float) -> torch.Tensor:
    """The soft Bellman optimality operator ``(T V)(s) = tau * logsumexp_a(Q(s, a) / tau)``.

    Math: math.md section 1, with ``Q = r + gamma P V``.

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
    return tau * torch.logsumexp(q_values(mdp, r, V) / tau, dim=-1)


def bellman(mdp: TabularMDP, r, V) -> torch.Tensor:
    """The (hard) Bellman optimality operator ``(T_0 V)(s) = max_a Q(s, a)``: the ``tau -> 0`` limit."""
    mdp = check_mdp(mdp)
    r = _check_reward(mdp, r)
    V = _check_values(mdp, V)
    return q_values(mdp, r, V).max(dim=-1).values


# --------------------------------------------------------------------------------------------
# Forward solvers
# --------------------------------------------------------------------------------------------


def _fixed_point(step, V, tol: float, max_iter: int, what: str):
    """Iterate ``V <- step(V)`` until ``||step(V) - V||_inf <= tol``; return (V, residuals, ok)."""
    residuals = []
    for _ in range(max_iter):
        V_new = step(V)
        res = float((V_new - V).detach().abs().max())
        residuals.append(res)
        V = V_new
        if not math.isfinite(res):
            raise FloatingPointError(f"{what} diverged (non-finite residual)")
        if res <= tol:
            return V, residuals, True
    warnings.warn(
        f"{what} stopped after max_iter={max_iter} sweeps with residual {residuals[-1]:.3g} > tol={tol:.3g}",
        ConvergenceWarning,
        stacklevel=3,
    )
    return V, residuals, False


def soft_value_iteration(
    mdp: TabularMDP,
    r,
    tau: float,
    V0=None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200_000,
) -> SoftVIResult:
    """Soft value iteration: ``V_{k+1} = T V_k`` until ``||V_{k+1} - V_k||_inf <= tol``.

    ``T`` is a ``gamma``-contraction in the sup norm, so the iterates converge linearly (error
    times ``gamma`` per sweep) to the unique fixed point ``V*`` from any start. Differentiable: if
    ``r`` requires grad, autograd flows through all the sweeps (unrolled differentiation).

    Args:
        mdp: the dynamics.
        r: reward ``[S, A]``.
        tau: temperature ``> 0``.
        V0: warm start ``[S]``; zeros when ``None``.
        tol: stopping tolerance on the sup-norm change between sweeps.
        max_iter: maximum number of sweeps (a :class:`ConvergenceWarning` is issued if reached).

    Returns:
        :class:`SoftVIResult` with ``V`` ``[S]``, ``Q`` ``[S, A]``, ``pi`` ``[S, A]``, ``n_iter``,
        ``residuals`` (one per sweep) and ``converged``.
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = _check_reward(mdp, r)
    tol = check_real(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    V = torch.zeros(mdp.n_states, dtype=DTYPE) if V0 is None else _check_values(mdp, V0, "V0")
    S, A = mdp.n_states, mdp.n_actions
    P2 = mdp.P.reshape(S * A, S)
    g = mdp.gamma

    def step(V):
        return tau * torch.logsumexp((r + g * (P2 @ V).view(S, A)) / tau, dim=-1)

    V, residuals, ok = _fixed_point(step, V, tol, max_iter, "soft_value_iteration")
    Q = q_values(mdp, r, V)
    return SoftVIResult(
        V,
        Q,
        torch.softmax(Q / tau, dim=-1),
        len(residuals),
        torch.tensor(residuals, dtype=DTYPE),
        ok,
    )


def soft_policy_iteration(
    mdp: TabularMDP,
    r,
    tau: float,
    V0=None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> SoftVIResult:
    """Soft policy iteration = Newton's method on the soft Bellman equation ``T V - V = 0``.

    Each step takes the softmax policy of the current values and evaluates it exactly:
    ``V_{k+1} = (I - gamma P_pi)^{-1} (r_pi + tau H(pi))``. Because ``dT/dV = gamma P_pi``, this
    is exactly the Newton step ``V_k + (I - gamma P_pi)^{-1} (T V_k - V_k)``; convergence is
    monotone and, near ``V*``, quadratic, so a handful of ``S x S`` solves replace the thousands
    of sweeps value iteration needs when ``gamma`` is close to 1.

    Args and returns: as :func:`soft_value_iteration` (``n_iter`` counts Newton steps;
    ``residuals[k] = ||T V_k - V_k||_inf`` of the k-th iterate, the last one of the returned ``V``).
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = _check_reward(mdp, r)
    tol = check_real(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    V = torch.zeros(mdp.n_states, dtype=DTYPE) if V0 is None else _check_values(mdp, V0, "V0")
    eye = torch.eye(mdp.n_states, dtype=DTYPE)
    residuals: list[float] = []
    converged = False
    for _ in range(max_iter + 1):
        Q = q_values(mdp, r, V)
        TV = tau * torch.logsumexp(Q / tau, dim=-1)
        res = float((TV - V).detach().abs().max())
        residuals.append(res)
        if not math.isfinite(res):
            raise FloatingPointError("soft_policy_iteration diverged (non-finite residual)")
        if res <= tol:
            converged = True
            break
        if len(residuals) > max_iter:
            break
        # Newton step: solve (I - gamma P_pi)(V_new - V) = T V - V.
        pi = torch.softmax(Q / tau, dim=-1)
        V = V + torch.linalg.solve(eye - mdp.gamma * transition_under(mdp, pi), TV - V)
    if not converged:
        warnings.warn(
            f"soft_policy_iteration stopped after max_iter={max_iter} steps with residual "
            f"{residuals[-1]:.3g} > tol={tol:.3g}",
            ConvergenceWarning,
            stacklevel=2,
        )
    Q = q_values(mdp, r, V)
    return SoftVIResult(
        V,
        Q,
        torch.softmax(Q / tau, dim=-1),
        len(residuals) - 1,
        torch.tensor(residuals, dtype=DTYPE),
        converged,
    )


def value_iteration(
    mdp: TabularMDP, r, V0=None, *, tol: float = 1e-10, max_iter: int = 200_000
) -> SoftVIResult:
    """Hard value iteration ``V_{k+1} = max_a (r + gamma P V_k)``: the ``tau -> 0`` reference.

    Returns a :class:`SoftVIResult` whose ``pi`` is the greedy (one-hot) policy.
    """
    mdp = check_mdp(mdp)
    r = _check_reward(mdp, r)
    max_iter = check_positive_int(max_iter, "max_iter")
    V = torch.zeros(mdp.n_states, dtype=DTYPE) if V0 is None else _check_values(mdp, V0, "V0")
    V, residuals, ok = _fixed_point(
        lambda V: q_values(mdp, r, V).max(dim=-1).values,
        V,
        check_real(tol, "tol"),
        max_iter,
        "value_iteration",
    )
    Q = q_values(mdp, r, V)
    return SoftVIResult(
        V, Q, greedy_policy(Q), len(residuals), torch.tensor(residuals, dtype=DTYPE), ok
    )


# --------------------------------------------------------------------------------------------
# Policy evaluation and occupancy
# --------------------------------------------------------------------------------------------


def transition_under(mdp: TabularMDP, pi) -> torch.Tensor:
    """``P_pi[s, s'] = sum_a pi(a|s) P(s'|s, a)``, the state-to-state kernel of ``pi``; ``[S, S]``."""
    mdp = check_mdp(mdp)
    pi = _check_policy(mdp, pi)
    return torch.einsum("sa,sat->st", pi, mdp.P)


def reward_under(pi, r) -> torch.Tensor:
    """``r_pi[s, ...] = sum_a pi(a|s) r(s, a, ...)``; ``r`` may be vector-valued ``[S, A, ...]``."""
    return torch.einsum("sa,sa...->s...", pi, r)


def entropy(pi) -> torch.Tensor:
    """Per-state entropy ``H(pi(.|s)) = -sum_a pi log pi`` (``0 log 0 = 0``); ``[S]``."""
    pi = as_tensor(pi, "pi")
    return -torch.special.xlogy(pi, pi).sum(dim=-1)


def evaluate_policy(
    mdp: TabularMDP,
    pi,
    r,
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
        mdp: the dynamics.
        pi: policy ``[S, A]``.
        r: reward ``[S, A]`` or ``[S, A, ...]``.
        tau: temperature of the entropy bonus; ``0`` for the unregularized value (the only
            option for vector-valued rewards).
        method: ``"exact"`` (dense linear solve) or ``"iterative"`` (sweeps
            ``V <- r_pi + gamma P_pi V`` until the sup-norm change is ``<= tol``).
        tol, max_iter: for ``method="iterative"``.

    Returns:
        ``V`` of shape ``[S]`` or ``[S, ...]``.
    """
    mdp = check_mdp(mdp)
    pi = _check_policy(mdp, pi)
    r = _check_reward(mdp, r, vector_ok=True)
    tau = check_real(tau, "tau")
    if tau < 0:
        raise ValueError(f"tau must be >= 0 for policy evaluation, got {tau}")
    r_pi = reward_under(pi, r)
    if tau > 0:
        if r.ndim != 2:
            raise ValueError("tau > 0 (entropy bonus) needs a scalar reward r of shape [S, A]")
        r_pi = r_pi + tau * entropy(pi)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    if method == "exact":
        eye = torch.eye(mdp.n_states, dtype=DTYPE)
        flat = r_pi.reshape(mdp.n_states, -1)
        return torch.linalg.solve(eye - mdp.gamma * P_pi, flat).reshape(r_pi.shape)
    if method == "iterative":
        max_iter = check_positive_int(max_iter, "max_iter")
        g = mdp.gamma
        flat = r_pi.reshape(mdp.n_states, -1)
        V, _, _ = _fixed_point(
            lambda V: flat + g * (P_pi @ V),
            torch.zeros_like(flat),
            tol,
            max_iter,
            "evaluate_policy",
        )
        return V.reshape(r_pi.shape)
    raise ValueError(f"method must be 'exact' or 'iterative', got {method!r}")


def state_visitation(mdp: TabularMDP, pi, *, rho=None, normalize: bool = False) -> torch.Tensor:
    """Discounted state visitation ``d = (I - gamma P_pi^T)^{-1} rho``, ``d(s) = sum_t gamma^t Pr(s_t = s)``.

    Args:
        mdp: the dynamics.
        pi: policy ``[S, A]``.
        rho: start distribution ``[S]``; ``mdp.rho`` when ``None``.
        normalize: multiply by ``1 - gamma`` so that ``d`` sums to 1 (a distribution); the default
            (unnormalized, sums to ``1 / (1 - gamma)``) is the ``d`` of math.md section 3.

    Returns:
        ``d`` of shape ``[S]``.
    """
    mdp = check_mdp(mdp)
    P_pi = transition_under(mdp, pi)
    rho = mdp.rho if rho is None else _check_values(mdp, rho, "rho")
    eye = torch.eye(mdp.n_states, dtype=DTYPE)
    d = torch.linalg.solve(eye - mdp.gamma * P_pi.T, rho)
    return d * (1.0 - mdp.gamma) if normalize else d


def soft_return(mdp: TabularMDP, pi, r, tau: float) -> torch.Tensor:
    """Soft (entropy-regularized) return ``E_{s0 ~ rho}[V^pi_tau(s0)]``, a 0-dim tensor."""
    tau = check_tau(tau)
    return mdp.rho @ evaluate_policy(mdp, pi, r, tau=tau)


def expected_return(mdp: TabularMDP, pi, r) -> torch.Tensor:
    """Unregularized return ``J(pi) = E_{s0 ~ rho}[V^pi(s0)]`` (``r`` may be vector-valued)."""
    return torch.tensordot(mdp.rho, evaluate_policy(mdp, pi, r), dims=([0], [0]))
