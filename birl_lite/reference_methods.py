"""Reference methods for the hypergradient of chapter 3: the independent checks of the formulas.

* :func:`unrolled_hypergradient`: autograd through ``K`` soft value-iteration sweeps;
* :func:`finite_difference_hypergradient`: central differences of
  :func:`~birl_lite.first_order.hyperobjective`;
* :func:`aid_hypergradient`: generic implicit differentiation of the lower-level optimality
  condition in softmax-logit space (chapter 3, equation (eq-aid-logits)) with the Hessian
  :func:`logit_hessian` (singular because logits are defined up to a per-state constant, and
  indefinite away from the optimum).

All three need dense transitions (``S * A * S`` floats); the first-order formulas of
:mod:`birl_lite.first_order` also run on sparse MDPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import kernels
from ._validation import (
    DTYPE,
    ArrayLike,
    as_tensor,
    check_choice,
    check_positive_int,
    check_real,
    check_tau,
)
from .first_order import (
    RewardFn,
    UpperFn,
    _call_reward,
    _call_upper,
    _check_x,
    _forward,
    _quiet_torch_jit,
    hyperobjective,
)
from .mdp import TabularMDP, check_mdp

__all__ = [
    "ReferenceHypergradient",
    "AIDResult",
    "unrolled_hypergradient",
    "finite_difference_hypergradient",
    "logit_objective",
    "logit_hessian",
    "aid_hypergradient",
]


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


def _dense(mdp: TabularMDP) -> kernels.DenseTransitions:
    if mdp.is_sparse:
        raise TypeError(
            "mdp: the logit-space reference methods need dense transitions (S*A x S*A Hessians); "
            "use mdp.to_dense() on a small MDP"
        )
    return mdp.transitions


# --------------------------------------------------------------------------------------------
# Reference 1: autograd through unrolled soft value iteration
# --------------------------------------------------------------------------------------------


def unrolled_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x: ArrayLike,
    tau: float,
    n_sweeps: int,
    V0: ArrayLike | None = None,
) -> ReferenceHypergradient:
    """Iterative differentiation: autograd through ``K = n_sweeps`` soft value-iteration sweeps.

    ``V_0 = V0`` (zeros when ``None``; treated as a constant), ``V_{k+1} = T_x V_k``,
    ``pi_K = softmax((r_x + gamma P V_K) / tau)``; returns ``d f(x, pi_K) / dx`` by reverse-mode
    autograd (memory and time grow linearly with ``K``). The error to ``grad phi`` decays
    asymptotically like ``(gamma |lambda_2|)^K``, with ``lambda_2`` the eigenvalue of second-largest
    modulus of ``P_{pi*}`` (chapter 3, section 3.10 and exercise 3.5): the policy sees ``V`` only up
    to a constant, whose error decays like ``gamma^K``, and modulo constants the linearized sweep
    is ``gamma P_{pi*}``. On a fast-mixing MDP ``|lambda_2|`` is small and a few dozen sweeps
    suffice; on a slowly mixing map ``|lambda_2|`` is close to 1, and when ``pi*`` has more than
    one closed class of states (or one it leaves with negligible probability, or a periodic
    chain) ``|lambda_2| = 1`` and the rate is ``gamma^K``: at ``gamma = 0.99`` hundreds to
    thousands of sweeps for ``1e-6`` accuracy.

    Returns:
        :class:`ReferenceHypergradient` (``info``: ``n_sweeps``, ``last_change``
        ``||V_K - V_{K-1}||_inf``, ``seconds``).
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    K = check_positive_int(n_sweeps, "n_sweeps", minimum=0)
    S = mdp.n_states
    trans, g = _dense(mdp), mdp.gamma
    V = torch.zeros(S, dtype=DTYPE) if V0 is None else as_tensor(V0, "V0").detach().clone()
    if tuple(V.shape) != (S,):
        raise ValueError(f"V0 must have shape [S] = [{S}], got {tuple(V.shape)}")
    t0 = time.perf_counter()
    x_ = x.clone().requires_grad_(True)
    last_change = float("nan")
    with torch.enable_grad():
        r = _call_reward(reward_fn, x_, mdp)
        for _ in range(K):
            V_new = kernels.soft_backup(trans, g, r, V, tau)
            last_change = float((V_new - V).detach().abs().max())
            V = V_new
        pi = kernels.softmax_policy(kernels.q_values(trans, g, r, V), tau)
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
    x: ArrayLike,
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
    trans: kernels.DenseTransitions,
    gamma: float,
    rho: torch.Tensor,
    r: torch.Tensor,
    tau: float,
    logits: torch.Tensor,
) -> torch.Tensor:
    """Pure-torch soft return of ``softmax(logits)`` (no data-dependent checks: torch.func safe)."""
    S, A = r.shape
    pi = torch.softmax(logits.reshape(S, A), dim=-1)
    r_pi = kernels.policy_reward(pi, r) + tau * kernels.entropy(pi)
    return rho @ kernels.evaluate(trans, gamma, pi, r_pi)


def logit_objective(mdp: TabularMDP, r: ArrayLike, tau: float, logits: ArrayLike) -> torch.Tensor:
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
    return _logit_objective(_dense(mdp), mdp.gamma, mdp.rho, r, tau, logits)


def logit_hessian(mdp: TabularMDP, r: ArrayLike, tau: float, logits: ArrayLike) -> torch.Tensor:
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
    trans, g, rho = _dense(mdp), mdp.gamma, mdp.rho

    def J(th: torch.Tensor) -> torch.Tensor:
        return _logit_objective(trans, g, rho, r, tau, th)

    with _quiet_torch_jit():
        H = torch.func.hessian(J)(theta)
    return 0.5 * (H + H.T)


def aid_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x: ArrayLike,
    tau: float,
    *,
    damping: float = 0.0,
    method: str = "pinv",
    logits: ArrayLike | None = None,
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
        mdp, reward_fn, upper_fn, x, tau: as :func:`~birl_lite.first_order.hypergradient`.
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
        J = _logit_objective(_dense(mdp), mdp.gamma, mdp.rho, r_x, tau, th2)
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
