"""The lower level from samples: soft Q-learning, fitted soft Q-iteration (chapter 5 of the book).

Model-free bilevel RL must learn the agent's soft-optimal ``Q*`` of the designed reward ``r_x``
(the fixed point of the soft Bellman operator, chapter 1, :eq:`eq-soft-bellman`) from sampled
transitions, without ``P``:

* tabular soft Q-learning (:func:`soft_q_learning` online, :func:`soft_q_update` one pass over a
  batch), ``Q(s,a) <- Q(s,a) + alpha_n (r_x(s,a) + gamma tau logsumexp(Q(s', .) / tau) - Q(s,a))``
  (chapter 5, :eq:`eq-mf-soft-q`) with the polynomial step size
  ``alpha_n = max(alpha_min, n^-omega)`` of the ``n``-th visit (:class:`StepSize`);
* sampled soft value iteration (:func:`fitted_soft_q_iteration`): synchronous sweeps of the same
  target averaged over a replay buffer, the default lower level of
  :func:`~birl_lite.model_free.algorithm.sobirl`.

After ``terminated`` the target uses the closed-form absorbing value, or zero (``terminal``, see
:mod:`birl_lite.model_free.sampling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from .. import kernels
from .._validation import (
    DTYPE,
    ArrayLike,
    check_choice,
    check_gamma,
    check_positive_int,
    check_real,
    check_tau,
)
from .sampling import (
    _TERMINAL,
    SeedLike,
    Transitions,
    _draw,
    _rng,
    _table,
    _Walker,
    discrete_spaces,
)

__all__ = [
    "StepSize",
    "SoftQResult",
    "soft_q_learning",
    "soft_q_update",
    "fitted_soft_q_iteration",
]


@dataclass(frozen=True)
class StepSize:
    """Polynomial step sizes ``alpha_n = max(alpha_min, n^-omega)`` for the ``n``-th visit of ``(s, a)``.

    ``1/2 < omega <= 1`` satisfies the Robbins-Monro conditions (``sum alpha = inf``,
    ``sum alpha^2 < inf``); ``omega`` below 1 forgets the initial values faster, which matters for
    ``gamma`` near 1 (Even-Dar and Mansour, 2003). ``alpha_min > 0`` keeps tracking a reward that
    moves (the outer loop of :func:`~birl_lite.model_free.algorithm.sobirl`), at the price of a
    noise floor.
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


def _soft_values(Q: np.ndarray, tau: float) -> np.ndarray:
    """``tau logsumexp_a(Q(s, .) / tau)`` of a numpy table ``[S, A]``, by the book's one kernel."""
    return kernels.soft_max(torch.from_numpy(Q), tau).numpy()


def _absorbing_values(r: np.ndarray, tau: float, gamma: float) -> np.ndarray:
    """``tau logsumexp(r(s, .) / tau) / (1 - gamma)``: the soft value of staying forever in ``s``."""
    return _soft_values(r, tau) / (1.0 - gamma)


def _soft_v(row: np.ndarray, tau: float) -> float:
    """The soft value ``tau logsumexp(row / tau)`` of one row, for the per-sample loops: the scalar
    specialization of :func:`birl_lite.kernels.soft_max` (a torch call per sample would triple the
    cost of soft Q-learning); tested equal to it."""
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
    ``V(s') = tau logsumexp(Q(s', .) / tau)`` (the sampled soft Bellman operator, chapter 1,
    :eq:`eq-soft-bellman`), or the closed-form absorbing value after ``terminated`` (zero for
    ``terminal="zero"``).

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
        v2 = float(V_term[s2]) if term else _soft_v(Q[s2], tau)
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
    env: gym.Env,
    r: ArrayLike,
    tau: float,
    gamma: float,
    n_transitions: int,
    *,
    Q0: ArrayLike | None = None,
    step_size: StepSize | None = None,
    behaviour: str = "softmax",
    terminal: str = "absorbing",
    env_reward: bool = False,
    seed: SeedLike = 0,
) -> SoftQResult:
    """Tabular soft Q-learning on ``env`` with the designed reward ``r`` (chapter 5).

    Online: every sampled transition ``(s, a, s')`` updates ``Q(s, a)`` toward the sampled soft
    Bellman target ``r(s, a) + gamma tau logsumexp(Q(s', .) / tau)`` with the step size
    ``alpha_n`` of the ``n``-th visit (:class:`StepSize`, :eq:`eq-mf-soft-q`). The fixed point in
    expectation is the soft-optimal ``Q*`` of :func:`~birl_lite.soft.soft_value_iteration`; the
    environment's own reward is ignored. Episodes restart with probability ``1 - gamma`` per step
    (as in :func:`~birl_lite.model_free.sampling.sample_transitions`), which spreads the data over
    the discounted visitation.

    Args:
        env: a gymnasium env with Discrete spaces (``P`` is never read).
        r: the designed reward ``[S, A]``.
        tau: temperature; gamma: discount factor.
        n_transitions: number of updates (environment steps).
        Q0: warm start ``[S, A]`` (zeros when ``None``).
        step_size: :class:`StepSize` (default ``omega = 0.7``, no floor).
        behaviour: ``"softmax"``: act with the current ``softmax(Q / tau)`` (on-policy);
            ``"uniform"``: uniformly random actions (soft Q-learning is off-policy).
        terminal: ``"absorbing"`` or ``"zero"`` (see :mod:`birl_lite.model_free.sampling`).
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
        V=kernels.soft_max(Qt, tau),
        pi=kernels.softmax_policy(Qt, tau),
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
        V = _soft_values(Q, tau)
        v2 = np.where(term, V_term[batch.s_next], V[batch.s_next])
        mean_v = np.bincount(sa, weights=v2, minlength=S * A)[seen] / cnt[seen]
        flat = Q.reshape(-1)
        flat[seen] = r_flat[seen] + gamma * mean_v
    return Q
