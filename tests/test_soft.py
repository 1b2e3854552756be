"""Soft Bellman operator, soft value / policy iteration and policy evaluation.

Chapter 1, equations (eq-soft-bellman) and (eq-soft-eval).
"""

import math
import warnings

import pytest
import torch

import birl_lite as bl

F64 = torch.float64


def _problem(S=8, A=4, seed=0, gamma=0.9):
    return bl.random_mdp(S, A, seed, gamma=gamma), bl.random_reward(S, A, seed + 100)


# ---------------------------------------------------------------- the fixed point


@pytest.mark.parametrize("tau", [1e-2, 0.1, 1.0, 10.0])
def test_soft_value_iteration_reaches_fixed_point(tau):
    mdp, r = _problem(gamma=0.9)
    res = bl.soft_value_iteration(mdp, r, tau, tol=1e-12)
    assert res.converged
    residual = (bl.soft_bellman(mdp, r, res.V, tau) - res.V).abs().max()
    assert float(residual) < 1e-10


@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0])
def test_soft_policy_iteration_reaches_fixed_point_in_few_steps(tau):
    mdp, r = _problem(gamma=0.99)
    res = bl.soft_policy_iteration(mdp, r, tau)
    assert res.converged and res.n_iter <= 20
    assert float((bl.soft_bellman(mdp, r, res.V, tau) - res.V).abs().max()) < 1e-10


def test_fixed_point_agrees_with_soft_policy_evaluation_of_its_own_policy():
    # Independent check: V* must equal the soft value (I - gamma P_pi)^-1 (r_pi + tau H(pi)) of pi*.
    mdp, r = _problem(gamma=0.95)
    tau = 0.5
    res = bl.soft_value_iteration(mdp, r, tau, tol=1e-14)
    V_eval = bl.evaluate_policy(mdp, res.pi, r, tau=tau)
    assert float((V_eval - res.V).abs().max()) < 1e-11


def test_value_and_policy_iteration_agree():
    mdp, r = _problem(S=12, A=3, seed=4, gamma=0.97)
    a = bl.soft_value_iteration(mdp, r, 0.2, tol=1e-13)
    b = bl.soft_policy_iteration(mdp, r, 0.2, tol=1e-13)
    assert float((a.V - b.V).abs().max()) < 1e-10
    assert float((a.pi - b.pi).abs().max()) < 1e-10


def test_policy_is_softmax_of_q_and_exp_of_advantage():
    mdp, r = _problem()
    tau = 0.3
    res = bl.soft_policy_iteration(mdp, r, tau)
    assert torch.allclose(res.Q, r + mdp.gamma * mdp.expect_next(res.V), atol=1e-14)
    assert torch.allclose(res.pi, torch.exp((res.Q - res.V[:, None]) / tau), atol=1e-10)
    assert torch.allclose(res.pi, bl.softmax_policy(res.Q, tau), atol=1e-15)


def test_warm_start_needs_fewer_sweeps():
    mdp, r = _problem(gamma=0.95)
    cold = bl.soft_value_iteration(mdp, r, 0.1)
    warm = bl.soft_value_iteration(mdp, r, 0.1, V0=cold.V + 1e-6)
    assert warm.n_iter < cold.n_iter / 3
    assert len(cold.residuals) == cold.n_iter


# ---------------------------------------------------------------- contraction and uniqueness


def test_soft_bellman_is_a_gamma_contraction():
    mdp, r = _problem(gamma=0.8)
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(200):
        V = 10 * torch.randn(mdp.n_states, generator=gen, dtype=F64)
        W = 10 * torch.randn(mdp.n_states, generator=gen, dtype=F64)
        num = (bl.soft_bellman(mdp, r, V, 0.5) - bl.soft_bellman(mdp, r, W, 0.5)).abs().max()
        ratios.append(float(num / (V - W).abs().max()))
    assert max(ratios) <= 0.8 + 1e-12
    assert max(ratios) > 0.3  # the bound is not vacuous


