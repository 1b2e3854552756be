"""Tests of birl_lite.preference: the Bradley-Terry upper level and the direct / policy split."""

import pytest
import torch

from birl_lite.exercises.ch06 import check_bradley_terry_loss
from birl_lite.preference import (
    bradley_terry_loss,
    hypergradient_split,
    preference_problem,
)
from birl_lite.reference_methods import finite_difference_hypergradient


def test_bradley_terry_loss_is_stable_and_correct():
    z = torch.tensor([-800.0, -1.0, 0.0, 2.0, 800.0], dtype=torch.float64)
    p = torch.tensor([0.3, 0.9, 0.5, 0.1, 1.0], dtype=torch.float64)
    naive = -(
        p[1:4] * torch.log(torch.sigmoid(z[1:4])) + (1 - p[1:4]) * torch.log(torch.sigmoid(-z[1:4]))
    )
    got = bradley_terry_loss(z, p)
    assert torch.isfinite(got).all()
    assert torch.allclose(got[1:4], naive)
    assert float(got[0]) == pytest.approx(0.3 * 800.0)
    assert float(got[4]) == pytest.approx(0.0, abs=1e-300)


def test_split_adds_up_to_the_finite_difference_hypergradient():
    problem = preference_problem(1, size=3)
    x = problem.x0 + 0.3 * torch.randn(
        problem.x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    split = hypergradient_split(problem, x)
    fd = finite_difference_hypergradient(
        problem.mdp, problem.reward_fn, problem.upper_fn, x, problem.tau
    )
    assert torch.allclose(split.full, fd.grad, rtol=1e-6, atol=1e-9)
    assert torch.allclose(split.direct + split.policy, split.full)
    assert float(split.policy.norm()) > 0.01 * float(split.direct.norm())
    assert float(split.visitation.sum()) == pytest.approx(1.0)


def test_policy_term_vanishes_at_zero_reward():
    # at x = 0 every comparison is predicted 50/50: the loss is log 2 whatever the data distribution
    problem = preference_problem(0, size=3, misleading=0.0)
    split = hypergradient_split(problem, problem.x0)
    assert float(split.policy.abs().max()) < 1e-12
    assert float(split.loss) == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_checker_accepts_reference_and_rejects_naive():
    def naive(z, p):  # overflows to inf / nan for large |z|
        return -(p * torch.log(torch.sigmoid(z)) + (1 - p) * torch.log(torch.sigmoid(-z)))

    assert check_bradley_terry_loss(bradley_terry_loss)
    assert not check_bradley_terry_loss(naive)
