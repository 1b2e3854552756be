"""SoBiRL: model-free bilevel RL through the gymnasium API [YGY] (chapter 5 of the book).

Math: ``../shared/design/math.md`` sections 3-4. Everything here sees the environment only through
``env.reset()`` / ``env.step(a)`` of a :class:`gymnasium.Env` with ``Discrete`` observation and
action spaces (:class:`~birl_lite.envs.TabularEnv`, FrozenLake-v1, CliffWalking-v1, Taxi-v4, ...):
the transition tensor ``P`` is never read. The algorithm knows what it designs itself: the
parameterized reward ``r_x(s, a)`` (``reward_fn``) and its Jacobian ``grad_x r_x``; the
environment's own reward is the upper-level reward ``r_U``.

**Sampling the discounted visitation.** :func:`sample_transitions` follows a policy ``pi`` and,
after every step, restarts the episode with probability ``1 - gamma`` (and on ``terminated`` or
``truncated``). Step ``t`` of an episode is then reached with probability ``gamma^t``, so

* the expected number of visits of ``(s, a)`` per episode is ``d(s) pi(a|s)``, with
  ``d = (I - gamma P_pi^T)^{-1} rho`` the unnormalized discounted visitation of math.md s. 3;
* the *undiscounted* sum of a reward from step ``t`` to the end of its episode is an unbiased
  Monte Carlo sample of the discounted value ``Q(s_t, a_t)``;
* the sum of the environment rewards of an episode is an unbiased sample of ``J_U = rho^T V_U``.

**The sampled hypergradient** (:func:`sampled_hypergradient`) of ``phi(x) = f(x, pi*_x)`` with

    f(x, pi) = g(x, pi) - c_U J_U(pi)

(``g = upper_fn``, a known differentiable function, optional; ``J_U`` the unregularized return of
the environment reward, weight ``c_U = return_weight``) is (H1) with sampled ingredients:

    grad phi = grad_x g + (1/tau) sum_{s,a} G(s, a) B(s, a)
               - (c_U / tau) sum_s d(s) sum_a pi(a|s) A_U(s, a) B(s, a),

    B(s, a) = grad_x Q*(s, a) - grad_x V*(s)                 (full estimator)
    B(s, a) = grad_x r_x(s, a) - sum_b pi(b|s) grad_x r_x(s, b)   (truncated: the published code)

with ``G = pi * dg/dpi``. The *gradient critic* ``Gq(s, a) ~ grad_x Q*(s, a)`` is the value of
the vector reward ``grad_x r_x`` under ``pi`` (math.md s. 3), estimated like the upper critic
``Q_U``: by Monte Carlo sums (``critic="mc"``) or by batch TD(0) (``critic="td"``, vector-valued
TD replayed over the batch to its fixed point). The visitation sum is the sample average over the
sampled steps divided by the number of episodes.

**Episode ends.** ``terminated`` follows gymnasium's meaning: the episode is over and the
environment pays nothing more. With ``terminal="absorbing"`` (default, the convention of
:func:`~birl_lite.mdp.from_gymnasium` and :func:`~birl_lite.mdp.gridworld`) the agent is taken to
stay forever in the state ``s'`` it entered, collecting the designed reward ``r_x(s', .)`` and the
entropy bonus, so its soft value is known in closed form,
``V(s') = tau logsumexp(r_x(s', .) / tau) / (1 - gamma)``; with ``terminal="zero"`` everything
after termination is worth zero (plain episodic RL). ``truncated`` (a time limit) is not an
end of the task: values bootstrap through it; the Monte Carlo sums lose the tail beyond it
(negligible when the time limit is long compared with ``1 / (1 - gamma)``).

**The lower level from samples**: tabular soft Q-learning (:func:`soft_q_learning`,
``Q(s,a) <- Q(s,a) + alpha_n (r_x(s,a) + gamma tau logsumexp(Q(s', .) / tau) - Q(s,a))`` with the
polynomial step size ``alpha_n = max(alpha_min, n^-omega)``), or sampled soft value iteration
(fitted soft Q-iteration over a replay buffer).

:func:`sobirl` runs the outer loop: sample with the current policy, estimate the hypergradient,
step ``x``, update the lower level warm-started on a replay buffer (transitions do not depend on
``x``; the designed reward of a stored transition is recomputed at the new ``x``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from ._validation import (
    DTYPE,
    as_tensor,
    check_choice,
    check_finite,
    check_gamma,
    check_positive_int,
    check_real,
    check_tau,
)
from .envs import TabularEnv
from .hypergradient import RewardFn, UpperFn, upper_gradients
from .hypergradient import reward_jacobian as _autograd_jacobian

__all__ = [
    "discrete_spaces",
    "Transitions",
    "sample_transitions",
    "StepSize",
    "SoftQResult",
    "soft_q_learning",
    "soft_q_update",
    "fitted_soft_q_iteration",
    "mc_returns",
    "Critic",
    "fit_critic",
    "SampledHypergradient",
    "hypergradient_from_batch",
    "sampled_hypergradient",
    "ModelFreeProblem",
    "model_free_problem",
    "SoBiRLConfig",
    "SoBiRLHistory",
    "SoBiRLResult",
    "sobirl",
]


_TERMINAL = ("absorbing", "zero")
_CRITICS = ("mc", "td")
_ESTIMATORS = ("full", "truncated")
_LOWERS = ("q_learning", "fitted")


# --------------------------------------------------------------------------------------------
# The environment interface
# --------------------------------------------------------------------------------------------


def discrete_spaces(env) -> tuple[int, int]:
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


def sample_transitions(env, pi, n_transitions: int, gamma: float, *, seed=0) -> Transitions:
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


# --------------------------------------------------------------------------------------------
# The lower level from samples: soft Q-learning, fitted soft Q-iteration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSize:
    """Polynomial step sizes ``alpha_n = max(alpha_min, n^-omega)`` for the ``n``-th visit of ``(s, a)``.

    ``1/2 < omega <= 1`` satisfies the Robbins-Monro conditions (``sum alpha = inf``,
    ``sum alpha^2 < inf``); ``omega`` below 1 forgets the initial values faster, which matters for
    ``gamma`` near 1 (Even-Dar and Mansour, 2003). ``alpha_min > 0`` keeps tracking a reward that
    moves (the outer loop of :func:`sobirl`), at the price of a noise floor.
    """

    omega: float = 0.7
    alpha_min: float = 0.0

    def __post_init__(self) -> None:
        omega = check_real(self.omega, "omega")
        if not 0.5 < omega <= 1.0:
            raise ValueError(f"omega must lie in (0.5, 1], got {omega}")
        amin = check_real(self.alpha_min, "alpha_min")
        if not 0.0 <= amin <= 1.0:
            raise ValueError(f"alpha_min must lie in [0, 1], got {amin}")

    def __call__(self, n: int) -> float:
        return max(self.alpha_min, float(n) ** (-self.omega))


def _absorbing_values(r: np.ndarray, tau: float, gamma: float) -> np.ndarray:
    """``tau logsumexp(r(s, .) / tau) / (1 - gamma)``: the soft value of staying forever in ``s``."""
    z = r / tau
    m = z.max(axis=1)
    return tau * (m + np.log(np.exp(z - m[:, None]).sum(axis=1))) / (1.0 - gamma)


def _soft_v(row: np.ndarray, tau: float) -> float:
    m = float(row.max())
    return m + tau * math.log(float(np.exp((row - m) / tau).sum()))


def soft_q_update(
    Q: np.ndarray,
    counts: np.ndarray,
    batch: Transitions,
    r: np.ndarray,
    tau: float,
    step_size: StepSize,
    *,
    terminal: str = "absorbing",
    env_reward: bool = False,
) -> None:
    """One pass of tabular soft Q-learning over ``batch`` (in its order), in place.

    For each transition ``(s, a, s')``: ``n = counts[s, a] += 1`` and
    ``Q(s, a) <- Q(s, a) + alpha_n (r(s, a) + gamma V(s') - Q(s, a))`` with
    ``V(s') = tau logsumexp(Q(s', .) / tau)`` (the sampled soft Bellman operator of math.md s. 1),
    or the closed-form absorbing value after ``terminated`` (zero for ``terminal="zero"``).

    Args:
        Q: ``[S, A]`` float64 array, updated in place. counts: ``[S, A]`` int array, in place.
        batch: the transitions; r: the designed reward ``[S, A]`` (numpy); tau: temperature.
        step_size: :class:`StepSize`; terminal: ``"absorbing"`` or ``"zero"``.
        env_reward: add the observed environment reward of each transition to ``r(s, a)``.
    """
    gamma = batch.gamma
    V_term = (
        _absorbing_values(r, tau, gamma) if terminal == "absorbing" else np.zeros(batch.n_states)
    )
    omega, amin = step_size.omega, step_size.alpha_min
    extra = batch.reward.tolist() if env_reward else [0.0] * len(batch)
    for s, a, s2, term, re in zip(
        batch.s.tolist(),
        batch.a.tolist(),
        batch.s_next.tolist(),
        batch.terminated.tolist(),
        extra,
        strict=True,
    ):
        if term:
            v2 = float(V_term[s2])
        else:
            row = Q[s2]
            m = row.max()
            v2 = float(m + tau * math.log(np.exp((row - m) / tau).sum()))
        counts[s, a] += 1
        alpha = max(amin, counts[s, a] ** (-omega))
        Q[s, a] += alpha * (r[s, a] + re + gamma * v2 - Q[s, a])


@dataclass
class SoftQResult:
    """The output of :func:`soft_q_learning`.

    Attributes:
        Q: ``[S, A]`` soft action values; V: ``tau logsumexp(Q / tau)`` ``[S]``;
        pi: ``softmax(Q / tau)`` ``[S, A]`` (torch float64).
        counts: visits of each pair ``[S, A]`` (numpy ``int64``).
        n_transitions, n_episodes: what was sampled.
    """

    Q: torch.Tensor
    V: torch.Tensor
    pi: torch.Tensor
    counts: np.ndarray
    n_transitions: int
    n_episodes: int


def soft_q_learning(
    env,
    r,
    tau: float,
    gamma: float,
    n_transitions: int,
    *,
    Q0=None,
    step_size: StepSize | None = None,
    behaviour: str = "softmax",
    terminal: str = "absorbing",
    env_reward: bool = False,
    seed=0,
) -> SoftQResult:
    """Tabular soft Q-learning on ``env`` with the designed reward ``r`` (math.md sections 1 and 4).

    Online: every sampled transition ``(s, a, s')`` updates ``Q(s, a)`` toward the sampled soft
    Bellman target ``r(s, a) + gamma tau logsumexp(Q(s', .) / tau)`` with the step size
    ``alpha_n`` of the ``n``-th visit (:class:`StepSize`). The fixed point in expectation is the
    soft-optimal ``Q*`` of :func:`~birl_lite.soft.soft_value_iteration`; the environment's own
    reward is ignored. Episodes restart with probability ``1 - gamma`` per step (as in
    :func:`sample_transitions`), which spreads the data over the discounted visitation.

    Args:
        env: a gymnasium env with Discrete spaces (``P`` is never read).
        r: the designed reward ``[S, A]``.
        tau: temperature; gamma: discount factor.
        n_transitions: number of updates (environment steps).
        Q0: warm start ``[S, A]`` (zeros when ``None``).
        step_size: :class:`StepSize` (default ``omega = 0.7``, no floor).
        behaviour: ``"softmax"``: act with the current ``softmax(Q / tau)`` (on-policy);
            ``"uniform"``: uniformly random actions (soft Q-learning is off-policy).
        terminal: ``"absorbing"`` or ``"zero"`` (module docstring).
        env_reward: learn with ``r(s, a)`` plus the observed environment reward (reward shaping:
            ``r`` is then the shaping term only).
        seed: seed of the actions, restarts and environment.

    Returns:
        :class:`SoftQResult`.
    """
    S, A = discrete_spaces(env)
    tau, gamma = check_tau(tau), check_gamma(gamma)
    r_np = _table(r, S, A, "r")
    n = check_positive_int(n_transitions, "n_transitions")
    step_size = StepSize() if step_size is None else step_size
    if not isinstance(step_size, StepSize):
        raise TypeError(f"step_size must be a StepSize, got {type(step_size).__name__}")
    check_choice(behaviour, "behaviour", ("softmax", "uniform"))
    check_choice(terminal, "terminal", _TERMINAL)
    Q = np.zeros((S, A)) if Q0 is None else _table(Q0, S, A, "Q0").copy()
    counts = np.zeros((S, A), dtype=np.int64)
    V_term = _absorbing_values(r_np, tau, gamma) if terminal == "absorbing" else np.zeros(S)
    walker = _Walker(env, 1.0 - gamma, _rng(seed))
    rng = walker.rng
    omega, amin = step_size.omega, step_size.alpha_min
    n_episodes = 0
    s = walker.reset()
    for _ in range(n):
        if behaviour == "softmax":
            z = Q[s] / tau
            p = np.exp(z - z.max())
            a = _draw(np.cumsum(p), rng.random())
        else:
            a = int(rng.integers(A))
        s2, reward, term, trunc = walker.step(a)
        v2 = float(V_term[s2]) if term else _soft_v(Q[s2], tau)
        counts[s, a] += 1
        alpha = max(amin, counts[s, a] ** (-omega))
        target = r_np[s, a] + (reward if env_reward else 0.0) + gamma * v2
        Q[s, a] += alpha * (target - Q[s, a])
        if term or trunc or walker.restart():
            n_episodes += 1
            s = walker.reset()
        else:
            s = s2
    Qt = torch.as_tensor(Q, dtype=DTYPE)
    return SoftQResult(
        Q=Qt,
        V=tau * torch.logsumexp(Qt / tau, dim=1),
        pi=torch.softmax(Qt / tau, dim=1),
        counts=counts,
        n_transitions=n,
        n_episodes=n_episodes,
    )


def fitted_soft_q_iteration(
    Q: np.ndarray,
    batch: Transitions,
    r: np.ndarray,
    tau: float,
    n_sweeps: int,
    *,
    terminal: str = "absorbing",
    env_reward: bool = False,
) -> np.ndarray:
    """Sampled soft value iteration: ``n_sweeps`` synchronous sweeps of fitted soft Q-iteration.

    Every sweep replaces ``Q(s, a)``, for each pair present in ``batch``, by the average over its
    transitions of the sampled soft Bellman target ``r(s, a) + gamma tau logsumexp(Q(s', .) / tau)``
    (closed-form absorbing value after ``terminated``); pairs absent from the batch keep their
    value (warm start). Each sweep is a ``gamma``-contraction toward the soft-optimal values of the
    sampled transitions (which converge to ``Q*`` as the batch grows). ``env_reward``: add the
    average observed environment reward of the pair to ``r(s, a)``.

    Returns:
        the new ``Q`` ``[S, A]`` (a new array).
    """
    S, A, gamma = batch.n_states, batch.n_actions, batch.gamma
    sa = batch.s * A + batch.a
    cnt = np.bincount(sa, minlength=S * A).astype(np.float64)
    seen = cnt > 0
    V_term = _absorbing_values(r, tau, gamma) if terminal == "absorbing" else np.zeros(S)
    term = batch.terminated
    r_flat = r.reshape(-1).copy()
    if env_reward:
        r_flat[seen] += np.bincount(sa, weights=batch.reward, minlength=S * A)[seen] / cnt[seen]
    Q = Q.copy()
    for _ in range(check_positive_int(n_sweeps, "n_sweeps")):
        z = Q / tau
        m = z.max(axis=1)
        V = tau * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))
        v2 = np.where(term, V_term[batch.s_next], V[batch.s_next])
        mean_v = np.bincount(sa, weights=v2, minlength=S * A)[seen] / cnt[seen]
        flat = Q.reshape(-1)
        flat[seen] = r_flat[seen] + gamma * mean_v
    return Q


# --------------------------------------------------------------------------------------------
# Critics: Q_U and the gradient critic grad_x Q*, by Monte Carlo or batch TD
# --------------------------------------------------------------------------------------------


def mc_returns(batch: Transitions, c: np.ndarray, tail: np.ndarray | None = None) -> np.ndarray:
    """Monte Carlo returns ``G_t = sum_{k = t}^{end} c_k (+ tail of the episode)`` for every step.

    With geometric restarts the undiscounted sum to the end of the episode is an unbiased sample
    of the discounted value of ``c`` from ``(s_t, a_t)``.

    Args:
        batch: the transitions.
        c: per-step rewards ``[N]`` or ``[N, m]``.
        tail: per-step value added to every step of the episode that ends at that step
            (``[N]`` / ``[N, m]``, used at the terminal step: ``gamma V_abs(s')``), or ``None``.

    Returns:
        ``G`` with the shape of ``c``.
    """
    c = np.asarray(c, dtype=np.float64)
    N = len(batch)
    if c.shape[0] != N:
        raise ValueError(f"c must have {N} rows (one per transition), got {c.shape[0]}")
    rev = np.cumsum(c[::-1], axis=0)[::-1]  # rev[t] = sum_{k >= t} c_k
    rev_ext = np.concatenate([rev, np.zeros((1,) + c.shape[1:])], axis=0)
    end_idx = np.flatnonzero(batch.end)
    ep = np.cumsum(batch.end) - batch.end  # episode of each step
    e_t = end_idx[ep]
    G = rev - rev_ext[e_t + 1]
    if tail is not None:
        G = G + np.asarray(tail, dtype=np.float64)[e_t]
    return G


@dataclass
class Critic:
    """Tabular estimates of ``Q_U`` and of the gradient critic ``Gq ~ grad_x Q*`` under a policy.

    Attributes:
        Q_U: ``[S, A]`` upper-level action values (env reward, no entropy).
        Gq: ``[S, A, n]`` the gradient critic.
        counts: visits ``[S, A]`` of each pair in the batch (``0``: the entry is not estimated
            from data; MC leaves it at zero, TD at its bootstrapped value).
        method: ``"mc"`` or ``"td"``; n_sweeps: TD sweeps used (0 for MC).
    """

    Q_U: torch.Tensor
    Gq: torch.Tensor
    counts: torch.Tensor
    method: str
    n_sweeps: int = 0


def fit_critic(
    batch: Transitions,
    pi,
    dr_dx,
    tau: float,
    r=None,
    *,
    method: str = "td",
    terminal: str = "absorbing",
    tol: float = 1e-10,
    max_sweeps: int | None = None,
) -> Critic:
    """Estimate ``Q_U`` and ``Gq = grad_x Q*`` from a batch sampled with ``pi`` (math.md s. 4).

    ``grad_x Q*`` is the action value of the *vector* reward ``grad_x r_x`` under ``pi``:
    ``Gq(s, a) = grad_x r(s, a) + gamma E[sum_b pi(b|s') Gq(s', b)]`` (math.md s. 3). Both
    critics are estimated the same way, column-stacked as ``[Q_U | Gq]``:

    * ``"mc"``: every-visit Monte Carlo, the average over the visits of ``(s, a)`` of the sum of
      ``(r_U, grad_x r)`` from that step to the end of its (geometrically restarted) episode;
    * ``"td"``: batch TD(0), the SARSA targets ``c_t + gamma Q(s'_t, a'_t)`` averaged per pair and
      swept synchronously to the fixed point (the tabular LSTD solution of the batch).

    After ``terminated``: ``Q_U = 0`` and, for ``terminal="absorbing"``, the gradient value of the
    absorbing state, ``sum_a pi_abs(a|s') grad_x r(s', a) / (1 - gamma)`` with
    ``pi_abs = softmax(r(s', .) / tau)`` (needs ``r``, the designed reward ``[S, A]``).

    Args:
        batch: transitions sampled with ``pi``; pi: ``[S, A]``; dr_dx: ``[S, A, n]``.
        tau: temperature; r: designed reward ``[S, A]`` (absorbing terminal values only).
        method: ``"mc"`` or ``"td"``; terminal: ``"absorbing"`` or ``"zero"``.
        tol, max_sweeps: TD stopping rule (sup-norm change ``<= tol * max(1, scale)``;
            ``max_sweeps`` defaults to ``50 / (1 - gamma)``).

    Returns:
        :class:`Critic`.
    """
    S, A, gamma = batch.n_states, batch.n_actions, batch.gamma
    check_choice(method, "method", _CRITICS)
    check_choice(terminal, "terminal", _TERMINAL)
    _check_policy(pi, S, A)
    dr = as_tensor(dr_dx, "dr_dx").detach()
    if dr.ndim != 3 or tuple(dr.shape[:2]) != (S, A):
        raise ValueError(f"dr_dx must have shape [S, A, n] = [{S}, {A}, n], got {tuple(dr.shape)}")
    n = dr.shape[2]
    dr_np = dr.numpy()
    # per-state gradient value of the absorbing state entered at termination
    if terminal == "absorbing" and bool(batch.terminated.any()):
        if r is None:
            raise ValueError(
                "fit_critic needs r (the designed reward [S, A]) for absorbing terminals"
            )
        r_np = _table(r, S, A, "r")
        z = r_np / tau
        pabs = np.exp(z - z.max(axis=1, keepdims=True))
        pabs /= pabs.sum(axis=1, keepdims=True)
        dV_abs = np.einsum("sa,san->sn", pabs, dr_np) / (1.0 - gamma)
    else:
        dV_abs = np.zeros((S, n))
    sa = batch.s * A + batch.a
    c = np.concatenate([batch.reward[:, None], dr_np.reshape(S * A, n)[sa]], axis=1)  # [N, 1+n]
    tail_term = np.zeros((len(batch), 1 + n))
    tail_term[:, 1:] = gamma * dV_abs[batch.s_next]
    tail_term *= batch.terminated[:, None]
    cnt = np.bincount(sa, minlength=S * A).astype(np.float64)
    seen = cnt > 0
    n_sweeps = 0
    if method == "mc":
        G = mc_returns(batch, c, tail_term)
        table = np.zeros((S * A, 1 + n))
        np.add.at(table, sa, G)
        table[seen] /= cnt[seen, None]
    else:
        # compress the batch: unique (pair, next pair, terminated) keys with their counts
        s2a2 = batch.s_next * A + batch.a_next
        term = batch.terminated
        keep = ~term
        keys, inv = np.unique(np.stack([sa[keep], s2a2[keep]]), axis=1, return_inverse=True)
        w = np.bincount(inv.reshape(-1), minlength=keys.shape[1]).astype(np.float64)
        w = torch.as_tensor(w / cnt[keys[0]], dtype=DTYPE)
        rows = torch.as_tensor(keys[0], dtype=torch.int64)
        cols = torch.as_tensor(keys[1], dtype=torch.int64)
        base = np.zeros((S * A, 1 + n))
        np.add.at(base, sa, c + tail_term)  # immediate part (and terminal tails) of the target
        base[seen] /= cnt[seen, None]
        base_t = torch.as_tensor(base, dtype=DTYPE)
        table_t = base_t.clone()
        scale = max(1.0, float(base_t.abs().max()) / (1.0 - gamma))
        max_sweeps = (
            int(math.ceil(50.0 / (1.0 - gamma)))
            if max_sweeps is None
            else check_positive_int(max_sweeps, "max_sweeps")
        )
        wcol = w.unsqueeze(1)
        for n_sweeps in range(1, max_sweeps + 1):  # noqa: B007 - n_sweeps reported
            new = base_t.index_add(0, rows, gamma * wcol * table_t[cols])
            change = float((new - table_t).abs().max())
            table_t = new
            if change <= tol * scale:
                break
        table = table_t.numpy()
    table_t = torch.as_tensor(table, dtype=DTYPE).reshape(S, A, 1 + n)
    return Critic(
        Q_U=table_t[..., 0].clone(),
        Gq=table_t[..., 1:].clone(),
        counts=torch.as_tensor(cnt.reshape(S, A), dtype=DTYPE),
        method=method,
        n_sweeps=n_sweeps,
    )


# --------------------------------------------------------------------------------------------
# The sampled hypergradient
# --------------------------------------------------------------------------------------------


@dataclass
class SampledHypergradient:
    """A sampled estimate of ``grad phi(x)`` (math.md s. 4) and its parts.

    Attributes:
        grad: the estimate ``[n]``.
        direct: ``grad_x g`` (the partial derivative with the policy held fixed) ``[n]``.
        policy_term: ``grad - direct``: the part flowing through ``pi*_x`` ``[n]``.
        f: the sampled upper objective ``g(x, pi) - c_U J_U`` (0-dim).
        J_U: the sampled return of the environment reward (0-dim).
        critic: the :class:`Critic` (``None`` for the truncated estimator without critic needs).
        n_transitions, n_episodes: the sample size.
        info: ``estimator``, ``critic``, ``unvisited`` (pairs with ``pi >= 1e-3`` never sampled).
    """

    grad: torch.Tensor
    direct: torch.Tensor
    policy_term: torch.Tensor
    f: torch.Tensor
    J_U: torch.Tensor
    critic: Critic | None
    n_transitions: int
    n_episodes: int
    info: dict = field(default_factory=dict)


def _table(v, S: int, A: int, name: str) -> np.ndarray:
    t = as_tensor(v, name).detach()
    if tuple(t.shape) != (S, A):
        raise ValueError(f"{name} must have shape [S, A] = [{S}, {A}], got {tuple(t.shape)}")
    check_finite(t, name)
    return t.numpy().astype(np.float64)


def hypergradient_from_batch(
    batch: Transitions,
    pi,
    x,
    tau: float,
    r,
    dr_dx,
    *,
    upper_fn: UpperFn | None = None,
    return_weight: float = 1.0,
    critic: str = "td",
    estimator: str = "full",
    terminal: str = "absorbing",
) -> SampledHypergradient:
    """The sampled (H1) from a batch already sampled with ``pi`` (see :func:`sampled_hypergradient`).

    ``r`` is the designed reward ``r_x`` ``[S, A]`` and ``dr_dx`` its Jacobian ``[S, A, n]``.
    """
    S, A = batch.n_states, batch.n_actions
    tau = check_tau(tau)
    x = as_tensor(x, "x").detach()
    pi_np = _check_policy(pi, S, A)
    pi_t = torch.as_tensor(pi_np, dtype=DTYPE)
    dr = as_tensor(dr_dx, "dr_dx").detach()
    c_U = check_real(return_weight, "return_weight")
    check_choice(estimator, "estimator", _ESTIMATORS)
    check_choice(critic, "critic", _CRITICS)
    E = batch.n_episodes
    J_U = torch.tensor(float(batch.reward.sum()) / E, dtype=DTYPE)
    needs_critic = estimator == "full" or c_U != 0.0
    crit = (
        fit_critic(batch, pi_np, dr, tau, r, method=critic, terminal=terminal)
        if needs_critic
        else None
    )
    counts = torch.as_tensor(batch.pair_counts(), dtype=DTYPE)
    if estimator == "full":
        B = crit.Gq  # centred below
    else:
        B = dr
    # B(s, a) - grad_x V(s): centred with pi at every state (for the explicit part) ...
    B_pi = B - torch.einsum("sa,san->sn", pi_t, B).unsqueeze(1)

    grad = torch.zeros_like(x)
    direct = torch.zeros_like(x)
    g_val = torch.zeros((), dtype=DTYPE)
    unvisited = int(((counts == 0) & (pi_t >= 1e-3)).sum())
    if upper_fn is not None:
        g_val, dg_dx, dg_dpi = upper_gradients(upper_fn, x, pi_t)
        G = pi_t * (dg_dpi - (pi_t * dg_dpi).sum(dim=1, keepdim=True))
        if estimator == "full":
            Bx = torch.where((counts > 0).unsqueeze(-1), crit.Gq, dr)  # unseen: immediate part only
            Bx = Bx - torch.einsum("sa,san->sn", pi_t, Bx).unsqueeze(1)
        else:
            Bx = B_pi
        direct = dg_dx
        grad = dg_dx + torch.einsum("sa,san->n", G, Bx) / tau
    if c_U != 0.0:
        # ... and empirically over the visits for the return part: sum_t A_t B_t / E
        n_s = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
        A_U = crit.Q_U - (counts * crit.Q_U).sum(dim=1, keepdim=True) / n_s
        Bv = B - torch.einsum("sa,san->sn", counts, B).unsqueeze(1) / n_s.unsqueeze(-1)
        grad = grad - (c_U / tau) * torch.einsum("sa,sa,san->n", counts, A_U, Bv) / E
    f = g_val - c_U * J_U
    info = {"estimator": estimator, "critic": critic, "unvisited": unvisited}
    return SampledHypergradient(
        grad=grad,
        direct=direct,
        policy_term=grad - direct,
        f=f,
        J_U=J_U,
        critic=crit,
        n_transitions=len(batch),
        n_episodes=E,
        info=info,
    )


def sampled_hypergradient(
    env,
    reward_fn: RewardFn,
    x,
    tau: float,
    gamma: float,
    pi,
    n_transitions: int,
    *,
    upper_fn: UpperFn | None = None,
    return_weight: float = 1.0,
    critic: str = "td",
    estimator: str = "full",
    terminal: str = "absorbing",
    reward_jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed=0,
) -> SampledHypergradient:
    """The model-free hypergradient of ``phi(x) = f(x, pi*_x)`` from samples of ``env`` (math.md s. 4).

    ``f(x, pi) = g(x, pi) - c_U J_U(pi)`` with ``g = upper_fn`` (optional, known) and ``J_U`` the
    return of the environment's reward (weight ``c_U = return_weight``; ``0``: not used). With
    ``pi = pi*_x`` the estimate converges to (H1) as ``n_transitions`` grows, with error
    ``O(1 / sqrt(n_transitions))`` (full estimator); the truncated estimator keeps only the
    immediate-reward part of ``grad_x Q* - grad_x V*`` and is biased.

    Steps: (1) sample ``n_transitions`` steps of ``pi`` with geometric restarts
    (:func:`sample_transitions`); (2) fit ``Q_U`` and the gradient critic (:func:`fit_critic`);
    (3) ``grad = grad_x g + (1/tau) sum G B - (c_U / tau) (1/E) sum_t A_U(s_t,a_t) B(s_t,a_t)``
    over the ``E`` episodes (module docstring).

    Args:
        env: gymnasium env with Discrete spaces; its reward is ``r_U``.
        reward_fn: ``x [n] -> r_x [S, A]`` (the designed reward, computed by the algorithm).
        x: upper-level variable ``[n]``; tau: temperature; gamma: discount.
        pi: the lower-level policy ``[S, A]`` the samples are drawn with (``pi*_x`` or the
            algorithm's approximation of it).
        n_transitions: sample size (at least; the last episode is completed).
        upper_fn: ``(x, pi) -> g`` or ``None``; return_weight: ``c_U``.
        critic: ``"mc"`` or ``"td"``; estimator: ``"full"`` or ``"truncated"``.
        terminal: ``"absorbing"`` or ``"zero"``.
        reward_jacobian: analytic ``x -> dr_dx [S, A, n]``; autograd when ``None``.
        seed: seed of the sampling (same seed, same estimate).

    Returns:
        :class:`SampledHypergradient`.
    """
    S, A = discrete_spaces(env)
    tau, gamma = check_tau(tau), check_gamma(gamma)
    x = as_tensor(x, "x").detach()
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty 1-D tensor [n], got shape {tuple(x.shape)}")
    with torch.no_grad():
        r = _table(reward_fn(x), S, A, "reward_fn(x)")
    dr = reward_jacobian(x) if reward_jacobian is not None else _autograd_jacobian(reward_fn, x)
    batch = sample_transitions(env, pi, n_transitions, gamma, seed=seed)
    return hypergradient_from_batch(
        batch,
        pi,
        x,
        tau,
        r,
        dr,
        upper_fn=upper_fn,
        return_weight=return_weight,
        critic=critic,
        estimator=estimator,
        terminal=terminal,
    )


# --------------------------------------------------------------------------------------------
# SoBiRL
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFreeProblem:
    """A bilevel problem seen through an environment: ``min_x g(x, pi*_x) - c_U J_U(pi*_x)``.

    Attributes:
        env: gymnasium env with Discrete spaces; its reward is the upper-level reward ``r_U``.
        reward_fn: ``x [n] -> r_x [S, A]``, the designed reward.
        x0: starting point ``[n]``; tau: temperature; gamma: discount of both levels.
        upper_fn: ``(x, pi) -> g`` (known part of the upper objective) or ``None``.
        return_weight: ``c_U`` (``0``: the environment reward is not part of the objective).
        reward_jacobian: analytic ``x -> dr_dx [S, A, n]`` or ``None`` (autograd).
        terminal: ``"absorbing"`` or ``"zero"`` (module docstring).
        env_reward_in_lower: the lower level's reward is the *observed* environment reward plus
            ``reward_fn(x)`` (reward shaping: ``reward_fn`` returns the shaping term only);
            ``False``: the lower level's reward is ``reward_fn(x)`` alone.
        name: a description.
    """

    env: gym.Env
    reward_fn: RewardFn
    x0: torch.Tensor
    tau: float
    gamma: float
    upper_fn: UpperFn | None = None
    return_weight: float = 1.0
    reward_jacobian: Callable[[torch.Tensor], torch.Tensor] | None = None
    terminal: str = "absorbing"
    env_reward_in_lower: bool = False
    name: str = "model-free bilevel problem"

    def __post_init__(self) -> None:
        discrete_spaces(self.env)
        if not callable(self.reward_fn):
            raise TypeError("reward_fn must be callable: x [n] -> r [S, A]")
        if self.upper_fn is not None and not callable(self.upper_fn):
            raise TypeError("upper_fn must be callable or None")
        x0 = as_tensor(self.x0, "x0").detach().clone()
        if x0.ndim != 1 or x0.numel() == 0:
            raise ValueError(f"x0 must be a non-empty 1-D tensor [n], got shape {tuple(x0.shape)}")
        object.__setattr__(self, "x0", x0)
        object.__setattr__(self, "tau", check_tau(self.tau))
        object.__setattr__(self, "gamma", check_gamma(self.gamma))
        object.__setattr__(self, "return_weight", check_real(self.return_weight, "return_weight"))
        check_choice(self.terminal, "terminal", _TERMINAL)

    def dr_dx(self, x: torch.Tensor) -> torch.Tensor:
        """``grad_x r_x`` ``[S, A, n]``: analytic if given, else autograd."""
        if self.reward_jacobian is not None:
            return as_tensor(self.reward_jacobian(x), "reward_jacobian(x)").detach()
        return _autograd_jacobian(self.reward_fn, x)


def model_free_problem(problem, *, max_episode_steps: int | None = None) -> ModelFreeProblem:
    """The model-free view of a reward-design problem (:func:`~birl_lite.problems.reward_design_problem`).

    The exact problem is ``min_x -J_env(pi*_x) + lam/2 ||x||^2`` with the agent's reward
    ``r_env + features @ x``. Seen through the environment (a :class:`~birl_lite.envs.TabularEnv`
    of the task, which pays ``r_env``): the designer knows only its shaping ``features @ x``
    (``reward_fn``) and the ridge ``lam/2 ||x||^2`` (``upper_fn``); the agent learns from the
    observed environment reward plus the shaping (``env_reward_in_lower=True``); the upper-level
    reward ``r_U`` is the environment reward (``return_weight = 1``). Same ``phi`` as the exact
    problem, so :func:`sobirl` can be compared with :func:`~birl_lite.model_based.m_sobirl`.

    Args:
        problem: a BilevelProblem built by ``reward_design_problem``.
        max_episode_steps: optional time limit of the environment.

    Returns:
        :class:`ModelFreeProblem`.
    """
    info = getattr(problem, "info", None)
    if not isinstance(info, dict) or "task" not in info or "features" not in info:
        raise ValueError(
            "model_free_problem needs a reward-design BilevelProblem (reward_design_problem(...)); "
            "for other problems build a ModelFreeProblem directly"
        )
    task, lam = info["task"], float(info["lam"])
    feats = as_tensor(info["features"], "features").detach()
    S, A, n = feats.shape
    F2 = feats.reshape(S * A, n)

    def shaping(x: torch.Tensor) -> torch.Tensor:
        return (F2 @ x).view(S, A)

    def shaping_jacobian(x: torch.Tensor) -> torch.Tensor:
        return feats

    def ridge(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return 0.5 * lam * torch.dot(x, x)

    return ModelFreeProblem(
        env=TabularEnv(task, max_episode_steps=max_episode_steps),
        reward_fn=shaping,
        x0=problem.x0,
        tau=problem.tau,
        gamma=task.mdp.gamma,
        upper_fn=ridge,
        return_weight=1.0,
        reward_jacobian=shaping_jacobian,
        terminal="absorbing",
        env_reward_in_lower=True,
        name=f"model-free {problem.name}",
    )


@dataclass(frozen=True)
class SoBiRLConfig:
    """Hyperparameters of :func:`sobirl`.

    Attributes:
        beta: upper-level step size.
        n_transitions: environment steps sampled per outer step (for the hypergradient and the
            replay buffer of the lower level).
        max_iter: outer steps ``K``.
        lower: ``"fitted"`` (sweeps of fitted soft Q-iteration over the replay buffer, i.e.
            sampled soft value iteration, the analogue of M-SoBiRL's ``N`` warm-started sweeps) or
            ``"q_learning"`` (passes of online soft Q-learning over the replay buffer; noisier).
        n_lower: passes (q_learning) or sweeps (fitted) per outer step.
        buffer_size: transitions kept in the replay buffer (the most recent).
        warmup_transitions: soft Q-learning steps at ``x0`` before the first outer step, with
            uniformly random actions (every pair gets visited, whatever ``Q0``).
        omega, alpha_min: the soft Q-learning step size (:class:`StepSize`).
        critic: ``"mc"`` or ``"td"``; estimator: ``"full"`` or ``"truncated"``.
        seed: seeds every random draw (same seed, same numbers).
        progress: show a tqdm progress bar.
        record_iterates: keep every ``x_k``.
    """

    beta: float = 0.1
    n_transitions: int = 1000
    max_iter: int = 100
    lower: str = "fitted"
    n_lower: int = 10
    buffer_size: int = 20_000
    warmup_transitions: int = 0
    omega: float = 0.7
    alpha_min: float = 0.05
    critic: str = "td"
    estimator: str = "full"
    seed: int = 0
    progress: bool = True
    record_iterates: bool = False

    def __post_init__(self) -> None:
        beta = check_real(self.beta, "beta")
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a finite number > 0, got {beta}")
        for name, minimum in (
            ("n_transitions", 1),
            ("max_iter", 0),
            ("n_lower", 1),
            ("buffer_size", 1),
            ("warmup_transitions", 0),
            ("seed", 0),
        ):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), name, minimum))
        check_choice(self.lower, "lower", _LOWERS)
        check_choice(self.critic, "critic", _CRITICS)
        check_choice(self.estimator, "estimator", _ESTIMATORS)
        StepSize(self.omega, self.alpha_min)
        for name in ("progress", "record_iterates"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")


@dataclass
class SoBiRLHistory:
    """What :func:`sobirl` records (float64 tensors, one entry per outer step ``k = 0..K-1``).

    Attributes:
        f: the sampled upper objective ``g(x_k, pi_k) - c_U J_U(pi_k)`` of the batch of step ``k``.
        J_U: the sampled return of the environment reward.
        h_norm: ``||h_k||`` of the hypergradient estimates.
        n_transitions: cumulative environment steps after step ``k``.
        time: seconds per outer step (without ``evaluate``).
        phi: ``evaluate(x_k)`` for ``k = 0..K`` when an ``evaluate`` callable is given, else ``None``.
        x: iterates ``[K + 1, n]`` (``record_iterates``), else ``None``.
    """

    f: torch.Tensor
    J_U: torch.Tensor
    h_norm: torch.Tensor
    n_transitions: torch.Tensor
    time: torch.Tensor
    phi: torch.Tensor | None = None
    x: torch.Tensor | None = None


@dataclass
class SoBiRLResult:
    """The output of :func:`sobirl`: final ``x`` ``[n]``, soft ``Q`` ``[S, A]`` and policy
    ``pi = softmax(Q / tau)``, the number of outer steps, the history and the config."""

    x: torch.Tensor
    Q: torch.Tensor
    pi: torch.Tensor
    n_iter: int
    history: SoBiRLHistory
    config: SoBiRLConfig


def _policy(Q: np.ndarray, tau: float) -> np.ndarray:
    z = Q / tau
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def sobirl(
    problem: ModelFreeProblem,
    config: SoBiRLConfig | None = None,
    *,
    x0=None,
    Q0=None,
    evaluate: Callable[[torch.Tensor], float] | None = None,
    **overrides,
) -> SoBiRLResult:
    """Run SoBiRL, model-free bilevel RL (math.md section 4), through the gymnasium API.

    State: ``x_k``, the soft values ``Q_k`` (warm-started), the visit counts of soft Q-learning and
    a replay buffer of transitions. Outer step ``k``:

    1. ``pi_k = softmax(Q_k / tau)``; sample ``n_transitions`` steps of ``pi_k``
       (:func:`sample_transitions`, seed ``[seed, k]``);
    2. ``h_k`` = the sampled hypergradient at ``(x_k, pi_k)`` (:func:`~birl_lite.model_free.hypergradient_from_batch`);
    3. ``x_{k+1} = x_k - beta h_k``;
    4. lower level at ``x_{k+1}``: ``n_lower`` passes of soft Q-learning (or sweeps of fitted soft
       Q-iteration) over the replay buffer, the designed reward recomputed at ``x_{k+1}``.

    Args:
        problem: :class:`ModelFreeProblem` (see :func:`model_free_problem`).
        config: :class:`SoBiRLConfig` (defaults when ``None``).
        x0: starting point (``problem.x0`` when ``None``); Q0: initial soft values ``[S, A]``.
        evaluate: optional ``x -> float`` recorded at every iterate (e.g. the exact ``phi(x)``
            computed with the model, for the book's figures; never used by the algorithm).
        **overrides: fields of :class:`SoBiRLConfig`, e.g. ``beta=0.5, max_iter=50``.

    Returns:
        :class:`SoBiRLResult`.

    Raises:
        FloatingPointError: non-finite iterates (``beta`` too large).
    """
    if not isinstance(problem, ModelFreeProblem):
        raise TypeError(f"problem must be a ModelFreeProblem, got {type(problem).__name__}")
    cfg = SoBiRLConfig() if config is None else config
    if not isinstance(cfg, SoBiRLConfig):
        raise TypeError(f"config must be a SoBiRLConfig, got {type(cfg).__name__}")
    if overrides:
        valid = {f.name for f in dataclasses.fields(SoBiRLConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(
                f"unknown hyperparameter(s) {unknown}; valid: {', '.join(sorted(valid))}"
            )
        cfg = dataclasses.replace(cfg, **overrides)
    env, tau, gamma = problem.env, problem.tau, problem.gamma
    S, A = discrete_spaces(env)
    x = problem.x0.clone() if x0 is None else as_tensor(x0, "x0").detach().clone()
    if tuple(x.shape) != tuple(problem.x0.shape):
        raise ValueError(f"x0 must have shape {tuple(problem.x0.shape)}, got {tuple(x.shape)}")
    Q = np.zeros((S, A)) if Q0 is None else _table(Q0, S, A, "Q0").copy()
    counts = np.zeros((S, A), dtype=np.int64)
    step = StepSize(cfg.omega, cfg.alpha_min)

    def designed(xk: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return _table(problem.reward_fn(xk), S, A, "reward_fn(x)")

    r = designed(x)
    if cfg.warmup_transitions > 0:
        warm = soft_q_learning(
            env,
            r,
            tau,
            gamma,
            cfg.warmup_transitions,
            Q0=Q,
            step_size=step,
            behaviour="uniform",
            terminal=problem.terminal,
            env_reward=problem.env_reward_in_lower,
            seed=[cfg.seed, 2**20],
        )
        Q = warm.Q.numpy().copy()
        counts += warm.counts
    buffer: list[Transitions] = []
    f_h, J_h, h_h, n_h, t_h = [], [], [], [], []
    xs = [x.clone()]
    phis = [float(evaluate(x))] if evaluate is not None else None
    total = 0
    for k in tqdm(range(cfg.max_iter), disable=not cfg.progress, desc="SoBiRL", leave=False):
        t0 = time.perf_counter()
        pi = _policy(Q, tau)
        batch = sample_transitions(env, pi, cfg.n_transitions, gamma, seed=[cfg.seed, k])
        total += len(batch)
        est = hypergradient_from_batch(
            batch,
            pi,
            x,
            tau,
            r,
            problem.dr_dx(x),
            upper_fn=problem.upper_fn,
            return_weight=problem.return_weight,
            critic=cfg.critic,
            estimator=cfg.estimator,
            terminal=problem.terminal,
        )
        h = est.grad
        if not bool(torch.isfinite(h).all()):
            raise FloatingPointError(
                f"sobirl diverged: non-finite hypergradient estimate at step {k} (beta={cfg.beta:g})"
            )
        x = x - cfg.beta * h
        r = designed(x)
        buffer.append(batch)
        while sum(len(b) for b in buffer) - len(buffer[0]) >= cfg.buffer_size:
            buffer.pop(0)
        replay = Transitions.concatenate(buffer)
        if cfg.lower == "q_learning":
            for _ in range(cfg.n_lower):
                soft_q_update(
                    Q,
                    counts,
                    replay,
                    r,
                    tau,
                    step,
                    terminal=problem.terminal,
                    env_reward=problem.env_reward_in_lower,
                )
        else:
            Q = fitted_soft_q_iteration(
                Q,
                replay,
                r,
                tau,
                cfg.n_lower,
                terminal=problem.terminal,
                env_reward=problem.env_reward_in_lower,
            )
        t_h.append(time.perf_counter() - t0)
        f_h.append(float(est.f))
        J_h.append(float(est.J_U))
        h_h.append(float(h.norm()))
        n_h.append(total)
        xs.append(x.clone())
        if phis is not None:
            phis.append(float(evaluate(x)))
    history = SoBiRLHistory(
        f=torch.tensor(f_h, dtype=DTYPE),
        J_U=torch.tensor(J_h, dtype=DTYPE),
        h_norm=torch.tensor(h_h, dtype=DTYPE),
        n_transitions=torch.tensor(n_h, dtype=DTYPE),
        time=torch.tensor(t_h, dtype=DTYPE),
        phi=torch.tensor(phis, dtype=DTYPE) if phis is not None else None,
        x=torch.stack(xs) if cfg.record_iterates else None,
    )
    Qt = torch.as_tensor(Q, dtype=DTYPE)
    return SoBiRLResult(
        x=x,
        Q=Qt,
        pi=torch.softmax(Qt / tau, dim=1),
        n_iter=cfg.max_iter,
        history=history,
        config=cfg,
    )
