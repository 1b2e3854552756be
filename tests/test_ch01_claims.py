"""Claims derived in chapter 1, checked independently of the notebook.

* (eq-soft-pdl): ``V* - V^pi = (I - gamma P_pi)^{-1} tau KL(pi || pi*) >= 0`` for every policy, and
  its average over ``rho``, (eq-soft-gap-rho): ``J* - J(pi) = tau sum_s d_pi(s) KL(pi_s || pi*_s)``
  with the *unnormalized* visitation.
* (eq-logit-hessian): at the maximizer the Hessian of ``J(theta) = rho^T V^{softmax theta}`` is
  ``-tau blockdiag_s(d(s) (diag pi_s - pi_s pi_s^T))``, compared with the autograd Hessian
  :func:`birl_lite.reference_methods.logit_hessian`; ``S`` zero eigenvalues when every state is
  visited, ``A - 1`` more for each unvisited state (the 4-state counterexample has 6, not 4).
"""

import pytest
import torch

import birl_lite as bl
from birl_lite.reference_methods import logit_hessian, logit_objective


def closed_form_hessian(pi, d, tau):
    blocks = [d[s] * (torch.diag(p) - torch.outer(p, p)) for s, p in enumerate(pi)]
    return -tau * torch.block_diag(*blocks)


def n_zero_eigenvalues(H, tol=1e-10):
    return int((torch.linalg.eigvalsh(H).abs() <= tol).sum())


def unreachable_state_mdp(base, hidden):
    """``base`` with no transition into the states ``hidden`` and ``rho = 0`` there."""
    P, rho = base.P.clone(), base.rho.clone()
    P[:, :, hidden] = 0.0
    P = P / P.sum(-1, keepdim=True)
    rho[hidden] = 0.0
    return bl.TabularMDP(P, gamma=base.gamma, rho=rho / rho.sum())


@pytest.mark.parametrize(
    ("S", "A", "gamma", "tau", "seed"),
    [(4, 3, 0.9, 0.5, 11), (6, 2, 0.5, 0.1, 1), (5, 4, 0.95, 2.0, 2)],
)
def test_logit_hessian_closed_form_at_the_optimum(S, A, gamma, tau, seed):
    mdp = bl.random_mdp(S, A, seed=seed, gamma=gamma)
    r = bl.random_reward(S, A, seed=seed + 100)
    pi = bl.soft_policy_iteration(mdp, r, tau, tol=1e-13).pi
    H = logit_hessian(mdp, r, tau, torch.log(pi))
    d = bl.state_visitation(mdp, pi)
    assert float(d.sum()) == pytest.approx(1 / (1 - gamma))
    assert torch.allclose(H, closed_form_hessian(pi, d, tau), atol=1e-12, rtol=0)
    # the normalized visitation is off by the factor 1 - gamma: the test can fail
    d_normalized = bl.state_visitation(mdp, pi, normalize=True)
    assert not torch.allclose(H, closed_form_hessian(pi, d_normalized, tau), atol=1e-6)
    # every state visited: S zero eigenvalues (one constant per state), the rest negative
    eig = torch.linalg.eigvalsh(H)
    assert n_zero_eigenvalues(H) == S
    assert int((eig < -1e-10).sum()) == S * (A - 1)


def test_logit_hessian_closed_form_fails_away_from_the_optimum():
    """The closed form uses the optimality of pi (KL expansion around pi*): elsewhere it is wrong."""
    mdp = bl.random_mdp(4, 3, seed=11, gamma=0.9)
    r = bl.random_reward(4, 3, seed=12)
    pi = bl.soft_policy_iteration(mdp, r, 0.5, tol=1e-13).pi
    theta = torch.log(pi) + torch.randn(
        4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    other = torch.softmax(theta, -1)
    H = logit_hessian(mdp, r, 0.5, theta)
    assert not torch.allclose(
        H, closed_form_hessian(other, bl.state_visitation(mdp, other), 0.5), atol=1e-3
    )


def test_unvisited_state_adds_zero_eigenvalues_and_a_second_maximizer():
    """The chapter's counterexample: 4 states, 3 actions, state 3 never visited -> 6 zeros, not 4."""
    base = bl.random_mdp(4, 3, seed=11, gamma=0.9)
    r = bl.random_reward(4, 3, seed=12)
    tau = 0.5
    mdp = unreachable_state_mdp(base, [3])
    pi = bl.soft_policy_iteration(mdp, r, tau, tol=1e-13).pi
    d = bl.state_visitation(mdp, pi)
    assert float(d[3]) == 0.0 and bool((d[:3] > 0).all())
    H = logit_hessian(mdp, r, tau, torch.log(pi))
    assert torch.allclose(H, closed_form_hessian(pi, d, tau), atol=1e-12, rtol=0)
    assert n_zero_eigenvalues(H) == 6
    assert (
        n_zero_eigenvalues(
            logit_hessian(base, r, tau, torch.log(bl.soft_policy_iteration(base, r, tau).pi))
        )
        == 4
    )
    # a different policy in state 3 is an equally good maximizer of J
    theta = torch.log(pi)
    other = theta.clone()
    other[3] = torch.tensor([4.0, -4.0, 0.0])
    assert float(logit_objective(mdp, r, tau, other)) == pytest.approx(
        float(logit_objective(mdp, r, tau, theta)), abs=1e-12
    )


@pytest.mark.parametrize("n_hidden", [1, 2])
def test_zero_eigenvalue_count_with_unvisited_states(n_hidden):
    S, A, tau = 6, 4, 0.3
    mdp = unreachable_state_mdp(bl.random_mdp(S, A, seed=5, gamma=0.8), list(range(n_hidden)))
    r = bl.random_reward(S, A, seed=6)
    pi = bl.soft_policy_iteration(mdp, r, tau, tol=1e-13).pi
    H = logit_hessian(mdp, r, tau, torch.log(pi))
    assert torch.allclose(
        H, closed_form_hessian(pi, bl.state_visitation(mdp, pi), tau), atol=1e-12, rtol=0
    )
    assert n_zero_eigenvalues(H) == S + (A - 1) * n_hidden


def test_soft_performance_difference_identities():
    mdp = bl.random_mdp(12, 3, seed=3, gamma=0.9)
    r = bl.random_reward(12, 3, seed=4)
    tau = 0.2
    star = bl.soft_policy_iteration(mdp, r, tau, tol=1e-13)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        pi = torch.softmax(torch.randn(12, 3, generator=gen, dtype=torch.float64), -1)
        V = bl.evaluate_policy(mdp, pi, r, tau=tau)
        kl = (pi * (torch.log(pi) - torch.log(star.pi))).sum(1)
        # (eq-soft-pdl), written as a linear solve
        lhs = star.V - V
        rhs = torch.linalg.solve(
            torch.eye(12, dtype=torch.float64) - mdp.gamma * bl.transition_under(mdp, pi), tau * kl
        )
        assert torch.allclose(lhs, rhs, atol=1e-11)
        assert bool((lhs > 0).all())
        # the one-step gap of the derivation is tau KL: T V* - (r_pi + tau H(pi) + gamma P_pi V*)
        one_step = (pi * (star.Q - tau * torch.log(pi))).sum(1)
        assert torch.allclose(bl.soft_bellman(mdp, r, star.V, tau) - one_step, tau * kl, atol=1e-11)
        # (eq-soft-gap-rho) with the unnormalized visitation
        d = bl.state_visitation(mdp, pi)
        assert float(mdp.rho @ lhs) == pytest.approx(float(tau * d @ kl), abs=1e-11)
