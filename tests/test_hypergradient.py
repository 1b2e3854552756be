"""Tests of birl_lite.hypergradient: (H1) = (H2) = finite differences = converged unrolled autograd."""

import numpy as np
import pytest
import torch

from birl_lite import (
    TabularMDP,
    evaluate_policy,
    expected_return,
    random_mdp,
    soft_policy_iteration,
)
from birl_lite.exercises.ch03 import check_adjoint, check_h1
from birl_lite.first_order import (
    hypergradient,
    hyperobjective,
    return_hypergradient,
    reward_jacobian,
    upper_gradients,
)
from birl_lite.reference_methods import (
    aid_hypergradient,
    finite_difference_hypergradient,
    logit_hessian,
    logit_objective,
    unrolled_hypergradient,
)

D = torch.float64
TAUS = (0.01, 0.1, 1.0, 10.0)
GAMMAS = (0.5, 0.9, 0.99)
N_CASES = 24


def rel(a, b):
    return float((a - b).norm() / b.norm())


def make_case(k):
    """Random instance k: small MDP, nonlinear reward_fn, one of three upper_fns."""
    rng = np.random.default_rng(1000 + k)
    S, A, n = int(rng.integers(2, 7)), int(rng.integers(2, 4)), int(rng.integers(1, 5))
    tau, gamma = TAUS[k % 4], GAMMAS[(k // 4) % 3]
    mdp = random_mdp(S, A, seed=k, gamma=gamma)
    F = torch.as_tensor(rng.normal(size=(S, A, n)), dtype=D)
    F2 = torch.as_tensor(rng.normal(size=(S, A, n)), dtype=D)
    c = torch.as_tensor(rng.uniform(size=(S, A)), dtype=D)
    x = torch.as_tensor(rng.normal(size=n), dtype=D)

    scale = min(1.0, 5.0 * tau)  # Q-gaps of a few tau: pi* is not saturated, grad phi not ~ 0

    def reward_fn(z):
        return scale * (torch.tanh(F @ z) + 0.2 * (F2 @ z) ** 2 / n + c * torch.sin(z).sum())

    kind = k % 3
    if kind == 0:  # reward design: - normalized return of a designer reward + regularizer

        def upper_fn(z, pi):
            return -(1 - mdp.gamma) * expected_return(mdp, pi, c) + 0.05 * (z**2).sum()

    elif kind == 1:  # the synthetic objective of [YGY]

        def upper_fn(z, pi):
            return 0.5 * (z**2).sum() + 0.5 * (pi**2).sum()

    else:  # x and pi coupled nonlinearly

        def upper_fn(z, pi):
            return (
                torch.log1p((pi * c).sum() ** 2) * torch.cos(z).sum() + (pi[:, 0] * z.sum()).mean()
            )

    return mdp, reward_fn, upper_fn, x, tau


@pytest.mark.parametrize("k", range(N_CASES))
def test_h1_h2_finite_differences(k):
    mdp, reward_fn, upper_fn, x, tau = make_case(k)
    h1 = hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H1")
    h2 = hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H2")
    fd = finite_difference_hypergradient(mdp, reward_fn, upper_fn, x, tau, eps=1e-5)
    assert h1.grad.shape == (x.numel(),) and h1.grad.dtype == D
    assert rel(h1.grad, h2.grad) <= 1e-10
    assert rel(h1.grad, fd.grad) <= 1e-6
    assert rel(h2.grad, fd.grad) <= 1e-6
    assert h1.info["forward_converged"] and h2.info["forward_residual"] <= h2.info["forward_tol"]
    assert float(h1.phi) == pytest.approx(float(fd.phi), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("k", [0, 2, 5, 7, 9, 11])
def test_converged_unrolled_autograd(k):
    mdp, reward_fn, upper_fn, x, tau = make_case(k)
    h2 = hypergradient(mdp, reward_fn, upper_fn, x, tau)
    # from the fixed point, the unrolled error decays like gamma^K
    K = int(np.ceil(np.log(1e-13) / np.log(mdp.gamma)))
    un = unrolled_hypergradient(mdp, reward_fn, upper_fn, x, tau, n_sweeps=K, V0=h2.V)
    assert rel(un.grad, h2.grad) <= 1e-9
    # from a cold start, too (more sweeps, same answer)
    un0 = unrolled_hypergradient(mdp, reward_fn, upper_fn, x, tau, n_sweeps=K + 200)
    assert rel(un0.grad, h2.grad) <= 1e-8


def test_unrolled_truncation_error_decays_geometrically():
    dense, reward_fn, upper_fn, x, tau = make_case(5)
    S, A = dense.n_states, dense.n_actions
    # a slowly mixing ("sticky") MDP: stay with probability 0.9, else move as in the dense one
    sticky = TabularMDP(
        0.9 * torch.eye(S, dtype=D).unsqueeze(1).expand(S, A, S) + 0.1 * dense.P, 0.9
    )
    h2 = hypergradient(sticky, reward_fn, upper_fn, x, tau)
    errs = [
        rel(unrolled_hypergradient(sticky, reward_fn, upper_fn, x, tau, K).grad, h2.grad)
        for K in (20, 40, 80)
    ]
    assert errs[0] > errs[1] > errs[2] > 0
    assert errs[2] < 1e-2 * errs[0]
    # the rate is at most gamma per sweep (here about gamma * 0.9 = 0.81)
    assert errs[2] / errs[1] < 0.9**40


@pytest.mark.parametrize("k", [1, 3, 6, 10, 20, 23])
def test_exact_and_iterative_solvers_agree(k):
    mdp, reward_fn, upper_fn, x, tau = make_case(k)
    ref = hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H2", linear_solver="exact")
    for form in ("H1", "H2"):
        for forward in ("policy_iteration", "value_iteration"):
            h = hypergradient(
                mdp,
                reward_fn,
                upper_fn,
                x,
                tau,
                form=form,
                linear_solver="iterative",
                forward=forward,
            )
            assert rel(h.grad, ref.grad) <= 1e-9, (form, forward)
    hi = hypergradient(mdp, reward_fn, upper_fn, x, tau, linear_solver="iterative")
    assert hi.info["linear_iterations"] >= 1 and hi.info["linear_residual"] < 1e-9


def test_h1_intermediates_match_finite_differences():
    mdp, reward_fn, upper_fn, x, tau = make_case(8)
    h1 = hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H1")
    eps = 1e-6
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = eps
        sp = soft_policy_iteration(mdp, reward_fn(x + e), tau, tol=1e-13)
        sm = soft_policy_iteration(mdp, reward_fn(x - e), tau, tol=1e-13)
        torch.testing.assert_close(
            h1.info["dV_dx"][:, i], (sp.V - sm.V) / (2 * eps), rtol=1e-6, atol=1e-7
        )
        torch.testing.assert_close(
            h1.info["dQ_dx"][..., i], (sp.Q - sm.Q) / (2 * eps), rtol=1e-6, atol=1e-7
        )
    # dV/dx is the policy evaluation of the vector reward grad_x r
    torch.testing.assert_close(
        h1.info["dV_dx"], evaluate_policy(mdp, h1.pi, h1.dr_dx), rtol=1e-12, atol=1e-12
    )


def test_upper_fn_without_x_dependence():
    mdp, reward_fn, _, x, tau = make_case(4)

    def upper_fn(z, pi):
        return (pi**3).sum()

    h = hypergradient(mdp, reward_fn, upper_fn, x, tau)
    assert h.info["direct_grad_norm"] == 0.0
    _, df_dx, _ = upper_gradients(upper_fn, x, h.pi)
    assert torch.equal(df_dx, torch.zeros_like(x))
    fd = finite_difference_hypergradient(mdp, reward_fn, upper_fn, x, tau)
    assert rel(h.grad, fd.grad) <= 1e-6
    assert float(h.grad.norm()) > 0


def test_upper_fn_without_pi_dependence_is_the_direct_gradient():
    mdp, reward_fn, _, x, tau = make_case(3)
    h = hypergradient(mdp, reward_fn, lambda z, pi: (z**2).sum(), x, tau)
    torch.testing.assert_close(h.grad, 2 * x, rtol=0, atol=0)
    h0 = hypergradient(mdp, reward_fn, lambda z, pi: torch.tensor(1.5, dtype=D), x, tau)
    assert torch.equal(h0.grad, torch.zeros_like(x)) and float(h0.phi) == 1.5


@pytest.mark.parametrize("k", [0, 3, 6, 9])
def test_return_hypergradient_visitation_form(k):
    mdp, reward_fn, _, x, tau = make_case(k)
    r_U = torch.as_tensor(
        np.random.default_rng(k).uniform(size=(mdp.n_states, mdp.n_actions)), dtype=D
    )
    h = hypergradient(mdp, reward_fn, lambda z, pi: -expected_return(mdp, pi, r_U), x, tau)
    for use_advantage in (True, False):
        g = return_hypergradient(mdp, reward_fn, r_U, x, tau, use_advantage=use_advantage)
        assert rel(g.grad, h.grad) <= 1e-9
        assert float(g.phi) == pytest.approx(float(h.phi), rel=1e-12)


def test_hyperobjective_and_result_fields():
    mdp, reward_fn, upper_fn, x, tau = make_case(2)
    h = hypergradient(mdp, reward_fn, upper_fn, x, tau)
    phi = hyperobjective(mdp, reward_fn, upper_fn, x, tau)
    assert phi.ndim == 0 and float(phi) == pytest.approx(float(h.phi), rel=1e-12, abs=1e-14)
    S, A, n = mdp.n_states, mdp.n_actions, x.numel()
    assert h.V.shape == (S,) and h.Q.shape == (S, A) and h.pi.shape == (S, A)
    assert h.dr_dx.shape == (S, A, n)
    torch.testing.assert_close(h.pi.sum(-1), torch.ones(S, dtype=D))
    phi_vi = hyperobjective(mdp, reward_fn, upper_fn, x, tau, forward="value_iteration")
    assert float(phi_vi) == pytest.approx(float(phi), rel=1e-9, abs=1e-12)


def test_deterministic():
    mdp, reward_fn, upper_fn, x, tau = make_case(7)
    a = hypergradient(mdp, reward_fn, upper_fn, x, tau)
    b = hypergradient(mdp, reward_fn, upper_fn, x, tau)
    assert torch.equal(a.grad, b.grad)


def test_reward_jacobian_modes_agree():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, 8, generator=g, dtype=D)
    x = torch.randn(8, generator=g, dtype=D)

    def fn(z):
        return torch.sin(W @ z)

    ref = torch.autograd.functional.jacobian(fn, x)
    torch.testing.assert_close(reward_jacobian(fn, x), ref)  # n = 8 > S*A = 6: reverse mode
    torch.testing.assert_close(
        reward_jacobian(lambda z: fn(z)[:, :1].expand(3, 2) * 1.0, x).shape, ref.shape
    )

    def not_functorch(z):  # calls .item(): torch.func cannot trace it, the fallback can
        return torch.sin(W @ z) * float(z.sum().item() ** 0)

    torch.testing.assert_close(reward_jacobian(not_functorch, x), ref)


def test_bad_inputs_raise_clear_errors():
    mdp, reward_fn, upper_fn, x, tau = make_case(1)
    S, A = mdp.n_states, mdp.n_actions
    with pytest.raises(ValueError, match=r"reward_fn\(x\) must return shape \[S, A\]"):
        hypergradient(mdp, lambda z: torch.zeros(S, A + 1, dtype=D) + z.sum(), upper_fn, x, tau)
    with pytest.raises(TypeError, match="reward_fn"):
        hypergradient(mdp, lambda z: np.zeros((S, A)), upper_fn, x, tau)
    with pytest.raises(ValueError, match=r"upper_fn\(x, pi\) must return a scalar"):
        hypergradient(mdp, reward_fn, lambda z, pi: pi.sum(-1), x, tau)
    for bad_tau in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="tau"):
            hypergradient(mdp, reward_fn, upper_fn, x, bad_tau)
    with pytest.raises(ValueError, match="x must be a 1-D"):
        hypergradient(mdp, reward_fn, upper_fn, x.reshape(1, -1), tau)
    with pytest.raises(ValueError, match="x must be a 1-D"):
        hyperobjective(mdp, reward_fn, upper_fn, torch.tensor(1.0, dtype=D), tau)
    with pytest.raises(ValueError, match="form"):
        hypergradient(mdp, reward_fn, upper_fn, x, tau, form="H3")
    with pytest.raises(ValueError, match="linear_solver"):
        hypergradient(mdp, reward_fn, upper_fn, x, tau, linear_solver="cg")
    with pytest.raises(ValueError, match="forward"):
        hypergradient(mdp, reward_fn, upper_fn, x, tau, forward="newton")
    with pytest.raises(TypeError, match="mdp"):
        hypergradient("mdp", reward_fn, upper_fn, x, tau)
    with pytest.raises(ValueError, match="reward_fn.*finite"):
        hypergradient(mdp, lambda z: torch.full((S, A), float("nan"), dtype=D), upper_fn, x, tau)
    with pytest.raises(ValueError, match="upper_fn"):
        unrolled_hypergradient(mdp, reward_fn, lambda z, pi: pi, x, tau, 3)
    with pytest.raises(ValueError, match="eps"):
        finite_difference_hypergradient(mdp, reward_fn, upper_fn, x, tau, eps=0.0)


# --------------------------------------------------------------------------------------------
# The Hessian-based AID reference in logit space
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 14])
def test_aid_pinv_matches_first_order_at_the_optimum(k):
    mdp, reward_fn, upper_fn, x, tau = make_case(k)
    h2 = hypergradient(mdp, reward_fn, upper_fn, x, tau)
    aid = aid_hypergradient(mdp, reward_fn, upper_fn, x, tau)
    assert rel(aid.grad, h2.grad) <= 1e-7
    assert aid.info["stationarity"] < 1e-9
    assert aid.info["n_null"] >= mdp.n_states
    # damping makes the system non-singular but biases the answer
    damped = aid_hypergradient(mdp, reward_fn, upper_fn, x, tau, damping=1e-2, method="solve")
    assert rel(damped.grad, h2.grad) > 1e-6


