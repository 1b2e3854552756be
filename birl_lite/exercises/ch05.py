"""Checkers for the coding exercises of chapter 5 (Monte Carlo returns with geometric restarts,
the term the truncated estimator drops, the sampled hypergradient from its critics)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..envs import TabularEnv
from ..first_order import return_hypergradient
from ..mdp import random_mdp, random_reward
from ..model_free import Transitions, fit_critic, hypergradient_from_batch, mc_returns
from ..model_free import sample_transitions as _sample
from ._common import Case, run_cases

__all__ = ["check_mc_returns", "check_sampled_hypergradient", "check_truncation_gap"]


def _case(k: int, seed: int):
    """A random batch: rewards ``c [N, m]`` and episode ends (the last step always ends one)."""
    rng = np.random.default_rng([seed, k])
    N = int(rng.integers(1, 40))
    m = int(rng.integers(1, 4))
    c = rng.standard_normal((N, m))
    end = rng.random(N) < 0.3
    end[-1] = True
    zeros = np.zeros(N, dtype=np.int64)
    batch = Transitions(
        s=zeros,
        a=zeros,
        s_next=zeros,
        a_next=zeros,
        reward=c[:, 0].copy(),
        terminated=np.zeros(N, dtype=bool),
        truncated=np.zeros(N, dtype=bool),
        end=end,
        n_states=1,
        n_actions=1,
        gamma=0.9,
    )
    return c, end, batch


def check_mc_returns(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-10) -> bool:
    """Check a reader's Monte Carlo returns against :func:`birl_lite.model_free.critics.mc_returns`.

    The reader's function is called as ``fn(c, end)`` with ``c`` a float array ``[N, m]`` (one
    reward vector per step) and ``end`` a bool array ``[N]`` (``end[t]``: the episode ends after
    step ``t``; ``end[-1]`` is always true). It must return ``G [N, m]`` with
    ``G[t] = sum_{k = t}^{e(t)} c[k]``, ``e(t)`` the last step of the episode of ``t``.

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """
    cases = (
        Case(label=f"N={len(end)}", args=(c, end), expected=mc_returns(batch, c))
        for c, end, batch in (_case(k, seed) for k in range(n_cases))
    )
    return run_cases(fn, cases, what="birl_lite.model_free.mc_returns", atol=atol, rtol=0.0)


def _gap_case(k: int, seed: int):
    """A random MDP, policy ``pi*_x`` and reward Jacobian; the gap from the exact (H1) quantities."""
    gen = torch.Generator().manual_seed(1000 * seed + k)
    S = int(torch.randint(2, 7, (1,), generator=gen))
    A = int(torch.randint(2, 4, (1,), generator=gen))
    n = int(torch.randint(1, 4, (1,), generator=gen))
    gamma = (0.0, 0.5, 0.9, 0.99)[k % 4]
    tau = 0.3 + float(torch.rand((), generator=gen, dtype=torch.float64))
    mdp = random_mdp(S, A, 100 * seed + k, gamma=gamma)
    Phi = torch.randn(S, A, n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    exact = return_hypergradient(mdp, lambda z: torch.tanh(Phi @ z), random_reward(S, A, k), x, tau)
    pi, dr, dQ = exact.pi, exact.dr_dx, exact.info["dQ_dx"]
    dV = torch.einsum("sa,san->sn", pi, dQ)
    full = dQ - dV[:, None]
    trunc = dr - torch.einsum("sa,san->sn", pi, dr)[:, None]
    P = mdp.P
    label = f"S={S}, A={A}, n={n}, gamma={gamma:g}"
    return Case(label=label, args=(P.clone(), gamma, pi.clone(), dr.clone()), expected=full - trunc)


def check_truncation_gap(
    fn: Callable, n_cases: int = 12, seed: int = 0, rtol: float = 1e-8
) -> bool:
    """Check a reader's formula for what the truncated estimator drops (chapter 5).

    The reader's function is called as ``fn(P, gamma, pi, dr_dx)`` with ``P [S, A, S]`` the
    transitions, ``pi [S, A]`` the soft-optimal policy ``pi*_x``, ``dr_dx [S, A, n]`` the reward
    Jacobian (float64 tensors). It must return ``[S, A, n]``: the full bracket
    ``grad_x Q*(s, a) - grad_x V*(s)`` minus the truncated one
    ``grad_x r_x(s, a) - sum_b pi(b|s) grad_x r_x(s, b)``. The reference is computed from the
    exact ``grad_x Q*`` of :func:`birl_lite.first_order.return_hypergradient` (chapter 3), not from
    the closed form of the exercise; the cases include ``gamma = 0`` (the gap is then zero).

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """
    cases = (_gap_case(k, seed) for k in range(n_cases))
    return run_cases(
        fn,
        cases,
        what="grad_x Q* - grad_x V* minus the truncated bracket (return_hypergradient)",
        atol=1e-10,
        rtol=rtol,
    )


def _estimator_case(k: int, seed: int):
    """A batch sampled with a random policy, its two critics, and the package's estimate."""
    gen = torch.Generator().manual_seed(2000 * seed + k)
    S = int(torch.randint(2, 7, (1,), generator=gen))
    A = int(torch.randint(2, 4, (1,), generator=gen))
    n = int(torch.randint(1, 4, (1,), generator=gen))
    gamma = (0.0, 0.5, 0.8, 0.9)[k % 4]
    tau = 0.2 + float(torch.rand((), generator=gen, dtype=torch.float64))
    mdp = random_mdp(S, A, 300 * seed + k, gamma=gamma)
    r_U = random_reward(S, A, 300 * seed + k + 1)
    pi = torch.softmax(torch.randn(S, A, generator=gen, dtype=torch.float64), dim=1)
    r = torch.randn(S, A, generator=gen, dtype=torch.float64)
    dr = torch.randn(S, A, n, generator=gen, dtype=torch.float64)
    batch = _sample(TabularEnv(mdp, r_U), pi, 200 + 50 * k, gamma, seed=[seed, k])
    crit = fit_critic(batch, pi, dr, tau, r)
    expected = hypergradient_from_batch(
        batch, pi, torch.zeros(n, dtype=torch.float64), tau, r, dr, centring="policy"
    ).grad
    args = (batch.s.copy(), batch.a.copy(), batch.n_episodes, pi, crit.Q_U, crit.Gq, tau)
    label = f"S={S}, A={A}, n={n}, gamma={gamma:g}, N={len(batch)}, E={batch.n_episodes}"
    return Case(label=label, args=args, expected=expected)


