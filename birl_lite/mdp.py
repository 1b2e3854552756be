"""Finite MDPs: the :class:`TabularMDP` container and the builders the book uses.

* :class:`TabularMDP` holds the model ``(P, gamma, rho)`` of chapter 1, validated, with dense or
  sparse transitions.
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

import gymnasium as gym
import numpy as np
import scipy.sparse as sp
import torch

from . import kernels
from ._validation import (
    DTYPE,
    ArrayLike,
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
    "random_layout",
    "FOUR_ROOMS_LAYOUT",
    "from_gymnasium",
]


class TabularMDP:
    """A finite discounted MDP without reward: transitions ``P``, discount ``gamma``, start ``rho``.

    Args:
        P: the transitions, either dense, a tensor / array ``[S, A, S]`` with ``P[s, a, s']`` the
            probability of moving to ``s'`` after action ``a`` in state ``s``, or **sparse**, a
            ``scipy.sparse`` matrix ``[S*A, S]`` whose row ``s*A + a`` is ``P(.|s, a)`` (then
            ``n_actions`` is ``rows / S``). Non-negative, each row sums to 1 (within ``atol``;
            rows are then renormalized exactly).
        gamma: discount factor in ``[0, 1)``.
        rho: initial-state distribution of shape ``[S]``; uniform when ``None``.
        atol: tolerance on the row sums of ``P`` and on the sum of ``rho`` (float32 inputs are
            only accurate to about 1e-7).

    Every tensor is ``torch.float64``. Rewards are kept separately (a bilevel problem changes the
    reward, never the dynamics). The transition backend used by the tabular core
    (:mod:`birl_lite.kernels`) is ``transitions``; dense MDPs also expose the tensor
    :attr:`P`. Sparse MDPs scale to millions of states (chapter 3, section on large MDPs): soft
    policy iteration, policy evaluation, visitation and the hypergradient run on them.
    """

    def __init__(
        self,
        P: ArrayLike | sp.spmatrix | sp.sparray,
        gamma: float,
        rho: ArrayLike | None = None,
        *,
        atol: float = 1e-6,
    ) -> None:
        if sp.issparse(P):
            self.transitions = _sparse_transitions(P, atol)
        else:
            self.transitions = kernels.DenseTransitions(_dense_transitions(P, atol))
        S = self.transitions.n_states
        self.gamma: float = check_gamma(gamma)
        if rho is None:
            self.rho: torch.Tensor = torch.full((S,), 1.0 / S, dtype=DTYPE)
        else:
            self.rho = check_distribution(rho, "rho", S, atol=atol).detach().clone()

    @property
    def P(self) -> torch.Tensor:
        """The dense transition tensor ``[S, A, S]``.

        Raises:
            TypeError: for a sparse MDP (use :attr:`P_sparse`, or :meth:`to_dense` when ``S`` is
                small enough for ``S * A * S`` floats).
        """
        if self.transitions.sparse:
            raise TypeError(
                f"mdp.P: this TabularMDP stores its transitions sparsely (S = {self.n_states}); "
                "use mdp.P_sparse (a scipy CSR matrix [S*A, S]) or mdp.to_dense()"
            )
        return self.transitions.P

    @property
    def P_sparse(self) -> sp.csr_matrix:
        """The transitions as a scipy CSR matrix ``[S*A, S]`` (row ``s*A + a``), for either backend."""
        if self.transitions.sparse:
            return self.transitions.P2
        return sp.csr_matrix(self.transitions.P2.numpy())

    @property
    def is_sparse(self) -> bool:
        """Whether the transitions are stored sparsely."""
        return self.transitions.sparse

    @property
    def n_states(self) -> int:
        """Number of states ``S``."""
        return self.transitions.n_states

    @property
    def n_actions(self) -> int:
        """Number of actions ``A``."""
        return self.transitions.n_actions

    def expect_next(self, V: torch.Tensor) -> torch.Tensor:
        """``sum_s' P[s, a, s'] V[s', ...]``: the expected next-state value, shape ``[S, A, ...]``.

        ``V`` has shape ``[S]`` or ``[S, ...]`` (a vector-valued quantity per state).
        """
        return self.transitions.expect(V)

    def to_dense(self) -> TabularMDP:
        """The same MDP with dense transitions (``S * A * S`` floats)."""
        return TabularMDP(self.transitions.to_dense(), self.gamma, self.rho)

    def to_sparse(self) -> TabularMDP:
        """The same MDP with sparse transitions."""
        return TabularMDP(self.P_sparse, self.gamma, self.rho)

    def replace(self, *, gamma: float | None = None, rho: ArrayLike | None = None) -> TabularMDP:
        """A copy with a different ``gamma`` and/or ``rho`` (transitions shared, never mutated)."""
        new = object.__new__(TabularMDP)
        new.transitions = self.transitions
        new.gamma = check_gamma(self.gamma if gamma is None else gamma)
        new.rho = (
            self.rho
            if rho is None
            else check_distribution(rho, "rho", self.n_states).detach().clone()
        )
        return new

    def __repr__(self) -> str:
        kind = ", sparse" if self.is_sparse else ""
        return (
            f"TabularMDP(n_states={self.n_states}, n_actions={self.n_actions}, "
            f"gamma={self.gamma}{kind})"
        )


def _dense_transitions(P, atol: float) -> torch.Tensor:
    P = as_tensor(P, "P").detach().clone()
    if P.ndim != 3:
        raise ValueError(
            f"P must have shape [S, A, S] (3 dimensions) or be a scipy.sparse matrix [S*A, S], "
            f"got shape {tuple(P.shape)}"
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
    return P / sums.unsqueeze(-1)


def _sparse_transitions(P, atol: float) -> kernels.SparseTransitions:
    rows, S = P.shape
    if S == 0 or rows == 0 or rows % S != 0:
        raise ValueError(
            f"a sparse P must have shape [S*A, S] (rows a positive multiple of the columns), "
            f"got {P.shape}"
        )
    A = rows // S
    P2 = sp.csr_matrix(P, dtype=np.float64, copy=True)
    P2.sum_duplicates()
    P2.sort_indices()
    if not np.isfinite(P2.data).all():
        raise ValueError("P must be finite (it contains NaN or inf)")
    if (P2.data < 0).any():
        k = int(np.nonzero(P2.data < 0)[0][0])
        row = int(np.searchsorted(P2.indptr, k, side="right") - 1)
        raise ValueError(
            f"P must be non-negative (not stochastic): P[{row // A}, {row % A}, "
            f"{int(P2.indices[k])}] = {P2.data[k]:.3g}"
        )
    sums = np.asarray(P2.sum(axis=1)).ravel()
    bad = np.abs(sums - 1.0) > atol
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise ValueError(
            "P must be stochastic: every row P[s, a, :] must sum to 1, "
            f"but P[{row // A}, {row % A}, :] sums to {sums[row]:.10g}"
        )
    P2.data /= np.repeat(sums, np.diff(P2.indptr))
    P2.eliminate_zeros()
    return kernels.SparseTransitions(P2, A)


def check_mdp(mdp: object) -> TabularMDP:
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

    def grid(self, values: ArrayLike) -> np.ndarray:
        """Arrange a per-state array ``values[S]`` on the map: ``[rows, cols]``, NaN off-states."""
        if self.shape is None or self.cells is None:
            raise ValueError(f"task {self.name!r} has no grid geometry")
        v = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=float)
        if v.shape != (self.mdp.n_states,):
            raise ValueError(f"values must have shape ({self.mdp.n_states},), got {v.shape}")
        out = np.full(self.shape, np.nan)
        ij = np.asarray(self.cells)
        out[ij[:, 0], ij[:, 1]] = v
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
    rho: ArrayLike | None = None,
    sparse: bool = False,
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
        sparse: return sparse transitions (needs ``support``). The instance is drawn by a
            vectorized sampler (seconds at ``S = 10^6``), so it differs from the dense instance of
            the same seed; ``random_mdp(..., sparse=True).to_dense()`` is its dense twin.

    Returns:
        A :class:`TabularMDP`.
    """
    S = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions")
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be a bool, got {type(sparse).__name__}")
    rng = np.random.default_rng(seed)
    if support is None:
        if sparse:
            raise ValueError("sparse=True needs a support size (support=k or (lo, hi))")
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
    if sparse:
        return TabularMDP(_sparse_random_rows(S, A, lo, hi, rng), gamma, rho)
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            k = int(rng.integers(lo, hi + 1))
            nxt = rng.choice(S, size=k, replace=False) if k < S else np.arange(S)
            w = rng.uniform(0.0, 1.0, size=k) + 1e-12  # strictly positive weights
            P[s, a, nxt] = w / w.sum()
    return TabularMDP(P, gamma, rho)


def _sparse_random_rows(S: int, A: int, lo: int, hi: int, rng) -> sp.csr_matrix:
    """``[S*A, S]`` CSR: per row ``k ~ U{lo..hi}`` distinct successors with ``U(0, 1)`` weights."""
    n = S * A
    if hi * 4 >= S:  # small state spaces: the hi smallest of S random keys per row
        cols = np.argsort(rng.random((n, S)), axis=1)[:, :hi]
    else:  # large: draw hi successors per row, redraw the rows that repeat one
        cols = rng.integers(0, S, size=(n, hi))
        while True:
            srt = np.sort(cols, axis=1)
            dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
            if not dup.any():
                break
            cols[dup] = rng.integers(0, S, size=(int(dup.sum()), hi))
    k = rng.integers(lo, hi + 1, size=n)
    keep = np.arange(hi)[None, :] < k[:, None]
    w = rng.uniform(0.0, 1.0, size=(n, hi)) + 1e-12
    w = np.where(keep, w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n), hi)
    P2 = sp.csr_matrix((w.ravel(), (rows, cols.ravel())), shape=(n, S))
    P2.eliminate_zeros()
    return P2


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
    sparse: bool = False,
) -> TabularTask:
    """A grid map as a :class:`TabularTask`.

    Layout characters: ``#`` wall, ``.`` floor, ``S`` start (``rho`` is uniform over the ``S``
    cells, or over all floor cells if there is none), ``G`` goal and ``H`` hole (both terminal:
    entering one pays ``goal_reward`` / ``hole_reward``, then the state is absorbing with zero
    reward). Every other move pays ``step_reward``. Actions: 0 left, 1 down, 2 right, 3 up. With
    probability ``1 - slip`` the intended move happens, otherwise one of the two perpendicular
    moves (``slip / 2`` each); moving into a wall or off the map leaves the agent in place.

    With ``sparse=True`` the transitions are stored sparsely (about 3 entries per row), which
    builds and solves maps of a million cells (see :func:`random_layout`).

    Returns:
        A :class:`TabularTask` whose states are the non-wall cells in row-major order; the reward
        is the expected immediate reward ``r[s, a] = sum_s' P[s, a, s'] R(s, a, s')``.
    """
    rows = tuple(layout.strip().splitlines()) if isinstance(layout, str) else tuple(layout)
    rows = tuple(row.strip() for row in rows)
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("layout must be a non-empty list of strings of equal length")
    chars = np.array([list(row) for row in rows])
    bad = set(np.unique(chars).tolist()) - set("#.SGH")
    if bad:
        raise ValueError(f"layout contains unknown characters {sorted(bad)}; allowed: '#.SGH'")
    slip = check_real(slip, "slip")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must lie in [0, 1], got {slip}")
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be a bool, got {type(sparse).__name__}")
    n_rows, n_cols = chars.shape
    free = chars != "#"
    ci, cj = np.nonzero(free)  # row-major order
    S, A = len(ci), 4
    if S == 0:
        raise ValueError("layout has no free cell")
    index = np.full(chars.shape, -1, dtype=np.int64)
    index[ci, cj] = np.arange(S)
    cell_chars = chars[ci, cj]
    terminal = np.isin(cell_chars, ["G", "H"])
    reward_of = np.where(
        cell_chars == "G", goal_reward, np.where(cell_chars == "H", hole_reward, step_reward)
    ).astype(float)
    # target[m][s]: the state reached by move m from s (walls and the border leave it in place)
    target = []
    for di, dj in _MOVES:
        ni, nj = ci + di, cj + dj
        inside = (ni >= 0) & (ni < n_rows) & (nj >= 0) & (nj < n_cols)
        ni, nj = np.where(inside, ni, ci), np.where(inside, nj, cj)
        blocked = ~free[ni, nj]
        target.append(np.where(blocked, np.arange(S), index[ni, nj]))
    live = np.nonzero(~terminal)[0]
    rows_idx, cols_idx, probs = [], [], []
    R = np.zeros((S, A))
    for a in range(A):
        # outcomes in the order: intended move, then the two perpendicular slips
        for move, prob in ((a, 1.0 - slip), ((a + 1) % 4, slip / 2), ((a + 3) % 4, slip / 2)):
            if prob == 0.0:
                continue
            t = target[move][live]
            rows_idx.append(live * A + a)
            cols_idx.append(t)
            probs.append(np.full(len(live), prob))
            np.add.at(R, (live, a), prob * reward_of[t])
    dead = np.nonzero(terminal)[0]
    rows_idx.append((dead[:, None] * A + np.arange(A)[None, :]).ravel())
    cols_idx.append(np.repeat(dead, A))
    probs.append(np.ones(len(dead) * A))
    if sparse:
        P = sp.csr_matrix(
            (np.concatenate(probs), (np.concatenate(rows_idx), np.concatenate(cols_idx))),
            shape=(S * A, S),
        )
    else:
        P2 = np.zeros((S * A, S))
        for r_, c_, p_ in zip(rows_idx, cols_idx, probs, strict=True):
            np.add.at(P2, (r_, c_), p_)
        P = P2.reshape(S, A, S)
    starts = np.nonzero(cell_chars == "S")[0]
    rho = np.zeros(S)
    if len(starts):
        rho[starts] = 1.0 / len(starts)
    else:
        rho[~terminal] = 1.0 / (~terminal).sum()
    return TabularTask(
        mdp=TabularMDP(P, gamma, rho),
        r=torch.as_tensor(R, dtype=DTYPE),
        name=name,
        shape=(n_rows, n_cols),
        cells=tuple(zip(ci.tolist(), cj.tolist(), strict=True)),
        layout=rows,
        terminal=torch.as_tensor(terminal),
        action_names=GRID_ACTIONS,
    )


