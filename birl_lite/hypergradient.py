"""The fully first-order hypergradient of bilevel RL, and the reference methods it is checked against.

Math: ``../shared/design/math.md`` sections 2-3 (chapter 3 of the book). The upper level minimizes

    phi(x) = f(x, pi*_x),     pi*_x = softmax((r_x + gamma P V*_x) / tau),   V*_x = T_x V*_x,

where ``reward_fn(x) -> r_x [S, A]`` and ``upper_fn(x, pi) -> f`` are arbitrary differentiable
torch functions. Differentiating the soft Bellman fixed point (``dT/dV = gamma P_pi``,
``dT/dx = Phi_x = sum_a pi grad_x r``) gives two equivalent closed forms that use only *first*
derivatives of ``reward_fn`` and ``upper_fn`` and invert only ``I - gamma P_pi`` (invertible for
every policy because ``gamma < 1``):

(H1)  ``grad_x V* = (I - gamma P_pi)^{-1} Phi_x``  (policy evaluation of the vector reward
      ``grad_x r``), ``grad_x Q* = grad_x r + gamma P grad_x V*``, and
      ``grad phi = grad_x f + (1/tau) sum_{s,a} G(s,a) (grad_x Q*(s,a) - grad_x V*(s))``
      with ``G = pi* * df/dpi``;
(H2)  the adjoint form: ``b = sum_a G(., a) - gamma sum_{s,a} G(s,a) P(.|s,a)``, solve the
      ``S x S`` system ``(I - gamma P_pi)^T w = b``, then
      ``grad phi = grad_x f + (1/tau) sum_{s,a} G(s,a) grad_x r(s,a) - (1/tau) Phi_x^T w``.

Reference methods (for tests and for the cost comparison of chapter 3):

* :func:`unrolled_hypergradient`: autograd through ``K`` soft value-iteration sweeps;
* :func:`finite_difference_hypergradient`: central differences of :func:`hyperobjective`;
* :func:`aid_hypergradient`: generic implicit differentiation of the lower-level optimality
  condition in softmax-logit space with the Hessian :func:`logit_hessian` (singular because logits
  are defined up to a per-state constant, and indefinite away from the optimum).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._validation import (
    DTYPE,
    as_tensor,
    check_choice,
    check_finite,
    check_positive_int,
    check_real,
    check_tau,
)
from .mdp import TabularMDP, check_mdp
from .soft import (
    ConvergenceWarning,
    entropy,
    evaluate_policy,
    reward_under,
    soft_policy_iteration,
    soft_value_iteration,
    state_visitation,
    transition_under,
)

__all__ = [
    "HypergradientResult",
    "ReferenceHypergradient",
    "AIDResult",
    "reward_jacobian",
    "upper_gradients",
    "hypergradient",
    "return_hypergradient",
    "hyperobjective",
    "unrolled_hypergradient",
    "finite_difference_hypergradient",
    "logit_objective",
    "logit_hessian",
    "aid_hypergradient",
]

RewardFn = Callable[[torch.Tensor], torch.Tensor]
UpperFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FORMS = ("H1", "H2")
_LINEAR_SOLVERS = ("exact", "iterative")
_FORWARDS = ("policy_iteration", "value_iteration")


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass
class HypergradientResult:
    """The first-order hypergradient and everything computed on the way.

    Attributes:
        grad: ``grad phi(x)``, shape ``[n]``.
        phi: ``f(x, pi*_x)``, a 0-dim tensor.
        V: ``V*_x`` ``[S]``; Q: ``Q*_x`` ``[S, A]``; pi: ``pi*_x`` ``[S, A]``.
        dr_dx: the reward Jacobian ``grad_x r_x``, ``[S, A, n]``.
        info: diagnostics: ``form``, ``linear_solver``, ``forward``, ``forward_iterations``,
            ``forward_residual`` (``||T V - V||_inf`` of the returned ``V``), ``forward_tol``
            (the absolute tolerance used), ``forward_converged``, ``linear_residual`` (sup norm of
            the residual of the linear system actually solved), ``linear_iterations`` (sweeps for
            the iterative adjoint; ``None`` otherwise), ``direct_grad_norm`` (``||grad_x f||``)
            and ``timings`` (seconds per stage: ``forward``, ``jacobian``, ``upper``, ``linear``).
    """

    grad: torch.Tensor
    phi: torch.Tensor
    V: torch.Tensor
    Q: torch.Tensor
    pi: torch.Tensor
    dr_dx: torch.Tensor
    info: dict = field(default_factory=dict)


@dataclass
class ReferenceHypergradient:
    """A hypergradient computed by a reference method (unrolled autograd, finite differences).

    Attributes:
        grad: the hypergradient estimate ``[n]``.
        phi: ``phi(x)`` as seen by the method (for unrolling, ``f`` at the ``K``-th iterate), 0-dim.
        info: method-specific diagnostics (``n_sweeps``, ``last_change``, ``eps``, timings...).
    """

    grad: torch.Tensor
    phi: torch.Tensor
    info: dict = field(default_factory=dict)


@dataclass
class AIDResult:
    """The Hessian-based (AID) hypergradient in softmax-logit space.

    Attributes:
        grad: the hypergradient estimate ``[n]``.
        phi: ``f(x, softmax(logits))``, 0-dim.
        logits: the logits ``theta`` ``[S, A]`` at which the Hessian was taken.
        hessian: the Hessian of the lower-level *loss* ``g = -J_tau`` in the logits,
            ``[S*A, S*A]`` (positive semi-definite at the optimum, singular in any case).
        eigenvalues: eigenvalues of ``hessian`` in ascending order ``[S*A]``.
        info: ``method``, ``damping``, ``stationarity`` (``||grad_theta J_tau||_inf``),
            ``n_negative`` / ``n_null`` eigenvalue counts (relative threshold ``1e-10``),
            ``condition`` (largest over smallest non-null eigenvalue magnitude), ``timings``.
    """

    grad: torch.Tensor
    phi: torch.Tensor
    logits: torch.Tensor
    hessian: torch.Tensor
    eigenvalues: torch.Tensor
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Checks and first-derivative building blocks
# --------------------------------------------------------------------------------------------


def _check_x(x) -> torch.Tensor:
    x = as_tensor(x, "x").detach()
    if x.ndim != 1:
        raise ValueError(
            f"x must be a 1-D tensor of upper-level variables [n], got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError("x must have at least one entry")
    check_finite(x, "x")
    return x


def _call_reward(reward_fn: RewardFn, x: torch.Tensor, mdp: TabularMDP) -> torch.Tensor:
    """``reward_fn(x)`` checked to be a finite float ``[S, A]`` tensor (float64 on return)."""
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    r = reward_fn(x)
    if not isinstance(r, torch.Tensor):
        raise TypeError(f"reward_fn(x) must return a torch.Tensor [S, A], got {type(r).__name__}")
    S, A = mdp.n_states, mdp.n_actions
    if tuple(r.shape) != (S, A):
        raise ValueError(
            f"reward_fn(x) must return shape [S, A] = [{S}, {A}], got {tuple(r.shape)}"
        )
    if not r.is_floating_point():
        raise TypeError(f"reward_fn(x) must return a floating-point tensor, got dtype {r.dtype}")
    check_finite(r.detach(), "reward_fn(x)")
    return r.to(DTYPE)


def _call_upper(upper_fn: UpperFn, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """``upper_fn(x, pi)`` checked to be a finite scalar, returned as a 0-dim tensor."""
    if not callable(upper_fn):
        raise TypeError(f"upper_fn must be callable, got {type(upper_fn).__name__}")
    f = upper_fn(x, pi)
    if not isinstance(f, torch.Tensor):
        f = as_tensor(f, "upper_fn(x, pi)")
    if f.numel() != 1:
        raise ValueError(
            f"upper_fn(x, pi) must return a scalar (one element), got shape {tuple(f.shape)}"
        )
    if not f.is_floating_point():
        raise TypeError(f"upper_fn(x, pi) must return a floating-point value, got dtype {f.dtype}")
    f = f.reshape(()).to(DTYPE)
    check_finite(f.detach(), "upper_fn(x, pi)")
    return f


@contextlib.contextmanager
def _quiet_torch_jit():
    """Silence torch's own DeprecationWarning about ``torch.jit.script``, which its forward-mode
    autograd emits once per process while loading its decompositions (not about our code)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
        )
        yield