def test_logit_hessian_singular_and_indefinite():
    mdp = random_mdp(4, 3, seed=3, gamma=0.9)
    r = torch.as_tensor(np.random.default_rng(3).uniform(size=(4, 3)), dtype=D)
    tau = 0.5
    sol = soft_policy_iteration(mdp, r, tau, tol=1e-13)
    theta_star = torch.log(sol.pi)
    H = logit_hessian(mdp, r, tau, theta_star)
    assert H.shape == (12, 12)
    # per-state constants are in the null space (softmax shift invariance)
    for s in range(4):
        e = torch.zeros(4, 3, dtype=D)
        e[s] = 1.0
        assert float((H @ e.reshape(-1)).abs().max()) < 1e-12
    # at the optimum: negative semi-definite, with exactly S null directions
    ev = torch.linalg.eigvalsh(H)
    assert float(ev.max()) < 1e-10 and int((ev.abs() < 1e-10).sum()) == 4
    # the optimum is stationary; Hessian matches finite differences of the gradient
    th = theta_star.reshape(-1).clone().requires_grad_(True)
    (gJ,) = torch.autograd.grad(logit_objective(mdp, r, tau, th), th)
    assert float(gJ.abs().max()) < 1e-10
    # away from the optimum the Hessian is indefinite
    theta = torch.as_tensor(np.random.default_rng(0).normal(scale=3.0, size=(4, 3)), dtype=D)
    ev_far = torch.linalg.eigvalsh(logit_hessian(mdp, r, tau, theta))
    assert float(ev_far.max()) > 1e-3 and float(ev_far.min()) < -1e-3


