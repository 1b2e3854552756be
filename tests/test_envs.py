"""TabularEnv: the gymnasium interface to a tabular model."""

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import birl_lite as bl


def test_check_env_passes_on_random_mdp():
    mdp = bl.random_mdp(5, 3, 0)
    env = bl.TabularEnv(mdp, bl.random_reward(5, 3, 1), max_episode_steps=50)
    check_env(env, skip_render_check=True)


def test_check_env_passes_on_frozenlake_task():
    env = bl.TabularEnv(bl.from_gymnasium("FrozenLake-v1"))
    check_env(env, skip_render_check=True)


def test_empirical_transitions_match_P():
    mdp = bl.random_mdp(4, 2, 3, support=(1, 3))
    env = bl.TabularEnv(mdp, torch.zeros(4, 2))
    counts = np.zeros((4, 2, 4))
    s, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40_000):
        a = int(rng.integers(2))
        s2, reward, term, trunc, _ = env.step(a)
        counts[s, a, s2] += 1
        s = s2
    freq = counts / counts.sum(-1, keepdims=True)
    assert np.abs(freq - mdp.P.numpy()).max() < 0.03
    assert counts[mdp.P.numpy() == 0].sum() == 0  # never a zero-probability transition


def test_reward_termination_and_truncation():
    task = bl.gridworld(["SG"], gamma=0.9)
    env = bl.TabularEnv(task, max_episode_steps=3)
    s, _ = env.reset(seed=1)
    s2, reward, terminated, truncated, _ = env.step(2)  # right: into the goal
    assert (reward, terminated, truncated) == (1.0, True, False)
    env.reset(seed=1)
    outcomes = [env.step(0)[2:4] for _ in range(3)]  # bump left three times
    assert outcomes == [(False, False), (False, False), (False, True)]


def test_same_seed_same_trajectory():
    mdp = bl.random_mdp(6, 2, 5)
    r = bl.random_reward(6, 2, 5)

    def rollout(seed):
        env = bl.TabularEnv(mdp, r)
        s, _ = env.reset(seed=seed)
        out = [s]
        for t in range(30):
            out.append(env.step(t % 2)[0])
        return out

    assert rollout(3) == rollout(3)
    assert rollout(3) != rollout(4)


def test_rejects_reward_of_wrong_shape():
    with pytest.raises(ValueError, match=r"r must have shape \[S, A\] = \[3, 2\]"):
        bl.TabularEnv(bl.random_mdp(3, 2, 0), torch.zeros(2, 3))


def test_rejects_invalid_action():
    env = bl.TabularEnv(bl.random_mdp(3, 2, 0), torch.zeros(3, 2))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an int"):
        env.step(5)