def reward_jacobian(reward_fn: RewardFn, x, mdp: TabularMDP | None = None) -> torch.Tensor:
    """The reward Jacobian ``dr_dx[s, a, i] = d r_x(s, a) / d x_i`` by automatic differentiation.

    Only first derivatives of ``reward_fn``: forward mode (``torch.func.jacfwd``, ``n`` tangents)
    when ``n <= S*A``, reverse mode (``torch.func.jacrev``) otherwise; if ``reward_fn`` is not
    compatible with ``torch.func`` (e.g. it calls ``.item()``), falls back to
    ``torch.autograd.functional.jacobian`` (one backward pass per output entry).

    Args:
        reward_fn: ``x [n] -> r [S, A]``.
        x: 1-D tensor ``[n]``.
        mdp: when given, the output shape of ``reward_fn`` is checked against ``[S, A]``.

    Returns:
        ``dr_dx`` of shape ``[S, A, n]``, float64.
    """
    x = _check_x(x)
    if mdp is not None:
        r = _call_reward(reward_fn, x, check_mdp(mdp))
        n_out = r.numel()
    else:
        with torch.no_grad():
            n_out = reward_fn(x).numel()

    def fn(z: torch.Tensor) -> torch.Tensor:
        return reward_fn(z).to(DTYPE)

    try:
        with _quiet_torch_jit():
            jac = (torch.func.jacfwd if x.numel() <= n_out else torch.func.jacrev)(fn)(x)
    except (RuntimeError, NotImplementedError):
        jac = torch.autograd.functional.jacobian(fn, x)
    return jac.detach()


