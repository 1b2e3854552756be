"""Tests of the tabular core (birl_lite.kernels) and of sparse MDPs.

Each kernel against a brute-force formula; the sparse backend against the dense one on the same
instances (values, policy, visitation, hypergradient); the silent-wrong cases now raise.
"""

import importlib
import pkgutil
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import birl_lite
import birl_lite.first_order as fo
from birl_lite import kernels
from birl_lite.linear_solve import ConvergenceWarning
from birl_lite.mdp import TabularMDP, gridworld, random_layout, random_mdp, random_reward
from birl_lite.model_based import amortized_adjoint_step
from birl_lite.soft import (
    evaluate_policy,
    soft_policy_iteration,
    soft_value_iteration,
    state_visitation,
    transition_under,
)

D = torch.float64


def _instances():
    """(sparse MDP, reward) pairs: random supports and a slippery maze."""
    out = []
    for seed in range(3):
        mdp = random_mdp(40, 3, seed, gamma=0.95, support=(1, 6), sparse=True)
        out.append((mdp, random_reward(40, 3, seed + 10)))
    task = gridworld(random_layout(9, 11, 0, wall_fraction=0.2), gamma=0.97, slip=0.2, sparse=True)
    out.append((task.mdp, task.r))
    return out


# --------------------------------------------------------------------------------------------
# Kernels against brute force
# --------------------------------------------------------------------------------------------


def test_kernels_match_brute_force_formulas():
    mdp = random_mdp(7, 4, 0, gamma=0.9)
    trans, g, P = mdp.transitions, mdp.gamma, mdp.P
    r = random_reward(7, 4, 1)
    V = torch.randn(7, dtype=D, generator=torch.Generator().manual_seed(2))
    pi = torch.softmax(torch.randn(7, 4, dtype=D, generator=torch.Generator().manual_seed(3)), 1)
    G = torch.randn(7, 4, dtype=D, generator=torch.Generator().manual_seed(4))
    Q = r + g * torch.einsum("sat,t->sa", P, V)
    torch.testing.assert_close(kernels.q_values(trans, g, r, V), Q, rtol=0, atol=1e-14)
    torch.testing.assert_close(kernels.q_values(trans, g, r.reshape(-1), V), Q, rtol=0, atol=1e-14)
    Vn = torch.randn(7, 5, dtype=D)
    torch.testing.assert_close(
        kernels.q_values(trans, g, r[..., None] + torch.zeros(5, dtype=D), Vn),
        r[..., None] + g * torch.einsum("sat,tn->san", P, Vn),
    )
    for tau in (1e-3, 0.3, 1.0, 7.0):
        torch.testing.assert_close(
            kernels.soft_max(Q, tau), tau * torch.logsumexp(Q / tau, 1), rtol=1e-15, atol=1e-13
        )
        torch.testing.assert_close(kernels.softmax_policy(Q, tau), torch.softmax(Q / tau, 1))
    P_pi = torch.einsum("sa,sat->st", pi, P)
    torch.testing.assert_close(kernels.policy_kernel(trans, pi), P_pi, rtol=0, atol=1e-15)
    b = G.sum(1) - g * torch.einsum("sa,sat->t", G, P)
    torch.testing.assert_close(kernels.adjoint_rhs(trans, g, G), b, rtol=0, atol=1e-14)
    eye = torch.eye(7, dtype=D)
    r_pi = (pi * r).sum(1)
    torch.testing.assert_close(
        kernels.evaluate(trans, g, pi, r_pi), torch.linalg.solve(eye - g * P_pi, r_pi)
    )
    torch.testing.assert_close(
        kernels.visitation(trans, g, pi, mdp.rho), torch.linalg.solve(eye - g * P_pi.T, mdp.rho)
    )
    w = torch.randn(7, dtype=D)
    A = eye - g * P_pi.T
    torch.testing.assert_close(
        kernels.adjoint_gradient_step(P_pi, g, w, b, 0.3), w - 0.3 * A.T @ (A @ w - b)
    )
    torch.testing.assert_close(
        amortized_adjoint_step(P_pi, g, w, b, 0.3), w - 0.3 * A.T @ (A @ w - b)
    )


