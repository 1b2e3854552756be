"""Checkers for the coding exercises of chapter 10: the Bradley-Terry loss of fragments padded past
termination, and the authors' truncated hyper term for a network reward as a stop-gradient
scalar surrogate."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..preference import bradley_terry_loss
from ..rlhf.reward_model import RewardNet, pair_losses, truncated_surrogate
from ._common import Case, run_cases

__all__ = ["check_padded_bt_loss", "check_truncated_surrogate"]


def padded_bt_loss(
    r1: torch.Tensor, r2: torch.Tensor, real1: torch.Tensor, real2: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The reference of :func:`check_padded_bt_loss`: per-pair Bradley-Terry losses ``[m]`` of
    fragments whose padded steps (``real == False``, the absorbing state after termination) pay 0,
    whatever the model's per-step rewards ``r [m, T]`` hold there."""
    z = torch.where(real1, r1, 0.0).sum(dim=1) - torch.where(real2, r2, 0.0).sum(dim=1)
    return bradley_terry_loss(z, y)


def check_padded_bt_loss(fn: Callable, n_cases: int = 20, seed: int = 0) -> bool:
    """Check a reader's ``fn(r1, r2, real1, real2, y)`` (per-pair Bradley-Terry losses of padded
    fragments, chapter 10).

    Called with float64 tensors ``r1, r2 [m, T]`` (the model's reward at each step of the two
    fragments of each pair; at padded steps whatever a network returns there), boolean tensors
    ``real1, real2 [m, T]`` (``False`` at the padded steps after termination) and labels
    ``y [m]`` in ``[0, 1]``; must return ``[m]``: ``y softplus(-z) + (1 - y) softplus(z)`` with
    ``z`` the difference of the two fragments' returns over their real steps. Some cases have no
    padding, some fragments are mostly padding, some rewards are large.

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """

    def cases():
        gen = torch.Generator().manual_seed(seed)
        for k in range(n_cases):
            m = int(torch.randint(1, 12, (1,), generator=gen))
            T = int(torch.randint(1, 9, (1,), generator=gen))
            scale = [1.0, 5.0, 100.0][k % 3]
            r1, r2 = (scale * torch.randn(m, T, generator=gen, dtype=torch.float64) for _ in "12")
            real = []
            for _ in range(2):  # k real steps, then padding (k = T: a window inside an episode)
                n_real = torch.randint(1, T + 1, (m,), generator=gen)
                if k % 4 == 0:
                    n_real = torch.full((m,), T)
                real.append(torch.arange(T)[None, :] < n_real[:, None])
            y = torch.rand(m, generator=gen, dtype=torch.float64)
            pad = int((~real[0]).sum() + (~real[1]).sum())
            yield Case(
                label=f"m={m}, T={T}, {pad} padded steps, |r| ~ {scale:g}",
                args=(r1, r2, real[0], real[1], y),
                expected=padded_bt_loss(r1, r2, real[0], real[1], y),
            )

    return run_cases(
        fn,
        cases(),
        what="the Bradley-Terry loss of padded fragments",
        atol=1e-12,
        rtol=1e-10,
        hint="use softplus for -log sigmoid",
    )


def _surrogate_case(seed: int) -> tuple:
    """A reward net, window steps, a fixed policy and per-pair losses that depend on the net."""
    rng = np.random.default_rng(seed)
    m, T, d, A = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(2, 6)), 3
    torch.manual_seed(seed)
    net = RewardNet(d, A, hidden=(8,))
    obs = torch.as_tensor(rng.standard_normal((m, 2 * T, d)), dtype=torch.float32)
    act = torch.as_tensor(rng.integers(A, size=(m, 2 * T)))
    probs = torch.as_tensor(rng.dirichlet(np.ones(A), size=(m, 2 * T)), dtype=torch.float32)
    y = torch.as_tensor(rng.random(m), dtype=torch.float32)
    return net, obs, act, probs, y, m, T


def _surrogate_gradient(fn: Callable, seed: int, coef: float) -> np.ndarray:
    """The gradient in the net's parameters of ``fn(net, obs, act, probs, losses, coef)``, with
    ``losses`` the Bradley-Terry losses of the pairs (the two halves of each row of ``obs``) under
    the same net: a surrogate that forgets the stop-gradient gets another gradient."""
    net, obs, act, probs, y, m, T = _surrogate_case(seed)
    losses = pair_losses(net, obs[:, :T], act[:, :T], obs[:, T:], act[:, T:], y)
    out = fn(net, obs, act, probs, losses, coef)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise TypeError(
            f"expected a scalar tensor, got {type(out).__name__} {getattr(out, 'shape', '')}"
        )
    net.zero_grad()
    out.reshape(()).backward()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double().numpy()


def check_truncated_surrogate(fn: Callable, n_cases: int = 12, seed: int = 0) -> bool:
    """Check a reader's ``fn(net, obs, act, probs, losses, coef)``: a scalar whose gradient in the
    reward net is the authors' hyper term (chapter 10, eq-nrl-truncated), against
    :func:`birl_lite.rlhf.reward_model.truncated_surrogate`.

    Called with a :class:`~birl_lite.rlhf.reward_model.RewardNet`, ``obs [m, T, d]``,
    ``act [m, T]`` (the window steps of both fragments of each pair), the policy's ``probs
    [m, T, A]`` (no gradient), the pairs' Bradley-Terry losses ``[m]`` *computed with the same net*
    (they carry a gradient) and ``coef`` (``1/tau``); must return a scalar tensor. What is compared
    is its gradient in the net's parameters.

    Prints ``PASS`` or ``FAIL`` with the first mismatch; returns whether all cases passed.
    """

    def cases():
        for k in range(n_cases):
            coef = [10.0, 1.0, 125.0][k % 3]
            yield Case(
                label=f"seed {seed + k}, coef={coef:g}",
                args=(seed + k, coef),
                expected=_surrogate_gradient(truncated_surrogate, seed + k, coef),
            )

    def gradient_of_reader(case_seed, coef):
        return _surrogate_gradient(fn, case_seed, coef)

    return run_cases(
        gradient_of_reader,
        cases(),
        what="the gradient of truncated_surrogate",
        relative_norm=True,
        rtol=1e-5,
    )