def upper_gradients(upper_fn: UpperFn, x, pi) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f(x, pi)`` and its partial gradients ``(grad_x f [n], df/dpi [S, A])`` by one backward pass.

    ``pi`` is treated as a free ``[S, A]`` array (no simplex constraint): the hypergradient only
    uses ``G = pi * df/dpi`` contracted with quantities of zero mean under ``pi``, so adding a
    per-state constant to ``df/dpi`` changes nothing. A partial that ``upper_fn`` does not depend
    on is returned as zeros.

    Returns:
        ``(f, df_dx, df_dpi)`` with ``f`` a detached 0-dim tensor.
    """
    x_ = as_tensor(x, "x").detach().clone().requires_grad_(True)
    pi_ = as_tensor(pi, "pi").detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = _call_upper(upper_fn, x_, pi_)
        if f.requires_grad:
            gx, gpi = torch.autograd.grad(f, (x_, pi_), allow_unused=True)
        else:
            gx, gpi = None, None
    df_dx = torch.zeros_like(x_) if gx is None else gx.detach().to(DTYPE)
    df_dpi = torch.zeros_like(pi_) if gpi is None else gpi.detach().to(DTYPE)
    check_finite(df_dx, "grad_x upper_fn")
    check_finite(df_dpi, "grad_pi upper_fn")
    return f.detach(), df_dx, df_dpi


def _value_scale(mdp: TabularMDP, r: torch.Tensor, tau: float) -> float:
    """An upper bound on ``||V*||_inf``: ``(||r||_inf + tau log A) / (1 - gamma)``."""
    return (float(r.detach().abs().max()) + tau * math.log(mdp.n_actions)) / (1.0 - mdp.gamma)


def _forward(
    mdp: TabularMDP,
    r: torch.Tensor,
    tau: float,
    forward: str,
    V0,
    tol: float,
    max_iter: int | None,
):
    """Solve the lower level to the absolute tolerance ``tol * max(1, value scale)``."""
    tol_abs = tol * max(1.0, _value_scale(mdp, r, tau))
    kwargs = {} if max_iter is None else {"max_iter": max_iter}
    r = r.detach()
    if V0 is not None:
        V0 = as_tensor(V0, "V0").detach()
    if forward == "policy_iteration":
        sol = soft_policy_iteration(mdp, r, tau, V0, tol=tol_abs, **kwargs)
        residual = float(sol.residuals[-1])
    else:
        sol = soft_value_iteration(mdp, r, tau, V0, tol=tol_abs, **kwargs)
        # value iteration returns V_n = T V_{n-1}: measure the residual of the returned V itself
        TV = tau * torch.logsumexp(sol.Q / tau, dim=-1)
        residual = float((TV - sol.V).abs().max())
    return sol, residual, tol_abs


def _adjoint_solve(
    P_pi: torch.Tensor,
    gamma: float,
    b: torch.Tensor,
    method: str,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, int | None]:
    """Solve ``(I - gamma P_pi)^T w = b``: dense solve, or sweeps ``w <- b + gamma P_pi^T w``."""
    S = P_pi.shape[0]
    if method == "exact":
        eye = torch.eye(S, dtype=DTYPE)
        return torch.linalg.solve(eye - gamma * P_pi.T, b), None
    tol_abs = tol * max(1.0, float(b.abs().max()) / (1.0 - gamma))
    PT = P_pi.T.contiguous()
    w = torch.zeros_like(b)
    for k in range(1, max_iter + 1):
        w_new = b + gamma * (PT @ w)
        change = float((w_new - w).abs().max())
        w = w_new
        if change <= tol_abs:
            return w, k
    warnings.warn(
        f"iterative adjoint solve stopped after max_iter={max_iter} sweeps (last change {change:.3g})",
        ConvergenceWarning,
        stacklevel=3,
    )
    return w, max_iter


# --------------------------------------------------------------------------------------------
# The first-order hypergradient
# --------------------------------------------------------------------------------------------


def hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x,
    tau: float,
    *,
    form: str = "H2",
    linear_solver: str = "exact",
    forward: str = "policy_iteration",
    V0=None,
    tol: float = 1e-12,
    max_iter: int | None = None,
) -> HypergradientResult:
    """The fully first-order hypergradient ``grad phi(x)`` of ``phi(x) = f(x, pi*_x)`` (math.md s. 3).

    Steps: (1) forward solve ``V*_x`` (soft policy iteration = Newton, or soft value iteration);
    (2) the reward Jacobian ``dr_dx`` and the partials ``grad_x f``, ``df/dpi`` by first-order
    autograd (never a Hessian); (3) one policy-evaluation-type linear solve with
    ``I - gamma P_pi``: for ``form="H1"`` on the ``n`` columns of ``Phi_x`` (gives ``grad_x V*``),
    for ``form="H2"`` one adjoint ``S``-vector ``w``; (4) the closed form (H1) or (H2).

    Args:
        mdp: the dynamics.
        reward_fn: ``x [n] -> r_x [S, A]``, differentiable torch function.
        upper_fn: ``(x [n], pi [S, A]) -> f`` scalar, differentiable torch function.
        x: upper-level variable, 1-D ``[n]``.
        tau: temperature ``> 0``.
        form: ``"H2"`` (adjoint, one ``S``-vector solve; cheapest for large ``n``) or ``"H1"``
            (policy evaluation of the vector reward ``grad_x r``; also returns ``dV_dx``,
            ``dQ_dx`` in ``info``).
        linear_solver: ``"exact"`` (dense LU solve) or ``"iterative"`` (policy-evaluation
            sweeps, converging at rate ``gamma``).
        forward: ``"policy_iteration"`` (Newton, quadratic, a handful of ``S x S`` solves) or
            ``"value_iteration"`` (sweeps, linear rate ``gamma``).
        V0: warm start ``[S]`` for the forward solve (zeros when ``None``).
        tol: *relative* tolerance: the forward solve stops at ``||T V - V||_inf <= tol * max(1,
            (||r||_inf + tau log A) / (1 - gamma))`` and the iterative linear solves likewise
            relative to the scale of their solution, so that ``1e-12`` stays above round-off.
        max_iter: iteration cap of the forward solver (its own default when ``None``) and of
            iterative linear solves (``200_000`` when ``None``).

    Returns:
        :class:`HypergradientResult`.

    Raises:
        ValueError: (or TypeError) for a non-MDP, ``x`` not 1-D, ``tau <= 0``, unknown options,
            ``reward_fn(x)`` not of shape ``[S, A]``, or ``upper_fn`` not returning a scalar.
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    form = check_choice(form, "form", _FORMS)
    linear_solver = check_choice(linear_solver, "linear_solver", _LINEAR_SOLVERS)
    forward = check_choice(forward, "forward", _FORWARDS)
    tol = check_real(tol, "tol")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    lin_max_iter = 200_000 if max_iter is None else check_positive_int(max_iter, "max_iter")
    timings: dict[str, float] = {}
    gamma = mdp.gamma

    # (1) forward solve of the lower level
    t0 = time.perf_counter()
    with torch.no_grad():
        r = _call_reward(reward_fn, x, mdp).detach()
    sol, fwd_residual, fwd_tol = _forward(mdp, r, tau, forward, V0, tol, max_iter)
    V, Q, pi = sol.V.detach(), sol.Q.detach(), sol.pi.detach()
    timings["forward"] = time.perf_counter() - t0

    # (2) first derivatives only: reward Jacobian, partial gradients of f
    t0 = time.perf_counter()
    dr_dx = reward_jacobian(reward_fn, x)
    timings["jacobian"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    phi, df_dx, df_dpi = upper_gradients(upper_fn, x, pi)
    timings["upper"] = time.perf_counter() - t0

    # (3)-(4) one linear solve with I - gamma P_pi, then the closed form
    t0 = time.perf_counter()
    # G(s, a) = pi(a|s) df/dpi(a|s), with df/dpi centred per state under pi. Exact: G is only ever
    # contracted with quantities of zero mean under pi(.|s) (grad_x Q* - grad_x V*), so a per-state
    # constant in df/dpi contributes nothing -- but in floating point it would be a large term
    # (e.g. Q_U(s, a) d(s) ~ 1 / (1 - gamma)^2 for f = -J_U) that cancels only after amplification
    # by 1/tau and by (I - gamma P_pi)^{-1}. Centring makes every row of G sum to zero, so b sums
    # to zero and the 1 / (1 - gamma) mode of the solve is never excited.
    G = pi * (df_dpi - (pi * df_dpi).sum(dim=1, keepdim=True))
    Phi = reward_under(pi, dr_dx)  # Phi_x(s) = sum_a pi(a|s) grad_x r(s, a), [S, n]
    P_pi = transition_under(mdp, pi)
    info: dict = {}
    if form == "H1":
        lin_tol = tol * max(1.0, float(Phi.abs().max()) / (1.0 - gamma))
        dV_dx = evaluate_policy(
            mdp, pi, dr_dx, method=linear_solver, tol=lin_tol, max_iter=lin_max_iter
        )  # (I - gamma P_pi)^{-1} Phi, [S, n]
        dQ_dx = dr_dx + gamma * mdp.expect_next(dV_dx)  # [S, A, n]
        # sum_a G(s, a) (dQ - dV)(s, a) = sum_a G(s, a) (dr + gamma P (dV - m))(s, a) for any
        # per-column constant m, because the rows of G and of P sum to 0 and 1: removing the
        # (large, ~ 1 / (1 - gamma)) common mode of dV before the contraction avoids cancellation.
        dV_c = dV_dx - dV_dx.mean(dim=0, keepdim=True)
        dQ_c = dr_dx + gamma * mdp.expect_next(dV_c)
        grad = df_dx + torch.einsum("sa,san->n", G, dQ_c) / tau
        lin_res = float((dV_dx - gamma * (P_pi @ dV_dx) - Phi).abs().max())
        info.update(dV_dx=dV_dx, dQ_dx=dQ_dx, linear_iterations=None)
    else:
        # b(s') = sum_a G(s', a) - gamma sum_{s,a} G(s, a) P(s'|s, a): one [S*A] x [S*A, S] product
        S, A = mdp.n_states, mdp.n_actions
        b = G.sum(dim=1) - gamma * (G.reshape(S * A) @ mdp.P.reshape(S * A, S))
        w, lin_iter = _adjoint_solve(P_pi, gamma, b, linear_solver, tol, lin_max_iter)
        grad = df_dx + (torch.einsum("sa,san->n", G, dr_dx) - Phi.T @ w) / tau
        lin_res = float((w - gamma * (P_pi.T @ w) - b).abs().max())
        info.update(w=w, b=b, linear_iterations=lin_iter)
    timings["linear"] = time.perf_counter() - t0

    info.update(
        form=form,
        linear_solver=linear_solver,
        forward=forward,
        forward_iterations=sol.n_iter,
        forward_residual=fwd_residual,
        forward_tol=fwd_tol,
        forward_converged=sol.converged,
        linear_residual=lin_res,
        direct_grad_norm=float(df_dx.norm()),
        timings=timings,
    )
    return HypergradientResult(grad, phi, V, Q, pi, dr_dx, info)


def return_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    r_U,
    x,
    tau: float,
    *,
    use_advantage: bool = True,
    forward: str = "policy_iteration",
    V0=None,
    tol: float = 1e-12,
) -> HypergradientResult:
    """(H1) in the special case ``f(x, pi) = -J_U(pi)``: the policy-gradient (visitation) form.

    With ``J_U(pi) = rho^T V_U^pi`` the return of the upper-level reward ``r_U`` (unregularized),
    the policy-gradient theorem gives ``df/dpi(a|s) = -d(s) Q_U(s, a)`` with
    ``d = (I - gamma P_pi^T)^{-1} rho`` the unnormalized discounted visitation, so (math.md s. 3)

        ``grad phi(x) = -(1/tau) sum_s d(s) sum_a pi*(a|s) Q_U(s, a) (grad_x Q*(s, a) - grad_x V*(s))``,

    where ``Q_U`` may be replaced by the advantage ``A_U = Q_U - V_U`` (the bracket has zero
    mean under ``pi*``). No autograd through ``f`` at all: only ``grad_x r`` is differentiated.

    Args:
        mdp, reward_fn, x, tau, forward, V0, tol: as :func:`hypergradient`.
        r_U: upper-level reward ``[S, A]``.
        use_advantage: contract with ``A_U`` (better conditioned) instead of ``Q_U``.

    Returns:
        :class:`HypergradientResult` with ``phi = -J_U(pi*_x)`` and ``info`` holding ``d``,
        ``Q_U``, ``dV_dx``, ``dQ_dx``.
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    forward = check_choice(forward, "forward", _FORWARDS)
    tol = check_real(tol, "tol")
    r_U = as_tensor(r_U, "r_U").detach()
    S, A = mdp.n_states, mdp.n_actions
    if tuple(r_U.shape) != (S, A):
        raise ValueError(f"r_U must have shape [S, A] = [{S}, {A}], got {tuple(r_U.shape)}")
    with torch.no_grad():
        r = _call_reward(reward_fn, x, mdp).detach()
    sol, fwd_residual, _ = _forward(mdp, r, tau, forward, V0, tol, None)
    pi = sol.pi.detach()
    dr_dx = reward_jacobian(reward_fn, x)
    dV_dx = evaluate_policy(mdp, pi, dr_dx)  # (I - gamma P_pi)^{-1} Phi_x
    dQ_dx = dr_dx + mdp.gamma * mdp.expect_next(dV_dx)
    V_U = evaluate_policy(mdp, pi, r_U)
    Q_U = r_U + mdp.gamma * mdp.expect_next(V_U)
    weight = Q_U - V_U.unsqueeze(1) if use_advantage else Q_U
    d = state_visitation(mdp, pi)
    # dQ - dV = dr + gamma P dV_c - dV_c - (1 - gamma) m with dV = dV_c + m (m the column means):
    # the same quantity without subtracting two numbers of size ~ 1 / (1 - gamma).
    m = dV_dx.mean(dim=0, keepdim=True)
    dV_c = dV_dx - m
    bracket = dr_dx + mdp.gamma * mdp.expect_next(dV_c) - dV_c.unsqueeze(1) - (1.0 - mdp.gamma) * m
    grad = -torch.einsum("s,sa,sa,san->n", d, pi, weight, bracket) / tau
    phi = -(mdp.rho @ V_U)
    info = {
        "d": d,
        "Q_U": Q_U,
        "dV_dx": dV_dx,
        "dQ_dx": dQ_dx,
        "forward_residual": fwd_residual,
        "forward_iterations": sol.n_iter,
    }
    return HypergradientResult(grad, phi, sol.V.detach(), sol.Q.detach(), pi, dr_dx, info)


def hyperobjective(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x,
    tau: float,
    *,
    forward: str = "policy_iteration",
    V0=None,
    tol: float = 1e-12,
    max_iter: int | None = None,
) -> torch.Tensor:
    """``phi(x) = f(x, pi*_x)`` with the lower level solved to relative tolerance ``tol``.

    Args: as :func:`hypergradient`. Returns a detached 0-dim float64 tensor.
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    forward = check_choice(forward, "forward", _FORWARDS)
    tol = check_real(tol, "tol")
    with torch.no_grad():
        r = _call_reward(reward_fn, x, mdp)
        sol, _, _ = _forward(mdp, r, tau, forward, V0, tol, max_iter)
        return _call_upper(upper_fn, x, sol.pi).detach()