def test_logit_hessian_matches_finite_differences():
    mdp = random_mdp(3, 2, seed=5, gamma=0.8)
    r = torch.as_tensor(np.random.default_rng(5).uniform(size=(3, 2)), dtype=D)
    theta = torch.as_tensor(np.random.default_rng(6).normal(size=6), dtype=D)
    H = logit_hessian(mdp, r, 0.7, theta)

    def grad_at(t):
        t = t.clone().requires_grad_(True)
        return torch.autograd.grad(logit_objective(mdp, r, 0.7, t), t)[0]

    eps = 1e-6
    for i in range(6):
        e = torch.zeros(6, dtype=D)
        e[i] = eps
        torch.testing.assert_close(
            H[:, i], (grad_at(theta + e) - grad_at(theta - e)) / (2 * eps), rtol=1e-6, atol=1e-8
        )


# --------------------------------------------------------------------------------------------
# Exercise checkers
# --------------------------------------------------------------------------------------------


def _h1_reference(mdp, pi, tau, dr_dx, df_dx, df_dpi):
    dV = evaluate_policy(mdp, pi, dr_dx)
    dQ = dr_dx + mdp.gamma * mdp.expect_next(dV)
    return df_dx + torch.einsum("sa,san->n", pi * df_dpi, dQ - dV.unsqueeze(1)) / tau