def random_layout(
    n_rows: int, n_cols: int, seed: int, *, wall_fraction: float = 0.2
) -> tuple[str, ...]:
    """A random map for :func:`gridworld`: walls on the border, each interior cell a wall with
    probability ``wall_fraction``, start ``S`` in the top-left and goal ``G`` in the bottom-right
    interior corner. Sizes up to thousands of cells a side (``gridworld(..., sparse=True)``).

    Args:
        n_rows, n_cols: map size including the border walls (each ``>= 3``).
        seed: seed of the ``numpy.random.Generator`` that places the walls.
        wall_fraction: probability in ``[0, 1)`` that an interior cell is a wall.

    Returns:
        The layout as a tuple of strings.
    """
    n_rows = check_positive_int(n_rows, "n_rows", minimum=3)
    n_cols = check_positive_int(n_cols, "n_cols", minimum=3)
    wall_fraction = check_real(wall_fraction, "wall_fraction")
    if not 0.0 <= wall_fraction < 1.0:
        raise ValueError(f"wall_fraction must lie in [0, 1), got {wall_fraction}")
    rng = np.random.default_rng(seed)
    grid = np.where(rng.random((n_rows, n_cols)) < wall_fraction, "#", ".")
    grid[[0, -1], :] = "#"
    grid[:, [0, -1]] = "#"
    grid[1, 1], grid[-2, -2] = "S", "G"
    return tuple("".join(row) for row in grid)


def four_rooms(*, gamma: float = 0.95, slip: float = 0.1, **kwargs) -> TabularTask:
    """The four-rooms map (:data:`FOUR_ROOMS_LAYOUT`) as a :class:`TabularTask`; see :func:`gridworld`."""
    return gridworld(FOUR_ROOMS_LAYOUT, gamma=gamma, slip=slip, name="four-rooms", **kwargs)


# --------------------------------------------------------------------------------------------
# gymnasium toy-text -> tabular
# --------------------------------------------------------------------------------------------


def from_gymnasium(env_or_id: str | gym.Env, *, gamma: float = 0.99, **make_kwargs) -> TabularTask:
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