# --------------------------------------------------------------------------------------------
# Reference 1: autograd through unrolled soft value iteration
# --------------------------------------------------------------------------------------------


def unrolled_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x,
    tau: float,
    n_sweeps: int,
    V0=None,
) -> ReferenceHypergradient:
    """Iterative differentiation: autograd through ``K = n_sweeps`` soft value-iteration sweeps.

    ``V_0 = V0`` (zeros when ``None``; treated as a constant), ``V_{k+1} = T_x V_k``,
    ``pi_K = softmax((r_x + gamma P V_K) / tau)``; returns ``d f(x, pi_K) / dx`` by reverse-mode
    autograd (memory and time grow linearly with ``K``). The error to ``grad phi`` decays like
    ``gamma^K``, so ``gamma = 0.99`` needs thousands of sweeps for ``1e-6`` accuracy.

    Returns:
        :class:`ReferenceHypergradient` (``info``: ``n_sweeps``, ``last_change``
        ``||V_K - V_{K-1}||_inf``, ``seconds``).
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    K = check_positive_int(n_sweeps, "n_sweeps", minimum=0)
    S, A = mdp.n_states, mdp.n_actions
    P2 = mdp.P.reshape(S * A, S)
    g = mdp.gamma
    V = torch.zeros(S, dtype=DTYPE) if V0 is None else as_tensor(V0, "V0").detach().clone()
    if tuple(V.shape) != (S,):
        raise ValueError(f"V0 must have shape [S] = [{S}], got {tuple(V.shape)}")
    t0 = time.perf_counter()
    x_ = x.clone().requires_grad_(True)
    last_change = float("nan")
    with torch.enable_grad():
        r = _call_reward(reward_fn, x_, mdp)
        for _ in range(K):
            V_new = tau * torch.logsumexp((r + g * (P2 @ V).view(S, A)) / tau, dim=-1)
            last_change = float((V_new - V).detach().abs().max())
            V = V_new
        pi = torch.softmax((r + g * (P2 @ V).view(S, A)) / tau, dim=-1)
        f = _call_upper(upper_fn, x_, pi)
        if f.requires_grad:
            (gx,) = torch.autograd.grad(f, (x_,), allow_unused=True)
        else:
            gx = None
    grad = torch.zeros_like(x) if gx is None else gx.detach()
    info = {"n_sweeps": K, "last_change": last_change, "seconds": time.perf_counter() - t0}
    return ReferenceHypergradient(grad, f.detach(), info)


# --------------------------------------------------------------------------------------------
# Reference 2: central finite differences
# --------------------------------------------------------------------------------------------


def finite_difference_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x,
    tau: float,
    eps: float = 1e-5,
    *,
    tol: float = 1e-14,
) -> ReferenceHypergradient:
    """Central differences ``(phi(x + eps e_i) - phi(x - eps e_i)) / (2 eps)`` for every ``i``.

    Each ``phi`` solves the lower level by soft policy iteration to relative tolerance ``tol``
    (warm-started at ``V*_x``), so the error is the truncation error ``O(eps^2)`` plus round-off
    ``O(machine eps * |phi| / eps)``. Costs ``2 n`` forward solves.

    Returns:
        :class:`ReferenceHypergradient` (``info``: ``eps``, ``n_solves``, ``seconds``).
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    eps = check_real(eps, "eps")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    t0 = time.perf_counter()
    with torch.no_grad():
        r = _call_reward(reward_fn, x, mdp)
        sol, _, _ = _forward(mdp, r, tau, "policy_iteration", None, tol, None)
        phi = _call_upper(upper_fn, x, sol.pi).detach()
    grad = torch.empty_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = eps
        plus = hyperobjective(mdp, reward_fn, upper_fn, x + e, tau, V0=sol.V, tol=tol)
        minus = hyperobjective(mdp, reward_fn, upper_fn, x - e, tau, V0=sol.V, tol=tol)
        grad[i] = (plus - minus) / (2.0 * eps)
    info = {"eps": eps, "n_solves": 2 * x.numel() + 1, "seconds": time.perf_counter() - t0}
    return ReferenceHypergradient(grad, phi, info)


