"""Tests of birl_lite.problems: the bilevel problem builders of chapter 2."""

import math

import numpy as np
import pytest
import torch

from birl_lite.exercises.ch02 import check_hyperobjective
from birl_lite.first_order import hypergradient
from birl_lite.mdp import four_rooms, gridworld
from birl_lite.problems import (
    BilevelProblem,
    reward_design_problem,
    shaping_features,
    synthetic_problem,
)
from birl_lite.reference_methods import finite_difference_hypergradient
from birl_lite.soft import expected_return, soft_policy_iteration, soft_value_iteration

D = torch.float64


def test_synthetic_problem_shapes_and_structure():
    p = synthetic_problem(0)
    S, A, n = 10, 5, 100
    assert (p.mdp.n_states, p.mdp.n_actions, p.dim, p.mdp.gamma, p.tau) == (S, A, n, 0.5, 1.0)
    assert p.x0.shape == (n,) and p.x0.dtype == D
    supports = (p.mdp.P > 0).sum(-1)
    assert int(supports.min()) >= 1 and int(supports.max()) <= 9
    assert len(set(supports.flatten().tolist())) > 3  # support sizes vary
    c, M = p.info["c"], p.info["M"]
    assert c.shape == (S, A) and M.shape == (n, n)
    assert bool((c >= 0).all() and (c <= 1).all())
    x = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=D)
    r = p.reward(x)
    assert torch.allclose(r, c * (x @ M @ x), rtol=1e-13, atol=1e-12)
    # c[s, a] = U[s, a] U[s]: the per-state factor is shared, so c[s] / max c[s] <= 1 ...
    assert bool((c.max(1).values > 0).all())


def test_synthetic_optimum_is_one_at_zero():
    p = synthetic_problem(3)
    assert p.info["phi_star"] == 1.0
    assert math.isclose(p.phi(torch.zeros(100, dtype=D)), 1.0, rel_tol=0, abs_tol=1e-14)
    x = p.x0
    # phi(x) >= ||x||^2 / 2 + 1 everywhere
    assert p.phi(x) >= 0.5 * float(x @ x) + 1.0 - 1e-12
    assert p.phi(x) > 40.0


def test_synthetic_gradient_vanishes_at_optimum():
    p = synthetic_problem(3)
    g = hypergradient(p.mdp, p.reward_fn, p.upper_fn, torch.zeros(100, dtype=D), p.tau).grad
    assert float(g.abs().max()) <= 1e-13


def test_synthetic_seed_reproducible_and_distinct():
    a, b, c = synthetic_problem(11), synthetic_problem(11), synthetic_problem(12)
    assert torch.equal(a.mdp.P, b.mdp.P) and torch.equal(a.x0, b.x0)
    assert torch.equal(a.info["M"], b.info["M"]) and torch.equal(a.info["c"], b.info["c"])
    assert not torch.equal(a.x0, c.x0) and not torch.equal(a.mdp.P, c.mdp.P)


def test_synthetic_analytic_derivatives_match_autograd():
    p = synthetic_problem(2, n_states=4, n_actions=3, dim=6, gamma=0.9, tau=0.3)
    x = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=D)
    p.check(x, rtol=1e-12)  # raises on disagreement
    J = p.dr_dx(x)
    J_auto = torch.func.jacrev(p.reward_fn)(x)
    assert torch.allclose(J, J_auto, rtol=1e-12, atol=1e-12)


def test_synthetic_hypergradient_matches_finite_differences():
    p = synthetic_problem(2, n_states=4, n_actions=3, dim=5, gamma=0.9, tau=0.5)
    x = 0.3 * torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=D)
    g = hypergradient(p.mdp, p.reward_fn, p.upper_fn, x, p.tau).grad
    fd = finite_difference_hypergradient(p.mdp, p.reward_fn, p.upper_fn, x, p.tau).grad
    assert float((g - fd).norm() / g.norm()) <= 1e-6


def test_state_features_and_reward_design_problem():
    q = reward_design_problem()
    task = q.info["task"]
    S, A = task.mdp.n_states, task.mdp.n_actions
    n_free = int((~task.terminal).sum())
    assert q.dim == n_free and q.info["features"].shape == (S, A, n_free)
    assert q.info["states"].shape == (n_free,)
    assert torch.equal(q.x0, torch.zeros(n_free, dtype=D))
    x = torch.randn(n_free, generator=torch.Generator().manual_seed(0), dtype=D)
    r = q.reward(x)
    bonus = torch.zeros(S, dtype=D)
    bonus[q.info["states"]] = x
    assert torch.allclose(r, task.r + bonus.unsqueeze(1))
    # the designer's objective is minus the true (unregularized) return plus the ridge term
    pi = soft_value_iteration(task.mdp, r, q.tau).pi
    f = q.upper_fn(x, pi)
    expected = -expected_return(task.mdp, pi, task.r) + 0.5 * q.info["ridge"] * x @ x
    assert torch.allclose(f, expected, rtol=1e-12)
    q.check(x, rtol=1e-10)  # analytic dJ/dpi = d Q and dr/dx = features agree with autograd


