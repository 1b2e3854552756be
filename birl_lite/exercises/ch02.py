"""Checkers for the coding exercises of chapter 2 (the bilevel formulation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..mdp import TabularMDP, random_mdp, random_reward
from ..problems import synthetic_problem
from ..soft import soft_policy_iteration
from ._common import Case, _as_float64, run_cases

__all__ = ["check_hyperobjective", "check_potential_shaping", "shaping_cases"]


def _cases(n_cases: int, seed: int):
    """Small synthetic problems of [YGY] with random sizes, discounts, temperatures and points x."""
    gen = torch.Generator().manual_seed(seed)
    taus = (0.01, 0.1, 1.0, 10.0)
    for k in range(n_cases):
        S = int(torch.randint(2, 8, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        n = int(torch.randint(1, 6, (1,), generator=gen))
        gamma = 0.95 * float(torch.rand((), generator=gen))
        problem = synthetic_problem(
            seed * 1000 + k, n_states=S, n_actions=A, dim=n, gamma=gamma, tau=taus[k % len(taus)]
        )
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        yield problem, x


def check_hyperobjective(
    fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-8, rtol: float = 1e-8
) -> bool:
    """Check a reader's hyperobjective ``phi(x) = f(x, pi*_x)`` against :meth:`~birl_lite.problems.BilevelProblem.phi`.

    The reader's function is called as ``fn(mdp, reward_fn, upper_fn, x, tau)`` (a
    :class:`~birl_lite.mdp.TabularMDP`, the two torch functions of the problem, ``x [n]`` and the
    temperature) and must return ``phi(x)`` as a float or 0-dim tensor. Cases are small synthetic
    problems of [YGY] with temperatures from ``0.01`` to ``10``.

    Prints ``PASS`` or ``FAIL`` with the first mismatching case; returns whether all cases passed.
    """
    cases = (
        Case(
            label=f"S={p.mdp.n_states}, A={p.mdp.n_actions}, gamma={p.mdp.gamma:.3f}, tau={p.tau}",
            args=(p.mdp, p.reward_fn, p.upper_fn, x, p.tau),
            expected=p.phi(x),
        )
        for p, x in _cases(n_cases, seed)
    )
    return run_cases(fn, cases, what="BilevelProblem.phi", atol=atol, rtol=rtol)


def shaping_cases(
    n_cases: int = 20, seed: int = 0
) -> Iterator[tuple[TabularMDP, torch.Tensor, float, torch.Tensor]]:
    """Random small MDPs with a reward, a temperature and a random potential ``Phi [S]``.

    Yields:
        ``(mdp, r [S, A], tau, Phi [S])``.
    """
    gen = torch.Generator().manual_seed(seed)
    taus = (0.05, 0.3, 1.0, 3.0)
    for k in range(n_cases):
        S = int(torch.randint(2, 9, (1,), generator=gen))
        A = int(torch.randint(2, 5, (1,), generator=gen))
        gamma = 0.3 + 0.65 * float(torch.rand((), generator=gen))
        mdp = random_mdp(S, A, seed=seed * 1000 + k, gamma=gamma)
        r = random_reward(S, A, seed=seed * 1000 + k + 500)
        Phi = 2.0 * torch.randn(S, generator=gen, dtype=torch.float64)
        yield mdp, r, taus[k % len(taus)], Phi


def check_potential_shaping(fn: Callable, n_cases: int = 20, seed: int = 0) -> bool:
    """Check a reader's potential-based shaping reward, then run the invariance claim with a control.

    The reader's function is called as ``fn(mdp, Phi)`` (a dense or sparse
    :class:`~birl_lite.mdp.TabularMDP` and a potential ``Phi [S]``) and must return the shaping
    reward ``F(s, a) = gamma sum_s' P(s'|s, a) Phi(s') - Phi(s)`` ``[S, A]`` (chapter 2, section 2.2).
    Cases are ``shaping_cases(n_cases, seed)``. If every case matches, the checker runs the claim of the
    chapter on the same instances with the reader's ``F``: the soft-optimal policy of ``r + F``
    equals that of ``r`` (maximum entry difference printed), while a control, a random shaping
    ``G`` of the same norm as ``F``, moves it (smallest change printed, and in how many cases it
    exceeds ``1e-6``).

    Prints ``PASS`` or ``FAIL`` with the first mismatching case, then the claim; returns whether
    all cases passed.
    """
    cases = list(shaping_cases(n_cases, seed))
    ok = run_cases(
        fn,
        (
            Case(
                label=f"S={mdp.n_states}, A={mdp.n_actions}, gamma={mdp.gamma:.3f}",
                args=(mdp, Phi),
                expected=mdp.gamma * mdp.expect_next(Phi) - Phi[:, None],
            )
            for mdp, _, _, Phi in cases
        ),
        what="gamma P Phi - Phi",
        atol=1e-12,
        rtol=1e-10,
    )
    if not ok:
        return False
    gen = torch.Generator().manual_seed(seed + 1)
    shaped, control = [], []
    for mdp, r, tau, Phi in cases:
        F = _as_float64(fn(mdp, Phi.clone()))
        G = torch.randn(F.shape, generator=gen, dtype=torch.float64)
        G = G * (F.norm() / G.norm())
        pi = soft_policy_iteration(mdp, r, tau, tol=1e-13).pi
        shaped.append(
            float((soft_policy_iteration(mdp, r + F, tau, tol=1e-13).pi - pi).abs().max())
        )
        control.append(
            float((soft_policy_iteration(mdp, r + G, tau, tol=1e-13).pi - pi).abs().max())
        )
    moved = sum(c > 1e-6 for c in control)
    print(
        f"the claim on the same {len(cases)} MDPs: max |pi*(r + F) - pi*(r)| = {max(shaped):.1e}; "
        f"control, a random shaping of the same norm: changes pi* by {min(control):.1e} to "
        f"{max(control):.1e}, by more than 1e-6 in {moved}/{len(cases)}"
    )
    return True
