"""The code path every actor-critic algorithm shares: vector envs, rollouts, GAE, episode statistics.

* :func:`make_vector_env`: a gymnasium 1.x ``SyncVectorEnv`` in **same-step autoreset** mode: when
  an episode ends, ``step`` returns the first observation of the next episode and puts the last
  observation of the finished one in ``info["final_obs"]``. (The default next-step mode of
  gymnasium 1.x instead spends one extra ``step`` call, with a dummy reward, on every reset;
  code written for gymnasium 0.29 silently mis-records episodes under it.)
* :class:`RolloutCollector`: runs the actor for ``num_steps`` vector steps and returns a
  :class:`Rollout` (observations, true next observations, actions, rewards, terminations,
  episode ends) while recording completed episodes (raw rewards, never normalized ones).
* :func:`gae` (the backward recursion) and :func:`discount_matrix` (the same sum as a matrix, so
  that BLPO can recompute advantages differentiably from the current critic; chapter 8,
  section 8.5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from .networks import Actor

__all__ = [
    "EpisodeLog",
    "Rollout",
    "RolloutCollector",
    "RunningMeanStd",
    "discount_matrix",
    "gae",
    "make_vector_env",
]


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``env_id`` in a ``SyncVectorEnv`` with same-step autoreset.

    Raises ``ValueError`` for an id gymnasium does not know, or for spaces other than a ``Box``
    observation and a ``Discrete`` / ``Box`` action.
    """
    if env_id not in gym.registry:
        raise ValueError(f"env_id must be a registered gymnasium id, got {env_id!r}")
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_space = envs.single_observation_space
    act_space = envs.single_action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        envs.close()
        raise ValueError(f"{env_id}: needs a flat Box observation space, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
        envs.close()
        raise ValueError(f"{env_id}: needs a Discrete or Box action space, got {act_space}")
    return envs


class RunningMeanStd:
    """Running mean and variance of batches (parallel-variance update, as in gymnasium's
    ``NormalizeObservation`` / ``NormalizeReward``)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        """Fold a batch ``x [n, *shape]`` into the statistics."""
        b_mean, b_var, b_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total


@dataclass
class Rollout:
    """One rollout of ``T = num_steps`` vector steps of ``E = num_envs`` envs (numpy arrays).

    Attributes:
        obs: ``[T, E, obs_dim]`` observations ``s_t`` (normalized if enabled).
        next_obs: ``[T, E, obs_dim]`` the true next observations ``s'_t`` (the final observation
            of the episode where it ended, not the reset observation).
        actions: ``[T, E]`` (int64) or ``[T, E, act_dim]`` (float32, unclipped samples).
        rewards: ``[T, E]`` rewards used for learning (normalized if enabled).
        terminated: ``[T, E]`` 1.0 where ``s'_t`` is terminal (no bootstrap).
        dones: ``[T, E]`` 1.0 where the episode ended at step ``t`` (terminated or truncated):
            GAE and the causal sums stop there.
    """

    obs: np.ndarray
    next_obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    dones: np.ndarray


@dataclass
class EpisodeLog:
    """Completed training episodes: env steps at completion, raw return, length, wall time."""

    steps: list[int] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


class RolloutCollector:
    """Steps a vector env with an :class:`~birl_lite.actor_critic.networks.Actor` and records episode statistics.

    Args:
        envs: from :func:`make_vector_env`.
        actor: the policy; sampled with :meth:`~birl_lite.actor_critic.networks.Actor.act_numpy` (one batched forward per step).
        seed: env ``i`` is reset with seed ``seed + i``; actions are drawn from
            ``numpy.random.default_rng(seed)``.
        gamma: discount of the return statistics used by reward normalization.
        normalize_obs, normalize_reward, clip_reward: see
            :class:`~birl_lite.actor_critic.config.ACConfig` (``clip_reward``: the rewards used
            for learning are clipped to ``[-10, 10]`` after normalization).
    """

    def __init__(
        self,
        envs: gym.vector.SyncVectorEnv,
        actor: Actor,
        *,
        seed: int,
        gamma: float,
        normalize_obs: bool = False,
        normalize_reward: bool = False,
        clip_reward: bool = False,
    ) -> None:
        self.envs = envs
        self.actor = actor
        self.rng = np.random.default_rng(seed)
        self.n = envs.num_envs
        self.gamma = gamma
        self.obs_rms = (
            RunningMeanStd(envs.single_observation_space.shape) if normalize_obs else None
        )
        self.ret_rms = RunningMeanStd(()) if normalize_reward else None
        self.clip_reward = bool(clip_reward)
        self.discounted = np.zeros(self.n)
        space = envs.single_action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.low = None if self.discrete else space.low
        self.high = None if self.discrete else space.high
        raw, _ = envs.reset(seed=[seed + i for i in range(self.n)])
        self.obs = self._normalize(raw.astype(np.float32), update=True)
        self.ep_return = np.zeros(self.n)
        self.ep_length = np.zeros(self.n, dtype=np.int64)
        self.global_step = 0
        self.episodes = EpisodeLog()
        self.t0 = time.perf_counter()

    def _normalize(self, raw: np.ndarray, update: bool) -> np.ndarray:
        if self.obs_rms is None:
            return raw
        if update:
            self.obs_rms.update(raw)
        z = (raw - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(z, -10.0, 10.0).astype(np.float32)

    def collect(self, num_steps: int) -> Rollout:
        """Run ``num_steps`` vector steps from the current state; returns the :class:`Rollout`."""
        T, E = num_steps, self.n
        obs_dim = self.obs.shape[-1]
        obs = np.empty((T, E, obs_dim), dtype=np.float32)
        next_obs = np.empty((T, E, obs_dim), dtype=np.float32)
        if self.discrete:
            actions = np.empty((T, E), dtype=np.int64)
        else:
            actions = np.empty((T, E, self.actor.act_dim), dtype=np.float32)
        rewards = np.empty((T, E), dtype=np.float32)
        terminated = np.empty((T, E), dtype=np.float32)
        dones = np.empty((T, E), dtype=np.float32)
        log = self.episodes
        for t in range(T):
            obs[t] = self.obs
            a = self.actor.act_numpy(self.obs, self.rng)
            actions[t] = a
            env_a = a if self.discrete else np.clip(a, self.low, self.high)
            raw, r, term, trunc, info = self.envs.step(env_a)
            done = term | trunc
            self.global_step += E
            self.ep_return += r
            self.ep_length += 1
            new_obs = self._normalize(raw.astype(np.float32), update=True)
            next_obs[t] = new_obs
            if done.any():
                for i in np.flatnonzero(done):
                    final = np.asarray(info["final_obs"][i], dtype=np.float32)[None]
                    next_obs[t, i] = self._normalize(final, update=False)[0]
                    log.steps.append(self.global_step)
                    log.returns.append(float(self.ep_return[i]))
                    log.lengths.append(int(self.ep_length[i]))
                    log.wall.append(time.perf_counter() - self.t0)
            if self.ret_rms is not None:
                self.discounted = self.discounted * self.gamma * (1.0 - term) + r
                self.ret_rms.update(self.discounted)
                r = r / np.sqrt(self.ret_rms.var + 1e-8)
                self.discounted[done] = 0.0
            if self.clip_reward:
                r = np.clip(r, -10.0, 10.0)
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0
            rewards[t] = r
            terminated[t] = term
            dones[t] = done
            self.obs = new_obs
        return Rollout(obs, next_obs, actions, rewards, terminated, dones)


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """Generalized advantage estimation by the backward recursion (arrays ``[T, ...]``).

        delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
        A_t     = delta_t + gamma lam (1 - done_t) A_{t+1},      A_T = 0

    ``V(s'_t)`` is the value of the true next state, so a truncated (time-limit) episode is
    bootstrapped and a terminated one is not; the recursion stops at every episode end.

    Returns:
        advantages ``[T, ...]`` (dtype of ``rewards``).
    """
    delta = rewards + gamma * (1.0 - terminated) * next_values - values
    adv = np.zeros_like(delta)
    running = np.zeros_like(delta[0])
    for t in range(delta.shape[0] - 1, -1, -1):
        running = delta[t] + gamma * lam * (1.0 - dones[t]) * running
        adv[t] = running
    return adv


def discount_matrix(dones: np.ndarray, factor: float, *, strict: bool = False) -> np.ndarray:
    """Per-env matrices ``M[e, t, t'] = factor^(t'-t)`` if ``t' >= t`` (``t' > t`` if ``strict``)
    and no episode ends at steps ``t..t'-1``; else 0.

    With ``factor = gamma * lam``, ``A[:, e] = M[e] @ delta[:, e]`` is :func:`gae`; with
    ``factor = 1, strict=True``, ``M[e] @ q[:, e]`` is the causal sum ``sum_{t' > t} q_t'`` within
    the episode that the BLPO mixed term needs (chapter 8, equation (eq-ac-mixed); chapter 8
    explains why the sum starts at ``t' > t``).

    Args:
        dones: ``[T, E]`` episode ends (1.0 at the last step of an episode).

    Returns:
        ``[E, T, T]`` float32.
    """
    T = dones.shape[0]
    episode = np.concatenate([np.zeros((1, dones.shape[1])), np.cumsum(dones[:-1], axis=0)])
    same = episode.T[:, :, None] == episode.T[:, None, :]
    lag = np.arange(T)[None, :] - np.arange(T)[:, None]
    upper = lag > 0 if strict else lag >= 0
    power = np.where(upper, float(factor) ** np.maximum(lag, 0), 0.0)
    return (same * power[None]).astype(np.float32)


def to_torch(rollout: Rollout) -> dict[str, torch.Tensor]:
    """The rollout's arrays as torch tensors (shared memory where possible)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in vars(rollout).items()}
