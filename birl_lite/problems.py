"""Bilevel RL problems: ``min_x phi(x) = f(x, pi*_x)`` with ``pi*_x`` the soft-optimal policy of ``r_x``.

Math: chapter 2 of the book, equations (eq-ch2-lower) and (eq-ch2-bilevel).

A :class:`BilevelProblem` bundles the lower-level dynamics (a :class:`~birl_lite.mdp.TabularMDP`),
the parameterized reward ``reward_fn(x) -> r_x [S, A]``, the upper-level objective
``upper_fn(x, pi) -> f`` (a scalar), a starting point ``x0`` and the temperature ``tau``. Two
optional analytic derivatives make the algorithms of chapter 4 fast (they are checked against
autograd by :meth:`BilevelProblem.check`):

* ``reward_jacobian(x) -> dr_dx [S, A, n]``, ``dr_dx[s, a, i] = d r_x(s, a) / d x_i``;
* ``upper_value_and_grad(x, pi) -> (f, df_dx [n], df_dpi [S, A])``.

Without them, autograd computes both (first derivatives only, never a Hessian).

Builders:

* :func:`synthetic_problem`: the synthetic problem of [YGY] (``S = 10``, ``A = 5``, ``x in R^100``,
  ``gamma = 0.5``), ``r_x(s, a) = c[s, a] x^T M x``, ``f = ||x||^2 / 2 + sum pi^2 / 2``; global
  optimum ``phi* = 1`` at ``x = 0``. Every random quantity (the instance *and* ``x0``) is drawn from
  ``seed``, so two calls with the same seed give the same problem.
* :func:`inverse_rl_problem`: maximum-likelihood inverse RL on a random MDP: state rewards
  ``r_x(s, a) = r0[s, a] + F[s] . x``, ``f`` = the expected negative log-likelihood of expert
  state-action pairs; global optimum ``phi* = n_demos sum_s dbar_E(s) H(pi_E(.|s))`` at the hidden
  expert weights. The policy sees ``x`` only through the values of future states, so an update
  that ignores the lower level (or keeps only the immediate-reward part of the hypergradient)
  cannot move (chapter 4).
* :func:`reward_design_problem`: reward shaping on a grid map, ``r_x = r_env + features @ x``,
  ``f = -J_designer(pi*_x) + ridge / 2 ||x||^2`` with ``J_designer`` the unregularized return of the
  task's own reward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ._validation import (
    DTYPE,
    ArrayLike,
    as_tensor,
    check_finite,
    check_positive_int,
    check_real,
    check_tau,
)
from .first_order import RewardFn, UpperFn, negative_return
from .mdp import TabularMDP, TabularTask, check_mdp, four_rooms, random_mdp
from .soft import SoftVIResult, soft_policy_iteration, state_visitation

__all__ = [
    "BilevelProblem",
    "synthetic_problem",
    "inverse_rl_problem",
    "reward_design_problem",
    "shaping_features",
]


@dataclass(frozen=True)
class BilevelProblem:
    """A bilevel RL problem ``min_x f(x, pi*_x)`` (chapter 2, equation (eq-ch2-bilevel)).

    Attributes:
        mdp: the lower-level dynamics ``(P, gamma, rho)``.
        reward_fn: ``x [n] -> r_x [S, A]``, a differentiable torch function.
        upper_fn: ``(x [n], pi [S, A]) -> f``, a 0-dim differentiable torch tensor.
        x0: the starting point of the upper level, ``[n]`` (float64).
        tau: temperature of the lower level (``> 0``).
        reward_jacobian: optional analytic ``x -> dr_dx [S, A, n]``.
        upper_value_and_grad: optional analytic ``(x, pi) -> (f, df_dx [n], df_dpi [S, A])``.
        name: a short description.
        info: the instance data (tensors such as ``c`` and ``M`` for the synthetic problem).
    """

    mdp: TabularMDP
    reward_fn: RewardFn
    upper_fn: UpperFn
    x0: torch.Tensor
    tau: float
    reward_jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None
    upper_value_and_grad: (
        Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
        | None
    ) = None
    name: str = "bilevel problem"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_mdp(self.mdp)
        if not callable(self.reward_fn):
            raise TypeError("reward_fn must be callable: x [n] -> r [S, A]")
        if not callable(self.upper_fn):
            raise TypeError("upper_fn must be callable: (x [n], pi [S, A]) -> scalar")
        for name in ("reward_jacobian", "upper_value_and_grad"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None")
        x0 = as_tensor(self.x0, "x0").detach().clone()
        if x0.ndim != 1 or x0.numel() == 0:
            raise ValueError(f"x0 must be a non-empty 1-D tensor [n], got shape {tuple(x0.shape)}")
        check_finite(x0, "x0")
        object.__setattr__(self, "x0", x0)
        object.__setattr__(self, "tau", check_tau(self.tau))

    @property
    def dim(self) -> int:
        """``n``, the dimension of the upper-level variable ``x``."""
        return self.x0.numel()

    def reward(self, x: ArrayLike) -> torch.Tensor:
        """``r_x [S, A]``, checked for shape and finiteness."""
        x = self._x(x)
        r = self.reward_fn(x)
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"reward_fn must return a torch.Tensor, got {type(r).__name__}")
        S, A = self.mdp.n_states, self.mdp.n_actions
        if tuple(r.shape) != (S, A):
            raise ValueError(
                f"reward_fn must return shape [S, A] = [{S}, {A}], got {tuple(r.shape)}"
            )
        check_finite(r.detach(), "reward_fn(x)")
        return r

    def dr_dx(self, x: ArrayLike) -> torch.Tensor:
        """``dr_dx [S, A, n]``: the analytic Jacobian if given, else autograd (``torch.func.jacrev``)."""
        x = self._x(x).detach()
        if self.reward_jacobian is not None:
            return self.reward_jacobian(x)
        return torch.func.jacrev(self.reward_fn)(x)

    def upper(self, x: ArrayLike, pi: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f, df_dx [n], df_dpi [S, A])`` at ``(x, pi)``: analytic if given, else autograd.

        An ``upper_fn`` that does not use ``x`` directly has ``df_dx = 0``.
        """
        x = self._x(x).detach()
        pi = as_tensor(pi, "pi").detach()
        if self.upper_value_and_grad is not None:
            return self.upper_value_and_grad(x, pi)
        return _autograd_upper(self.upper_fn, x, pi)

    def lower(
        self, x: ArrayLike, V0: ArrayLike | None = None, *, tol: float = 1e-12
    ) -> SoftVIResult:
        """The lower-level solution at ``x``: soft policy iteration (Newton) to ``tol``.

        Returns the :class:`~birl_lite.soft.SoftVIResult` (``V``, ``Q``, ``pi``).
        """
        r = self.reward(x).detach()
        return soft_policy_iteration(self.mdp, r, self.tau, V0, tol=tol)

    def phi(self, x: ArrayLike, *, tol: float = 1e-12) -> float:
        """The hyperobjective ``phi(x) = f(x, pi*_x)`` as a float.

        Chapter 2, equation (eq-ch2-bilevel).
        """
        x = self._x(x).detach()
        pi = self.lower(x, tol=tol).pi
        return float(_scalar(self.upper_fn(x, pi), "upper_fn(x, pi)"))

    def check(self, x: ArrayLike | None = None, *, rtol: float = 1e-8) -> None:
        """Validate the problem at ``x`` (``x0`` by default), raising a clear error if anything is off.

        Checks the shapes and finiteness of ``reward_fn`` and ``upper_fn`` and compares the optional
        analytic derivatives with autograd (relative error ``<= rtol``).
        """
        x = self.x0 if x is None else self._x(x).detach()
        r = self.reward(x).detach()
        S, A, n = self.mdp.n_states, self.mdp.n_actions, self.dim
        pi = torch.softmax(r / self.tau, dim=-1)
        f_auto, gx_auto, gpi_auto = _autograd_upper(self.upper_fn, x, pi)
        if self.reward_jacobian is not None:
            J = self.reward_jacobian(x)
            if not isinstance(J, torch.Tensor) or tuple(J.shape) != (S, A, n):
                got = tuple(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__
                raise ValueError(
                    f"reward_jacobian must return shape [S, A, n] = [{S}, {A}, {n}], got {got}"
                )
            J_auto = torch.func.jacrev(self.reward_fn)(x)
            _close(J, J_auto, rtol, "reward_jacobian(x)", "autograd of reward_fn")
        if self.upper_value_and_grad is not None:
            out = self.upper_value_and_grad(x, pi)
            if not isinstance(out, tuple) or len(out) != 3:
                raise TypeError("upper_value_and_grad must return a tuple (f, df_dx, df_dpi)")
            f, gx, gpi = out
            if tuple(gx.shape) != (n,) or tuple(gpi.shape) != (S, A):
                raise ValueError(
                    f"upper_value_and_grad must return df_dx [{n}] and df_dpi [{S}, {A}], "
                    f"got {tuple(gx.shape)} and {tuple(gpi.shape)}"
                )
            _close(torch.as_tensor(f), f_auto, rtol, "upper_value_and_grad f", "upper_fn")
            _close(gx, gx_auto, rtol, "upper_value_and_grad df_dx", "autograd of upper_fn")
            _close(gpi, gpi_auto, rtol, "upper_value_and_grad df_dpi", "autograd of upper_fn")

    def _x(self, x) -> torch.Tensor:
        x = as_tensor(x, "x")
        if tuple(x.shape) != (self.dim,):
            raise ValueError(f"x must have shape [n] = [{self.dim}], got {tuple(x.shape)}")
        return x


def _scalar(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must return a torch.Tensor scalar, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"{what} must return a scalar, got shape {tuple(value.shape)}")
    return value.reshape(())


def _autograd_upper(upper_fn: UpperFn, x: torch.Tensor, pi: torch.Tensor):
    """``(f, df_dx, df_dpi)`` of ``upper_fn`` by one backward pass (zeros for unused inputs)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        pig = pi.detach().clone().requires_grad_(True)
        f = _scalar(upper_fn(xg, pig), "upper_fn(x, pi)")
        if not f.requires_grad:
            return f.detach(), torch.zeros_like(x), torch.zeros_like(pi)
        gx, gpi = torch.autograd.grad(f, (xg, pig), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gpi = torch.zeros_like(pi) if gpi is None else gpi
    return f.detach(), gx, gpi


def _close(a, b, rtol: float, name: str, ref: str) -> None:
    a = torch.as_tensor(a, dtype=DTYPE).detach()
    b = torch.as_tensor(b, dtype=DTYPE).detach()
    err = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(1.0, float(b.abs().max()) if b.numel() else 0.0)
    if not err <= rtol * scale:
        raise ValueError(f"{name} disagrees with {ref}: max difference {err:.3g} (rtol {rtol:g})")


# --------------------------------------------------------------------------------------------
# The synthetic problem of [YGY]
# --------------------------------------------------------------------------------------------


def synthetic_problem(
    seed: int = 0,
    *,
    n_states: int = 10,
    n_actions: int = 5,
    dim: int = 100,
    gamma: float = 0.5,
    tau: float = 1.0,
    support: tuple[int, int] | None = None,
) -> BilevelProblem:
    """The synthetic bilevel problem of [YGY] (chapter 2, equation (eq-ch2-synthetic)).

    Lower level: each ``(s, a)`` moves to a random set of ``1..S-1`` next states (``support``) with
    random normalized weights, discount ``gamma``; reward ``r_x(s, a) = c[s, a] * x^T M x`` with
    ``c[s, a] = U[s, a] * U[s]`` (``U`` uniform on ``[0, 1]``) and ``M`` standard normal ``[n, n]``.
    Upper level: ``f(x, pi) = ||x||^2 / 2 + sum_{s, a} pi(a|s)^2 / 2``. Since
    ``sum_a pi(a|s)^2 >= 1 / A``, ``phi(x) >= ||x||^2 / 2 + S / (2 A)``: the global optimum is
    ``phi* = S / (2 A)`` (``= 1`` for the paper's sizes) at ``x = 0``, where ``r_0 = 0`` and the
    policy is uniform.

    Reproducible by construction (unlike the published code, which draws the instance before
    setting the seed): ``P`` comes from ``random_mdp(S, A, seed, support=...)`` and
    ``(U[s, a], U[s], M, x0)``, in this order, from ``numpy.random.default_rng([seed, 1])``;
    ``x0 ~ N(0, I_n)`` as in the paper's code.

    Args:
        seed: the seed of the instance and of ``x0``.
        n_states, n_actions, dim: ``S``, ``A`` and ``n`` (paper: 10, 5, 100).
        gamma: discount factor (paper: 0.5).
        tau: temperature (the paper's code always uses 1).
        support: ``(lo, hi)`` range of the number of next states; ``(1, S - 1)`` by default.

    Returns:
        A :class:`BilevelProblem` with analytic ``reward_jacobian``
        (``dr_dx[s, a] = c[s, a] (M + M^T) x``) and ``upper_value_and_grad``
        (``df_dx = x``, ``df_dpi = pi``); ``info`` holds ``c``, ``M`` and ``phi_star``.
    """
    S = check_positive_int(n_states, "n_states", 2)
    A = check_positive_int(n_actions, "n_actions")
    n = check_positive_int(dim, "dim")
    seed = check_positive_int(seed, "seed", 0)
    tau = check_tau(tau)
    mdp = random_mdp(S, A, seed, gamma=gamma, support=(1, S - 1) if support is None else support)
    rng = np.random.default_rng([seed, 1])
    U_sa = rng.uniform(0.0, 1.0, size=(S, A))
    U_s = rng.uniform(0.0, 1.0, size=(S, 1))
    M_np = rng.standard_normal(size=(n, n))
    x0 = torch.as_tensor(rng.standard_normal(size=n), dtype=DTYPE)
    c = torch.as_tensor(U_sa * U_s, dtype=DTYPE)
    M = torch.as_tensor(M_np, dtype=DTYPE)
    Msym = M + M.T  # gradient of x^T M x is (M + M^T) x
    c3 = c.unsqueeze(-1)

    def reward_fn(x: torch.Tensor) -> torch.Tensor:
        return c * torch.dot(x, torch.mv(M, x))

    def reward_jacobian(x: torch.Tensor) -> torch.Tensor:
        return c3 * torch.mv(Msym, x)

    def upper_fn(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.dot(x, x) + 0.5 * (pi * pi).sum()

    def upper_value_and_grad(x: torch.Tensor, pi: torch.Tensor):
        return 0.5 * (torch.dot(x, x) + (pi * pi).sum()), x, pi

    return BilevelProblem(
        mdp=mdp,
        reward_fn=reward_fn,
        upper_fn=upper_fn,
        x0=x0,
        tau=tau,
        reward_jacobian=reward_jacobian,
        upper_value_and_grad=upper_value_and_grad,
        name=f"synthetic (seed {seed})",
        info={"c": c, "M": M, "phi_star": 0.5 * S / A, "x_star": torch.zeros(n, dtype=DTYPE)},
    )


# --------------------------------------------------------------------------------------------
# Maximum-likelihood inverse RL with state rewards
# --------------------------------------------------------------------------------------------


def inverse_rl_problem(
    seed: int = 0,
    *,
    n_states: int = 10,
    n_actions: int = 5,
    dim: int = 3,
    gamma: float = 0.5,
    tau: float = 1.0,
    n_demos: float = 100.0,
    expert_scale: float = 3.0,
    support: int | tuple[int, int] | None = None,
) -> BilevelProblem:
    """Maximum-likelihood inverse RL on a random MDP (chapter 4, section "a problem where the lower level matters").

    An expert acts soft-optimally (temperature ``tau``) for the reward ``r_{x_E}``; the learner
    knows the dynamics, the base reward ``r0`` and the state features ``F``, and looks for the
    weights ``x`` whose soft-optimal policy best explains ``n_demos`` expert state-action pairs
    drawn from the expert's normalized discounted visitation ``dbar_E`` (the book's d-bar_E):

        r_x(s, a) = r0[s, a] + F[s] . x        (the weights act on states, not on actions)
        f(x, pi)  = -n_demos sum_{s, a} dbar_E(s) pi_E(a|s) log pi(a|s)     (expected negative log-likelihood)

    ``phi(x) - phi* = n_demos sum_s dbar_E(s) KL(pi_E(.|s) || pi*_x(.|s)) >= 0`` with
    ``phi* = n_demos sum_s dbar_E(s) H(pi_E(.|s))``, attained at ``x = x_E``: the global optimum is
    known exactly. ``f`` does not depend on ``x`` directly (``df_dx = 0``), and since
    ``grad_x r_x(s, a)`` is the same for every action, the immediate-reward part
    ``grad_x r - sum_a pi grad_x r`` of the bracket of (H1) vanishes: ``pi*_x`` depends on ``x``
    only through the values of future states, ``gamma P grad_x V*``. An update that ignores the
    lower level, or keeps only that immediate part (exercise 3.3's truncated bracket), is
    identically zero here.

    Reproducible from ``seed``: ``P`` from ``random_mdp(S, A, seed, gamma=gamma, support=support)``, then
    ``(r0, F, x_E, x0)`` in this order from ``numpy.random.default_rng([seed, 2])``: ``r0`` and
    ``F`` standard normal, ``x_E ~ N(0, expert_scale^2 I)``, ``x0 ~ N(0, I)``.

    Args:
        seed: the seed of the instance and of ``x0``.
        n_states, n_actions, dim: ``S``, ``A`` and ``n`` (the number of reward weights).
        gamma: discount factor.
        tau: temperature of the expert and of the learner.
        n_demos: number of expert state-action pairs (scales ``f``; ``> 0``).
        expert_scale: standard deviation of the expert's weights ``x_E``.
        support: number of next states of each ``(s, a)``, as in :func:`~birl_lite.mdp.random_mdp`
            (``None``: every state; an int ``k``: ``k`` random next states).

    Returns:
        A :class:`BilevelProblem` with analytic ``reward_jacobian`` (``F`` broadcast over actions)
        and ``upper_value_and_grad`` (``df_dx = 0``, ``df_dpi = -n_demos dbar_E pi_E / pi``);
        ``info`` holds ``r0``, ``F``, ``x_star`` (``= x_E``), ``pi_E``, ``dbar_E`` and ``phi_star``.
    """
    S = check_positive_int(n_states, "n_states", 2)
    A = check_positive_int(n_actions, "n_actions", 2)
    n = check_positive_int(dim, "dim")
    seed = check_positive_int(seed, "seed", 0)
    tau = check_tau(tau)
    n_demos = check_real(n_demos, "n_demos")
    expert_scale = check_real(expert_scale, "expert_scale")
    if not (n_demos > 0 and np.isfinite(n_demos)):
        raise ValueError(f"n_demos must be a finite number > 0, got {n_demos}")
    if not (expert_scale >= 0 and np.isfinite(expert_scale)):
        raise ValueError(f"expert_scale must be a finite number >= 0, got {expert_scale}")
    mdp = random_mdp(S, A, seed, gamma=gamma, support=support)
    rng = np.random.default_rng([seed, 2])
    r0 = torch.as_tensor(rng.standard_normal(size=(S, A)), dtype=DTYPE)
    F = torch.as_tensor(rng.standard_normal(size=(S, n)), dtype=DTYPE)
    x_E = torch.as_tensor(expert_scale * rng.standard_normal(size=n), dtype=DTYPE)
    x0 = torch.as_tensor(rng.standard_normal(size=n), dtype=DTYPE)
    jac = F.unsqueeze(1).expand(S, A, n).contiguous()  # dr_dx[s, a] = F[s] for every a

    def reward_fn(x: torch.Tensor) -> torch.Tensor:
        return r0 + torch.mv(F, x).unsqueeze(1)

    def reward_jacobian(x: torch.Tensor) -> torch.Tensor:
        return jac

    pi_E = soft_policy_iteration(mdp, reward_fn(x_E), tau, tol=1e-13).pi
    dbar_E = state_visitation(mdp, pi_E)
    dbar_E = dbar_E / dbar_E.sum()
    W = n_demos * dbar_E.unsqueeze(1) * pi_E  # weight of log pi(a|s) in -f
    phi_star = float(-(W * torch.log(pi_E)).sum())

    def upper_fn(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return -(W * torch.log(pi)).sum()

    def upper_value_and_grad(x: torch.Tensor, pi: torch.Tensor):
        return -(W * torch.log(pi)).sum(), torch.zeros_like(x), -W / pi

    return BilevelProblem(
        mdp=mdp,
        reward_fn=reward_fn,
        upper_fn=upper_fn,
        x0=x0,
        tau=tau,
        reward_jacobian=reward_jacobian,
        upper_value_and_grad=upper_value_and_grad,
        name=f"maximum-likelihood inverse RL (seed {seed})",
        info={
            "r0": r0,
            "F": F,
            "x_star": x_E,
            "pi_E": pi_E,
            "dbar_E": dbar_E,
            "phi_star": phi_star,
            "n_demos": n_demos,
        },
    )


# --------------------------------------------------------------------------------------------
# Reward design on a grid map
# --------------------------------------------------------------------------------------------


def shaping_features(task: TabularTask, kind: str = "state") -> torch.Tensor:
    """Shaping features ``[S, A, n]`` for :func:`reward_design_problem`.

    Args:
        task: the map.
        kind: ``"state"``: one bonus per non-terminal state, ``features[s, a, i] = 1{s = s_i}``
            (``n`` = number of non-terminal states); ``"potential"``: potential-based shaping
            ``features[s, a, i] = gamma P(s_i | s, a) - 1{s = s_i}`` over all states, which
            leaves the soft-optimal policy unchanged (so the designer cannot gain anything).

    Returns:
        ``features`` of shape ``[S, A, n]`` (float64).
    """
    if not isinstance(task, TabularTask):
        raise TypeError(f"task must be a TabularTask, got {type(task).__name__}")
    mdp = task.mdp
    S, A = mdp.n_states, mdp.n_actions
    eye = torch.eye(S, dtype=DTYPE)
    if kind == "state":
        free = (
            torch.ones(S, dtype=torch.bool)
            if task.terminal is None
            else ~task.terminal.to(torch.bool)
        )
        return eye[:, free].unsqueeze(1).expand(S, A, int(free.sum())).clone()
    if kind == "potential":
        return mdp.gamma * mdp.P - eye.unsqueeze(1)
    raise ValueError(f"kind must be 'state' or 'potential', got {kind!r}")


def reward_design_problem(
    task: TabularTask | None = None,
    *,
    features: str | torch.Tensor = "state",
    ridge: float = 1e-3,
    tau: float = 0.1,
    x0: ArrayLike | None = None,
) -> BilevelProblem:
    """Reward design (shaping) on a grid map (chapter 2, equation (eq-ch2-design)).

    The designer chooses shaping weights ``x``; the agent solves the soft MDP with
    ``r_x = r_env + features @ x``; the designer scores the agent's policy with the *true* task
    reward, without entropy:

        f(x, pi) = -J_designer(pi) + ridge / 2 ||x||^2,     J_designer(pi) = rho^T (I - gamma P_pi)^{-1} r_pi.

    Args:
        task: the map with its reward (:func:`~birl_lite.mdp.four_rooms` by default).
        features: ``"state"`` or ``"potential"`` (see :func:`shaping_features`) or a tensor
            ``[S, A, n]``.
        ridge: weight of the ridge penalty on ``x`` (``>= 0``; the book's eta).
        tau: temperature of the agent.
        x0: starting shaping weights ``[n]``; zeros (no shaping) by default.

    Returns:
        A :class:`BilevelProblem` with analytic derivatives: ``dr_dx = features`` and, by the
        policy-gradient identity, ``dJ/dpi(a|s) = d(s) Q^pi(s, a)`` with ``d`` the unnormalized
        discounted visitation (chapter 3, equation (eq-pg)); ``info`` holds ``task``,
        ``features``, ``ridge`` and, for ``"state"`` features, ``states`` (the state of each
        component of ``x``).
    """
    task = four_rooms() if task is None else task
    if not isinstance(task, TabularTask):
        raise TypeError(f"task must be a TabularTask, got {type(task).__name__}")
    mdp, r_env = task.mdp, task.r
    S, A = mdp.n_states, mdp.n_actions
    if isinstance(features, str):
        feats = shaping_features(task, features)
        kind = features
        states = (
            torch.nonzero(feats[:, 0, :].sum(-1) > 0).flatten() if features == "state" else None
        )
    else:
        feats = as_tensor(features, "features").detach().clone()
        kind = "custom"
        states = None
        if feats.ndim != 3 or tuple(feats.shape[:2]) != (S, A):
            raise ValueError(
                f"features must have shape [S, A, n] = [{S}, {A}, n], got {tuple(feats.shape)}"
            )
        check_finite(feats, "features")
    n = feats.shape[-1]
    ridge = check_real(ridge, "ridge")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x0 = torch.zeros(n, dtype=DTYPE) if x0 is None else as_tensor(x0, "x0")
    if tuple(x0.shape) != (n,):
        raise ValueError(f"x0 must have shape [n] = [{n}], got {tuple(x0.shape)}")
    F2 = feats.reshape(S * A, n)

    def reward_fn(x: torch.Tensor) -> torch.Tensor:
        return r_env + (F2 @ x).view(S, A)

    def reward_jacobian(x: torch.Tensor) -> torch.Tensor:
        return feats

    # f(x, pi) = -J_env(pi) + (ridge / 2) ||x||^2, with its partials in closed form
    upper_fn, upper_value_and_grad = negative_return(mdp, r_env, ridge=ridge)

    return BilevelProblem(
        mdp=mdp,
        reward_fn=reward_fn,
        upper_fn=upper_fn,
        x0=x0,
        tau=tau,
        reward_jacobian=reward_jacobian,
        upper_value_and_grad=upper_value_and_grad,
        name=f"reward design on {task.name} ({kind} features)",
        info={"task": task, "features": feats, "ridge": ridge, "kind": kind, "states": states},
    )
