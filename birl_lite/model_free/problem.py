"""A bilevel problem seen through an environment (chapter 5 of the book).

:class:`ModelFreeProblem` holds what the model-free algorithm may use: the environment (sampled
through the gymnasium API; its reward is the upper-level reward ``r_U``), the designed reward
``r_x`` with its Jacobian, and the known part ``g`` of the upper objective
``f(x, pi) = g(x, pi) - c_U J_U(pi)`` (chapter 5, :eq:`eq-mf-objective`).
:func:`model_free_problem` builds the model-free view of a reward-design problem of
:mod:`birl_lite.problems`, so that :func:`~birl_lite.model_free.algorithm.sobirl` can be compared
with the model-based :func:`~birl_lite.model_based.m_sobirl`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import torch

from .._validation import as_tensor, check_choice, check_gamma, check_real, check_tau
from ..envs import TabularEnv
from ..first_order import RewardFn, UpperFn
from ..first_order import reward_jacobian as _autograd_jacobian
from ..problems import BilevelProblem
from .sampling import _TERMINAL, discrete_spaces

__all__ = ["ModelFreeProblem", "model_free_problem"]


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
        terminal: ``"absorbing"`` or ``"zero"`` (see :mod:`birl_lite.model_free.sampling`).
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


def model_free_problem(
    problem: BilevelProblem, *, max_episode_steps: int | None = None
) -> ModelFreeProblem:
    """The model-free view of a reward-design problem (:func:`~birl_lite.problems.reward_design_problem`).

    The exact problem is ``min_x -J_env(pi*_x) + ridge/2 ||x||^2`` with the agent's reward
    ``r_env + features @ x``. Seen through the environment (a :class:`~birl_lite.envs.TabularEnv`
    of the task, which pays ``r_env``): the designer knows only its shaping ``features @ x``
    (``reward_fn``) and the ridge ``ridge/2 ||x||^2`` (``upper_fn``); the agent learns from the
    observed environment reward plus the shaping (``env_reward_in_lower=True``); the upper-level
    reward ``r_U`` is the environment reward (``return_weight = 1``). Same ``phi`` as the exact
    problem, so :func:`~birl_lite.model_free.algorithm.sobirl` can be compared with
    :func:`~birl_lite.model_based.m_sobirl`.

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
    task, eta = info["task"], float(info["ridge"])
    feats = as_tensor(info["features"], "features").detach()
    S, A, n = feats.shape
    F2 = feats.reshape(S * A, n)

    def shaping(x: torch.Tensor) -> torch.Tensor:
        return (F2 @ x).view(S, A)

    def shaping_jacobian(x: torch.Tensor) -> torch.Tensor:
        return feats

    def ridge(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return 0.5 * eta * torch.dot(x, x)

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
