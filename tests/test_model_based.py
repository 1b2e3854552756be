"""Tests of birl_lite.model_based: M-SoBiRL and its exact variant.

The algorithm is chapter 4, equation (eq-ch4-msobirl).
"""

import math

import pytest
import torch

from birl_lite.exercises.ch04 import check_adjoint_step
from birl_lite.first_order import hypergradient
from birl_lite.model_based import MSoBiRLConfig, amortized_adjoint_step, m_sobirl
from birl_lite.problems import BilevelProblem, reward_design_problem, synthetic_problem
from birl_lite.soft import soft_policy_iteration, transition_under

D = torch.float64


def reference_m_sobirl(problem, beta, zeta, n_sweeps, n_adjoint_steps, max_iter, seed, exact=False):
    """Chapter 4, equation (eq-ch4-msobirl), written plainly: dense matrices, autograd gradients."""
    mdp, tau = problem.mdp, problem.tau
    S, A = mdp.n_states, mdp.n_actions
    P, gamma = mdp.P, mdp.gamma
    x = problem.x0.clone()
    V = torch.zeros(S, dtype=D)
    w = torch.randn(S, generator=torch.Generator().manual_seed(seed), dtype=D)
    eye = torch.eye(S, dtype=D)

    def r_of(x):
        return problem.reward_fn(x).detach()

    if exact:
        V = soft_policy_iteration(mdp, r_of(x), tau, V, tol=1e-13).V
    xs = [x.clone()]
    for _ in range(max_iter):
        Q = r_of(x) + gamma * torch.einsum("sat,t->sa", P, V)
        pi = torch.softmax(Q / tau, dim=1)
        xg = x.clone().requires_grad_(True)
        pig = pi.clone().requires_grad_(True)
        f = problem.upper_fn(xg, pig)
        df_dx, df_dpi = torch.autograd.grad(f, (xg, pig))
        G = pi * df_dpi
        b = torch.zeros(S, dtype=D)
        for s in range(S):
            for a in range(A):
                b += G[s, a] * (eye[s] - gamma * P[s, a])
        P_pi = torch.einsum("sa,sat->st", pi, P)
        Amat = (eye - gamma * P_pi).T
        if exact:
            w = torch.linalg.solve(Amat, b)
        else:
            for _ in range(n_adjoint_steps):
                w = w - zeta * (Amat.T @ (Amat @ w - b))
        J = torch.func.jacrev(problem.reward_fn)(x)  # [S, A, n]
        Phi = torch.einsum("sa,san->sn", pi, J)
        h = df_dx + torch.einsum("sa,san->n", G, J) / tau - Phi.T @ w / tau
        x = x - beta * h
        if exact:
            V = soft_policy_iteration(mdp, r_of(x), tau, V, tol=1e-13).V
        else:
            for _ in range(n_sweeps):
                V = tau * torch.logsumexp(
                    (r_of(x) + gamma * torch.einsum("sat,t->sa", P, V)) / tau, dim=1
                )
        xs.append(x.clone())
    return torch.stack(xs)


@pytest.mark.parametrize(
    ("tau", "n_sweeps", "m", "exact"), [(1.0, 10, 1, False), (0.5, 3, 2, False), (1.0, 10, 1, True)]
)
def test_iterates_match_plain_reference(tau, n_sweeps, m, exact):
    problem = synthetic_problem(5, tau=tau)
    kwargs = dict(beta=8e-3, zeta=0.5, n_sweeps=n_sweeps, n_adjoint_steps=m, max_iter=150, seed=2)
    res = m_sobirl(problem, exact=exact, record_iterates=True, **kwargs)
    ref = reference_m_sobirl(problem, exact=exact, **kwargs)
    assert res.history.x.shape == ref.shape == (151, 100)
    err = float((res.history.x - ref).abs().max())
    assert err <= 1e-12 * max(1.0, float(ref.abs().max())), err


def test_generic_autograd_path_matches_analytic_path():
    p = synthetic_problem(4)
    generic = BilevelProblem(p.mdp, p.reward_fn, p.upper_fn, p.x0, p.tau)
    a = m_sobirl(p, max_iter=60, record_iterates=True)
    g = m_sobirl(generic, max_iter=60, record_iterates=True)
    assert float((a.history.x - g.history.x).abs().max()) <= 1e-11
    assert torch.allclose(a.history.f, g.history.f, rtol=1e-12, atol=1e-12)


