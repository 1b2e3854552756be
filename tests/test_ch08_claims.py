"""Claims of chapter 8 (sections 8.2 and 8.9-8.11) checked outside the notebook.

* The book's mixed-term estimator is unbiased on the exact tabular check; the BLPO authors'
  estimator (same-step residual weighted by the advantage) is not, at any scale; a sign-flipped
  book estimator fails the same check.
* With damping nu, the damped formula is the exact implicit gradient of the proximal follower
  L + (nu/2) ||w - w_k||^2.
* The per-step ratio in place of log pi is exact at theta_old only; the exact weight is a
  product of ratios.
* On 30 random instances the exact hypergradient is less aligned with the exact-advantage policy
  gradient than grad_theta J on most of them.
"""

import numpy as np
import pytest
import torch

from birl_lite.actor_critic.blpo import differentiable_gae
from birl_lite.actor_critic.rollout import discount_matrix
from birl_lite.actor_critic.tabular_check import (
    compare_estimators,
    estimator_stats,
    exact_advantage_gradient,
    exact_hypergradient,
    leader_alignment,
    per_step_ratio_expectation,
    ratio_weight_check,
    sample_trajectories,
    sampled_hypergradient,
    tabular_blpo_problem,
)

D = torch.float64


@pytest.fixture(scope="module")
def problem():
    return tabular_blpo_problem(seed=0)


def test_book_estimator_is_unbiased_and_the_authors_is_not(problem):
    exact = exact_hypergradient(problem)
    cmp = compare_estimators(problem, n=10_000, n_batches=10, seed=0)
    book, authors = cmp.mixed["book"], cmp.mixed["authors"]
    assert book.rel_bias < 0.3 and book.rel_bias < 3.5 * book.rel_bias_se
    assert book.cosine > 0.95
    # the authors' mixed term: biased far beyond its noise, and no rescaling removes it
    assert authors.rel_bias > 1.5 and authors.rel_bias > 20 * authors.rel_bias_se
    assert authors.cosine < 0.7 and authors.scaled_rel_bias > 0.6
    assert cmp.hypergradient["authors"].rel_bias > 3 * cmp.hypergradient["book"].rel_bias
    # the same check fails for a sign-flipped book estimator
    est = torch.stack(
        [
            sampled_hypergradient(problem, exact.w_star, 10_000, seed=b, u=exact.u).mixed
            for b in range(10)
        ]
    )
    same = estimator_stats(est, exact.mixed)
    assert abs(same.rel_bias - book.rel_bias) < 1e-12  # the comparison's own numbers
    flipped = estimator_stats(-est, exact.mixed)
    assert flipped.rel_bias > 1.5 and flipped.cosine < -0.95


def test_authors_tabular_estimator_is_autograd_of_their_f2(problem):
    """The tabular 'authors' mixed term is grad_theta (grad_w f2 . u) with
    f2 = 2 mean_t ratio_t A_t(w) (V_w(s_t) - G_t) (mean here, a sum in their code)."""
    exact = exact_hypergradient(problem)
    n, T, g = 300, problem.horizon, problem.mdp.gamma
    got = sampled_hypergradient(problem, exact.w_star, n, seed=3, u=exact.u, mixed_term="authors")
    traj = sample_trajectories(problem, n, 3)
    G = torch.zeros_like(traj.rewards)
    running = torch.zeros(n, dtype=D)
    for t in range(T - 1, -1, -1):
        running = traj.rewards[t] + g * running
        G[t] = running
    theta = problem.theta_old.clone().requires_grad_(True)
    w = exact.w_star.clone().requires_grad_(True)
    V, V_next = problem.phi[traj.states] @ w, problem.phi[traj.next_states] @ w
    M = torch.from_numpy(discount_matrix(np.zeros((T, 1)), g * problem.lam)).to(D).expand(n, T, T)
    A = differentiable_gae(V, V_next, traj.rewards, torch.zeros_like(V), M, g)
    logr = (torch.log_softmax(theta, -1) - torch.log_softmax(problem.theta_old, -1))[
        traj.states, traj.actions
    ]
    f2 = 2.0 * (logr.exp() * A * (V - G)).mean()
    (gw,) = torch.autograd.grad(f2, w, create_graph=True)
    (ref,) = torch.autograd.grad(gw @ exact.u, theta)
    torch.testing.assert_close(got.mixed, ref, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="mixed_term must be one of"):
        sampled_hypergradient(problem, exact.w_star, 10, mixed_term="paper")


