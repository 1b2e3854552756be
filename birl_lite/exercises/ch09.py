"""Checkers for the coding exercises of chapter 9 (generalized advantage estimation; the area under
a learning curve; the bounded BLPO correction)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..actor_critic.blpo import clip_correction
from ..actor_critic.rollout import gae
from ..experiments import curve_auc
from ..linear_solve import solve
from ._common import Case, run_cases

__all__ = ["check_blpo_direction", "check_curve_auc", "check_gae"]


def check_gae(fn: Callable, n_cases: int = 20, seed: int = 0, atol: float = 1e-9) -> bool:
    """Check a reader's ``fn(rewards, values, next_values, terminated, dones, gamma, lam)``
    (numpy arrays ``[T, E]`` float64, floats) against :func:`birl_lite.actor_critic.rollout.gae` on random
    cases with terminations and truncations. Prints PASS or FAIL with the first mismatch; returns
    whether all cases passed."""

    def cases():
        rng = np.random.default_rng(seed)
        for _ in range(n_cases):
            T, E = int(rng.integers(1, 15)), int(rng.integers(1, 5))
            rewards, values, next_values = (rng.standard_normal((T, E)) for _ in range(3))
            dones = (rng.random((T, E)) < 0.3).astype(np.float64)
            terminated = dones * (rng.random((T, E)) < 0.5)
            gamma, lam = float(rng.uniform(0.5, 0.999)), float(rng.uniform(0.0, 1.0))
            args = (rewards, values, next_values, terminated, dones, gamma, lam)
            yield Case(
                label=f"T={T}, E={E}, gamma={gamma:.3f}, lam={lam:.3f}",
                args=args,
                expected=gae(*args),
            )

    return run_cases(fn, cases(), what="birl_lite.actor_critic.gae", atol=atol, rtol=0.0)


def check_curve_auc(fn: Callable, n_cases: int = 20, seed: int = 0) -> bool:
    """Check a reader's ``fn(steps, values, until)`` against :func:`birl_lite.experiments.curve_auc`
    (the mean of the learning curve over ``[0, until]``) on random curves: ``steps`` increasing
    integers (numpy, unevenly spaced), ``values`` floats with ``nan`` before the first finished
    episode, ``0 < until <= steps[-1]``. Prints PASS or FAIL with the first mismatch; returns
    whether all cases passed."""

    def cases():
        rng = np.random.default_rng(seed)
        for _ in range(n_cases):
            T = int(rng.integers(2, 12))
            steps = np.sort(rng.choice(np.arange(1, 1000), size=T, replace=False))
            values = rng.normal(0.0, 10.0, size=T)
            values[: int(rng.integers(0, T))] = np.nan  # no finished episode yet
            until = float(rng.integers(1, steps[-1] + 1))
            record = {
                "curve": {
                    "steps": steps.tolist(),
                    "return_last20": [None if np.isnan(v) else float(v) for v in values],
                }
            }
            yield Case(
                label=f"T={T}, until={until:g}, {int(np.isnan(values).sum())} leading nan",
                args=(steps, values, until),
                expected=curve_auc(record, until),
            )

    return run_cases(fn, cases(), what="birl_lite.experiments.curve_auc", atol=1e-9, rtol=1e-9)


def check_blpo_direction(fn: Callable, n_cases: int = 20, seed: int = 0) -> bool:
    """Check a reader's ``fn(g_theta, g_w, H, B, nu, cbar)``: steps 3, 5 and 6 of a BLPO update
    (:mod:`birl_lite.actor_critic.blpo`) written with explicit matrices.

    Args of ``fn`` (float64 tensors): ``g_theta`` ``[p]`` the policy gradient, ``g_w`` ``[d]`` the
    leader's gradient in the critic's parameters, ``H`` ``[d, d]`` the critic loss's Hessian
    (symmetric, not necessarily definite), ``B`` ``[p, d]`` its mixed second derivative
    in the actor's and the critic's parameters; floats ``nu > 0`` (damping) and ``cbar >= 0``
    (the bound). It must return the actor's direction ``[p]``: ``g_theta - c``, with
    ``c = B (H + nu I)^{-1} g_w`` rescaled so that ``||c|| <= cbar ||g_theta||``.

    The reference solves with :func:`birl_lite.linear_solve.solve` and bounds with
    :func:`birl_lite.actor_critic.blpo.clip_correction`. Prints PASS or FAIL with the first
    mismatch; returns whether all cases passed."""

    def cases():
        gen = torch.Generator().manual_seed(seed)
        for k in range(n_cases):
            p, d = (
                int(torch.randint(2, 9, (1,), generator=gen)),
                int(torch.randint(2, 9, (1,), generator=gen)),
            )
            Q = torch.randn(d, d, generator=gen, dtype=torch.float64)
            H = Q @ Q.T / d - 0.3 * torch.eye(d, dtype=torch.float64)  # may be indefinite
            nu = float(1.0 + torch.rand(1, generator=gen, dtype=torch.float64))
            B = torch.randn(p, d, generator=gen, dtype=torch.float64)
            g_theta = torch.randn(p, generator=gen, dtype=torch.float64)
            g_w = 3.0 * torch.randn(d, generator=gen, dtype=torch.float64)
            cbar = (0.0, 0.2, 1.0, 1e6)[k % 4]  # 1e6: the bound inactive
            u = solve(H, g_w, damping=nu).x
            c, _ = clip_correction(B @ u, g_theta, cbar)
            yield Case(
                label=f"p={p}, d={d}, nu={nu:.3f}, cbar={cbar:g}",
                args=(g_theta, g_w, H, B, nu, cbar),
                expected=g_theta - c,
            )

    return run_cases(fn, cases(), what="g_theta - clip(B (H + nu I)^-1 g_w)", atol=1e-9, rtol=1e-9)