def test_soft_max_is_stable_for_tiny_tau_and_huge_values():
    Q = torch.tensor([[1e6, 1e6 - 1.0, -1e6], [0.0, 0.0, 0.0]], dtype=D)
    out = kernels.soft_max(Q, 1e-3)
    assert torch.isfinite(out).all()
    assert float((out[0] - 1e6).abs()) < 1e-9 and abs(float(out[1]) - 1e-3 * np.log(3)) < 1e-15


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")
def test_kernels_work_under_torch_func():
    mdp = random_mdp(5, 3, 0)
    trans, g = mdp.transitions, mdp.gamma
    r = random_reward(5, 3, 1)

    def J(theta):
        pi = torch.softmax(theta.reshape(5, 3), -1)
        r_pi = kernels.policy_reward(pi, r) + 0.5 * kernels.entropy(pi)
        return mdp.rho @ kernels.evaluate(trans, g, pi, r_pi)

    theta = torch.randn(15, dtype=D)
    H = torch.func.hessian(J)(theta)
    assert H.shape == (15, 15) and torch.allclose(H, H.T, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Sparse MDPs
# --------------------------------------------------------------------------------------------


def test_sparse_random_mdp_has_the_requested_supports_and_is_deterministic():
    mdp = random_mdp(500, 4, 3, support=7, sparse=True)
    P2 = mdp.P_sparse
    assert P2.shape == (2000, 500) and mdp.is_sparse
    assert (np.diff(P2.indptr) == 7).all()
    np.testing.assert_allclose(np.asarray(P2.sum(1)).ravel(), 1.0, rtol=0, atol=1e-14)
    again = random_mdp(500, 4, 3, support=7, sparse=True).P_sparse
    assert (P2 != again).nnz == 0
    small = random_mdp(6, 2, 0, support=(2, 4), sparse=True).P_sparse
    assert set(np.diff(small.indptr).tolist()) <= {2, 3, 4}


def test_sparse_gridworld_is_the_dense_gridworld():
    layout = random_layout(8, 10, 1, wall_fraction=0.25)
    for slip in (0.0, 0.2):
        dense = gridworld(layout, slip=slip, step_reward=-0.1)
        sparse = gridworld(layout, slip=slip, step_reward=-0.1, sparse=True)
        assert torch.equal(sparse.mdp.to_dense().P, dense.mdp.P)
        assert torch.equal(sparse.r, dense.r) and torch.equal(sparse.mdp.rho, dense.mdp.rho)
        assert sparse.cells == dense.cells


def test_sparse_mdp_validation_and_traps():
    with pytest.raises(ValueError, match="stochastic"):
        TabularMDP(sp.csr_matrix(np.full((4, 2), 0.3)), 0.9)
    with pytest.raises(ValueError, match="non-negative"):
        TabularMDP(sp.csr_matrix(np.array([[1.5, -0.5], [0.0, 1.0]])), 0.9)
    with pytest.raises(ValueError, match=r"\[S\*A, S\]"):
        TabularMDP(sp.csr_matrix(np.ones((3, 2)) / 2), 0.9)
    mdp = random_mdp(10, 2, 0, support=3, sparse=True)
    with pytest.raises(TypeError, match="sparsely"):
        _ = mdp.P
    with pytest.raises(ValueError, match="support"):
        random_mdp(10, 2, 0, sparse=True)
    r = random_reward(10, 2, 0).requires_grad_(True)
    with pytest.raises(TypeError, match="autograd does not flow through sparse"):
        soft_value_iteration(mdp, r, 0.5, max_iter=3)


@pytest.mark.parametrize("case", range(4))
def test_sparse_and_dense_paths_agree(case):
    mdp_s, r = _instances()[case]
    mdp_d = mdp_s.to_dense()
    tau = 0.2
    for solver in ("auto", "direct", "gmres"):
        sol_s = soft_policy_iteration(mdp_s, r, tau, tol=1e-12, linear_solver=solver)
        sol_d = soft_policy_iteration(mdp_d, r, tau, tol=1e-12)
        scale = float(sol_d.V.abs().max())
        assert float((sol_s.V - sol_d.V).abs().max()) <= 1e-10 * scale
        assert float((sol_s.pi - sol_d.pi).abs().max()) <= 1e-10
    pi = sol_d.pi
    assert isinstance(transition_under(mdp_s, pi), sp.csr_matrix)
    np.testing.assert_allclose(
        transition_under(mdp_s, pi).toarray(), transition_under(mdp_d, pi).numpy(), atol=1e-15
    )
    for method in ("exact", "iterative", "bicgstab"):
        torch.testing.assert_close(
            evaluate_policy(mdp_s, pi, r, tau=tau, method=method),
            evaluate_policy(mdp_d, pi, r, tau=tau),
            rtol=1e-9,
            atol=1e-9,
        )
    torch.testing.assert_close(state_visitation(mdp_s, pi), state_visitation(mdp_d, pi))

    S, A = mdp_s.n_states, mdp_s.n_actions
    feats = torch.randn(S, A, 5, generator=torch.Generator().manual_seed(case), dtype=D)

    def reward_fn(x):
        return r + torch.tanh(feats @ x)

    x = torch.linspace(-1, 1, 5, dtype=D)
    uf_s, uvg_s = fo.negative_return(mdp_s, r, ridge=0.1)
    uf_d, _ = fo.negative_return(mdp_d, r, ridge=0.1)
    ref = fo.hypergradient(mdp_d, reward_fn, uf_d, x, tau, form="H1")
    for form in ("H1", "H2"):
        h = fo.hypergradient(mdp_s, reward_fn, uf_s, x, tau, form=form, upper_value_and_grad=uvg_s)
        assert float((h.grad - ref.grad).abs().max()) <= 1e-8 * float(ref.grad.abs().max())


def test_negative_return_partials_match_autograd():
    mdp = random_mdp(8, 3, 0, gamma=0.9)
    r_U = random_reward(8, 3, 1)
    upper_fn, uvg = fo.negative_return(mdp, r_U, ridge=0.3)
    x = torch.randn(4, dtype=D)
    pi = torch.softmax(torch.randn(8, 3, dtype=D), 1)
    f, dx, dpi = fo.upper_gradients(upper_fn, x, pi)
    f2, dx2, dpi2 = uvg(x, pi)
    torch.testing.assert_close(f2, f)
    torch.testing.assert_close(dx2, dx)
    torch.testing.assert_close(dpi2, dpi)


# --------------------------------------------------------------------------------------------
# (H2) as one vector-Jacobian product, and the silent-wrong cases
# --------------------------------------------------------------------------------------------


def test_h2_never_forms_the_reward_jacobian():
    mdp = random_mdp(12, 3, 0)
    feats = torch.randn(12, 3, 50, dtype=D, generator=torch.Generator().manual_seed(0))

    def reward_fn(x):
        return torch.tanh(feats @ x)

    def upper_fn(x, pi):
        return (pi[:, 0] ** 2).sum() + (x**2).sum()

    x = 0.1 * torch.ones(50, dtype=D)
    h2 = fo.hypergradient(mdp, reward_fn, upper_fn, x, 0.5)
    assert h2._dr_dx is None and "vjp" in h2.info["timings"]
    h1 = fo.hypergradient(mdp, reward_fn, upper_fn, x, 0.5, form="H1")
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-10, atol=1e-12)
    assert h2.dr_dx.shape == (12, 3, 50)  # on demand