@pytest.mark.parametrize("nu", [1.0, 50.0])
def test_damped_formula_is_the_proximal_followers_implicit_gradient(problem, nu):
    damped = exact_hypergradient(problem, damping=nu)
    assert float((damped.hypergradient - damped.total_derivative).abs().max()) < 1e-14
    # the damped formula is not the derivative through the undamped best response
    plain = exact_hypergradient(problem)
    gap = (damped.hypergradient - plain.total_derivative).norm() / plain.total_derivative.norm()
    assert float(gap) > 0.02
    with pytest.raises(ValueError, match="damping must be >= 0"):
        exact_hypergradient(problem, damping=-1.0)


def test_per_step_ratio_is_exact_at_theta_old_only(problem):
    exact = exact_hypergradient(problem)
    at_old = per_step_ratio_expectation(problem, problem.theta_old, exact.w_star, exact.u)
    assert float((at_old - exact.mixed).abs().max()) < 1e-15
    rows = ratio_weight_check(problem, steps=(0.0, 0.2, 1.0), n=10_000, n_batches=10, seed=0)
    assert rows[0].per_step_bias < 1e-12 and rows[0].mean_abs_log_ratio == 0.0
    assert 0.02 < rows[1].per_step_bias < 0.08  # 4% at E|log ratio| = 0.11
    assert rows[2].per_step_bias > 0.15
    for row in rows:
        # the sampled per-step estimates agree with the exact expectation of the estimator ...
        assert abs(row.per_step.rel_bias - row.per_step_bias) < 4 * row.per_step.rel_bias_se
        # ... and the product-of-ratios weight is unbiased, at a growing variance
        assert row.product.rel_bias < 4 * row.product.rel_bias_se
    assert rows[2].product.rel_std > 2 * rows[2].per_step.rel_std


def test_exact_advantage_gradient_matches_its_sampled_estimate(problem):
    """g* = E_old[(1/T) sum_t grad log pi(a_t|s_t) (G_t - y_t(s_t))]; the myopic return
    G_t = r_t (gamma = 0) fails the same check."""
    target = exact_advantage_gradient(problem)
    n, T, g = 40_000, problem.horizon, problem.mdp.gamma
    traj = sample_trajectories(problem, n, 1)
    y = problem.targets()
    theta = problem.theta_old.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)[traj.states, traj.actions]
    t_index = torch.arange(T)[:, None].expand(T, n)
    errors = []
    for gamma in (g, 0.0):
        G = torch.zeros_like(traj.rewards)
        running = torch.zeros(n, dtype=D)
        for t in range(T - 1, -1, -1):
            running = traj.rewards[t] + gamma * running
            G[t] = running
        adv = G - y[t_index, traj.states]
        (est,) = torch.autograd.grad((logp * adv).mean(), theta, retain_graph=True)
        errors.append(float((est - target).norm() / target.norm()))
    assert errors[0] < 0.02 and errors[1] > 0.05  # measured: 0.008 and 0.10


def test_hypergradient_is_less_aligned_than_the_policy_gradient_on_most_instances():
    res = leader_alignment(30, seed=0)
    assert len(res.seeds) == 30
    assert 24 <= res.count_less_aligned <= 29  # measured: 27
    assert bool((res.cos_policy_gradient > 0.9).all())
    assert bool((res.cos_hypergradient.abs() <= 1.0).all())
