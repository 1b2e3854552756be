"""Sampling the discounted visitation through the gymnasium API (chapter 5 of the book, step 1).

Everything in :mod:`birl_lite.model_free` sees the environment only through ``env.reset()`` /
``env.step(a)`` of a :class:`gymnasium.Env` with ``Discrete`` observation and action spaces
(:class:`~birl_lite.envs.TabularEnv`, FrozenLake-v1, CliffWalking-v1, Taxi-v4, ...): the transition
tensor ``P`` is never read. This module holds that interface (:func:`discrete_spaces`, the episode
runner), the batch of sampled steps (:class:`Transitions`) and the sampler
(:func:`sample_transitions`), with the input checks every later stage shares.

**Sampling the discounted visitation.** :func:`sample_transitions` follows a policy ``pi`` and,
after every step, restarts the episode with probability ``1 - gamma`` (and on ``terminated`` or
``truncated``). Step ``t`` of an episode is then reached with probability ``gamma^t``, so

* the expected number of visits of ``(s, a)`` per episode is ``d(s) pi(a|s)`` (chapter 5,
  :eq:`eq-mf-visits`), with ``d = (I - gamma P_pi^T)^{-1} rho`` the unnormalized discounted
  visitation (chapter 3, :eq:`eq-pg`);
* the *undiscounted* sum of a reward from step ``t`` to the end of its episode is an unbiased
  Monte Carlo sample of the discounted value ``Q(s_t, a_t)``;
* the sum of the environment rewards of an episode is an unbiased sample of ``J_U = rho^T V_U``
  (chapter 5, :eq:`eq-mf-objective`).

**Episode ends.** ``terminated`` follows gymnasium's meaning: the episode is over and the
environment pays nothing more. With ``terminal="absorbing"`` (default, the convention of
:func:`~birl_lite.mdp.from_gymnasium` and :func:`~birl_lite.mdp.gridworld`) the agent is taken to
stay forever in the state ``s'`` it entered, collecting the designed reward ``r_x(s', .)`` and the
entropy bonus, so its soft value is known in closed form,
``V(s') = tau logsumexp(r_x(s', .) / tau) / (1 - gamma)``; with ``terminal="zero"`` everything
after termination is worth zero (plain episodic RL). ``truncated`` (a time limit) is not an
end of the task: values bootstrap through it; the Monte Carlo sums lose the tail beyond it
(negligible when the time limit is long compared with ``1 / (1 - gamma)``). Every ``terminal``
argument of the subpackage takes one of these two values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from .._validation import ArrayLike, as_tensor, check_finite, check_gamma, check_positive_int

__all__ = ["discrete_spaces", "Transitions", "sample_transitions"]

#: A seed: an int, a list or tuple of ints, or a ``numpy.random.Generator`` (used as is).
SeedLike = int | list[int] | tuple[int, ...] | np.random.Generator


# the conventions for what follows ``terminated`` (module docstring)
_TERMINAL = ("absorbing", "zero")


# --------------------------------------------------------------------------------------------
# The environment interface
# --------------------------------------------------------------------------------------------


def discrete_spaces(env: gym.Env) -> tuple[int, int]:
    """``(S, A)`` of a gymnasium environment with ``Discrete`` observation and action spaces.

    Raises:
        TypeError: ``env`` is not a :class:`gymnasium.Env`.
        ValueError: a space is not ``Discrete`` (e.g. ``Box`` observations of CartPole-v1):
            model-free *tabular* bilevel RL needs finitely many states and actions.
    """
    if not isinstance(env, gym.Env):
        raise TypeError(f"env must be a gymnasium.Env, got {type(env).__name__}")
    obs, act = env.observation_space, env.action_space
    for name, space in (("observation", obs), ("action", act)):
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(
                f"env must have a Discrete {name} space (tabular model-free bilevel RL), got "
                f"{space!r}; continuous or structured spaces are not supported: discretize them "
                "first or use the actor-critic methods of chapters 8-9"
            )
    return int(obs.n), int(act.n)


def _check_policy(pi, S: int, A: int, name: str = "pi") -> np.ndarray:
    t = as_tensor(pi, name).detach()
    if tuple(t.shape) != (S, A):
        raise ValueError(f"{name} must have shape [S, A] = [{S}, {A}], got {tuple(t.shape)}")
    check_finite(t, name)
    if bool((t < 0).any()) or bool(((t.sum(-1) - 1.0).abs() > 1e-6).any()):
        raise ValueError(f"{name} must be a policy: non-negative rows summing to 1")
    return t.numpy().astype(np.float64)


def _table(v, S: int, A: int, name: str) -> np.ndarray:
    t = as_tensor(v, name).detach()
    if tuple(t.shape) != (S, A):
        raise ValueError(f"{name} must have shape [S, A] = [{S}, {A}], got {tuple(t.shape)}")
    check_finite(t, name)
    return t.numpy().astype(np.float64)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (list, tuple)):
        return np.random.default_rng([check_positive_int(s, "seed", 0) for s in seed])
    return np.random.default_rng(check_positive_int(seed, "seed", 0))


class _Walker:
    """Runs episodes of ``env`` with geometric restarts (probability ``reset_prob`` per step)."""

    def __init__(self, env: gym.Env, reset_prob: float, rng: np.random.Generator):
        self.S, self.A = discrete_spaces(env)
        self.env = env
        self.obs0 = int(env.observation_space.start)
        self.act0 = int(env.action_space.start)
        self.reset_prob = reset_prob
        self.rng = rng
        self._seeded = False

    def reset(self) -> int:
        if self._seeded:
            obs, _ = self.env.reset()
        else:  # seed the environment once per walker, from our generator: same seed, same numbers
            obs, _ = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
            self._seeded = True
        return self._obs(obs)

    def step(self, a: int) -> tuple[int, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self.env.step(a + self.act0)
        return self._obs(obs), float(reward), bool(terminated), bool(truncated)

    def _obs(self, obs) -> int:
        s = int(obs) - self.obs0
        if not 0 <= s < self.S:
            raise ValueError(f"env returned observation {obs!r} outside its Discrete space")
        return s

    def restart(self) -> bool:
        return self.rng.random() < self.reset_prob


def _draw(cdf_row: np.ndarray, u: float) -> int:
    a = int(np.searchsorted(cdf_row, u * cdf_row[-1], side="right"))
    return min(a, cdf_row.shape[0] - 1)


# --------------------------------------------------------------------------------------------
# Sampled transitions
# --------------------------------------------------------------------------------------------


@dataclass
class Transitions:
    """A batch of transitions sampled with :func:`sample_transitions` (numpy arrays, length ``N``).

    Attributes:
        s, a, s_next: states, actions and next states (``int64``).
        a_next: an action drawn from the sampling policy at ``s_next`` (the action actually taken
            there when the episode goes on): the SARSA target of batch TD.
        reward: the environment reward of each step (``r_U``), float64.
        terminated: the step ended the task (gymnasium ``terminated``).
        truncated: the environment's time limit cut the episode after this step.
        end: the episode ends after this step (terminated, truncated or geometric restart);
            the last step is always an end.
        n_states, n_actions: ``S`` and ``A`` of the environment.
        gamma: the discount the restarts implement.
    """

    s: np.ndarray
    a: np.ndarray
    s_next: np.ndarray
    a_next: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    end: np.ndarray
    n_states: int
    n_actions: int
    gamma: float

    def __len__(self) -> int:
        return int(self.s.shape[0])

    @property
    def n_episodes(self) -> int:
        """Number of episodes (each sampled from ``rho``)."""
        return int(self.end.sum())

    def state_counts(self) -> np.ndarray:
        """Visits of each state ``[S]`` (``int64``)."""
        return np.bincount(self.s, minlength=self.n_states)

    def pair_counts(self) -> np.ndarray:
        """Visits of each state-action pair ``[S, A]`` (``int64``)."""
        sa = self.s * self.n_actions + self.a
        return np.bincount(sa, minlength=self.n_states * self.n_actions).reshape(
            self.n_states, self.n_actions
        )

    @staticmethod
    def concatenate(batches: list[Transitions]) -> Transitions:
        """One batch from several (same environment and discount)."""
        if not batches:
            raise ValueError("batches must be a non-empty list")
        b0 = batches[0]
        cat = {
            f.name: np.concatenate([getattr(b, f.name) for b in batches])
            for f in dataclasses.fields(Transitions)
            if f.name not in ("n_states", "n_actions", "gamma")
        }
        return Transitions(**cat, n_states=b0.n_states, n_actions=b0.n_actions, gamma=b0.gamma)


def sample_transitions(
    env: gym.Env, pi: ArrayLike, n_transitions: int, gamma: float, *, seed: SeedLike = 0
) -> Transitions:
    """Sample at least ``n_transitions`` steps of ``pi`` in ``env``, episodes restarted geometrically.

    After every step the episode ends with probability ``1 - gamma`` (and on ``terminated`` /
    ``truncated``); the next one starts from ``env.reset()``, i.e. ``s0 ~ rho``. The last episode
    is run to its natural end, so every episode is complete (``len(batch) >= n_transitions``,
    about ``1 / (1 - gamma)`` more on average). Step ``t`` of an episode is reached with
    probability ``gamma^t``: the visits per episode sample the discounted visitation ``d``.

    Args:
        env: a :class:`gymnasium.Env` with ``Discrete`` spaces (see :func:`discrete_spaces`).
        pi: the policy ``[S, A]`` that chooses the actions.
        n_transitions: the number of steps to sample (at least).
        gamma: discount factor in ``[0, 1)``.
        seed: an int, a list of ints, or a :class:`numpy.random.Generator`; the environment is
            reseeded from it at the first reset, so the same seed gives the same batch.

    Returns:
        :class:`Transitions`.
    """
    S, A = discrete_spaces(env)
    cdf = np.cumsum(_check_policy(pi, S, A), axis=1)
    n = check_positive_int(n_transitions, "n_transitions")
    gamma = check_gamma(gamma)
    walker = _Walker(env, 1.0 - gamma, _rng(seed))
    rng = walker.rng
    cols: dict[str, list] = {
        k: [] for k in ("s", "a", "s_next", "a_next", "reward", "term", "trunc", "end")
    }
    s = walker.reset()
    a = _draw(cdf[s], rng.random())
    count = 0
    while True:
        s2, reward, term, trunc = walker.step(a)
        a2 = _draw(cdf[s2], rng.random())
        end = term or trunc or walker.restart()
        for key, value in zip(cols, (s, a, s2, a2, reward, term, trunc, end), strict=True):
            cols[key].append(value)
        count += 1
        if end:
            if count >= n:
                break
            s = walker.reset()
            a = _draw(cdf[s], rng.random())
        else:
            s, a = s2, a2
    return Transitions(
        s=np.asarray(cols["s"], dtype=np.int64),
        a=np.asarray(cols["a"], dtype=np.int64),
        s_next=np.asarray(cols["s_next"], dtype=np.int64),
        a_next=np.asarray(cols["a_next"], dtype=np.int64),
        reward=np.asarray(cols["reward"], dtype=np.float64),
        terminated=np.asarray(cols["term"], dtype=bool),
        truncated=np.asarray(cols["trunc"], dtype=bool),
        end=np.asarray(cols["end"], dtype=bool),
        n_states=S,
        n_actions=A,
        gamma=gamma,
    )
