"""Finite MDPs: the :class:`TabularMDP` container and the builders the book uses.

* :class:`TabularMDP` holds the model ``(P, gamma, rho)`` of math.md section 1, validated.
* :class:`TabularTask` bundles an MDP with a reward table ``r[S, A]`` and, for grid maps, the
  geometry needed to draw value functions.
* Builders: :func:`random_mdp` (dense or sparse random supports), :func:`random_reward`,
  :func:`gridworld` and :func:`four_rooms`, and :func:`from_gymnasium`, which reads the model of
  gymnasium's toy-text environments (FrozenLake-v1, CliffWalking-v1, Taxi-v4, ...).
* The reverse adapter, a ``gymnasium.Env`` sampling from a tabular model, is
  :class:`birl_lite.envs.TabularEnv`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._validation import (
    DTYPE,
    as_tensor,
    check_distribution,
    check_finite,
    check_gamma,
    check_positive_int,
    check_real,
)

__all__ = [
    "TabularMDP",
    "TabularTask",
    "random_mdp",
    "random_reward",
    "gridworld",
    "four_rooms",
    "FOUR_ROOMS_LAYOUT",
    "from_gymnasium",
]


class TabularMDP:
    """A finite discounted MDP without reward: ``P[s, a, s']``, ``gamma`` and ``rho``.

    Args:
        P: transition tensor of shape ``[S, A, S]``; ``P[s, a, s']`` is the probability of moving
            to ``s'`` after action ``a`` in state ``s``. Non-negative, each ``P[s, a, :]`` sums
            to 1 (within ``atol``; rows are then renormalized exactly).
        gamma: discount factor in ``[0, 1)``.
        rho: initial-state distribution of shape ``[S]``; uniform when ``None``.
        atol: tolerance on the row sums of ``P`` and on the sum of ``rho`` (float32 inputs are
            only accurate to about 1e-7).

    All tensors are stored as ``torch.float64``. Rewards are kept separately (a bilevel problem
    changes the reward, never the dynamics).
    """

    def __init__(self, P, gamma: float, rho=None, *, atol: float = 1e-6):
        P = as_tensor(P, "P").detach().clone()
        if P.ndim != 3:
            raise ValueError(
                f"P must have shape [S, A, S] (3 dimensions), got shape {tuple(P.shape)}"
            )
        S, A, S2 = P.shape
        if S == 0 or A == 0:
            raise ValueError(
                f"P must have at least one state and one action, got shape {tuple(P.shape)}"
            )
        if S2 != S:
            raise ValueError(
                f"P must have shape [S, A, S] with the same S first and last, got {tuple(P.shape)}"
            )
        check_finite(P, "P")
        if bool((P < 0).any()):
            s, a, t = (int(i) for i in torch.nonzero(P < 0)[0])
            raise ValueError(
                f"P must be non-negative (not stochastic): P[{s}, {a}, {t}] = {float(P[s, a, t]):.3g}"
            )
        sums = P.sum(dim=-1)
        bad = (sums - 1.0).abs() > atol
        if bool(bad.any()):
            s, a = (int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(
                "P must be stochastic: every row P[s, a, :] must sum to 1, "
                f"but P[{s}, {a}, :] sums to {float(sums[s, a]):.10g}"
            )
        self.P: torch.Tensor = P / sums.unsqueeze(-1)
        self.gamma: float = check_gamma(gamma)
        if rho is None:
            self.rho: torch.Tensor = torch.full((S,), 1.0 / S, dtype=DTYPE)
        else:
            self.rho = check_distribution(rho, "rho", S, atol=atol).detach().clone()

    @property
    def n_states(self) -> int:
        """Number of states ``S``."""
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        """Number of actions ``A``."""
        return self.P.shape[1]

    def expect_next(self, V: torch.Tensor) -> torch.Tensor:
        """``sum_s' P[s, a, s'] V[s', ...]``: the expected next-state value, shape ``[S, A, ...]``.

        ``V`` has shape ``[S]`` or ``[S, ...]`` (a vector-valued quantity per state).
        """
        return torch.tensordot(self.P, V, dims=([2], [0]))

    def replace(self, *, gamma: float | None = None, rho=None) -> TabularMDP:
        """A copy with a different ``gamma`` and/or ``rho`` (``P`` shared, it is never mutated)."""
        return TabularMDP(
            self.P,
            self.gamma if gamma is None else gamma,
            self.rho if rho is None else rho,
        )

    def __repr__(self) -> str:
        return (
            f"TabularMDP(n_states={self.n_states}, n_actions={self.n_actions}, gamma={self.gamma})"
        )


def check_mdp(mdp) -> TabularMDP:
    """Return ``mdp`` if it is a :class:`TabularMDP`; ``TypeError`` naming the argument otherwise."""
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    return mdp


@dataclass(frozen=True)
class TabularTask:
    """A tabular MDP with its reward table, and the map it was drawn from, if any.

    Unpacks as ``mdp, r = task``.

    Attributes:
        mdp: the dynamics.
        r: reward table ``r[s, a]`` of shape ``[S, A]`` (the expected immediate reward).
        name: a short description.
        shape: ``(rows, cols)`` of the grid for map-based tasks, else ``None``.
        cells: ``cells[s] = (row, col)`` of state ``s`` on the grid, else ``None``.
        layout: the map as strings (one character per cell), else ``None``.
        terminal: boolean ``[S]``: absorbing zero-reward states that end an episode.
        action_names: one name per action.
    """

    mdp: TabularMDP
    r: torch.Tensor
    name: str = "task"
    shape: tuple[int, int] | None = None
    cells: tuple[tuple[int, int], ...] | None = None
    layout: tuple[str, ...] | None = None
    terminal: torch.Tensor | None = None
    action_names: tuple[str, ...] | None = None

    def __iter__(self) -> Iterator:
        yield self.mdp
        yield self.r

    def grid(self, values) -> np.ndarray:
        """Arrange a per-state array ``values[S]`` on the map: ``[rows, cols]``, NaN off-states."""
        if self.shape is None or self.cells is None:
            raise ValueError(f"task {self.name!r} has no grid geometry")
        v = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=float)
        if v.shape != (self.mdp.n_states,):
            raise ValueError(f"values must have shape ({self.mdp.n_states},), got {v.shape}")
        out = np.full(self.shape, np.nan)
        for s, (i, j) in enumerate(self.cells):
            out[i, j] = v[s]
        return out


# --------------------------------------------------------------------------------------------
# Random MDPs
# --------------------------------------------------------------------------------------------


def random_mdp(
    n_states: int,
    n_actions: int,
    seed: int,
    *,
    gamma: float = 0.9,
    support: int | tuple[int, int] | None = None,
    rho=None,
) -> TabularMDP:
    """A random MDP: each ``P[s, a, :]`` has random weights ``U(0, 1)``, normalized.

    Args:
        n_states, n_actions: ``S`` and ``A``.
        seed: seed of the ``numpy.random.Generator`` that draws the instance.
        gamma: discount factor.
        support: ``None`` for dense rows (every next state possible); an int ``k`` for exactly
            ``k`` random next states per ``(s, a)``; a pair ``(lo, hi)`` for a support size drawn
            uniformly from ``lo..hi`` (inclusive) per ``(s, a)``, as in the synthetic problem of
            [YGY] (``support=(1, 9)``).
        rho: initial distribution; uniform when ``None``.

    Returns:
        A :class:`TabularMDP`.
    """
    S = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions")
    rng = np.random.default_rng(seed)
    if support is None:
        lo = hi = S
    elif isinstance(support, tuple):
        if len(support) != 2:
            raise ValueError(f"support must be an int or a pair (lo, hi), got {support!r}")
        lo = check_positive_int(support[0], "support[0]")
        hi = check_positive_int(support[1], "support[1]")
    else:
        lo = hi = check_positive_int(support, "support")
    if not lo <= hi <= S:
        raise ValueError(
            f"support sizes must satisfy 1 <= lo <= hi <= n_states={S}, got ({lo}, {hi})"
        )
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            k = int(rng.integers(lo, hi + 1))
            nxt = rng.choice(S, size=k, replace=False) if k < S else np.arange(S)
            w = rng.uniform(0.0, 1.0, size=k) + 1e-12  # strictly positive weights
            P[s, a, nxt] = w / w.sum()
    return TabularMDP(P, gamma, rho)


def random_reward(
    n_states: int, n_actions: int, seed: int, *, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """A reward table ``r[S, A]`` with entries ``U(low, high)`` drawn from ``numpy`` seed ``seed``."""
    S = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions")
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.uniform(low, high, size=(S, A)), dtype=DTYPE)


# --------------------------------------------------------------------------------------------
# Grid worlds
# --------------------------------------------------------------------------------------------

#: Actions of grid maps, in gymnasium FrozenLake's order: 0 left, 1 down, 2 right, 3 up.
GRID_ACTIONS = ("left", "down", "right", "up")
_MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))

#: Sutton, Precup and Singh's four-rooms map (11 x 11 interior); S start, G goal.
FOUR_ROOMS_LAYOUT = (
    "#############",
    "#S....#.....#",
    "#.....#.....#",
    "#...........#",
    "#.....#.....#",
    "#.....#.....#",
    "##.####.....#",
    "#.....###.###",
    "#.....#.....#",
    "#.....#.....#",
    "#...........#",
    "#.....#....G#",
    "#############",
)


def gridworld(
    layout: Sequence[str] | str,
    *,
    gamma: float = 0.95,
    slip: float = 0.0,
    goal_reward: float = 1.0,
    hole_reward: float = -1.0,
    step_reward: float = 0.0,
    name: str = "gridworld",
) -> TabularTask:
    """A grid map as a :class:`TabularTask`.

    Layout characters: ``#`` wall, ``.`` floor, ``S`` start (``rho`` is uniform over the ``S``
    cells, or over all floor cells if there is none), ``G`` goal and ``H`` hole (both terminal:
    entering one pays ``goal_reward`` / ``hole_reward``, then the state is absorbing with zero
    reward). Every other move pays ``step_reward``. Actions: 0 left, 1 down, 2 right, 3 up. With
    probability ``1 - slip`` the intended move happens, otherwise one of the two perpendicular
    moves (``slip / 2`` each); moving into a wall or off the map leaves the agent in place.

    Returns:
        A :class:`TabularTask` whose states are the non-wall cells in row-major order; the reward
        is the expected immediate reward ``r[s, a] = sum_s' P[s, a, s'] R(s, a, s')``.
    """
    rows = tuple(layout.strip().splitlines()) if isinstance(layout, str) else tuple(layout)
    rows = tuple(row.strip() for row in rows)
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("layout must be a non-empty list of strings of equal length")
    allowed = set("#.SGH")
    for row in rows:
        bad = set(row) - allowed
        if bad:
            raise ValueError(f"layout contains unknown characters {sorted(bad)}; allowed: '#.SGH'")
    slip = check_real(slip, "slip")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must lie in [0, 1], got {slip}")
    n_rows, n_cols = len(rows), len(rows[0])
    cells = [(i, j) for i in range(n_rows) for j in range(n_cols) if rows[i][j] != "#"]
    if not cells:
        raise ValueError("layout has no free cell")
    index = {c: s for s, c in enumerate(cells)}
    S, A = len(cells), 4
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    terminal = np.array([rows[i][j] in "GH" for (i, j) in cells])
    for s, (i, j) in enumerate(cells):
        if terminal[s]:
            P[s, :, s] = 1.0
            continue
        for a in range(A):
            outcomes = [(a, 1.0 - slip), ((a + 1) % 4, slip / 2), ((a + 3) % 4, slip / 2)]
            for move, prob in outcomes:
                if prob == 0.0:
                    continue
                di, dj = _MOVES[move]
                ni, nj = i + di, j + dj
                if not (0 <= ni < n_rows and 0 <= nj < n_cols) or rows[ni][nj] == "#":
                    ni, nj = i, j
                t = index[(ni, nj)]
                P[s, a, t] += prob
                char = rows[ni][nj]
                reward = goal_reward if char == "G" else hole_reward if char == "H" else step_reward
                R[s, a] += prob * reward
    starts = [s for s, (i, j) in enumerate(cells) if rows[i][j] == "S"]
    rho = np.zeros(S)
    if starts:
        rho[starts] = 1.0 / len(starts)
    else:
        free = ~terminal
        rho[free] = 1.0 / free.sum()
    return TabularTask(
        mdp=TabularMDP(P, gamma, rho),
        r=torch.as_tensor(R, dtype=DTYPE),
        name=name,
        shape=(n_rows, n_cols),
        cells=tuple(cells),
        layout=rows,
        terminal=torch.as_tensor(terminal),
        action_names=GRID_ACTIONS,
    )


def four_rooms(*, gamma: float = 0.95, slip: float = 0.1, **kwargs) -> TabularTask:
    """The four-rooms map (:data:`FOUR_ROOMS_LAYOUT`) as a :class:`TabularTask`; see :func:`gridworld`."""
    return gridworld(FOUR_ROOMS_LAYOUT, gamma=gamma, slip=slip, name="four-rooms", **kwargs)


# --------------------------------------------------------------------------------------------
# gymnasium toy-text -> tabular
# --------------------------------------------------------------------------------------------


def from_gymnasium(env_or_id, *, gamma: float = 0.99, **make_kwargs) -> TabularTask:
    """Read the model of a gymnasium toy-text environment into a :class:`TabularTask`.

    Works with any environment whose unwrapped instance exposes the table
    ``P[s][a] = [(prob, next_state, reward, terminated), ...]`` (FrozenLake-v1,
    FrozenLake8x8-v1, CliffWalking-v1, Taxi-v4).

    The episodic model becomes a discounted one: a transition flagged ``terminated`` leads to an
    absorbing zero-reward state. When the states such transitions enter are reached only that
    way (FrozenLake, CliffWalking) they are made absorbing in place; otherwise (Taxi) one extra
    absorbing state is appended. ``r[s, a]`` is the expected immediate reward and ``rho`` the
    environment's ``initial_state_distrib``.

    Args:
        env_or_id: a gymnasium id such as ``"FrozenLake-v1"`` or an environment instance.
        gamma: the discount factor of the returned MDP.
        **make_kwargs: passed to ``gymnasium.make`` (e.g. ``is_slippery=False``, ``map_name="8x8"``).

    Raises:
        ValueError: unknown environment id, or an environment without a tabular model.
    """
    import gymnasium as gym

    if isinstance(env_or_id, str):
        try:
            env = gym.make(env_or_id, **make_kwargs)
        except gym.error.Error as exc:
            raise ValueError(
                f"env_or_id: unknown or unavailable gymnasium id {env_or_id!r} ({exc})"
            ) from exc
        name = env_or_id
    elif isinstance(env_or_id, gym.Env):
        if make_kwargs:
            raise TypeError("make_kwargs are only accepted together with an environment id")
        env = env_or_id
        name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    else:
        raise TypeError(
            f"env_or_id must be a gymnasium id (str) or a gymnasium.Env, got {type(env_or_id).__name__}"
        )
    base = env.unwrapped
    table = getattr(base, "P", None)
    obs_space, act_space = base.observation_space, base.action_space
    if (
        not isinstance(table, dict)
        or not isinstance(obs_space, gym.spaces.Discrete)
        or not isinstance(act_space, gym.spaces.Discrete)
    ):
        raise ValueError(
            f"{name} has no tabular model: from_gymnasium needs Discrete observation and action "
            "spaces and a transition table env.unwrapped.P (gymnasium toy-text environments)"
        )
    S, A = int(obs_space.n), int(act_space.n)
    # States entered by a terminating transition; states entered otherwise (ignoring moves out of
    # the terminal states themselves, e.g. FrozenLake's absorbing holes).
    done_targets = {
        int(nxt) for s in range(S) for a in range(A) for _, nxt, _, done in table[s][a] if done
    }
    other_targets = {
        int(nxt)
        for s in range(S)
        if s not in done_targets
        for a in range(A)
        for _, nxt, _, done in table[s][a]
        if not done
    }
    in_place = not (done_targets & other_targets)
    n = S if in_place else S + 1
    sink = None if in_place else S
    P = np.zeros((n, A, n))
    R = np.zeros((n, A))
    terminal = np.zeros(n, dtype=bool)
    for s in range(S):
        if in_place and s in done_targets:
            P[s, :, s] = 1.0
            terminal[s] = True
            continue
        for a in range(A):
            for prob, nxt, reward, done in table[s][a]:
                target = (sink if sink is not None else int(nxt)) if done else int(nxt)
                P[s, a, target] += prob
                R[s, a] += prob * reward
    if sink is not None:
        P[sink, :, sink] = 1.0
        terminal[sink] = True
    rho = np.zeros(n)
    isd = getattr(base, "initial_state_distrib", None)
    if isd is not None:
        rho[:S] = np.asarray(isd, dtype=float)
        rho /= rho.sum()
    else:
        rho[:S] = 1.0 / S
    shape, cells, layout = _grid_geometry(base, S) if in_place else (None, None, None)
    return TabularTask(
        mdp=TabularMDP(P, gamma, rho, atol=1e-6),
        r=torch.as_tensor(R, dtype=DTYPE),
        name=name,
        shape=shape,
        cells=cells,
        layout=layout,
        terminal=torch.as_tensor(terminal),
        action_names=_action_names(base, A),
    )


def _grid_geometry(base, S: int):
    """(shape, cells, layout) for FrozenLake-like (``desc``) and CliffWalking-like (``shape``) envs."""
    desc = getattr(base, "desc", None)
    if desc is not None and getattr(base, "nrow", None) is not None:
        rows = tuple(
            "".join(ch.decode() if isinstance(ch, bytes) else str(ch) for ch in row) for row in desc
        )
        n_rows, n_cols = len(rows), len(rows[0])
        if n_rows * n_cols == S:
            cells = tuple((s // n_cols, s % n_cols) for s in range(S))
            return (n_rows, n_cols), cells, rows
    shape = getattr(base, "shape", None)
    if shape is not None and len(shape) == 2 and shape[0] * shape[1] == S:
        n_rows, n_cols = int(shape[0]), int(shape[1])
        grid = [["." for _ in range(n_cols)] for _ in range(n_rows)]
        cliff = getattr(base, "_cliff", None)
        if cliff is not None:
            for i, j in zip(*np.nonzero(np.asarray(cliff)), strict=True):
                grid[i][j] = "C"
        start = getattr(base, "start_state_index", None)
        if start is not None:
            grid[int(start) // n_cols][int(start) % n_cols] = "S"
        grid[n_rows - 1][n_cols - 1] = "G"
        cells = tuple((s // n_cols, s % n_cols) for s in range(S))
        return (n_rows, n_cols), cells, tuple("".join(row) for row in grid)
    return None, None, None


def _action_names(base, A: int) -> tuple[str, ...]:
    names = {
        "FrozenLakeEnv": ("left", "down", "right", "up"),
        "CliffWalkingEnv": ("up", "right", "down", "left"),
        "TaxiEnv": ("south", "north", "east", "west", "pickup", "dropoff"),
    }.get(type(base).__name__)
    return names if names is not None and len(names) == A else tuple(str(a) for a in range(A))