def check_sampled_hypergradient(
    fn: Callable, n_cases: int = 12, seed: int = 0, rtol: float = 1e-9
) -> bool:
    """Check a reader's sampled hypergradient (chapter 5, :eq:`eq-mf-estimator`, ``g = 0``).

    The reader's function is called as ``fn(s, a, n_episodes, pi, Q_U, Gq, tau)`` with ``s``, ``a``
    the sampled states and actions (int arrays ``[N]``), ``n_episodes`` the number of episodes
    ``E`` of the batch, ``pi [S, A]`` the policy that sampled it, ``Q_U [S, A]`` and
    ``Gq [S, A, n]`` the two critics fitted on the batch
    (:func:`~birl_lite.model_free.critics.fit_critic`) and ``tau`` the temperature. It must return
    ``[n]``: ``-(1 / (tau E)) sum_t A_U(s_t, a_t) (Gq(s_t, a_t) - G_V(s_t))`` with both centred by
    ``pi``: ``A_U = Q_U - sum_b pi(b|s) Q_U(s, b)``, ``G_V(s) = sum_b pi(b|s) Gq(s, b)``. The
    reference is :func:`~birl_lite.model_free.estimators.hypergradient_from_batch` with
    ``centring="policy"`` on the same batch (12 random MDPs, ``gamma`` from 0 to 0.9).

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """
    cases = (_estimator_case(k, seed) for k in range(n_cases))
    return run_cases(
        fn,
        cases,
        what="hypergradient_from_batch(centring='policy')",
        rtol=rtol,
        relative_norm=True,
    )
