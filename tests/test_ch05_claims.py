"""Claims of chapter 5 (model-free bilevel RL), each checked so that it could fail.

* the truncated estimator drops gamma (E_{s'|s,a} - E_{b~pi} E_{s'|s,b}) grad V*(s'), not
  gamma E[grad V*(s')] - grad V*(s); the gap is zero at gamma = 0;
* hypergradient_from_batch computes, for both centrings, the per-transition formula of its
  docstring (brute force), and both converge to the exact (H1) on a tiny MDP;
* when every sampled return is zero (the failure mode of the SoBiRL runs that stop reaching the
  goal) the return part of the estimate is exactly zero: only grad_x g is left;
* the sweep command writes one file per (setting, seed) and skips files that exist.
"""

import json

import numpy as np
import pytest
import torch

import birl_lite as bl
from birl_lite.exercises import check_truncation_gap
from birl_lite.first_order import return_hypergradient
from birl_lite.model_free import (
    fit_critic,
    hypergradient_from_batch,
    model_free_problem,
    sample_transitions,
)
from birl_lite.model_free.sweep import main as sweep_main
from birl_lite.model_free.sweep import small_map_design

D = torch.float64


def _instance(gamma=0.9, S=4, A=3, n=3, seed=0):
    mdp = bl.random_mdp(S, A, seed, gamma=gamma)
    r_U = bl.random_reward(S, A, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    Phi = torch.randn(S, A, n, generator=gen, dtype=D)
    x = torch.randn(n, generator=gen, dtype=D)

    def reward_fn(z):
        return torch.tanh(Phi @ z)

    exact = return_hypergradient(mdp, reward_fn, r_U, x, 0.5)
    return mdp, r_U, reward_fn, x, exact


def _dropped(P, gamma, pi, dr):
    S = P.shape[0]
    P_pi = torch.einsum("sa,sat->st", pi, P)
    dV = torch.linalg.solve(
        torch.eye(S, dtype=D) - gamma * P_pi, torch.einsum("sa,san->sn", pi, dr)
    )
    EdV = torch.einsum("sat,tn->san", P, dV)
    return gamma * (EdV - torch.einsum("sa,san->sn", pi, EdV)[:, None])


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
def test_truncation_drops_the_centred_propagated_term(gamma):
    mdp, _, _, _, exact = _instance(gamma)
    pi, dr, dQ = exact.pi, exact.dr_dx, exact.info["dQ_dx"]
    full = dQ - torch.einsum("sa,san->sn", pi, dQ)[:, None]
    trunc = dr - torch.einsum("sa,san->sn", pi, dr)[:, None]
    gap = full - trunc
    assert torch.allclose(gap, _dropped(mdp.P, gamma, pi, dr), atol=1e-12, rtol=0)
    # the formula the chapter used to print is a different quantity (except by accident)
    dV = torch.einsum("sa,san->sn", pi, dQ)
    old = gamma * torch.einsum("sat,tn->san", mdp.P, dV) - dV[:, None]
    assert float((old - gap).abs().max()) > 1e-2
    if gamma == 0.0:
        assert float(gap.abs().max()) == 0.0


def test_truncation_gap_checker_accepts_the_formula_and_rejects_the_old_one(capsys):
    assert check_truncation_gap(_dropped)
    assert "PASS" in capsys.readouterr().out

    def old(P, gamma, pi, dr):
        S = P.shape[0]
        P_pi = torch.einsum("sa,sat->st", pi, P)
        dV = torch.linalg.solve(
            torch.eye(S, dtype=D) - gamma * P_pi, torch.einsum("sa,san->sn", pi, dr)
        )
        return gamma * torch.einsum("sat,tn->san", P, dV) - dV[:, None]

    assert not check_truncation_gap(old)
    assert "FAIL" in capsys.readouterr().out


def _brute_force(batch, pi, crit_Q, B, tau, centring):
    """-(1/(tau E)) sum_t (Q(s_t,a_t) - centre_Q(s_t)) (B(s_t,a_t) - centre_B(s_t)), one loop."""
    S, A = pi.shape
    counts = np.zeros((S, A))
    for s, a in zip(batch.s, batch.a, strict=True):
        counts[s, a] += 1
    total = np.zeros(B.shape[2])
    for s, a in zip(batch.s, batch.a, strict=True):
        w = counts[s] / counts[s].sum() if centring == "empirical" else pi[s]
        q_bar = sum(w[b] * crit_Q[s, b] for b in range(A))
        b_bar = sum(w[b] * B[s, b] for b in range(A))
        total += (crit_Q[s, a] - q_bar) * (B[s, a] - b_bar)
    return -total / (tau * batch.n_episodes)


@pytest.mark.parametrize("centring", ["empirical", "policy"])
@pytest.mark.parametrize("estimator", ["full", "truncated"])
def test_estimator_is_the_per_transition_formula(centring, estimator):
    mdp, r_U, reward_fn, x, exact = _instance()
    env = bl.TabularEnv(mdp, r_U)
    pi = exact.pi
    batch = sample_transitions(env, pi, 300, mdp.gamma, seed=3)
    r = reward_fn(x)
    est = hypergradient_from_batch(
        batch, pi, x, 0.5, r, exact.dr_dx, estimator=estimator, centring=centring
    )
    crit = fit_critic(batch, pi.numpy(), exact.dr_dx, 0.5, r)
    B = (crit.Gq if estimator == "full" else exact.dr_dx).numpy()
    ref = _brute_force(batch, pi.numpy(), crit.Q_U.numpy(), B, 0.5, centring)
    assert np.allclose(est.grad.numpy(), ref, atol=1e-12, rtol=1e-10)
    assert est.info["centring"] == centring


def test_both_centrings_converge_to_the_exact_hypergradient():
    mdp, r_U, reward_fn, x, exact = _instance(S=3, A=2, n=2)
    env = bl.TabularEnv(mdp, r_U)
    batch = sample_transitions(env, exact.pi, 40_000, mdp.gamma, seed=0)
    r = reward_fn(x)
    norm = float(exact.grad.norm())
    errs = {}
    for centring in ("empirical", "policy"):
        h = hypergradient_from_batch(batch, exact.pi, x, 0.5, r, exact.dr_dx, centring=centring)
        errs[centring] = float((h.grad - exact.grad).norm()) / norm
    assert max(errs.values()) < 0.1, errs
    # the control: a zero estimate has relative error 1
    assert errs["empirical"] < 0.1 < 1.0


def test_zero_sampled_returns_leave_only_the_direct_term():
    _, design = small_map_design()
    problem = model_free_problem(design)
    x = 0.3 * torch.ones_like(problem.x0)
    pi = design.lower(x).pi
    batch = sample_transitions(problem.env, pi, 500, problem.gamma, seed=0)
    batch.reward[:] = 0.0  # what a policy that never reaches the goal observes
    est = hypergradient_from_batch(
        batch,
        pi,
        x,
        problem.tau,
        problem.reward_fn(x),
        problem.dr_dx(x),
        upper_fn=problem.upper_fn,
        return_weight=problem.return_weight,
    )
    ridge = float(design.info["ridge"])
    assert torch.equal(est.policy_term, torch.zeros_like(x))
    assert torch.allclose(est.grad, ridge * x, atol=1e-15)


def test_sweep_writes_one_file_per_setting_and_seed_and_resumes(tmp_path, capsys):
    argv = ["sobirl", "--seeds", "0-1", "--out", str(tmp_path), "--max-iter", "2"]
    argv += ["--n-transitions", "100", "--warmup", "100", "--beta", "0.3"]
    sweep_main(argv)
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == [
        "sobirl_full_beta0.3_n100_iter2_warm100_seed0.json",
        "sobirl_full_beta0.3_n100_iter2_warm100_seed1.json",
    ]
    data = json.loads((tmp_path / files[0]).read_text())
    assert len(data["true_return"]) == 3 and len(data["J_U_sampled"]) == 2
    capsys.readouterr()
    sweep_main(argv)
    assert capsys.readouterr().out.count("skip") == 2