def test_tuple_problem_is_accepted():
    p = synthetic_problem(4)
    res = m_sobirl((p.mdp, p.reward_fn, p.upper_fn, p.x0, p.tau), max_iter=5)
    assert res.n_iter == 5 and res.history.f.shape == (6,)


@pytest.mark.parametrize("exact", [False, True])
def test_reaches_global_optimum_on_synthetic_problem(exact):
    p = synthetic_problem(1)
    res = m_sobirl(p, exact=exact, max_iter=1500)
    f = res.history.f
    assert float(f[0]) > 40.0
    # f decreases (monotonically once the policy has settled) and reaches phi* = 1
    assert float(f[100]) < float(f[0]) and float(f[500]) < float(f[100])
    assert bool((f[300:].diff() <= 1e-12).all())
    assert abs(float(f[-1]) - 1.0) <= 1e-6
    assert abs(p.phi(res.x) - 1.0) <= 1e-6
    assert float(res.x.norm()) <= 2e-3
    # the first iteration with f - 1 <= 1e-4 is in the range the paper reports (805-811)
    first = int(torch.nonzero(f - 1.0 <= 1e-4)[0])
    assert 700 <= first <= 900, first


def test_reproducible_same_seed_same_numbers():
    a = m_sobirl(synthetic_problem(7), max_iter=100, seed=3)
    b = m_sobirl(synthetic_problem(7), max_iter=100, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.history.f, b.history.f)
    assert torch.equal(a.history.h_norm, b.history.h_norm)
    c = m_sobirl(synthetic_problem(7), max_iter=100, seed=4)  # another initial adjoint
    assert not torch.equal(a.x, c.x)


def test_small_temperature_stays_finite():
    p = synthetic_problem(3, tau=0.01)
    res = m_sobirl(p, max_iter=300)
    assert bool(torch.isfinite(res.history.f).all()) and bool(torch.isfinite(res.x).all())
    assert bool(torch.isfinite(res.V).all()) and bool(torch.isfinite(res.pi).all())
    ex = m_sobirl(p, max_iter=300, exact=True)
    assert bool(torch.isfinite(ex.history.f).all())
    assert float(ex.history.f[-1]) < 0.5 * float(ex.history.f[0])


def test_amortized_estimate_approaches_exact_hypergradient():
    p = synthetic_problem(2)
    res = m_sobirl(p, max_iter=700, record_iterates=True, record_true_grad=True)
    xs, beta = res.history.x, res.config.beta

    def rel_err(k):
        h_k = (xs[k] - xs[k + 1]) / beta
        g = hypergradient(p.mdp, p.reward_fn, p.upper_fn, xs[k], p.tau).grad
        return float((h_k - g).norm() / g.norm())

    early, late = rel_err(0), rel_err(600)
    assert early > 1e-2 and late < 1e-4 and late < 1e-3 * early
    # the recorded ||grad phi(x_k)|| is the exact one, and it goes to zero
    gn = res.history.grad_norm
    assert gn.shape == (701,)
    g0 = hypergradient(p.mdp, p.reward_fn, p.upper_fn, p.x0, p.tau).grad.norm()
    assert math.isclose(float(gn[0]), float(g0), rel_tol=1e-10)
    assert float(gn[-1]) < 1e-2 * float(gn[0])
    best = res.history.min_grad_norm_sq()
    assert bool((best.diff() <= 0).all())


def test_exact_variant_step_is_the_exact_hypergradient():
    p = synthetic_problem(6, tau=0.5)
    res = m_sobirl(p, max_iter=3, exact=True, record_iterates=True)
    xs = res.history.x
    for k in range(3):
        g = hypergradient(p.mdp, p.reward_fn, p.upper_fn, xs[k], p.tau).grad
        h = (xs[k] - xs[k + 1]) / res.config.beta
        assert float((h - g).norm() / g.norm()) <= 1e-9


def test_tol_stops_early():
    p = synthetic_problem(1)
    res = m_sobirl(p, max_iter=5000, tol=1e-3, exact=True)
    assert res.converged and res.n_iter < 5000
    assert float(res.history.h_norm[-1]) <= 1e-3 < float(res.history.h_norm[-2])


def test_reward_design_exact_variant_improves_the_designer_return():
    q = reward_design_problem()
    res = m_sobirl(q, exact=True, beta=0.3, max_iter=60)
    assert q.phi(res.x) < q.phi(q.x0) - 0.1