def test_residuals_shrink_by_at_most_gamma_per_sweep():
    mdp, r = _problem(gamma=0.9)
    res = bl.soft_value_iteration(mdp, r, 1.0, V0=50 * torch.ones(mdp.n_states, dtype=F64))
    h = res.residuals
    ratios = h[1:] / h[:-1]
    # away from round-off (|V| ~ 50, so eps * |V| ~ 1e-14), the residual shrinks by <= gamma
    assert float(ratios[h[:-1] > 1e-6].max()) <= 0.9 + 1e-7
    assert float(ratios[h[:-1] > 1e-6][-1]) > 0.89  # and the rate is gamma: the bound is tight


def test_unique_fixed_point_from_random_starts():
    mdp, r = _problem(gamma=0.9)
    gen = torch.Generator().manual_seed(1)
    Vs = [
        bl.soft_policy_iteration(
            mdp, r, 0.2, V0=100 * torch.randn(mdp.n_states, generator=gen, dtype=F64)
        ).V
        for _ in range(5)
    ]
    for V in Vs[1:]:
        assert float((V - Vs[0]).abs().max()) < 1e-10


def test_dT_dV_is_gamma_P_pi_by_autograd():
    mdp, r = _problem(S=5, A=3)
    tau = 0.4
    V = torch.randn(5, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda v: bl.soft_bellman(mdp, r, v, tau), V)
    pi = bl.softmax_policy(bl.q_values(mdp, r, V), tau)
    assert torch.allclose(J, mdp.gamma * bl.transition_under(mdp, pi), atol=1e-12)


# ---------------------------------------------------------------- small temperatures, long horizons


def test_tiny_tau_and_gamma_close_to_one_stay_finite():
    mdp, r = _problem(S=10, A=5, gamma=0.999)
    r = 100 * r
    for solve in (bl.soft_value_iteration, bl.soft_policy_iteration):
        res = solve(mdp, r, 1e-3)
        for t in (res.V, res.Q, res.pi):
            assert torch.isfinite(t).all()
        assert res.converged
    T = bl.soft_bellman(mdp, r, 1e4 * torch.ones(10, dtype=F64), 1e-3)
    assert torch.isfinite(T).all()


def test_tau_to_zero_approaches_hard_bellman_within_bound():
    mdp, r = _problem(gamma=0.9)
    hard = bl.value_iteration(mdp, r, tol=1e-13).V
    log_a = math.log(mdp.n_actions)
    gaps = []
    for tau in (1.0, 0.1, 0.01, 0.001):
        V = bl.soft_policy_iteration(mdp, r, tau).V
        gap = V - hard
        assert float(gap.min()) >= -1e-10  # soft >= hard
        assert float(gap.max()) <= tau * log_a / (1 - mdp.gamma) + 1e-10
        gaps.append(float(gap.max()))
    assert gaps == sorted(gaps, reverse=True)


# ---------------------------------------------------------------- policy evaluation and visitation


def test_evaluate_policy_vector_reward_matches_columns_and_iterative():
    mdp, _ = _problem()
    pi = torch.softmax(torch.randn(8, 4, dtype=F64), -1)
    R = torch.randn(8, 4, 3, dtype=F64)
    V = bl.evaluate_policy(mdp, pi, R)
    assert V.shape == (8, 3)
    for j in range(3):
        assert torch.allclose(V[:, j], bl.evaluate_policy(mdp, pi, R[..., j]), atol=1e-13)
    V_it = bl.evaluate_policy(mdp, pi, R, method="iterative", tol=1e-13)
    assert torch.allclose(V, V_it, atol=1e-11)


