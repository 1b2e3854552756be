"""The fully first-order hypergradient of bilevel RL (chapter 3 of the book).

The upper level minimizes (chapter 3, equation (eq-bilevel))

    phi(x) = f(x, pi*_x),     pi*_x = softmax((r_x + gamma P V*_x) / tau),   V*_x = T_x V*_x,

where ``reward_fn(x) -> r_x [S, A]`` and ``upper_fn(x, pi) -> f`` are arbitrary differentiable
torch functions. Differentiating the soft Bellman fixed point (``dT/dV = gamma P_pi``,
``dT/dx = Phi_x = sum_a pi grad_x r``) gives two equivalent closed forms that use only *first*
derivatives of ``reward_fn`` and ``upper_fn`` and invert only ``I - gamma P_pi`` (invertible for
every policy because ``gamma < 1``):

(H1)  (eq-H1) ``grad_x V* = (I - gamma P_pi)^{-1} Phi_x`` (eq-dV) (policy evaluation of the
      vector reward ``grad_x r``), ``grad_x Q* = grad_x r + gamma P grad_x V*``, and
      ``grad phi = grad_x f + (1/tau) sum_{s,a} G(s,a) (grad_x Q*(s,a) - grad_x V*(s))``
      with ``G = pi* * df/dpi``;
(H2)  (eq-H2) the adjoint form: ``b = sum_a G(., a) - gamma sum_{s,a} G(s,a) P(.|s,a)``, solve the
      ``S x S`` system ``(I - gamma P_pi)^T w = b``, then
      ``grad phi = grad_x f + (1/tau) J_r^T c`` with ``c(s, a) = G(s, a) - pi(a|s) w(s)``:
      one vector-Jacobian product through ``reward_fn``, whose cost does not grow with ``n``.

The formulas are written once in :mod:`birl_lite.kernels` and run on dense and sparse MDPs. The
reference methods the chapter checks them against live in :mod:`birl_lite.reference_methods`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import Any

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
from .mdp import TabularMDP, check_mdp
from .soft import resolve_linear_solver, soft_policy_iteration, soft_value_iteration

__all__ = [
    "RewardFn",
    "UpperFn",
    "HypergradientResult",
    "reward_jacobian",
    "upper_gradients",
    "reward_vjp",
    "hypergradient",
    "return_hypergradient",
    "hyperobjective",
    "negative_return",
]

RewardFn = Callable[[torch.Tensor], torch.Tensor]
UpperFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FORMS = ("H1", "H2")
#: ``linear_solver`` names: the book's two ("exact", "iterative") and those of linear_solve.solve.
_LINEAR_SOLVERS = {
    "auto": "auto",
    "exact": "direct",
    "direct": "direct",
    "iterative": "neumann",
    "neumann": "neumann",
    "gmres": "gmres",
    "bicgstab": "bicgstab",
}
_FORWARDS = ("policy_iteration", "value_iteration")


class HypergradientResult:
    """The first-order hypergradient and everything computed on the way.

    Attributes:
        grad: ``grad phi(x)``, shape ``[n]``.
        phi: ``f(x, pi*_x)``, a 0-dim tensor.
        V: ``V*_x`` ``[S]``; Q: ``Q*_x`` ``[S, A]``; pi: ``pi*_x`` ``[S, A]``.
        dr_dx: the reward Jacobian ``grad_x r_x``, ``[S, A, n]``. (H2) never forms it: it is
            computed on first access (``S * A * n`` floats).
        info: diagnostics: ``form``, ``linear_solver``, ``forward``, ``forward_iterations``,
            ``forward_residual`` (``||T V - V||_inf`` of the returned ``V``), ``forward_tol``
            (the absolute tolerance used), ``forward_converged``, ``linear_residual`` (sup norm of
            the residual of the linear system actually solved), ``linear_iterations`` (``0`` for
            direct solves), ``direct_grad_norm`` (``||grad_x f||``) and ``timings`` (seconds per
            stage: ``forward``, ``upper``, ``linear``, and ``jacobian`` (H1) or ``vjp`` (H2)).
    """

    def __init__(
        self,
        grad: torch.Tensor,
        phi: torch.Tensor,
        V: torch.Tensor,
        Q: torch.Tensor,
        pi: torch.Tensor,
        dr_dx: torch.Tensor | None = None,
        info: dict[str, Any] | None = None,
        *,
        jacobian: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.grad, self.phi, self.V, self.Q, self.pi = grad, phi, V, Q, pi
        self.info = {} if info is None else info
        self._dr_dx = dr_dx
        self._jacobian = jacobian

    @property
    def dr_dx(self) -> torch.Tensor:
        if self._dr_dx is None:
            if self._jacobian is None:
                raise AttributeError("this result holds no reward Jacobian")
            self._dr_dx = self._jacobian()
        return self._dr_dx

    def __repr__(self) -> str:
        return f"HypergradientResult(grad={self.grad}, phi={float(self.phi):.6g})"


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


def reward_jacobian(
    reward_fn: RewardFn, x: ArrayLike, mdp: TabularMDP | None = None
) -> torch.Tensor:
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


def upper_gradients(
    upper_fn: UpperFn, x: ArrayLike, pi: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _call_upper_value_and_grad(fn: Callable, x: torch.Tensor, pi: torch.Tensor):
    if not callable(fn):
        raise TypeError(f"upper_value_and_grad must be callable, got {type(fn).__name__}")
    out = fn(x, pi)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError("upper_value_and_grad(x, pi) must return a tuple (f, df_dx, df_dpi)")
    f = as_tensor(out[0], "upper_value_and_grad f").detach().reshape(()).to(DTYPE)
    df_dx = as_tensor(out[1], "upper_value_and_grad df_dx").detach().to(DTYPE)
    df_dpi = as_tensor(out[2], "upper_value_and_grad df_dpi").detach().to(DTYPE)
    if df_dx.shape != x.shape or df_dpi.shape != pi.shape:
        raise ValueError(
            f"upper_value_and_grad must return df_dx of shape {tuple(x.shape)} and df_dpi of "
            f"shape {tuple(pi.shape)}, got {tuple(df_dx.shape)} and {tuple(df_dpi.shape)}"
        )
    for t, name in ((f, "f"), (df_dx, "df_dx"), (df_dpi, "df_dpi")):
        check_finite(t, f"upper_value_and_grad {name}")
    return f, df_dx, df_dpi


def negative_return(
    mdp: TabularMDP, r_U: ArrayLike, *, ridge: float = 0.0, linear_solver: str = "auto"
) -> tuple[
    UpperFn, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
]:
    """``f(x, pi) = -J_U(pi) + (ridge / 2) ||x||^2`` with its partials in closed form.

    ``J_U(pi) = rho^T V_U^pi`` is the unregularized return of the upper-level reward ``r_U``; by the
    policy-gradient theorem ``df/dpi(a|s) = -d(s) Q_U(s, a)`` with ``d`` the discounted visitation
    (chapter 3, equation (eq-pg)). Works on dense and sparse MDPs (two linear solves).

    Returns:
        ``(upper_fn, upper_value_and_grad)``: the objective as a function of ``(x, pi)``, and its
        value with both partials, for :func:`hypergradient`.
    """
    mdp = check_mdp(mdp)
    r_U = as_tensor(r_U, "r_U").detach()
    if tuple(r_U.shape) != (mdp.n_states, mdp.n_actions):
        raise ValueError(
            f"r_U must have shape [S, A] = [{mdp.n_states}, {mdp.n_actions}], got {tuple(r_U.shape)}"
        )
    ridge = check_real(ridge, "ridge")
    method = resolve_linear_solver(mdp, linear_solver)
    trans, gamma = mdp.transitions, mdp.gamma

    def upper_value_and_grad(x: torch.Tensor, pi: torch.Tensor):
        pi = pi.detach()
        V_U = kernels.evaluate(trans, gamma, pi, kernels.policy_reward(pi, r_U), method=method)
        Q_U = r_U + gamma * trans.expect(V_U)
        d = kernels.visitation(trans, gamma, pi, mdp.rho, method=method)
        f = -(mdp.rho @ V_U) + 0.5 * ridge * (x.detach() ** 2).sum()
        return f, ridge * x.detach(), -d.unsqueeze(1) * Q_U

    def upper_fn(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        # differentiable on dense MDPs; on sparse ones autograd through pi raises (the partials
        # then come from upper_value_and_grad) instead of silently returning no policy term
        V_U = kernels.evaluate(
            trans,
            gamma,
            pi,
            kernels.policy_reward(pi, r_U),
            **({"method": method} if mdp.is_sparse else {}),
        )
        return -(mdp.rho @ V_U) + 0.5 * ridge * (x**2).sum()

    return upper_fn, upper_value_and_grad


def reward_vjp(
    reward_fn: RewardFn,
    x: ArrayLike,
    cotangent: torch.Tensor,
    mdp: TabularMDP | None = None,
    *,
    check: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """``J_r(x)^T c = sum_{s,a} c(s, a) grad_x r_x(s, a)``: one vector-Jacobian product, ``[n]``.

    The cost of one reverse pass through ``reward_fn``, whatever ``n``: this is how (H2) avoids the
    ``[S, A, n]`` Jacobian (chapter 3, equation (eq-H2)).

    Args:
        reward_fn: ``x [n] -> r [S, A]``, differentiable torch function.
        x: 1-D tensor ``[n]``.
        cotangent: ``c [S, A]``.
        mdp: when given, the output shape of ``reward_fn`` is checked against ``[S, A]``.
        check: also compare the autograd directional derivative with a central finite
            difference of ``reward_fn`` along a random direction (two more calls of ``reward_fn``). A
            ``reward_fn`` that leaves autograd (``.item()``, ``.detach()``, numpy) would otherwise
            give a gradient that silently misses terms.
        seed: seed of the random direction of the check.

    Raises:
        ValueError: the check fails (naming ``reward_fn``).
    """
    x = _check_x(x)
    c = as_tensor(cotangent, "cotangent").detach()
    x_ = x.clone().requires_grad_(True)
    with torch.enable_grad():
        r = _call_reward(reward_fn, x_, mdp) if mdp is not None else reward_fn(x_).to(DTYPE)
    if tuple(c.shape) != tuple(r.shape):
        raise ValueError(
            f"cotangent must have the shape of reward_fn(x), {tuple(r.shape)}, got {tuple(c.shape)}"
        )
    g = _vjp(r, x_, c)
    if check:
        _check_vjp(reward_fn, x, r.detach(), c, g, seed)
    return g


def _vjp(r: torch.Tensor, x_: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``J^T c`` from the graph of ``r = reward_fn(x_)`` (zeros where ``r`` does not depend on x)."""
    if not r.requires_grad:
        return torch.zeros_like(x_).detach()
    (g,) = torch.autograd.grad(r, x_, grad_outputs=c.to(r.dtype), allow_unused=True)
    return torch.zeros_like(x_).detach() if g is None else g.detach().to(DTYPE)


