"""Preference learning as bilevel RL: exploitation and exploration (chapter 6 of the book).

Math: chapter 2, equation (eq-ch2-preference), and chapter 6, equations (eq-pref-loss) and
(eq-pref-split). A hidden true reward ``r_true(s)`` labels comparisons; the designer learns a
reward ``r_x(s, a) = x[s]`` (one value per state); the agent plays the soft-optimal policy
``pi*_x`` of ``r_x``. The upper level is the Bradley-Terry loss of segment pairs *sampled from
the current policy* and labelled by the hidden reward:

    f(x, pi) = sum_{s, s'} dbar_pi(s) dbar_pi(s') l(x_s - x_s'; p(s, s')) + eta/2 ||x||^2,
    l(z; p) = -p log sigmoid(z) - (1 - p) log sigmoid(-z),   p(s, s') = sigmoid((r_true(s) - r_true(s')) / kappa),

with segments of one step (the reward of a segment is the reward of its state) and
``dbar_pi = (1 - gamma) d_pi`` (the book's d-bar) the normalized discounted state visitation of
``pi`` (where the policy's trajectories are). ``f`` depends on ``pi`` only through the *data distribution*
``dbar_pi``. (H1) then splits the hypergradient into

* the **direct term** ``grad_x f`` with the data held fixed: fit the labels of the comparisons
  the current policy produces (exploitation of the data one has);
* the **policy-dependence term** ``(1/tau) sum G (grad_x Q* - grad_x V*)``: move the reward so
  that the policy produces comparisons on which the loss is lower, that is comparisons the
  current reward already ranks right. It equals ``(1 - gamma)`` times the return hypergradient of
  the state reward ``c(s) = 2 sum_s' dbar_pi(s') l(x_s - x_s'; p(s, s'))`` (chapter 6, equation
  (eq-pref-policy-return)): descending it steers the agent toward low-loss states.

The split is exact here (model-based, expectations in place of samples); chapter 6 uses it to show
which way the policy-dependence term pushes. The sampled reward-learning loop, with fragments,
labels and the arms of the chapter's experiment, is :mod:`birl_lite.rlhf_tabular`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import kernels
from ._validation import DTYPE, ArrayLike, as_tensor, check_positive_int, check_real, check_tau
from .first_order import hypergradient, upper_gradients
from .mdp import TabularTask, gridworld
from .problems import BilevelProblem

__all__ = [
    "bradley_terry_loss",
    "PreferenceProblem",
    "preference_problem",
    "HypergradientSplit",
    "hypergradient_split",
]


def bradley_terry_loss(z: ArrayLike | float, p: ArrayLike | float) -> torch.Tensor:
    """Cross-entropy of the Bradley-Terry model: ``-p log sigmoid(z) - (1 - p) log sigmoid(-z)``.

    Stable for any ``z`` (``softplus``): ``p softplus(-z) + (1 - p) softplus(z)``.

    Args:
        z: the learned reward difference ``R_x(sigma_1) - R_x(sigma_2)`` (any shape).
        p: the probability that ``sigma_1`` is preferred (same shape, in ``[0, 1]``).

    Returns:
        the elementwise loss (same shape).
    """
    z = as_tensor(z, "z")
    p = as_tensor(p, "p")
    return p * torch.nn.functional.softplus(-z) + (1.0 - p) * torch.nn.functional.softplus(z)


@dataclass(frozen=True)
class PreferenceProblem:
    """A tabular preference-learning (RLHF-like) bilevel problem (module docstring).

    Attributes:
        task: the map (dynamics; ``task.r`` is not used).
        r_true: the hidden true state reward ``[S]``.
        tau: the agent's temperature.
        ridge: the ridge weight on ``x`` (the book's eta), ``f = ... + (ridge/2) ||x||^2``.
        label_temperature: the labeller's temperature (the book's kappa),
            ``p = sigmoid(delta r_true / label_temperature)``.
        x0: the initial learned reward ``[S]``.
        name: a description.
    """

    task: TabularTask
    r_true: torch.Tensor
    tau: float
    ridge: float
    label_temperature: float
    x0: torch.Tensor
    name: str = "preference learning"

    def __post_init__(self) -> None:
        S = self.task.mdp.n_states
        for attr in ("r_true", "x0"):
            v = as_tensor(getattr(self, attr), attr).detach().clone()
            if tuple(v.shape) != (S,):
                raise ValueError(f"{attr} must have shape [S] = [{S}], got {tuple(v.shape)}")
            object.__setattr__(self, attr, v)
        object.__setattr__(self, "tau", check_tau(self.tau))
        ridge = check_real(self.ridge, "ridge")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        object.__setattr__(self, "label_temperature", check_tau(self.label_temperature))

    @property
    def mdp(self):
        """The dynamics."""
        return self.task.mdp

    @property
    def labels(self) -> torch.Tensor:
        """``p[s, s'] = sigmoid((r_true(s) - r_true(s')) / label_temperature)`` ``[S, S]``."""
        return torch.sigmoid((self.r_true[:, None] - self.r_true[None, :]) / self.label_temperature)

    def reward_fn(self, x: torch.Tensor) -> torch.Tensor:
        """``r_x(s, a) = x[s]`` ``[S, A]``."""
        return x.unsqueeze(1).expand(-1, self.mdp.n_actions)

    def visitation(self, pi: torch.Tensor) -> torch.Tensor:
        """``dbar_pi = (1 - gamma) (I - gamma P_pi^T)^{-1} rho`` ``[S]`` (differentiable in ``pi``)."""
        mdp = self.mdp
        return (1.0 - mdp.gamma) * kernels.visitation(mdp.transitions, mdp.gamma, pi, mdp.rho)

    def loss(self, x: torch.Tensor, visitation: torch.Tensor) -> torch.Tensor:
        """The expected Bradley-Terry loss of pairs drawn from ``visitation`` (without the ridge), 0-dim."""
        z = x[:, None] - x[None, :]
        return visitation @ bradley_terry_loss(z, self.labels) @ visitation

    def upper_fn(self, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """``f(x, pi)``: expected loss of on-policy pairs plus ``(ridge/2) ||x||^2`` (module docstring)."""
        return self.loss(x, self.visitation(pi)) + 0.5 * self.ridge * torch.dot(x, x)

    def bilevel(self) -> BilevelProblem:
        """The problem as a :class:`~birl_lite.problems.BilevelProblem` (autograd derivatives)."""
        return BilevelProblem(
            self.mdp, self.reward_fn, self.upper_fn, self.x0, self.tau, name=self.name
        )


def preference_problem(
    seed: int = 0,
    *,
    size: int = 5,
    gamma: float = 0.9,
    tau: float = 0.1,
    ridge: float = 1e-3,
    label_temperature: float = 0.5,
    misleading: float = 1.0,
) -> PreferenceProblem:
    """A preference-learning instance on an open ``size x size`` grid (no terminal state).

    The agent starts in the top-left corner. The hidden reward (drawn from ``seed``) is a smooth
    bump around a random cell of the far half of the grid plus small noise: the good states are
    far from the start. The initial learned reward ``x0`` is *misleading*: ``misleading`` times a
    bump on the start corner (the data the designer began with told it the start was best);
    ``misleading = 0`` starts from ``x0 = 0`` (a uniform policy).

    Returns:
        :class:`PreferenceProblem`.
    """
    size = check_positive_int(size, "size", 2)
    rng = np.random.default_rng([check_positive_int(seed, "seed", 0), 6])
    layout = ["#" * (size + 2)] + ["#" + "." * size + "#" for _ in range(size)] + ["#" * (size + 2)]
    layout[1] = "#S" + "." * (size - 1) + "#"
    task = gridworld(layout, gamma=gamma, slip=0.1, name=f"open {size}x{size} grid")
    cells = np.asarray(task.cells, dtype=float) - 1.0  # (row, col) from 0
    far = [(i, j) for i in range(size) for j in range(size) if i + j >= size]
    gi, gj = far[int(rng.integers(len(far)))]
    dist2 = (cells[:, 0] - gi) ** 2 + (cells[:, 1] - gj) ** 2
    r_true = np.exp(-dist2 / 2.0) + 0.1 * rng.standard_normal(len(cells))
    start2 = cells[:, 0] ** 2 + cells[:, 1] ** 2
    x0 = check_real(misleading, "misleading") * np.exp(-start2 / 2.0)
    return PreferenceProblem(
        task=task,
        r_true=torch.as_tensor(r_true, dtype=DTYPE),
        tau=tau,
        ridge=ridge,
        label_temperature=label_temperature,
        x0=torch.as_tensor(x0, dtype=DTYPE),
        name=f"preference learning on the {task.name} (seed {seed})",
    )


@dataclass
class HypergradientSplit:
    """``grad phi = direct + policy`` at ``x`` (chapter 6, equation (eq-pref-split)).

    Attributes:
        full: ``grad phi(x)`` (H1) ``[n]``; direct: ``grad_x f`` with the data distribution held
            fixed ``[n]``; policy: ``full - direct``, the part flowing through ``pi*_x`` ``[n]``.
        phi: ``f(x, pi*_x)``; loss: the expected Bradley-Terry loss alone (0-dim).
        pi: ``pi*_x`` ``[S, A]``; visitation: its normalized visitation ``[S]`` (the book's
            d-bar); V: ``V*_x`` ``[S]``.
    """

    full: torch.Tensor
    direct: torch.Tensor
    policy: torch.Tensor
    phi: torch.Tensor
    loss: torch.Tensor
    pi: torch.Tensor
    visitation: torch.Tensor
    V: torch.Tensor


def hypergradient_split(
    problem: PreferenceProblem, x: ArrayLike, V0: ArrayLike | None = None
) -> HypergradientSplit:
    """The exact (model-based) hypergradient (H1) and its direct / policy-dependence split."""
    x = as_tensor(x, "x").detach()
    res = hypergradient(
        problem.mdp, problem.reward_fn, problem.upper_fn, x, problem.tau, form="H1", V0=V0
    )
    _, direct, _ = upper_gradients(problem.upper_fn, x, res.pi)
    visitation = problem.visitation(res.pi)
    return HypergradientSplit(
        full=res.grad,
        direct=direct,
        policy=res.grad - direct,
        phi=res.phi,
        loss=problem.loss(x, visitation).detach(),
        pi=res.pi,
        visitation=visitation,
        V=res.V,
    )
