"""Learning tests: short runs that a sign flip or a wrong target would fail.

Measured with the correct code (seeds 0 and 1, 16,384 env steps on CartPole-v1, mean of the last
20 training episodes): ppo 160 / 178, ppo-nested 167 / 196, blpo-cg 132 / 113, blpo-nystrom 87 / 97.
A uniformly random policy scores about 22; a policy step with a flipped sign about 10. On the
continuous-action task below the first 20 episodes score -18 and 16,384 steps of PPO reach -10.8.
Checked against four planted bugs: a flipped PPO step fails the ppo tests, a flipped BLPO step
the ppo-nested / blpo-* tests, value targets ``adv - V`` instead of ``adv + V`` the lambda = 1
target test, and non-strict causal sums the causal-matrix test (short runs alone do not see the
last two).

The sign flip is also planted by the tests themselves (:func:`flipped`: every actor step reflected,
``theta <- theta - (step the update took)``, for any algorithm). On CartPole-v1 a flipped run
scores 9.2-9.85 at 16,384 steps (seeds 0 and 1, all four algorithms). With the continuous-control
preset (CleanRL's settings: 1 env x 2,048 steps, 32 minibatches of single transitions for ppo and
of 64-step chunks for the nested algorithms, 10 epochs, normalized observations and clipped
normalized rewards) on the tracking task, 8,192 steps take ppo / blpo-nystrom from -19 (first 20
episodes) to -11.1 / -11.1 (seed 0) and -10.9 / -10.6 (seed 1); flipped: -98 / -83 and -102 / -102.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

from birl_lite.actor_critic import train
from birl_lite.actor_critic.blpo import blpo_update
from birl_lite.actor_critic.config import (
    ALGOS,
    CONTINUOUS_PER_ALGO,
    CONTINUOUS_PRESET,
    make_config,
)
from birl_lite.actor_critic.ppo import ppo_update


def flipped(state, mb, cfg):
    """The planted bug: ``cfg.algo``'s minibatch update with the actor's step reflected
    (``theta <- 2 theta_before - theta_after``: the same Adam step, opposite sign)."""
    before = [p.detach().clone() for p in state.actor_params]
    info = (ppo_update if cfg.algo == "ppo" else blpo_update)(state, mb, cfg)
    with torch.no_grad():
        for p, b in zip(state.actor_params, before, strict=True):
            p.copy_(2.0 * b - p)
    return info


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_learns_cartpole(algo):
    """16k steps: every algorithm well above a random policy (22) and a sign-flipped one (10)."""
    res = train(make_config(algo, "CartPole-v1", total_steps=16_384, seed=0))
    assert res.final_return > 60.0, res.final_return


@pytest.mark.parametrize("algo", ALGOS)
def test_a_flipped_actor_step_fails_cartpole(algo):
    """The same 16k-step runs with the planted sign flip stay far below the threshold (60)."""
    res = train(make_config(algo, "CartPole-v1", total_steps=16_384, seed=0), update=flipped)
    assert res.final_return < 20.0, res.final_return


class TrackTarget(gym.Env):
    """Continuous actions: reward ``-(a - s_0)^2``, new random ``s`` each step, 16 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.s = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self.s, {}

    def step(self, action):
        reward = -float((np.asarray(action, dtype=np.float64)[0] - self.s[0]) ** 2)
        self.t += 1
        self.s = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self.s, reward, False, self.t >= 16, {}


if "TrackTarget-v0" not in gym.registry:
    gym.register("TrackTarget-v0", entry_point=TrackTarget)


@pytest.mark.parametrize("algo", ["ppo", "blpo-nystrom"])
def test_gaussian_policy_learns_to_track(algo):
    """The Gaussian path: from -18 (first 20 episodes) to better than -14 in 16k steps."""
    res = train(make_config(algo, "TrackTarget-v0", total_steps=16_384, seed=0))
    first = float(np.mean(res.episode_returns[:20]))
    assert first < -15.0
    assert res.final_return > -14.0, res.final_return


@pytest.mark.parametrize("algo", ["ppo", "blpo-nystrom"])
@pytest.mark.parametrize("flip", [False, True], ids=["correct", "flipped"])
def test_continuous_preset_learns_to_track_and_a_flip_fails(algo, flip):
    """The MuJoCo preset's code path (CleanRL's settings; transitions for ppo, chunks for
    blpo-nystrom) on the tracking task: 8,192 steps reach better than -14 from -19; with the
    actor's step flipped the return falls below -40 (-80 and -80 after 4,096 steps)."""
    steps = 4096 if flip else 8192  # a flipped run is far below -40 after two rollouts already
    kw = {**CONTINUOUS_PRESET, **CONTINUOUS_PER_ALGO[algo], "total_steps": steps, "seed": 0}
    cfg = make_config(algo, "TrackTarget-v0", **kw)
    assert cfg.num_envs == 1 and cfg.minibatch == ("transitions" if algo == "ppo" else "chunks")
    res = train(cfg, update=flipped if flip else None)
    assert float(np.mean(res.episode_returns[:20])) < -17.0
    if flip:
        assert res.final_return < -40.0, res.final_return
    else:
        assert res.final_return > -14.0, res.final_return


def test_value_targets_are_monte_carlo_returns_at_lambda_one():
    """With ``gae_lambda = 1`` the critic's targets ``returns = adv + V`` are the discounted
    returns of the rollout wherever the episode terminates inside it, whatever the critic."""
    from birl_lite.actor_critic.rollout import RolloutCollector, make_vector_env
    from birl_lite.actor_critic.training import _build, prepare_batch

    cfg = make_config("ppo", "CartPole-v1", total_steps=512, seed=0, gae_lambda=1.0)
    envs = make_vector_env(cfg.env_id, cfg.num_envs)
    try:
        state = _build(cfg, envs)
        ro = RolloutCollector(envs, state.actor, seed=0, gamma=cfg.gamma).collect(200)
        returns = prepare_batch(state, ro, cfg)["returns"].numpy()
    finally:
        envs.close()
    checked = 0
    for e in range(cfg.num_envs):
        G, ends_terminal = 0.0, False
        for t in reversed(range(ro.rewards.shape[0])):
            if ro.dones[t, e]:
                G, ends_terminal = 0.0, bool(ro.terminated[t, e])
            G = ro.rewards[t, e] + cfg.gamma * G
            if ends_terminal:
                assert returns[t, e] == pytest.approx(G, rel=1e-4, abs=1e-4)
                checked += 1
    assert checked > 100


def test_causal_matrix_is_strict():
    """The BLPO mixed term sums over ``t' > t`` (chapter 8): the causal matrix has a zero
    diagonal and ones strictly above it within an episode."""
    from birl_lite.actor_critic.rollout import discount_matrix

    dones = np.zeros((6, 1), dtype=np.float32)
    dones[2, 0] = 1.0  # an episode ends at step 2
    M = discount_matrix(dones, 1.0, strict=True)[0]
    expected = np.zeros((6, 6), dtype=np.float32)
    for t in range(6):
        for s in range(t + 1, 6):
            expected[t, s] = float((t <= 2) == (s <= 2))
    np.testing.assert_array_equal(M, expected)