def test_visitation_identities():
    mdp, r = _problem(gamma=0.9)
    pi = torch.softmax(torch.randn(8, 4, dtype=F64), -1)
    d = bl.state_visitation(mdp, pi)
    assert float(d.sum()) == pytest.approx(1 / (1 - mdp.gamma), rel=1e-12)
    assert float(bl.state_visitation(mdp, pi, normalize=True).sum()) == pytest.approx(
        1.0, rel=1e-12
    )
    J = bl.expected_return(mdp, pi, r)
    assert float(J) == pytest.approx(float(d @ bl.reward_under(pi, r)), rel=1e-12)
    tau = 0.7
    soft = bl.soft_return(mdp, pi, r, tau)
    assert float(soft) == pytest.approx(float(J + tau * d @ bl.entropy(pi)), rel=1e-12)


def test_optimal_policy_beats_perturbed_policies_in_every_state():
    mdp, r = _problem(gamma=0.9)
    tau = 0.3
    star = bl.soft_policy_iteration(mdp, r, tau)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        logits = torch.log(star.pi) + 0.5 * torch.randn(8, 4, generator=gen, dtype=F64)
        V = bl.evaluate_policy(mdp, torch.softmax(logits, -1), r, tau=tau)
        assert bool((V <= star.V + 1e-12).all())


def test_entropy_handles_zero_probabilities():
    pi = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=F64)
    assert torch.allclose(bl.entropy(pi), torch.tensor([0.0, math.log(2)], dtype=F64))


# ---------------------------------------------------------------- convergence warning and errors


def test_convergence_warning_when_max_iter_too_small():
    mdp, r = _problem(gamma=0.99)
    with pytest.warns(bl.ConvergenceWarning, match="max_iter=5"):
        res = bl.soft_value_iteration(mdp, r, 0.1, max_iter=5)
    assert not res.converged and res.n_iter == 5


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_rejects_non_positive_tau(tau):
    mdp, r = _problem()
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        bl.soft_value_iteration(mdp, r, tau)


def test_rejects_non_numeric_tau():
    mdp, r = _problem()
    with pytest.raises(TypeError, match="tau must be a real number"):
        bl.soft_bellman(mdp, r, torch.zeros(8), "1")


def test_rejects_reward_of_wrong_shape():
    mdp, _ = _problem()
    with pytest.raises(ValueError, match=r"r must have shape \[S, A\] = \[8, 4\]"):
        bl.soft_value_iteration(mdp, torch.zeros(4, 8), 0.1)


def test_rejects_values_of_wrong_shape():
    mdp, r = _problem()
    with pytest.raises(ValueError, match=r"V0 must have shape \[S\] = \[8\]"):
        bl.soft_value_iteration(mdp, r, 0.1, V0=torch.zeros(7))


def test_rejects_non_stochastic_policy():
    mdp, r = _problem()
    with pytest.raises(ValueError, match="pi must be a stochastic policy"):
        bl.evaluate_policy(mdp, torch.ones(8, 4), r)


def test_rejects_entropy_bonus_with_vector_reward():
    mdp, _ = _problem()
    pi = torch.full((8, 4), 0.25)
    with pytest.raises(ValueError, match="needs a scalar reward"):
        bl.evaluate_policy(mdp, pi, torch.zeros(8, 4, 2), tau=0.1)


def test_rejects_unknown_evaluation_method():
    mdp, r = _problem()
    with pytest.raises(ValueError, match="method must be 'exact' or 'iterative'"):
        bl.evaluate_policy(mdp, torch.full((8, 4), 0.25), r, method="magic")


def test_rejects_non_mdp():
    with pytest.raises(TypeError, match="mdp must be a TabularMDP"):
        bl.soft_value_iteration("mdp", torch.zeros(2, 2), 0.1)


def test_same_inputs_same_numbers():
    mdp, r = _problem(seed=9)
    a = bl.soft_value_iteration(mdp, r, 0.05)
    b = bl.soft_value_iteration(
        bl.random_mdp(8, 4, 9, gamma=0.9), bl.random_reward(8, 4, 109), 0.05
    )
    assert torch.equal(a.V, b.V) and a.n_iter == b.n_iter
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bl.soft_policy_iteration(mdp, r, 0.05)