def _difference(reward_fn: RewardFn, x: torch.Tensor, seed: int):
    """A random unit direction ``u`` and ``(r(x + eps u) - r(x - eps u)) / (2 eps)``.

    Central, not one-sided: a one-sided difference has a truncation error ``O(eps r'')`` that is
    not small next to ``r'`` where ``r_x`` is nearly stationary (the quadratic reward of chapter 4
    near its optimum), and the check would raise on a correct ``reward_fn``."""
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    u = u / u.norm()
    eps = 1e-6 * max(1.0, float(x.abs().max()))
    with torch.no_grad():
        diff = (reward_fn(x + eps * u).to(DTYPE) - reward_fn(x - eps * u).to(DTYPE)) / (2 * eps)
    return u, diff


_LEAK = (
    "reward_fn: its autograd derivative disagrees with finite differences along a random "
    "direction ({ad:.6g} vs {fd:.6g}); reward_fn probably leaves autograd (.item(), .detach(), "
    "numpy, in-place ops on a copy). Write it with torch operations on x, or pass "
    "check_reward=False if the disagreement is expected (a non-smooth reward)."
)


def _check_vjp(reward_fn, x, r, c, g, seed: int) -> None:
    """``c^T (r(x + eps u) - r(x - eps u)) / (2 eps)`` must equal ``g^T u`` with ``g = J^T c``.

    It costs two calls of ``reward_fn`` and no other derivative. A term that autograd misses
    changes ``g`` by some ``m != 0``, which a random ``u`` sees with probability one."""
    u, diff = _difference(reward_fn, x, seed)
    fd, ad = float((c * diff).sum()), float(g @ u)
    scale = float(c.norm() * diff.norm()) + abs(ad)
    if abs(fd - ad) > 1e-4 * scale + float(c.abs().sum()) * _roundoff(r):
        raise ValueError(_LEAK.format(ad=ad, fd=fd))


