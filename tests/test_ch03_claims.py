"""Claims of chapter 3 that the chapter's text relies on, each with a control that fails.

* Section 3.6: the adjoint ``w`` of (H2) is the vector-Jacobian product of ``b`` with policy
  evaluation (reverse mode through the solve and through unrolled sweeps), and with ``b = rho`` the
  same solve is the visitation ``d``; the solve without the transpose is not ``w``.
* Section 3.10: on the four-rooms instance of the cost figure the lower level matters (the share of
  the hypergradient through the policy is close to 1, while under the 0.1 shaping it is about 1e-8),
  the first-order hypergradient agrees with an independent reference (autograd through 4000
  unrolled sweeps), and the tail of unrolling decays like ``(gamma |lambda_2|)^K`` (``gamma^K`` when
  ``|lambda_2| = 1``).
"""

import math

import numpy as np
import pytest
import torch

import birl_lite as bl
from birl_lite.first_order import hypergradient, upper_gradients
from birl_lite.reference_methods import unrolled_hypergradient

D = torch.float64


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def shaping_problem(mdp, r_env, n=8, seed=0, scale=0.1, ridge=1e-5):
    """The reward shaping of chapter 3, section 3.10."""
    g = np.random.default_rng(seed)
    F = torch.as_tensor(g.normal(size=(mdp.n_states, mdp.n_actions, n)), dtype=D)
    x = torch.as_tensor(g.normal(size=n), dtype=D)

    def reward_fn(z):
        return r_env + scale * torch.tanh(F @ z)

    def upper_fn(z, pi):
        return -(1 - mdp.gamma) * bl.expected_return(mdp, pi, r_env) + ridge * (z**2).sum()

    return reward_fn, upper_fn, x


def second_eigenvalue(mdp, pi):
    ev = torch.linalg.eigvals(bl.transition_under(mdp, pi)).abs().sort(descending=True).values
    return float(ev[1])


@pytest.fixture(scope="module")
def rooms():
    return bl.four_rooms(gamma=0.99)


def test_adjoint_is_reverse_mode_through_policy_evaluation():
    mdp = bl.random_mdp(7, 3, seed=3, gamma=0.9)
    g = np.random.default_rng(3)
    pi = torch.softmax(torch.as_tensor(g.normal(size=(7, 3)), dtype=D), -1)
    G = torch.as_tensor(g.normal(size=(7, 3)), dtype=D)
    b = G.sum(1) - mdp.gamma * torch.einsum("sa,sat->t", G, mdp.P)
    P_pi = bl.transition_under(mdp, pi)
    eye = torch.eye(7, dtype=D)
    w = torch.linalg.solve((eye - mdp.gamma * P_pi).T, b)
    u = torch.as_tensor(g.normal(size=7), dtype=D)

    _, vjp = torch.func.vjp(lambda v: torch.linalg.solve(eye - mdp.gamma * P_pi, v), u)
    assert rel_err(vjp(b)[0], w) < 1e-13

    def sweeps(v):
        V = torch.zeros_like(v)
        for _ in range(800):
            V = v + mdp.gamma * P_pi @ V
        return V

    _, vjp = torch.func.vjp(sweeps, u)
    assert rel_err(vjp(b)[0], w) < 1e-13
    d = torch.linalg.solve((eye - mdp.gamma * P_pi).T, mdp.rho)
    assert rel_err(d, bl.state_visitation(mdp, pi)) < 1e-13
    # control: without the transpose the solve is not the adjoint
    assert rel_err(torch.linalg.solve(eye - mdp.gamma * P_pi, b), w) > 1e-2


def test_cost_instance_depends_on_the_lower_level(rooms):
    rf, uf, x0 = shaping_problem(rooms.mdp, rooms.r, scale=0.003)
    h = hypergradient(rooms.mdp, rf, uf, x0, 0.1, tol=1e-15)
    _, df_dx, _ = upper_gradients(uf, x0, h.pi)
    assert rel_err(df_dx, h.grad) > 0.5  # the control that ignores the lower level fails
    assert float(bl.expected_return(rooms.mdp, h.pi, rooms.r)) > 0.1
    # the 0.1 shaping the figure no longer uses: the hypergradient is the ridge term alone
    rf, uf, x0 = shaping_problem(rooms.mdp, rooms.r, scale=0.1, ridge=5e-4)
    h = hypergradient(rooms.mdp, rf, uf, x0, 0.1, tol=1e-15)
    _, df_dx, _ = upper_gradients(uf, x0, h.pi)
    assert rel_err(df_dx, h.grad) < 1e-6


def test_first_order_agrees_with_independent_unrolled_reference(rooms):
    rf, uf, x0 = shaping_problem(rooms.mdp, rooms.r, scale=0.003)
    h = hypergradient(rooms.mdp, rf, uf, x0, 0.1, tol=1e-15)
    ref = unrolled_hypergradient(rooms.mdp, rf, uf, x0, 0.1, 4000)
    assert rel_err(h.grad, ref.grad) < 1e-11
    _, df_dx, _ = upper_gradients(uf, x0, h.pi)
    assert rel_err(df_dx, ref.grad) > 0.5


@pytest.mark.parametrize(
    ("scale", "ridge", "lam2_is_one"), [(0.003, 1e-5, False), (0.1, 5e-4, True)]
)
def test_unrolled_tail_rate_is_gamma_times_lambda2(rooms, scale, ridge, lam2_is_one):
    rf, uf, x0 = shaping_problem(rooms.mdp, rooms.r, scale=scale, ridge=ridge)
    h = hypergradient(rooms.mdp, rf, uf, x0, 0.1, tol=1e-15)
    lam2 = second_eigenvalue(rooms.mdp, h.pi)
    assert (abs(lam2 - 1.0) < 1e-8) == lam2_is_one
    e = [
        rel_err(unrolled_hypergradient(rooms.mdp, rf, uf, x0, 0.1, K).grad, h.grad)
        for K in (400, 800)
    ]
    rate = (e[1] / e[0]) ** (1 / 400)
    assert math.isclose(rate, rooms.mdp.gamma * lam2, rel_tol=3e-3)
    if not lam2_is_one:  # the rate is measurably faster than gamma
        assert rate < rooms.mdp.gamma - 0.01