def test_adjoint_step_helper_and_its_fixed_point():
    g = torch.Generator().manual_seed(0)
    P_pi = torch.rand(6, 6, generator=g, dtype=D)
    P_pi /= P_pi.sum(1, keepdim=True)
    b = torch.randn(6, generator=g, dtype=D)
    A = (torch.eye(6, dtype=D) - 0.5 * P_pi).T
    w_star = torch.linalg.solve(A, b)
    assert torch.allclose(amortized_adjoint_step(P_pi, 0.5, w_star, b, 0.3), w_star, atol=1e-14)
    w = torch.zeros(6, dtype=D)
    for _ in range(1000):
        w = amortized_adjoint_step(P_pi, 0.5, w, b, 0.3)
    assert torch.allclose(w, w_star, atol=1e-10)


def test_exercise_checker_accepts_reference_and_rejects_wrong(capsys):
    assert check_adjoint_step(amortized_adjoint_step, n_cases=5)
    assert "PASS" in capsys.readouterr().out

    def wrong(P_pi, gamma, w, b, zeta):  # forgets the transpose in A
        A = torch.eye(P_pi.shape[0], dtype=D) - gamma * P_pi
        return w - zeta * (A.T @ (A @ w - b))

    assert not check_adjoint_step(wrong, n_cases=5)
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"beta": 0.0}, ValueError, "beta"),
        ({"zeta": -1.0}, ValueError, "zeta"),
        ({"beta": float("nan")}, ValueError, "beta"),
        ({"n_sweeps": 0}, ValueError, "n_sweeps"),
        ({"n_adjoint_steps": 1.5}, TypeError, "n_adjoint_steps"),
        ({"max_iter": -1}, ValueError, "max_iter"),
        ({"tol": -1e-3}, ValueError, "tol"),
        ({"exact": 1}, TypeError, "exact"),
        ({"learning_rate": 0.1}, TypeError, "unknown hyperparameter"),
    ],
)
def test_bad_config_gives_clear_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        m_sobirl(synthetic_problem(0), **{"max_iter": 2, **kwargs})


def test_bad_problems_give_clear_errors():
    p = synthetic_problem(0)
    with pytest.raises(TypeError, match="problem"):
        m_sobirl("not a problem")
    with pytest.raises(TypeError, match="config"):
        m_sobirl(p, config={"beta": 1.0})
    with pytest.raises(ValueError, match="x0"):
        m_sobirl(p, x0=torch.zeros(3))
    with pytest.raises(ValueError, match="w0"):
        m_sobirl(p, w0=torch.zeros(4))
    bad_r = BilevelProblem(
        p.mdp, lambda x: torch.zeros(3, 5, dtype=D) * x.sum(), p.upper_fn, p.x0, 1.0
    )
    with pytest.raises(ValueError, match="reward_fn"):
        m_sobirl(bad_r, max_iter=2)
    bad_f = BilevelProblem(p.mdp, p.reward_fn, lambda x, pi: pi.sum(1), p.x0, 1.0)
    with pytest.raises(ValueError, match="scalar"):
        m_sobirl(bad_f, max_iter=2)
    wrong_jac = BilevelProblem(
        p.mdp, p.reward_fn, p.upper_fn, p.x0, 1.0, reward_jacobian=lambda x: 2.0 * p.dr_dx(x)
    )
    with pytest.raises(ValueError, match="reward_jacobian"):
        m_sobirl(wrong_jac, max_iter=2)


def test_divergence_is_reported():
    p = synthetic_problem(0)
    with pytest.raises(FloatingPointError, match="beta"):
        m_sobirl(p, beta=50.0, max_iter=200)


def test_config_object_and_overrides():
    cfg = MSoBiRLConfig(max_iter=10, beta=1e-3)
    res = m_sobirl(synthetic_problem(0), cfg, n_sweeps=2)
    assert res.config.max_iter == 10 and res.config.beta == 1e-3 and res.config.n_sweeps == 2
    assert res.history.h_norm.shape == (10,) and res.history.time.shape == (10,)
    assert res.seconds_per_iter > 0
    assert torch.allclose(res.pi.sum(1), torch.ones(10, dtype=D))
    assert transition_under(synthetic_problem(0).mdp, res.pi).shape == (10, 10)