def _roundoff(r: torch.Tensor) -> float:
    """A bound on the round-off of one entry of the central difference of ``r``: about
    ``machine eps * |r| / eps = 2e-10 |r|``, with a margin of 50."""
    return 1e-8 * max(1.0, float(r.abs().max()))


def _check_jacobian(reward_fn, x, r, dr_dx, seed: int) -> None:
    """The Jacobian along a random direction must match a central difference of ``reward_fn``."""
    u, diff = _difference(reward_fn, x, seed)
    Ju = dr_dx @ u
    err = float((Ju - diff).abs().max())
    scale = float(Ju.abs().max()) + float(diff.abs().max())
    if err > 1e-4 * scale + _roundoff(r):
        k = int((Ju - diff).abs().argmax())
        raise ValueError(_LEAK.format(ad=float(Ju.reshape(-1)[k]), fd=float(diff.reshape(-1)[k])))


def _forward(
    mdp: TabularMDP,
    r: torch.Tensor,
    tau: float,
    forward: str,
    V0,
    tol: float,
    max_iter: int | None,
    linear_solver: str = "auto",
):
    """Solve the lower level to the absolute tolerance ``tol * max(1, value scale)``."""
    tol_abs = tol * max(1.0, kernels.value_scale(r, tau, mdp.n_actions, mdp.gamma))
    kwargs = {} if max_iter is None else {"max_iter": max_iter}
    r = r.detach()
    if V0 is not None:
        V0 = as_tensor(V0, "V0").detach()
    if forward == "policy_iteration":
        sol = soft_policy_iteration(
            mdp, r, tau, V0, tol=tol_abs, linear_solver=linear_solver, **kwargs
        )
        residual = float(sol.residuals[-1])
    else:
        sol = soft_value_iteration(mdp, r, tau, V0, tol=tol_abs, **kwargs)
        # value iteration returns V_n = T V_{n-1}: measure the residual of the returned V itself
        residual = float((kernels.soft_max(sol.Q, tau) - sol.V).abs().max())
    return sol, residual, tol_abs


