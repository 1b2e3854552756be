"""A ``gymnasium.Env`` that samples from a tabular model (the reverse of :func:`~birl_lite.mdp.from_gymnasium`).

Model-free algorithms (chapters 5-6) see only this interface: ``reset`` / ``step`` with integer
observations and actions. They never read ``P``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ._validation import ArrayLike, as_tensor, check_finite, check_positive_int
from .mdp import TabularMDP, TabularTask

__all__ = ["TabularEnv"]


class TabularEnv(gym.Env):
    """Sample episodes of a :class:`~birl_lite.mdp.TabularMDP` with reward table ``r[S, A]``.

    ``reset`` draws ``s0 ~ rho``; ``step(a)`` draws ``s' ~ P[s, a, :]`` and pays ``r[s, a]``.
    The episode terminates on entering a state flagged in ``terminal`` and is truncated after
    ``max_episode_steps`` steps (``None``: never; the discounted infinite-horizon setting).

    Args:
        mdp: the dynamics, or a :class:`~birl_lite.mdp.TabularTask` (then ``r`` and ``terminal``
            default to the task's).
        r: reward table ``[S, A]``.
        terminal: boolean ``[S]``, states that end an episode; none when ``None``.
        max_episode_steps: truncation horizon.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        mdp: TabularMDP | TabularTask,
        r: ArrayLike | None = None,
        *,
        terminal: ArrayLike | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(mdp, TabularTask):
            task = mdp
            mdp = task.mdp
            r = task.r if r is None else r
            terminal = task.terminal if terminal is None else terminal
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP or TabularTask, got {type(mdp).__name__}")
        if r is None:
            raise TypeError("r (reward table [S, A]) is required with a TabularMDP")
        S, A = mdp.n_states, mdp.n_actions
        r = as_tensor(r, "r").detach()
        if tuple(r.shape) != (S, A):
            raise ValueError(f"r must have shape [S, A] = [{S}, {A}], got {tuple(r.shape)}")
        check_finite(r, "r")
        if terminal is None:
            term = np.zeros(S, dtype=bool)
        else:
            term = np.asarray(torch.as_tensor(terminal).detach().cpu(), dtype=bool)
            if term.shape != (S,):
                raise ValueError(f"terminal must have shape ({S},), got {term.shape}")
        if max_episode_steps is not None:
            max_episode_steps = check_positive_int(max_episode_steps, "max_episode_steps")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.mdp = mdp
        self.r = r
        self.terminal = term
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(S)
        self.action_space = gym.spaces.Discrete(A)
        # Cumulative sums for inverse-CDF draws (u * total < total never selects a zero-mass tail).
        self._cdf = np.cumsum(mdp.P.numpy(), axis=-1)
        self._rho_cdf = np.cumsum(mdp.rho.numpy())
        self._r = r.numpy()
        self._state: int | None = None
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Start an episode: draw ``s0 ~ rho``. Returns ``(s0, {})``; ``seed`` reseeds ``np_random``."""
        super().reset(seed=seed)
        self._state = _draw(self._rho_cdf, self.np_random)
        self._t = 0
        return self._state, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        """Take ``action``: returns ``(s', r[s, a], terminated, truncated, {})`` with ``s' ~ P[s, a, :]``."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        s, a = self._state, int(action)
        reward = float(self._r[s, a])
        s_next = _draw(self._cdf[s, a], self.np_random)
        self._state = s_next
        self._t += 1
        terminated = bool(self.terminal[s_next])
        truncated = self.max_episode_steps is not None and self._t >= self.max_episode_steps
        return s_next, reward, terminated, truncated, {}

    def render(self) -> str | None:
        """A one-line text description of the current state (``render_mode="ansi"``), else ``None``."""
        if self.render_mode == "ansi":
            return f"state {self._state} (t={self._t})\n"
        return None


def _draw(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """Index ``i`` with probability proportional to ``cdf[i] - cdf[i - 1]`` (inverse CDF)."""
    return int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