def test_reward_design_hypergradient_matches_finite_differences():
    task = gridworld(["S..", ".#.", "..G"], gamma=0.9, slip=0.1)
    q = reward_design_problem(task, tau=0.2, ridge=0.01)
    x = 0.2 * torch.randn(q.dim, generator=torch.Generator().manual_seed(1), dtype=D)
    g = hypergradient(q.mdp, q.reward_fn, q.upper_fn, x, q.tau).grad
    fd = finite_difference_hypergradient(q.mdp, q.reward_fn, q.upper_fn, x, q.tau).grad
    assert float((g - fd).norm() / g.norm()) <= 1e-6


def test_potential_shaping_leaves_the_policy_unchanged():
    task = four_rooms()
    q = reward_design_problem(task, features="potential", ridge=0.0)
    x = torch.randn(q.dim, generator=torch.Generator().manual_seed(2), dtype=D)
    pi0 = soft_policy_iteration(task.mdp, q.reward(torch.zeros_like(x)), q.tau).pi
    pix = soft_policy_iteration(task.mdp, q.reward(x), q.tau).pi
    assert float((pi0 - pix).abs().max()) <= 1e-9
    assert math.isclose(q.phi(x), q.phi(torch.zeros_like(x)), abs_tol=1e-10)
    g = hypergradient(q.mdp, q.reward_fn, q.upper_fn, x, q.tau).grad
    assert float(g.abs().max()) <= 1e-9


def test_custom_features_and_x0():
    task = gridworld(["S.G"], gamma=0.9)
    S, A = task.mdp.n_states, task.mdp.n_actions
    feats = torch.ones(S, A, 2, dtype=D)
    q = reward_design_problem(task, features=feats, x0=[0.5, -0.5])
    assert q.dim == 2 and torch.equal(q.x0, torch.tensor([0.5, -0.5], dtype=D))
    assert torch.allclose(q.reward(q.x0), task.r)
    assert torch.equal(shaping_features(task, "state")[:, 0, :].sum(0), torch.ones(2, dtype=D))


def test_problem_without_direct_x_dependence_and_autograd_fallbacks():
    p = synthetic_problem(0, n_states=3, n_actions=2, dim=4)
    q = BilevelProblem(p.mdp, p.reward_fn, lambda x, pi: (pi**2).sum(), p.x0, 1.0)
    f, gx, gpi = q.upper(q.x0, torch.full((3, 2), 0.5, dtype=D))
    assert float(f) == pytest.approx(1.5) and torch.equal(gx, torch.zeros(4, dtype=D))
    assert torch.allclose(gpi, torch.full((3, 2), 1.0, dtype=D))
    assert q.dr_dx(q.x0).shape == (3, 2, 4)


def test_bad_inputs_give_clear_errors():
    p = synthetic_problem(0)
    with pytest.raises(ValueError, match="tau"):
        synthetic_problem(0, tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        BilevelProblem(p.mdp, p.reward_fn, p.upper_fn, p.x0, -1.0)
    with pytest.raises(TypeError, match="mdp"):
        BilevelProblem("mdp", p.reward_fn, p.upper_fn, p.x0, 1.0)
    with pytest.raises(TypeError, match="reward_fn"):
        BilevelProblem(p.mdp, 3, p.upper_fn, p.x0, 1.0)
    with pytest.raises(ValueError, match="x0"):
        BilevelProblem(p.mdp, p.reward_fn, p.upper_fn, torch.zeros(2, 2), 1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        p.reward(torch.zeros(3))
    bad = BilevelProblem(p.mdp, lambda x: torch.zeros(10, 4, dtype=D), p.upper_fn, p.x0, 1.0)
    with pytest.raises(ValueError, match=r"reward_fn must return shape \[S, A\]"):
        bad.check()
    nonscalar = BilevelProblem(p.mdp, p.reward_fn, lambda x, pi: pi, p.x0, 1.0)
    with pytest.raises(ValueError, match="scalar"):
        nonscalar.check()
    with pytest.raises(ValueError, match="upper_value_and_grad"):
        BilevelProblem(
            p.mdp,
            p.reward_fn,
            p.upper_fn,
            p.x0,
            1.0,
            upper_value_and_grad=lambda x, pi: (p.upper_fn(x, pi), 2 * x, pi),
        ).check()
    with pytest.raises(ValueError, match="kind"):
        shaping_features(four_rooms(), "bogus")
    with pytest.raises(ValueError, match="features"):
        reward_design_problem(features=torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="ridge"):
        reward_design_problem(ridge=-1.0)
    with pytest.raises(TypeError, match="task"):
        reward_design_problem(task=np.zeros(3))


def test_exercise_checker_accepts_reference_and_rejects_wrong(capsys):
    def reference(mdp, reward_fn, upper_fn, x, tau):
        pi = soft_policy_iteration(mdp, reward_fn(x), tau, tol=1e-12).pi
        return upper_fn(x, pi)

    def unregularized(mdp, reward_fn, upper_fn, x, tau):  # the hard-max policy: wrong for tau > 0
        Q = soft_policy_iteration(mdp, reward_fn(x), tau).Q
        greedy = torch.nn.functional.one_hot(Q.argmax(1), Q.shape[1]).to(D)
        return upper_fn(x, greedy)

    assert check_hyperobjective(reference, n_cases=8)
    assert "PASS" in capsys.readouterr().out
    assert not check_hyperobjective(unregularized, n_cases=8)
    assert "FAIL" in capsys.readouterr().out
