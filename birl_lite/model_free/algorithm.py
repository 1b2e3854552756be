"""SoBiRL, the model-free bilevel RL algorithm of [YGY] (chapter 5 of the book).

:func:`sobirl` runs the outer loop on a :class:`~birl_lite.model_free.problem.ModelFreeProblem`:
sample with the current policy (:func:`~birl_lite.model_free.sampling.sample_transitions`),
estimate the hypergradient (:func:`~birl_lite.model_free.estimators.hypergradient_from_batch`,
chapter 5, :eq:`eq-mf-estimator`), step ``x``, update the lower level warm-started on a replay
buffer (:mod:`birl_lite.model_free.soft_q`, chapter 5, :eq:`eq-mf-soft-q`; transitions do not
depend on ``x``; the designed reward of a stored transition is recomputed at the new ``x``).
:class:`SoBiRLConfig` holds its hyperparameters, :class:`SoBiRLHistory` what it records and
:class:`SoBiRLResult` what it returns.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .. import kernels
from .._validation import DTYPE, ArrayLike, as_tensor, check_choice, check_positive_int, check_real
from .critics import _CRITICS
from .estimators import _ESTIMATORS, hypergradient_from_batch
from .problem import ModelFreeProblem
from .sampling import Transitions, _table, discrete_spaces, sample_transitions
from .soft_q import StepSize, fitted_soft_q_iteration, soft_q_learning, soft_q_update

__all__ = ["SoBiRLConfig", "SoBiRLHistory", "SoBiRLResult", "sobirl"]


_LOWERS = ("q_learning", "fitted")


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
        omega, alpha_min: the soft Q-learning step size
            (:class:`~birl_lite.model_free.soft_q.StepSize`).
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
    """``softmax(Q / tau)`` of a numpy table, by :func:`birl_lite.kernels.softmax_policy`."""
    return kernels.softmax_policy(torch.from_numpy(Q), tau).numpy()


def sobirl(
    problem: ModelFreeProblem,
    config: SoBiRLConfig | None = None,
    *,
    x0: ArrayLike | None = None,
    Q0: ArrayLike | None = None,
    evaluate: Callable[[torch.Tensor], float] | None = None,
    **overrides,
) -> SoBiRLResult:
    """Run SoBiRL, model-free bilevel RL (chapter 5 of the book), through the gymnasium API.

    State: ``x_k``, the soft values ``Q_k`` (warm-started), the visit counts of soft Q-learning and
    a replay buffer of transitions. Outer step ``k``:

    1. ``pi_k = softmax(Q_k / tau)``; sample ``n_transitions`` steps of ``pi_k``
       (:func:`~birl_lite.model_free.sampling.sample_transitions`, seed ``[seed, k]``);
    2. ``h_k`` = the sampled hypergradient at ``(x_k, pi_k)``
       (:func:`~birl_lite.model_free.estimators.hypergradient_from_batch`);
    3. ``x_{k+1} = x_k - beta h_k``;
    4. lower level at ``x_{k+1}``: ``n_lower`` passes of soft Q-learning (or sweeps of fitted soft
       Q-iteration) over the replay buffer, the designed reward recomputed at ``x_{k+1}``.

    Args:
        problem: :class:`~birl_lite.model_free.problem.ModelFreeProblem`
            (see :func:`~birl_lite.model_free.problem.model_free_problem`).
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