def _adjoint_reference(mdp, pi, G):
    b = G.sum(1) - mdp.gamma * torch.einsum("sa,sat->t", G, mdp.P)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    return torch.linalg.solve(torch.eye(mdp.n_states, dtype=D) - mdp.gamma * P_pi.T, b)


def test_check_h1_accepts_reference_rejects_wrong(capsys):
    assert check_h1(_h1_reference)
    assert "PASS" in capsys.readouterr().out

    def forgot_tau(mdp, pi, tau, dr_dx, df_dx, df_dpi):
        return _h1_reference(mdp, pi, 1.0, dr_dx, df_dx, df_dpi)

    assert not check_h1(forgot_tau)
    assert "FAIL" in capsys.readouterr().out

    def immediate_only(mdp, pi, tau, dr_dx, df_dx, df_dpi):  # the truncation of the model-free code
        Phi = torch.einsum("sa,san->sn", pi, dr_dx)
        return df_dx + torch.einsum("sa,san->n", pi * df_dpi, dr_dx - Phi.unsqueeze(1)) / tau

    assert not check_h1(immediate_only)
    assert not check_h1(lambda *args: torch.zeros(3))


def test_check_adjoint_accepts_reference_rejects_wrong(capsys):
    assert check_adjoint(_adjoint_reference)
    assert "PASS" in capsys.readouterr().out

    def no_transpose(mdp, pi, G):
        b = G.sum(1) - mdp.gamma * torch.einsum("sa,sat->t", G, mdp.P)
        P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
        return torch.linalg.solve(torch.eye(mdp.n_states, dtype=D) - mdp.gamma * P_pi, b)

    assert not check_adjoint(no_transpose)
    assert "FAIL" in capsys.readouterr().out

    def raises(mdp, pi, G):
        raise RuntimeError("boom")

    assert not check_adjoint(raises)
