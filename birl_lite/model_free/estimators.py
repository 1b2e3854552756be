"""The sampled hypergradient (chapter 5 of the book, steps 2 and 4).

:func:`sampled_hypergradient` (sample, then :func:`hypergradient_from_batch`) estimates the
gradient of ``phi(x) = f(x, pi*_x)`` with

    f(x, pi) = g(x, pi) - c_U J_U(pi)

(chapter 5, :eq:`eq-mf-objective`; ``g = upper_fn``, a known differentiable function, optional;
``J_U`` the unregularized return of the environment reward, weight ``c_U = return_weight``). It is
the first-order hypergradient (H1) (chapter 3, :eq:`eq-H1`) in its visitation form (chapter 5,
:eq:`eq-mf-h1`) with sampled ingredients (chapter 5, :eq:`eq-mf-estimator`):

    grad phi = grad_x g + (1/tau) sum_{s,a} G(s, a) B(s, a)
               - (c_U / tau) sum_s d(s) sum_a pi(a|s) A_U(s, a) B(s, a),

    B(s, a) = grad_x Q*(s, a) - grad_x V*(s)                 (full estimator)
    B(s, a) = grad_x r_x(s, a) - sum_b pi(b|s) grad_x r_x(s, b)   (truncated: the published code)

with ``G = pi * dg/dpi``. The gradient critic ``Gq ~ grad_x Q*`` and ``Q_U`` come from
:func:`~birl_lite.model_free.critics.fit_critic`. The visitation sum is the sample average over the
sampled steps divided by the number of episodes (chapter 5, :eq:`eq-mf-visits`).

**Centring of the return part** (``centring`` of :func:`hypergradient_from_batch`). The equation
centres ``Q_U`` and ``B`` with ``pi`` at every state (``A_U = Q_U - sum_b pi(b|s) Q_U(s, b)``);
``centring="policy"`` does exactly that, with the critic tables (whose entries are zero at pairs
the batch never visited). The default ``centring="empirical"`` centres both with the *visit
counts* ``n(s, a) / n(s)`` of the batch instead: the return part is then the sample covariance
``(1 / E) sum_s sum_a n(s, a) (Q_U(s, a) - Qbar_n(s)) B(s, a)``, in which unvisited pairs simply do
not appear. Both converge to (H1) as the batch grows (``n(s, a) / n(s) -> pi(a|s)``); they differ
at finite ``N`` (chapter 5 compares them on 20 seeds). With the truncated bracket the same two
options apply to ``grad_x r_x``.

**Unvisited pairs in the ``g`` part.** The part ``(1/tau) sum G B`` of a known ``g(x, pi)`` sums
over *all* pairs; where the batch never visited ``(s, a)`` the full estimator has no critic value
and uses the immediate part ``grad_x r_x(s, a)`` (the truncated bracket) there instead. The number
of such pairs with ``pi >= 1e-3`` is reported in ``info["unvisited"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import torch

from .._validation import (
    DTYPE,
    ArrayLike,
    as_tensor,
    check_choice,
    check_gamma,
    check_real,
    check_tau,
)
from ..first_order import RewardFn, UpperFn, upper_gradients
from ..first_order import reward_jacobian as _autograd_jacobian
from .critics import _CRITICS, Critic, fit_critic
from .sampling import (
    SeedLike,
    Transitions,
    _check_policy,
    _table,
    discrete_spaces,
    sample_transitions,
)

__all__ = ["SampledHypergradient", "hypergradient_from_batch", "sampled_hypergradient"]


_ESTIMATORS = ("full", "truncated")
_CENTRINGS = ("empirical", "policy")


@dataclass
class SampledHypergradient:
    """A sampled estimate of ``grad phi(x)`` (chapter 5, :eq:`eq-mf-estimator`) and its parts.

    Attributes:
        grad: the estimate ``[n]``.
        direct: ``grad_x g`` (the partial derivative with the policy held fixed) ``[n]``.
        policy_term: ``grad - direct``: the part flowing through ``pi*_x`` ``[n]``.
        f: the sampled upper objective ``g(x, pi) - c_U J_U`` (0-dim).
        J_U: the sampled return of the environment reward (0-dim).
        critic: the :class:`~birl_lite.model_free.critics.Critic` (``None`` for the truncated
            estimator without critic needs).
        n_transitions, n_episodes: the sample size.
        info: ``estimator``, ``critic``, ``unvisited`` (pairs with ``pi >= 1e-3`` never sampled).
    """

    grad: torch.Tensor
    direct: torch.Tensor
    policy_term: torch.Tensor
    f: torch.Tensor
    J_U: torch.Tensor
    critic: Critic | None
    n_transitions: int
    n_episodes: int
    info: dict = field(default_factory=dict)


def hypergradient_from_batch(
    batch: Transitions,
    pi: ArrayLike,
    x: ArrayLike,
    tau: float,
    r: ArrayLike,
    dr_dx: ArrayLike,
    *,
    upper_fn: UpperFn | None = None,
    return_weight: float = 1.0,
    critic: str = "td",
    estimator: str = "full",
    terminal: str = "absorbing",
    centring: str = "empirical",
) -> SampledHypergradient:
    """The sampled (H1) from a batch already sampled with ``pi`` (see :func:`sampled_hypergradient`).

    ``r`` is the designed reward ``r_x`` ``[S, A]`` and ``dr_dx`` its Jacobian ``[S, A, n]``.

    ``centring`` (return part, module docstring): ``"empirical"`` (default) centres ``Q_U`` and
    the bracket ``B`` by the batch's visit counts of the actions at each state, i.e.
    ``-(c_U / (tau E)) sum_{s,a} n(s, a) (Q_U(s, a) - Qbar_n(s)) (B(s, a) - Bbar_n(s))`` with
    ``Qbar_n(s) = sum_a n(s, a) Q_U(s, a) / n(s)``; ``"policy"`` centres both with ``pi`` as in
    chapter 5, :eq:`eq-mf-estimator`: ``-(c_U / (tau E)) sum_t (Q_U(s_t, a_t) - V_pi(s_t))
    (B(s_t, a_t) - B_pi(s_t))`` with ``V_pi(s) = sum_b pi(b|s) Q_U(s, b)``, the critic's entries
    at unvisited pairs being zero. In the ``g`` part (``upper_fn``) the full estimator uses the
    immediate bracket ``grad_x r_x`` at pairs the batch never visited (no critic value there).
    """
    S, A = batch.n_states, batch.n_actions
    tau = check_tau(tau)
    x = as_tensor(x, "x").detach()
    pi_np = _check_policy(pi, S, A)
    pi_t = torch.as_tensor(pi_np, dtype=DTYPE)
    dr = as_tensor(dr_dx, "dr_dx").detach()
    c_U = check_real(return_weight, "return_weight")
    check_choice(estimator, "estimator", _ESTIMATORS)
    check_choice(critic, "critic", _CRITICS)
    check_choice(centring, "centring", _CENTRINGS)
    E = batch.n_episodes
    J_U = torch.tensor(float(batch.reward.sum()) / E, dtype=DTYPE)
    needs_critic = estimator == "full" or c_U != 0.0
    crit = (
        fit_critic(batch, pi_np, dr, tau, r, method=critic, terminal=terminal)
        if needs_critic
        else None
    )
    counts = torch.as_tensor(batch.pair_counts(), dtype=DTYPE)
    if estimator == "full":
        B = crit.Gq  # centred below
    else:
        B = dr
    # B(s, a) - grad_x V(s): centred with pi at every state (for the explicit part) ...
    B_pi = B - torch.einsum("sa,san->sn", pi_t, B).unsqueeze(1)

    grad = torch.zeros_like(x)
    direct = torch.zeros_like(x)
    g_val = torch.zeros((), dtype=DTYPE)
    unvisited = int(((counts == 0) & (pi_t >= 1e-3)).sum())
    if upper_fn is not None:
        g_val, dg_dx, dg_dpi = upper_gradients(upper_fn, x, pi_t)
        G = pi_t * (dg_dpi - (pi_t * dg_dpi).sum(dim=1, keepdim=True))
        if estimator == "full":
            Bx = torch.where((counts > 0).unsqueeze(-1), crit.Gq, dr)  # unseen: immediate part only
            Bx = Bx - torch.einsum("sa,san->sn", pi_t, Bx).unsqueeze(1)
        else:
            Bx = B_pi
        direct = dg_dx
        grad = dg_dx + torch.einsum("sa,san->n", G, Bx) / tau
    if c_U != 0.0:
        # ... and for the return part sum_t A_t B_t / E, centred by the visit counts (default)
        # or by pi (the equation), see the module docstring
        if centring == "empirical":
            n_s = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
            A_U = crit.Q_U - (counts * crit.Q_U).sum(dim=1, keepdim=True) / n_s
            Bv = B - torch.einsum("sa,san->sn", counts, B).unsqueeze(1) / n_s.unsqueeze(-1)
        else:
            A_U = crit.Q_U - (pi_t * crit.Q_U).sum(dim=1, keepdim=True)
            Bv = B_pi
        grad = grad - (c_U / tau) * torch.einsum("sa,sa,san->n", counts, A_U, Bv) / E
    f = g_val - c_U * J_U
    info = {
        "estimator": estimator,
        "critic": critic,
        "centring": centring,
        "unvisited": unvisited,
    }
    return SampledHypergradient(
        grad=grad,
        direct=direct,
        policy_term=grad - direct,
        f=f,
        J_U=J_U,
        critic=crit,
        n_transitions=len(batch),
        n_episodes=E,
        info=info,
    )


def sampled_hypergradient(
    env: gym.Env,
    reward_fn: RewardFn,
    x: ArrayLike,
    tau: float,
    gamma: float,
    pi: ArrayLike,
    n_transitions: int,
    *,
    upper_fn: UpperFn | None = None,
    return_weight: float = 1.0,
    critic: str = "td",
    estimator: str = "full",
    terminal: str = "absorbing",
    reward_jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: SeedLike = 0,
    centring: str = "empirical",
) -> SampledHypergradient:
    """The model-free hypergradient of ``phi(x) = f(x, pi*_x)`` from samples of ``env`` (chapter 5).

    ``f(x, pi) = g(x, pi) - c_U J_U(pi)`` with ``g = upper_fn`` (optional, known) and ``J_U`` the
    return of the environment's reward (weight ``c_U = return_weight``; ``0``: not used). With
    ``pi = pi*_x`` the estimate converges to (H1) as ``n_transitions`` grows, with error
    ``O(1 / sqrt(n_transitions))`` (full estimator); the truncated estimator keeps only the
    immediate-reward part of ``grad_x Q* - grad_x V*`` and is biased.

    Steps: (1) sample ``n_transitions`` steps of ``pi`` with geometric restarts
    (:func:`~birl_lite.model_free.sampling.sample_transitions`); (2) fit ``Q_U`` and the gradient
    critic (:func:`~birl_lite.model_free.critics.fit_critic`);
    (3) ``grad = grad_x g + (1/tau) sum G B - (c_U / tau) (1/E) sum_t A_U(s_t,a_t) B(s_t,a_t)``
    over the ``E`` episodes (module docstring).

    Args:
        env: gymnasium env with Discrete spaces; its reward is ``r_U``.
        reward_fn: ``x [n] -> r_x [S, A]`` (the designed reward, computed by the algorithm).
        x: upper-level variable ``[n]``; tau: temperature; gamma: discount.
        pi: the lower-level policy ``[S, A]`` the samples are drawn with (``pi*_x`` or the
            algorithm's approximation of it).
        n_transitions: sample size (at least; the last episode is completed).
        upper_fn: ``(x, pi) -> g`` or ``None``; return_weight: ``c_U``.
        critic: ``"mc"`` or ``"td"``; estimator: ``"full"`` or ``"truncated"``.
        terminal: ``"absorbing"`` or ``"zero"``.
        reward_jacobian: analytic ``x -> dr_dx [S, A, n]``; autograd when ``None``.
        seed: seed of the sampling (same seed, same estimate).
        centring: ``"empirical"`` or ``"policy"`` (see :func:`hypergradient_from_batch`).

    Returns:
        :class:`SampledHypergradient`.
    """
    S, A = discrete_spaces(env)
    tau, gamma = check_tau(tau), check_gamma(gamma)
    x = as_tensor(x, "x").detach()
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty 1-D tensor [n], got shape {tuple(x.shape)}")
    with torch.no_grad():
        r = _table(reward_fn(x), S, A, "reward_fn(x)")
    dr = reward_jacobian(x) if reward_jacobian is not None else _autograd_jacobian(reward_fn, x)
    batch = sample_transitions(env, pi, n_transitions, gamma, seed=seed)
    return hypergradient_from_batch(
        batch,
        pi,
        x,
        tau,
        r,
        dr,
        upper_fn=upper_fn,
        return_weight=return_weight,
        critic=critic,
        estimator=estimator,
        terminal=terminal,
        centring=centring,
    )
