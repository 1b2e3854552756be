"""Checkers for the coding exercises of chapter 3 (the first-order hypergradient).

* :func:`check_h1`: the reader implements the closed form (H1) from its ingredients.
* :func:`check_adjoint`: the reader implements the adjoint vector ``w`` of (H2).
* :func:`check_lower_level_share`: the reader measures the control that ignores the lower level
  (exercise 3.6), ``||grad phi - grad_x f(x, pi*)|| / ||grad phi||``.

Each checker draws random instances (seeded), computes the reference with
:func:`birl_lite.first_order.hypergradient`, prints ``PASS`` or ``FAIL`` with the first mismatch,
and returns a bool.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._validation import DTYPE, check_positive_int
from ..first_order import hypergradient, upper_gradients
from ..mdp import TabularMDP, random_mdp
from ._common import Case, run_cases

__all__ = ["check_h1", "check_adjoint", "check_lower_level_share"]

_TAUS = (0.05, 0.3, 1.0, 3.0)
_GAMMAS = (0.5, 0.8, 0.95)


def _case(k: int, seed: int):
    """A random instance: MDP, nonlinear reward_fn, upper_fn, x, tau (all from one seed)."""
    rng = np.random.default_rng([seed, k])
    S, A, n = int(rng.integers(2, 6)), int(rng.integers(2, 4)), int(rng.integers(1, 5))
    gamma, tau = _GAMMAS[k % len(_GAMMAS)], _TAUS[k % len(_TAUS)]
    mdp = random_mdp(S, A, seed=int(rng.integers(2**31)), gamma=gamma)
    F = torch.as_tensor(rng.normal(size=(S, A, n)), dtype=DTYPE)
    c = torch.as_tensor(rng.normal(size=(S, A)), dtype=DTYPE)
    x = torch.as_tensor(rng.normal(size=n), dtype=DTYPE)

    def reward_fn(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F @ z) + 0.1 * c * (z**2).sum()

    def upper_fn(z: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return 0.5 * (z**2).sum() + (c * pi).sum() + 0.5 * (pi**2).sum()

    return mdp, reward_fn, upper_fn, x, tau


def check_h1(
    fn: Callable[..., torch.Tensor], n_cases: int = 20, seed: int = 0, rtol: float = 1e-8
) -> bool:
    """Check a reader's implementation of (H1).

    ``fn(mdp, pi, tau, dr_dx, df_dx, df_dpi) -> grad [n]`` receives a :class:`~birl_lite.mdp.TabularMDP`, the
    optimal policy ``pi [S, A]``, ``tau``, the reward Jacobian ``dr_dx [S, A, n]`` and the partial
    gradients ``df_dx [n]``, ``df_dpi [S, A]`` of the upper-level objective, and must return
    ``grad phi(x)`` by (H1): policy evaluation of ``grad_x r``, then the chain rule through the
    softmax.

    Returns:
        ``True`` if ``fn`` matches :func:`~birl_lite.first_order.hypergradient` to relative
        error ``rtol`` on all ``n_cases`` random instances.
    """
    n_cases = check_positive_int(n_cases, "n_cases")

    def cases():
        for k in range(n_cases):
            mdp, reward_fn, upper_fn, x, tau = _case(k, seed)
            ref = hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H2")
            _, df_dx, df_dpi = upper_gradients(upper_fn, x, ref.pi)
            yield Case(
                label=f"S={mdp.n_states}, A={mdp.n_actions}, n={x.numel()}, tau={tau}",
                args=(mdp, ref.pi, tau, ref.dr_dx, df_dx, df_dpi),
                expected=ref.grad,
            )

    return run_cases(fn, cases(), what="(H1)", rtol=rtol, relative_norm=True)


def check_adjoint(
    fn: Callable[[TabularMDP, torch.Tensor, torch.Tensor], torch.Tensor],
    n_cases: int = 20,
    seed: int = 0,
    rtol: float = 1e-8,
) -> bool:
    """Check a reader's adjoint solve of (H2).

    ``fn(mdp, pi, G) -> w [S]`` receives the MDP, a policy ``pi [S, A]`` and the weights
    ``G [S, A]`` (``G = pi * df/dpi``) and must return the solution ``w`` of
    ``(I - gamma P_pi)^T w = b`` with ``b(s') = sum_{s, a} G(s, a) (1{s = s'} - gamma P(s'|s, a))``.

    Returns:
        ``True`` if ``fn`` matches the reference to relative error ``rtol`` on all cases.
    """
    n_cases = check_positive_int(n_cases, "n_cases")

    def cases():
        for k in range(n_cases):
            mdp, _, _, _, _ = _case(k, seed)
            rng = np.random.default_rng([seed, k, 1])
            S, A = mdp.n_states, mdp.n_actions
            pi = torch.softmax(torch.as_tensor(rng.normal(size=(S, A)), dtype=DTYPE), dim=-1)
            G = torch.as_tensor(rng.normal(size=(S, A)), dtype=DTYPE)
            b = G.sum(dim=1) - mdp.gamma * torch.einsum("sa,sat->t", G, mdp.P)
            P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
            w_ref = torch.linalg.solve(torch.eye(S, dtype=DTYPE) - mdp.gamma * P_pi.T, b)
            yield Case(label=f"S={S}, A={A}, gamma={mdp.gamma}", args=(mdp, pi, G), expected=w_ref)

    return run_cases(fn, cases(), what="the adjoint of (H2)", rtol=rtol, relative_norm=True)


def check_lower_level_share(
    fn: Callable[..., float | torch.Tensor],
    n_cases: int = 20,
    seed: int = 0,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> bool:
    """Check a reader's measure of the control that ignores the lower level (exercise 3.6).

    ``fn(mdp, reward_fn, upper_fn, x, tau) -> share`` must return the relative error of the
    direct term alone, ``||grad phi(x) - grad_x f(x, pi*_x)|| / ||grad phi(x)||``: the share of the
    hypergradient that flows through the optimal policy (chapter 3, section 3.10). A comparison of
    hypergradient methods is informative only where this share is large.

    Returns:
        ``True`` if ``fn`` matches the reference (computed with
        :func:`~birl_lite.first_order.hypergradient` and
        :func:`~birl_lite.first_order.upper_gradients`) within ``atol + rtol * share`` on all
        cases (an absolute floor because some shares are tiny, about ``1e-10``, and a difference
        of two nearly equal gradients carries round-off of about ``1e-16 / share`` relative).
    """
    n_cases = check_positive_int(n_cases, "n_cases")

    def cases():
        for k in range(n_cases):
            mdp, reward_fn, upper_fn, x, tau = _case(k, seed)
            ref = hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H2")
            _, df_dx, _ = upper_gradients(upper_fn, x, ref.pi)
            share = (ref.grad - df_dx).norm() / ref.grad.norm()
            yield Case(
                label=f"S={mdp.n_states}, A={mdp.n_actions}, n={x.numel()}, tau={tau}",
                args=(mdp, reward_fn, upper_fn, x, tau),
                expected=share,
            )

    return run_cases(fn, cases(), what="the share of the lower level", atol=atol, rtol=rtol)