# --------------------------------------------------------------------------------------------
# Reference 3: generic AID with the Hessian in softmax-logit space
# --------------------------------------------------------------------------------------------


def _logit_objective(
    P: torch.Tensor,
    gamma: float,
    rho: torch.Tensor,
    r: torch.Tensor,
    tau: float,
    logits: torch.Tensor,
) -> torch.Tensor:
    """Pure-torch soft return of ``softmax(logits)`` (no data-dependent checks: torch.func safe)."""
    S, A = r.shape
    pi = torch.softmax(logits.reshape(S, A), dim=-1)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    r_pi = reward_under(pi, r) + tau * entropy(pi)
    eye = torch.eye(S, dtype=DTYPE)
    return rho @ torch.linalg.solve(eye - gamma * P_pi, r_pi)


def logit_objective(mdp: TabularMDP, r, tau: float, logits) -> torch.Tensor:
    """The lower-level objective in softmax-logit space: ``J_tau(theta) = rho^T V^{softmax(theta)}_tau``.

    ``V^pi_tau = (I - gamma P_pi)^{-1} (r_pi + tau H(pi))`` is the soft value of
    ``pi = softmax_a(theta[s, .])``. ``J_tau`` is maximized by ``theta = Q*/tau`` (plus any per-state
    constant) but is *not* concave in ``theta``. Differentiable in ``r`` and ``logits``.

    Args:
        mdp: the dynamics; r: reward ``[S, A]``; tau: temperature ``> 0``;
        logits: ``theta`` of shape ``[S, A]`` or flat ``[S*A]``.

    Returns:
        0-dim tensor ``J_tau``.
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = as_tensor(r, "r")
    S, A = mdp.n_states, mdp.n_actions
    if tuple(r.shape) != (S, A):
        raise ValueError(f"r must have shape [S, A] = [{S}, {A}], got {tuple(r.shape)}")
    logits = as_tensor(logits, "logits")
    if logits.numel() != S * A or logits.ndim not in (1, 2):
        raise ValueError(
            f"logits must have shape [S, A] = [{S}, {A}] or [S*A], got {tuple(logits.shape)}"
        )
    return _logit_objective(mdp.P, mdp.gamma, mdp.rho, r, tau, logits)


def logit_hessian(mdp: TabularMDP, r, tau: float, logits) -> torch.Tensor:
    """The Hessian of :func:`logit_objective` in the logits, ``[S*A, S*A]`` (row-major ``(s, a)``).

    Computed by ``torch.func.hessian`` (forward-over-reverse autograd; cost ``S*A`` Hessian-vector
    products, memory ``(S*A)^2``). Because ``softmax`` is invariant to adding a constant to a
    state's logits, the ``S`` vectors ``e_s (x) 1_A`` are always in its null space; at the
    maximizer it is negative semi-definite, elsewhere it may be indefinite.

    Returns:
        ``[S*A, S*A]`` symmetric tensor (symmetrized to remove round-off asymmetry).
    """
    mdp = check_mdp(mdp)
    tau = check_tau(tau)
    r = as_tensor(r, "r").detach()
    S, A = mdp.n_states, mdp.n_actions
    if tuple(r.shape) != (S, A):
        raise ValueError(f"r must have shape [S, A] = [{S}, {A}], got {tuple(r.shape)}")
    theta = as_tensor(logits, "logits").detach().reshape(-1)
    if theta.numel() != S * A:
        raise ValueError(f"logits must have S*A = {S * A} entries, got {theta.numel()}")
    P, g, rho = mdp.P, mdp.gamma, mdp.rho

    def J(th: torch.Tensor) -> torch.Tensor:
        return _logit_objective(P, g, rho, r, tau, th)

    with _quiet_torch_jit():
        H = torch.func.hessian(J)(theta)
    return 0.5 * (H + H.T)


def aid_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x,
    tau: float,
    *,
    damping: float = 0.0,
    method: str = "pinv",
    logits=None,
    rcond: float = 1e-10,
    tol: float = 1e-12,
) -> AIDResult:
    """Generic approximate implicit differentiation (AID) in softmax-logit space, with a Hessian.

    The lower level as a smooth optimization problem: ``theta* in argmin_theta g(x, theta)``,
    ``g = -J_tau(r_x, theta)`` (:func:`logit_objective`). The implicit function theorem on
    ``grad_theta g = 0`` gives ``d theta*/dx = -H^{-1} d_x grad_theta g`` with ``H = grad^2_theta g``,

        ``grad phi = grad_x f + d_x [ grad_theta J_tau(r_x, theta) . u ]``,
        ``u = (H + damping I)^{-1} grad_theta f(x, softmax(theta))``  (``u`` held fixed).

    ``H`` is singular (the ``S`` per-state constant directions), so ``method="solve"`` needs
    ``damping > 0`` (which biases the result) and ``method="pinv"`` uses the eigen-decomposition,
    discarding eigenvalues below ``rcond * max|eigenvalue|``. Cost: ``S*A`` Hessian-vector products
    and an ``O((S*A)^3)`` factorization, against one ``S x S`` solve for (H2).

    Args:
        mdp, reward_fn, upper_fn, x, tau: as :func:`hypergradient`.
        damping: ``lambda >= 0`` added to the diagonal of ``H``.
        method: ``"pinv"`` or ``"solve"``.
        logits: where to take the Hessian; the optimal logits ``log pi*_x`` (soft policy
            iteration to relative tolerance ``tol``) when ``None``. Away from the optimum the
            formula is not a hypergradient any more and ``H`` may be indefinite.
        rcond: relative eigenvalue cut-off of the pseudo-inverse.
        tol: forward-solve tolerance when ``logits`` is ``None``.

    Returns:
        :class:`AIDResult`.

    Raises:
        ValueError: for ``method="solve"`` when ``H + damping I`` is exactly singular.
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    method = check_choice(method, "method", ("pinv", "solve"))
    damping = check_real(damping, "damping")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    S, A = mdp.n_states, mdp.n_actions
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    with torch.no_grad():
        r = _call_reward(reward_fn, x, mdp).detach()
    if logits is None:
        sol, _, _ = _forward(mdp, r, tau, "policy_iteration", None, tol, None)
        theta = torch.log_softmax(sol.Q / tau, dim=-1).reshape(-1)
    else:
        theta = as_tensor(logits, "logits").detach().reshape(-1)
        if theta.numel() != S * A:
            raise ValueError(f"logits must have S*A = {S * A} entries, got {theta.numel()}")
    timings["forward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    H = -logit_hessian(mdp, r, tau, theta)  # Hessian of the loss g = -J_tau
    timings["hessian"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x_ = x.clone().requires_grad_(True)
    th_ = theta.clone().requires_grad_(True)
    with torch.enable_grad():
        f = _call_upper(upper_fn, x_, torch.softmax(th_.reshape(S, A), dim=-1))
        if f.requires_grad:
            gx, gth = torch.autograd.grad(f, (x_, th_), allow_unused=True)
        else:
            gx, gth = None, None
    df_dx = torch.zeros_like(x) if gx is None else gx.detach()
    df_dth = torch.zeros_like(theta) if gth is None else gth.detach()

    evals, evecs = torch.linalg.eigh(H)
    scale = float(evals.abs().max()) if evals.numel() else 0.0
    null = evals.abs() <= 1e-10 * max(scale, 1e-300)
    Hd = H + damping * torch.eye(S * A, dtype=DTYPE)
    if method == "pinv":
        lam = evals + damping
        keep = lam.abs() > rcond * max(float(lam.abs().max()), 1e-300)
        inv = torch.where(
            keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam)
        )
        u = evecs @ (inv * (evecs.T @ df_dth))
    else:
        try:
            u = torch.linalg.solve(Hd, df_dth)
        except torch.linalg.LinAlgError as exc:
            raise ValueError(
                "aid_hypergradient: the logit Hessian (+ damping) is singular; logits are defined up "
                "to a per-state constant. Use damping > 0 or method='pinv'."
            ) from exc
    timings["ihvp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.enable_grad():
        x2 = x.clone().requires_grad_(True)
        th2 = theta.clone().requires_grad_(True)
        r_x = _call_reward(reward_fn, x2, mdp)
        J = _logit_objective(mdp.P, mdp.gamma, mdp.rho, r_x, tau, th2)
        (gJ,) = torch.autograd.grad(J, (th2,), create_graph=True)
        stationarity = float(gJ.detach().abs().max())
        inner = gJ @ u
        if inner.requires_grad:
            (mixed,) = torch.autograd.grad(inner, (x2,), allow_unused=True)
        else:
            mixed = None
    mixed = torch.zeros_like(x) if mixed is None else mixed.detach()
    grad = df_dx + mixed
    timings["mixed"] = time.perf_counter() - t0

    nonnull = evals.abs()[~null]
    info = {
        "method": method,
        "damping": damping,
        "stationarity": stationarity,
        "n_negative": int((evals < -1e-10 * max(scale, 1e-300)).sum()),
        "n_null": int(null.sum()),
        "condition": float(nonnull.max() / nonnull.min()) if nonnull.numel() else float("inf"),
        "timings": timings,
    }
    return AIDResult(grad, f.detach(), theta.reshape(S, A), H, evals, info)
