"""Checkers for the coding exercises of chapter 1 (the soft Bellman fixed point).

* :func:`check_soft_bellman`: the reader's soft Bellman operator (Exercise 1.1).
* :func:`check_logit_hessian`: the reader's closed-form Hessian of the soft objective in the logits
  at its maximizer (Exercise 1.5), on MDPs with and without states that are never visited.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._validation import check_positive_int
from ..mdp import TabularMDP, random_mdp, random_reward
from ..reference_methods import logit_hessian
from ..soft import soft_bellman, soft_policy_iteration, state_visitation
from ._common import Case, run_cases

__all__ = ["check_logit_hessian", "check_soft_bellman"]


def _cases(n_cases: int, seed: int):
    """Random (mdp, r, V, tau) cases, including tiny temperatures and large values."""
    gen = torch.Generator().manual_seed(seed)
    taus = (1e-3, 1e-2, 0.1, 1.0, 10.0)
    for k in range(n_cases):
        S = int(torch.randint(2, 8, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        gamma = float(torch.rand((), generator=gen)) * 0.99
        mdp = random_mdp(S, A, seed=seed * 1000 + k, gamma=gamma)
        scale = 10.0 ** float(torch.randint(0, 3, (1,), generator=gen))
        r = scale * (2 * random_reward(S, A, seed=seed * 1000 + k + 500) - 1)
        V = scale * torch.randn(S, generator=gen, dtype=torch.float64)
        yield mdp, r, V, taus[k % len(taus)]


def check_soft_bellman(
    fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9, rtol: float = 1e-9
) -> bool:
    """Check a reader's soft Bellman operator against :func:`birl_lite.soft.soft_bellman`.

    The reader's function is called as ``fn(P, r, V, gamma, tau)`` with tensors ``P [S, A, S]``,
    ``r [S, A]``, ``V [S]`` (float64) and floats ``gamma``, ``tau``; it must return
    ``(T V) [S]``. Cases include ``tau = 1e-3`` with values up to 100, where a naive
    ``exp(Q / tau)`` overflows.

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """
    cases = (
        Case(
            label=f"S={mdp.n_states}, A={mdp.n_actions}, gamma={mdp.gamma:.3f}, tau={tau}",
            args=(mdp.P, r, V, mdp.gamma, tau),
            expected=soft_bellman(mdp, r, V, tau),
        )
        for mdp, r, V, tau in _cases(n_cases, seed)
    )
    return run_cases(
        fn,
        cases,
        what="birl_lite.soft_bellman (tau down to 1e-3)",
        atol=atol,
        rtol=rtol,
        hint="subtract the maximum before exponentiating",
    )


def _hessian_cases(n_cases: int, seed: int):
    """Random MDPs at their soft optimum; every fourth one has states that are never visited.

    Yields ``(mdp, r, tau, pi, n_unvisited)``. Unvisited states get ``rho = 0`` and no incoming
    transitions (their columns of ``P`` are zeroed and the rows renormalized).
    """
    rng = np.random.default_rng([seed, 1])
    for k in range(n_cases):
        S, A = int(rng.integers(2, 7)), int(rng.integers(2, 5))
        gamma, tau = (0.5, 0.8, 0.95)[k % 3], (0.1, 0.5, 2.0)[(k // 3) % 3]
        base = random_mdp(S, A, seed=int(rng.integers(2**31)), gamma=gamma)
        P, rho = base.P.clone(), base.rho.clone()
        n_unvisited = int(rng.integers(1, S)) if k % 4 == 3 else 0
        if n_unvisited:
            hidden = torch.as_tensor(rng.choice(S, size=n_unvisited, replace=False))
            P[:, :, hidden] = 0.0
            P = P / P.sum(-1, keepdim=True)
            rho[hidden] = 0.0
            rho = rho / rho.sum()
        mdp = TabularMDP(P, gamma=gamma, rho=rho)
        r = random_reward(S, A, seed=int(rng.integers(2**31)))
        pi = soft_policy_iteration(mdp, r, tau, tol=1e-13).pi
        yield mdp, r, tau, pi, n_unvisited


def check_logit_hessian(
    fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-10, rtol: float = 1e-8
) -> bool:
    """Check a reader's closed-form logit Hessian at the optimum (chapter 1, eq. ``eq-logit-hessian``).

    The reader's function is called as ``fn(P, rho, gamma, pi, tau)`` with tensors ``P [S, A, S]``,
    ``rho [S]``, the soft-optimal policy ``pi [S, A]`` (float64) and floats ``gamma``, ``tau``; it
    must return the Hessian ``[S*A, S*A]`` (row-major ``(s, a)``) of ``J(theta) = rho^T V^{softmax
    theta}_tau`` at ``softmax(theta) = pi``, i.e.
    ``-tau blockdiag_s(d(s) (diag pi_s - pi_s pi_s^T))`` with the unnormalized visitation ``d``.
    The reference is the autograd Hessian :func:`birl_lite.reference_methods.logit_hessian`;
    every fourth case has states that are never visited (``d(s) = 0``).

    If every case agrees, the checker also tests the claim of section 1.8 on the reader's
    Hessians: the number of zero eigenvalues is ``S + (A - 1) * #{s : d(s) = 0}``.

    Prints ``PASS`` or ``FAIL`` (with the first mismatching case), then the eigenvalue count;
    returns whether everything passed.
    """
    n_cases = check_positive_int(n_cases, "n_cases")
    instances = list(_hessian_cases(n_cases, seed))
    cases = (
        Case(
            label=(
                f"S={mdp.n_states}, A={mdp.n_actions}, gamma={mdp.gamma}, tau={tau}, "
                f"{n_unvisited} unvisited states"
            ),
            args=(mdp.P, mdp.rho, mdp.gamma, pi, tau),
            expected=logit_hessian(mdp, r, tau, torch.log(pi)),
        )
        for mdp, r, tau, pi, n_unvisited in instances
    )
    if not run_cases(
        fn,
        cases,
        what="the autograd Hessian birl_lite.reference_methods.logit_hessian",
        atol=atol,
        rtol=rtol,
    ):
        return False
    agree, n_hidden = 0, 0
    for mdp, _, tau, pi, n_unvisited in instances:
        H = torch.as_tensor(fn(mdp.P.clone(), mdp.rho.clone(), mdp.gamma, pi.clone(), tau))
        eig = torch.linalg.eigvalsh(0.5 * (H + H.T).to(torch.float64))
        zeros = int((eig.abs() <= 1e-9 * max(float(eig.abs().max()), 1.0)).sum())
        unvisited = int((state_visitation(mdp, pi) <= 1e-12).sum())
        agree += zeros == mdp.n_states + (mdp.n_actions - 1) * unvisited
        n_hidden += n_unvisited
    print(
        f"zero eigenvalues = S + (A - 1) x #unvisited states in {agree}/{len(instances)} cases "
        f"({n_hidden} unvisited states in all)"
    )
    return agree == len(instances)
