"""Checkers for the coding exercises of chapter 6: the Bradley-Terry loss computed stably, the
authors' truncated hyper term and the policy-dependence term of reward learning from comparisons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..mdp import TabularTask, random_mdp
from ..preference import bradley_terry_loss
from ..rlhf_tabular import ComparisonTask, policy_term, truncated_term
from ._common import Case, run_cases

__all__ = ["check_bradley_terry_loss", "check_truncated_term", "check_policy_term"]


def check_bradley_terry_loss(
    fn: Callable, n_cases: int = 20, seed: int = 0, rtol: float = 1e-10
) -> bool:
    """Check a reader's Bradley-Terry loss against :func:`birl_lite.preference.bradley_terry_loss`.

    The reader's function is called as ``fn(z, p)`` with float64 tensors of the same shape (``z``
    reward differences, some as large as ``+-1000``; ``p`` in ``[0, 1]``) and must return
    ``-p log sigmoid(z) - (1 - p) log sigmoid(-z)`` elementwise, finite for every ``z``.

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """

    def cases():
        gen = torch.Generator().manual_seed(seed)
        for k in range(n_cases):
            m = int(torch.randint(1, 30, (1,), generator=gen))
            scale = [1.0, 10.0, 1000.0][k % 3]
            z = scale * torch.randn(m, generator=gen, dtype=torch.float64)
            p = torch.rand(m, generator=gen, dtype=torch.float64)
            yield Case(
                label=f"m={m}, |z| ~ {scale:g}", args=(z, p), expected=bradley_terry_loss(z, p)
            )

    return run_cases(
        fn,
        cases(),
        what="bradley_terry_loss (including |z| ~ 1000)",
        atol=1e-12,
        rtol=rtol,
        hint="use log-sigmoid (softplus) instead of log(sigmoid(z))",
    )


def _random_policy_case(rng: np.random.Generator, S: int, A: int, m: int):
    pi = rng.dirichlet(np.ones(A), size=S)
    counts = rng.integers(0, 4, size=(m, S * A)).astype(float)
    losses = rng.uniform(0.05, 2.0, size=m)
    return pi, counts, losses


def check_truncated_term(fn: Callable, n_cases: int = 12, seed: int = 0) -> bool:
    """Check a reader's authors' (truncated) hyper term against
    :func:`birl_lite.rlhf_tabular.truncated_term`.

    Called as ``fn(pi, window_sum, losses, tau)`` with numpy arrays ``pi [S, A]``,
    ``window_sum [m, S*A]`` (state-action counts of both windows of each pair, index ``s*A + a``),
    ``losses [m]`` and a float ``tau``; must return ``[S*A]``.
    """

    def cases():
        rng = np.random.default_rng(seed)
        for k in range(n_cases):
            S, A, m = int(rng.integers(2, 7)), int(rng.integers(2, 5)), int(rng.integers(1, 9))
            tau = [0.05, 0.3, 2.0][k % 3]
            pi, counts, losses = _random_policy_case(rng, S, A, m)
            yield Case(
                label=f"S={S}, A={A}, m={m}, tau={tau}",
                args=(pi, counts, losses, tau),
                expected=truncated_term(pi, counts, losses, tau),
            )

    return run_cases(fn, cases(), what="truncated_term", atol=1e-12, rtol=1e-9)


def check_policy_term(fn: Callable, n_cases: int = 10, seed: int = 0) -> bool:
    """Check a reader's policy-dependence term against :func:`birl_lite.rlhf_tabular.policy_term`.

    Called as ``fn(P, gamma, pi, score_sum, losses, tau)`` with numpy arrays ``P [S, A, S]``,
    ``pi [S, A]``, ``score_sum [m, S*A]`` (counts of every step of both fragments, prefix
    included), ``losses [m]`` and floats ``gamma``, ``tau``; must return ``[S*A]``: the sampled
    ``(1/tau) mean_i l_i sum_t (grad_x Q*(s_t, a_t) - grad_x V*(s_t))`` for the table reward
    ``r_x = x``. The cases include ``gamma = 0``, where it equals the truncated term.
    """

    def cases():
        rng = np.random.default_rng(seed)
        for k in range(n_cases):
            S, A, m = int(rng.integers(2, 7)), int(rng.integers(2, 5)), int(rng.integers(1, 9))
            gamma = [0.0, 0.5, 0.9, 0.99][k % 4]
            tau = [0.1, 1.0][k % 2]
            mdp = random_mdp(S, A, int(rng.integers(1 << 30)), gamma=gamma)
            pi, counts, losses = _random_policy_case(rng, S, A, m)
            r = torch.zeros(S, A, dtype=torch.float64)
            ctask = ComparisonTask(TabularTask(mdp, r), r, np.eye(S * A), name="checker")
            yield Case(
                label=f"S={S}, A={A}, m={m}, gamma={gamma}, tau={tau}",
                args=(mdp.P.numpy(), gamma, pi, counts, losses, tau),
                expected=policy_term(ctask, pi, counts, losses, tau),
            )

    return run_cases(fn, cases(), what="policy_term", atol=1e-10, rtol=1e-8)