def _linear_kwargs(method: str, tol: float, max_iter: int) -> dict:
    """Iterative solves stop at the relative residual ``tol`` (never below round-off)."""
    if method == "direct":
        return {}
    return {"tol": max(tol, 1e-15), "max_iter": max_iter}


# --------------------------------------------------------------------------------------------
# The first-order hypergradient
# --------------------------------------------------------------------------------------------


def hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    upper_fn: UpperFn,
    x: ArrayLike,
    tau: float,
    *,
    form: str = "H2",
    linear_solver: str = "auto",
    forward: str = "policy_iteration",
    V0: ArrayLike | None = None,
    tol: float = 1e-12,
    max_iter: int | None = None,
    check_reward: bool = True,
    upper_value_and_grad: Callable | None = None,
) -> HypergradientResult:
    """The fully first-order hypergradient ``grad phi(x)`` of ``phi(x) = f(x, pi*_x)`` (chapter 3).

    Steps: (1) forward solve ``V*_x`` (soft policy iteration = Newton, or soft value iteration);
    (2) the partials ``grad_x f``, ``df/dpi`` by first-order autograd (never a Hessian); (3) one
    policy-evaluation-type linear solve with ``I - gamma P_pi``: for ``form="H1"`` on the ``n``
    columns of ``Phi_x`` (gives ``grad_x V*``, equation (eq-dV)), for ``form="H2"`` one adjoint
    ``S``-vector ``w``; (4) the closed form (eq-H1), or for (eq-H2) one vector-Jacobian product
    through ``reward_fn`` (:func:`reward_vjp`), so that its cost does not grow with ``n``.
    Dense and sparse MDPs alike (chapter 3, section on large MDPs).

    Args:
        mdp: the dynamics (dense or sparse).
        reward_fn: ``x [n] -> r_x [S, A]``, differentiable torch function.
        upper_fn: ``(x [n], pi [S, A]) -> f`` scalar, differentiable torch function.
        x: upper-level variable, 1-D ``[n]``.
        tau: temperature ``> 0``.
        form: ``"H2"`` (adjoint, one ``S``-vector solve and one VJP; cheapest for large ``n``) or
            ``"H1"`` (policy evaluation of the vector reward ``grad_x r``; also returns
            ``dV_dx``, ``dQ_dx`` in ``info``).
        linear_solver: for the systems with ``I - gamma P_pi`` (forward Newton steps and the
            hypergradient's solve): ``"auto"`` (LU on dense MDPs, BiCGSTAB on sparse ones),
            ``"exact"`` (= ``"direct"``: LU, sparse LU on sparse MDPs), ``"iterative"``
            (= ``"neumann"``: sweeps ``w <- b + gamma P_pi^T w``, rate ``gamma``), ``"gmres"``
            or ``"bicgstab"`` (:func:`birl_lite.linear_solve.solve`).
        forward: ``"policy_iteration"`` (Newton, quadratic, a handful of linear solves) or
            ``"value_iteration"`` (sweeps, linear rate ``gamma``).
        V0: warm start ``[S]`` for the forward solve (zeros when ``None``).
        tol: *relative* tolerance: the forward solve stops at ``||T V - V||_inf <= tol * max(1,
            (||r||_inf + tau log A) / (1 - gamma))`` and iterative linear solves at the relative
            residual ``tol``.
        max_iter: iteration cap of the forward solver (its own default when ``None``) and of
            iterative linear solves (``200_000`` when ``None``).
        check_reward: check ``reward_fn``'s autograd derivative against a finite difference
            along one random direction (:func:`reward_vjp`), so that a ``reward_fn`` leaving
            autograd raises instead of returning a gradient with missing terms.
        upper_value_and_grad: optional ``(x, pi) -> (f, grad_x f [n], df/dpi [S, A])`` in closed
            form, used instead of autograd through ``upper_fn`` (needed on sparse MDPs when
            ``f`` depends on the dynamics, e.g. ``f = -J_U``, since autograd does not flow
            through sparse transitions; see :func:`negative_return`).

    Returns:
        :class:`HypergradientResult`.

    Raises:
        ValueError: (or TypeError) for a non-MDP, ``x`` not 1-D, ``tau <= 0``, unknown options,
            ``reward_fn(x)`` not of shape ``[S, A]``, ``upper_fn`` not returning a scalar, or a
            ``reward_fn`` whose autograd derivative disagrees with finite differences.
    """
    mdp = check_mdp(mdp)
    x = _check_x(x)
    tau = check_tau(tau)
    form = check_choice(form, "form", _FORMS)
    method = resolve_linear_solver(
        mdp, _LINEAR_SOLVERS[check_choice(linear_solver, "linear_solver", _LINEAR_SOLVERS)]
    )
    forward = check_choice(forward, "forward", _FORWARDS)
    tol = check_real(tol, "tol")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    lin_max_iter = 200_000 if max_iter is None else check_positive_int(max_iter, "max_iter")
    timings: dict[str, float] = {}
    trans, gamma = mdp.transitions, mdp.gamma

    # (1) forward solve of the lower level
    t0 = time.perf_counter()
    x_ = x.clone().requires_grad_(form == "H2")  # (H2) keeps the graph of r_x for its one VJP
    with torch.enable_grad() if form == "H2" else torch.no_grad():
        r_graph = _call_reward(reward_fn, x_, mdp)
    r = r_graph.detach()
    sol, fwd_residual, fwd_tol = _forward(mdp, r, tau, forward, V0, tol, max_iter, method)
    V, Q, pi = sol.V.detach(), sol.Q.detach(), sol.pi.detach()
    timings["forward"] = time.perf_counter() - t0

    # (2) first derivatives of f only
    t0 = time.perf_counter()
    if upper_value_and_grad is None:
        phi, df_dx, df_dpi = upper_gradients(upper_fn, x, pi)
    else:
        phi, df_dx, df_dpi = _call_upper_value_and_grad(upper_value_and_grad, x, pi)
    timings["upper"] = time.perf_counter() - t0

    # G(s, a) = pi(a|s) df/dpi(a|s), with df/dpi centred per state under pi. Exact: G is only ever
    # contracted with quantities of zero mean under pi(.|s) (grad_x Q* - grad_x V*), so a per-state
    # constant in df/dpi contributes nothing -- but in floating point it would be a large term
    # (e.g. Q_U(s, a) d(s) ~ 1 / (1 - gamma)^2 for f = -J_U) that cancels only after amplification
    # by 1/tau and by (I - gamma P_pi)^{-1}. Centring makes every row of G sum to zero, so b sums
    # to zero and the 1 / (1 - gamma) mode of the solve is never excited.
    G = pi * (df_dpi - (pi * df_dpi).sum(dim=1, keepdim=True))
    P_pi = kernels.policy_kernel(trans, pi)
    info: dict = {}
    if form == "H1":
        t0 = time.perf_counter()
        dr_dx = reward_jacobian(reward_fn, x)
        if check_reward:
            _check_jacobian(reward_fn, x, r, dr_dx, seed=0)
        timings["jacobian"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        Phi = kernels.policy_reward(pi, dr_dx)  # Phi_x(s) = sum_a pi(a|s) grad_x r(s, a), [S, n]
        lin = kernels.solve_policy_system(
            P_pi, gamma, Phi, method=method, **_linear_kwargs(method, tol, lin_max_iter)
        )
        dV_dx = lin.x  # (I - gamma P_pi)^{-1} Phi, [S, n]
        dQ_dx = dr_dx + gamma * trans.expect(dV_dx)  # [S, A, n]
        # sum_a G(s, a) (dQ - dV)(s, a) = sum_a G(s, a) (dr + gamma P (dV - m))(s, a) for any
        # per-column constant m, because the rows of G and of P sum to 0 and 1: removing the
        # (large, ~ 1 / (1 - gamma)) common mode of dV before the contraction avoids cancellation.
        dV_c = dV_dx - dV_dx.mean(dim=0, keepdim=True)
        dQ_c = dr_dx + gamma * trans.expect(dV_c)
        grad = df_dx + torch.einsum("sa,san->n", G, dQ_c) / tau
        lin_res = kernels.policy_system_residual(P_pi, gamma, dV_dx, Phi)
        info.update(dV_dx=dV_dx, dQ_dx=dQ_dx, linear_iterations=lin.iterations)
        timings["linear"] = time.perf_counter() - t0
        result = HypergradientResult(grad, phi, V, Q, pi, dr_dx, info)
    else:
        t0 = time.perf_counter()
        b = kernels.adjoint_rhs(trans, gamma, G)
        lin = kernels.solve_policy_system(
            P_pi,
            gamma,
            b,
            transpose=True,
            method=method,
            **_linear_kwargs(method, tol, lin_max_iter),
        )
        w = lin.x
        lin_res = kernels.policy_system_residual(P_pi, gamma, w, b, transpose=True)
        timings["linear"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # grad phi = grad_x f + (1/tau) J_r^T c,  c = G - pi w: one vector-Jacobian product
        c = G - pi * w.unsqueeze(1)
        g = _vjp(r_graph, x_, c)
        if check_reward:
            _check_vjp(reward_fn, x, r, c, g, seed=0)
        grad = df_dx + g / tau
        timings["vjp"] = time.perf_counter() - t0
        info.update(w=w, b=b, linear_iterations=lin.iterations)
        result = HypergradientResult(
            grad, phi, V, Q, pi, info=info, jacobian=lambda: reward_jacobian(reward_fn, x)
        )

    info.update(
        form=form,
        linear_solver=method,
        forward=forward,
        forward_iterations=sol.n_iter,
        forward_residual=fwd_residual,
        forward_tol=fwd_tol,
        forward_converged=sol.converged,
        linear_residual=lin_res,
        direct_grad_norm=float(df_dx.norm()),
        timings=timings,
    )
    return result


def return_hypergradient(
    mdp: TabularMDP,
    reward_fn: RewardFn,
    r_U: ArrayLike,
    x: ArrayLike,
    tau: float,
    *,
    use_advantage: bool = True,
    forward: str = "policy_iteration",
    V0: ArrayLike | None = None,
    tol: float = 1e-12,
) -> HypergradientResult:
    """(H1) in the special case ``f(x, pi) = -J_U(pi)``: the policy-gradient (visitation) form.

    With ``J_U(pi) = rho^T V_U^pi`` the return of the upper-level reward ``r_U`` (unregularized),
    the policy-gradient theorem gives ``df/dpi(a|s) = -d(s) Q_U(s, a)`` with
    ``d = (I - gamma P_pi^T)^{-1} rho`` the unnormalized discounted visitation, so (chapter 3,
    equation (eq-visitation-form))

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
    trans, gamma = mdp.transitions, mdp.gamma
    dr_dx = reward_jacobian(reward_fn, x)
    dV_dx = kernels.evaluate(trans, gamma, pi, kernels.policy_reward(pi, dr_dx))  # (eq-dV)
    dQ_dx = dr_dx + gamma * trans.expect(dV_dx)
    V_U = kernels.evaluate(trans, gamma, pi, kernels.policy_reward(pi, r_U))
    Q_U = r_U + gamma * trans.expect(V_U)
    weight = Q_U - V_U.unsqueeze(1) if use_advantage else Q_U
    d = kernels.visitation(trans, gamma, pi, mdp.rho)
    # dQ - dV = dr + gamma P dV_c - dV_c - (1 - gamma) m with dV = dV_c + m (m the column means):
    # the same quantity without subtracting two numbers of size ~ 1 / (1 - gamma).
    m = dV_dx.mean(dim=0, keepdim=True)
    dV_c = dV_dx - m
    bracket = dr_dx + gamma * trans.expect(dV_c) - dV_c.unsqueeze(1) - (1.0 - gamma) * m
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
    x: ArrayLike,
    tau: float,
    *,
    forward: str = "policy_iteration",
    V0: ArrayLike | None = None,
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
