"""Tests of birl_lite.model_free: sampling, soft Q-learning, the sampled hypergradient, SoBiRL."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import birl_lite as bl
from birl_lite.exercises.ch05 import check_mc_returns, check_sampled_hypergradient
from birl_lite.first_order import hypergradient, return_hypergradient
from birl_lite.model_free import (
    ModelFreeProblem,
    StepSize,
    discrete_spaces,
    fitted_soft_q_iteration,
    mc_returns,
    model_free_problem,
    sample_transitions,
    sampled_hypergradient,
    sobirl,
    soft_q_learning,
)
from birl_lite.problems import reward_design_problem

SMALL_MAP = ("######", "#S...#", "#.#..#", "#...G#", "######")


def _random_problem(S=6, A=3, n=4, gamma=0.8, seed=0):
    mdp = bl.random_mdp(S, A, seed, gamma=gamma)
    r_U = bl.random_reward(S, A, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    Phi = torch.randn(S, A, n, generator=gen, dtype=torch.float64)
    x = torch.randn(n, generator=gen, dtype=torch.float64)

    def reward_fn(z):
        return torch.tanh(Phi @ z)

    return mdp, r_U, reward_fn, x


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_rejects_continuous_spaces_and_non_envs():
    with pytest.raises(ValueError, match="Discrete observation space"):
        discrete_spaces(gym.make("CartPole-v1"))

    class BoxActions(gym.Env):
        observation_space = gym.spaces.Discrete(3)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    with pytest.raises(ValueError, match="Discrete action space"):
        discrete_spaces(BoxActions())
    with pytest.raises(TypeError, match="gymnasium.Env"):
        discrete_spaces("FrozenLake-v1")
    mdp, r_U, reward_fn, x = _random_problem()
    with pytest.raises(ValueError, match="Discrete observation space"):
        sampled_hypergradient(gym.make("CartPole-v1"), reward_fn, x, 0.5, 0.8, None, 10)


def test_sampling_is_seeded_and_samples_the_visitation():
    mdp, r_U, _, _ = _random_problem()
    env = bl.TabularEnv(mdp, r_U)
    pi = torch.softmax(
        torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1
    )
    b1 = sample_transitions(env, pi, 20000, mdp.gamma, seed=7)
    b2 = sample_transitions(env, pi, 20000, mdp.gamma, seed=7)
    b3 = sample_transitions(env, pi, 20000, mdp.gamma, seed=8)
    assert np.array_equal(b1.s, b2.s) and np.array_equal(b1.reward, b2.reward)
    assert not np.array_equal(b1.s, b3.s)
    assert len(b1) >= 20000 and b1.end[-1]
    d = bl.state_visitation(mdp, pi).numpy()  # unnormalized: visits per episode
    visits = b1.state_counts() / b1.n_episodes
    assert np.allclose(visits, d, rtol=0.05)
    J = float(bl.expected_return(mdp, pi, r_U))
    assert abs(b1.reward.sum() / b1.n_episodes - J) / J < 0.03


def test_mc_returns_by_hand_and_checker():
    mdp, r_U, _, _ = _random_problem()
    batch = sample_transitions(bl.TabularEnv(mdp, r_U), torch.full((6, 3), 1 / 3), 50, 0.5, seed=0)
    G = mc_returns(batch, batch.reward)
    t = 0
    for e in np.flatnonzero(batch.end):
        for k in range(t, e + 1):
            assert G[k] == pytest.approx(batch.reward[k : e + 1].sum(), abs=1e-12)
        t = e + 1

    def wrong(c, end):  # ignores the episode boundaries
        return np.cumsum(c[::-1], axis=0)[::-1]

    def right(c, end):
        out = np.zeros_like(c)
        acc = np.zeros(c.shape[1])
        for k in range(len(end) - 1, -1, -1):
            acc = c[k] + (0.0 if end[k] else acc)
            out[k] = acc
        return out

    assert check_mc_returns(right)
    assert not check_mc_returns(wrong)


def test_soft_q_learning_converges_to_soft_value_iteration():
    mdp = bl.random_mdp(5, 3, 0, gamma=0.7)
    r = bl.random_reward(5, 3, 1)
    env = bl.TabularEnv(mdp, r)
    sol = bl.soft_value_iteration(mdp, r, 0.5)
    errs = []
    for n in (3000, 40000):
        q = soft_q_learning(env, r, 0.5, mdp.gamma, n, behaviour="uniform", seed=0)
        errs.append(float((q.Q - sol.Q).abs().max() / sol.Q.abs().max()))
    assert errs[1] < 0.005 and errs[1] < errs[0]
    assert torch.allclose(q.pi, torch.softmax(q.Q / 0.5, 1))
    with pytest.raises(ValueError, match="omega"):
        StepSize(omega=0.4)


def test_fitted_soft_q_iteration_converges():
    mdp = bl.random_mdp(5, 3, 2, gamma=0.8)
    r = bl.random_reward(5, 3, 3)
    batch = sample_transitions(bl.TabularEnv(mdp, r), torch.full((5, 3), 1 / 3), 60000, 0.8, seed=1)
    Q = fitted_soft_q_iteration(np.zeros((5, 3)), batch, r.numpy(), 0.5, 200)
    sol = bl.soft_value_iteration(mdp, r, 0.5)
    assert np.abs(Q - sol.Q.numpy()).max() / float(sol.Q.abs().max()) < 0.01


def test_sampled_hypergradient_converges_to_exact_return_form():
    mdp, r_U, reward_fn, x = _random_problem()
    tau = 0.5
    exact = return_hypergradient(mdp, reward_fn, r_U, x, tau)
    env = bl.TabularEnv(mdp, r_U)
    err = {}
    for N in (1000, 100_000):
        errs = [
            _rel(
                sampled_hypergradient(env, reward_fn, x, tau, mdp.gamma, exact.pi, N, seed=s).grad,
                exact.grad,
            )
            for s in range(2)
        ]
        err[N] = float(np.mean(errs))
    assert err[100_000] < 0.10
    assert err[100_000] < 0.5 * err[1000]
    est = sampled_hypergradient(env, reward_fn, x, tau, mdp.gamma, exact.pi, 2000, seed=4)
    again = sampled_hypergradient(env, reward_fn, x, tau, mdp.gamma, exact.pi, 2000, seed=4)
    assert torch.equal(est.grad, again.grad)
    assert float(est.f) == pytest.approx(-float(est.J_U))


def test_monte_carlo_critic_is_consistent():
    mdp, r_U, reward_fn, x = _random_problem()
    exact = return_hypergradient(mdp, reward_fn, r_U, x, 0.5)
    est = sampled_hypergradient(
        bl.TabularEnv(mdp, r_U),
        reward_fn,
        x,
        0.5,
        mdp.gamma,
        exact.pi,
        100_000,
        critic="mc",
        seed=1,
    )
    assert _rel(est.grad, exact.grad) < 0.15


def test_truncated_estimator_converges_to_its_biased_limit():
    mdp, r_U, reward_fn, x = _random_problem()
    tau = 0.5
    exact = return_hypergradient(mdp, reward_fn, r_U, x, tau)
    pi, dr = exact.pi, exact.dr_dx
    # its limit: the visitation form with grad_x Q* - grad_x V* replaced by dr - E_pi dr
    V_U = bl.evaluate_policy(mdp, pi, r_U)
    A_U = r_U + mdp.gamma * mdp.expect_next(V_U) - V_U[:, None]
    B = dr - torch.einsum("sa,san->sn", pi, dr)[:, None]
    limit = -torch.einsum("s,sa,sa,san->n", exact.info["d"], pi, A_U, B) / tau
    est = sampled_hypergradient(
        bl.TabularEnv(mdp, r_U),
        reward_fn,
        x,
        tau,
        mdp.gamma,
        pi,
        100_000,
        estimator="truncated",
        seed=0,
    )
    assert _rel(est.grad, limit) < 0.10
    assert _rel(limit, exact.grad) > 0.2  # the bias is not small on this instance


def test_explicit_upper_objective():
    mdp, r_U, reward_fn, x = _random_problem()

    def upper(z, pi):
        return 0.5 * (pi * pi).sum() + 0.1 * (z * z).sum()

    exact = hypergradient(mdp, reward_fn, upper, x, 0.5, form="H1")
    est = sampled_hypergradient(
        bl.TabularEnv(mdp, r_U),
        reward_fn,
        x,
        0.5,
        mdp.gamma,
        exact.pi,
        30_000,
        upper_fn=upper,
        return_weight=0.0,
        seed=0,
    )
    assert _rel(est.grad, exact.grad) < 0.10
    assert torch.allclose(est.direct, 0.2 * x)
    assert float(est.f) == pytest.approx(float(exact.phi))


def test_works_on_gymnasium_frozenlake():
    task = bl.from_gymnasium("FrozenLake-v1", gamma=0.9, is_slippery=False)
    prob = reward_design_problem(task, tau=0.2, ridge=0.0)
    x = 0.1 * torch.randn(prob.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = hypergradient(prob.mdp, prob.reward_fn, prob.upper_fn, x, prob.tau, form="H1")
    env = gym.make("FrozenLake-v1", is_slippery=False)
    est = sampled_hypergradient(env, prob.reward_fn, x, prob.tau, 0.9, exact.pi, 150_000, seed=0)
    assert _rel(est.grad, exact.grad) < 0.10
    assert float(est.f) == pytest.approx(float(exact.phi), rel=0.1)


def test_sobirl_is_seeded_and_improves_reward_design():
    task = bl.gridworld(SMALL_MAP, gamma=0.9, slip=0.1)
    design = reward_design_problem(task, tau=0.1, ridge=1e-3)
    problem = model_free_problem(design)
    assert isinstance(problem, ModelFreeProblem)
    kw = dict(beta=0.3, max_iter=25, n_transitions=500, warmup_transitions=2000, progress=False)
    res = sobirl(problem, evaluate=design.phi, **kw)
    again = sobirl(problem, **kw)
    assert torch.equal(res.x, again.x)
    assert torch.equal(res.history.f, again.history.f)
    assert res.history.phi[-1] < res.history.phi[0] - 0.05
    assert res.history.n_transitions[-1] >= 25 * 500
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        sobirl(problem, betta=0.1)
    with pytest.raises(ValueError, match="lower"):
        sobirl(problem, lower="exact")


# ---------------------------------------------------------------- module layout


def test_model_free_package_reexports_its_submodules():
    import importlib
    import types

    import birl_lite.model_free as mf

    names = ("sampling", "soft_q", "critics", "estimators", "problem", "algorithm")
    seen = set()
    for name in names:
        module = importlib.import_module(f"birl_lite.model_free.{name}")
        assert isinstance(module, types.ModuleType)
        assert getattr(mf, name) is module, name  # not shadowed by an exported name
        for public in module.__all__:
            assert getattr(mf, public) is getattr(module, public), public
            assert getattr(mf, public).__module__ == module.__name__, public
        seen.update(module.__all__)
    assert seen == set(mf.__all__)
    assert not set(names) & set(mf.__all__)  # no module shares its name with what it exports


def test_sampled_hypergradient_checker_accepts_the_estimator_and_rejects_a_mean_over_steps(capsys):
    """Exercise 5.5: eq-mf-estimator from the critics, divided by the episodes E, not the steps N."""

    def estimate(s, a, n_episodes, pi, Q_U, Gq, tau, per_step=False):
        A_U = Q_U - (pi * Q_U).sum(dim=1, keepdim=True)
        B = Gq - torch.einsum("sa,san->sn", pi, Gq).unsqueeze(1)
        terms = A_U[torch.as_tensor(s), torch.as_tensor(a)].unsqueeze(1) * B[s, a]
        return -(terms.mean(dim=0) if per_step else terms.sum(dim=0) / n_episodes) / tau

    assert check_sampled_hypergradient(estimate)
    assert not check_sampled_hypergradient(lambda *args: estimate(*args, per_step=True))
    out = capsys.readouterr().out
    assert out.startswith("PASS") and "FAIL on case 1" in out  # gamma = 0: N = E, caught at case 1