@pytest.mark.parametrize("form", ["H1", "H2"])
def test_reward_fn_leaving_autograd_raises(form):
    mdp = random_mdp(6, 2, 0)
    feats = torch.randn(6, 2, 2, dtype=D, generator=torch.Generator().manual_seed(0))

    def leaky_reward(x):  # the x[0] part is computed outside autograd
        return feats[..., 0] * x.detach()[0] + feats[..., 1] * x[1]

    def upper_fn(x, pi):
        return (pi[:, 0] ** 2).sum()

    x = torch.tensor([0.7, -0.3], dtype=D)
    with pytest.raises(ValueError, match="reward_fn.*leaves autograd"):
        fo.hypergradient(mdp, leaky_reward, upper_fn, x, 0.5, form=form)
    # the check can be switched off knowingly
    fo.hypergradient(mdp, leaky_reward, upper_fn, x, 0.5, form=form, check_reward=False)


def test_policy_iteration_is_not_flagged_at_huge_rewards():
    for scale in (1.0, 1e6, 1e9):
        mdp = random_mdp(30, 4, 0, gamma=0.99)
        r = random_reward(30, 4, 1) * scale
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            sol = soft_policy_iteration(mdp, r, 0.01)
        assert sol.converged and sol.n_iter < 50


def test_no_module_is_shadowed_by_a_function():
    """``import birl_lite.X`` must give the module X for every submodule (no name collisions)."""
    for info in pkgutil.walk_packages(birl_lite.__path__, "birl_lite."):
        mod = importlib.import_module(info.name)
        parent_name, _, child = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        assert getattr(parent, child) is mod, f"{info.name} is shadowed"
    assert isinstance(importlib.import_module("birl_lite.first_order"), type(birl_lite))


def test_negative_return_on_sparse_mdps_never_drops_the_policy_term():
    """Without its closed-form partials, f = -J_U cannot be differentiated in pi on a sparse MDP:
    the hypergradient raises instead of returning a gradient without the policy term."""
    mdp = random_mdp(20, 3, 0, support=4, sparse=True)
    r = random_reward(20, 3, 1)
    upper_fn, uvg = fo.negative_return(mdp, r)
    x = torch.zeros(3, dtype=D)
    feats = torch.randn(20, 3, 3, dtype=D, generator=torch.Generator().manual_seed(0))

    def reward_fn(z):
        return r + feats @ z

    with pytest.raises(TypeError, match="autograd does not flow through sparse"):
        fo.hypergradient(mdp, reward_fn, upper_fn, x, 0.3)
    h = fo.hypergradient(mdp, reward_fn, upper_fn, x, 0.3, upper_value_and_grad=uvg)
    assert float(h.grad.norm()) > 0
    assert float(fo.hyperobjective(mdp, reward_fn, upper_fn, x, 0.3)) == pytest.approx(float(h.phi))
