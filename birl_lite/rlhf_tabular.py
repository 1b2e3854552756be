"""Reward learning from sampled comparisons, tabular: the fair test of chapter 6.

The upper level of RLHF as bilevel RL (chapter 6, section "The experiment"): the designer learns a
state-action reward table ``r_x(s, a) = x[s, a]`` from comparisons of *fragments* (``|sigma|`` consecutive
steps) drawn from the agent's current policy ``pi*_x`` and labelled by a synthetic labeller on the
hidden true return; the agent (the lower level) plays the soft-optimal policy of ``r_x``, solved
exactly (:func:`birl_lite.soft.soft_policy_iteration`). The upper objective is the expected
Bradley-Terry loss of on-policy pairs,

    f(x, pi) = E_{sigma_1, sigma_2 ~ D_pi} E_y [ l(x; sigma_1, sigma_2, y) ],
    l = -y log sigmoid(z) - (1 - y) log sigmoid(-z),   z = <x, phi(sigma_1) - phi(sigma_2)>,

with ``phi(sigma)`` the state-action counts of the fragment's window and ``D_pi`` the fragment
distribution: a start ``s_0 ~ rho``, a prefix of ``T ~ Geometric(1 - gamma)`` steps (so the window
starts at a state of the normalized discounted visitation ``dbar_pi``), then the window of ``|sigma|``
steps. (H1) splits ``grad phi`` into the *direct* term (the gradient of the loss with the data held
fixed: the usual reward-learning update) and the *policy-dependence* term, a score-function term
because ``D_pi`` depends on ``x`` through ``pi*_x``:

    policy term = (1/tau) E[ l * sum_{t < T + len(sigma)} (grad_x Q*_x(s_t, a_t) - grad_x V*_x(s_t)) ],

(the sum runs over both fragments, prefix included). The arms of the experiment
(:class:`RLHFConfig`, field ``arm``), on paired seeds:

* ``"loss"`` (A): the direct term only, the usual reward-learning loop (Christiano et al., 2017);
* ``"truncated"`` (B): plus the authors' term of the SoBiRL code (Yang, Gao, Yuan, 2025): the
  window only and the immediate reward in place of ``Q*``,
  ``(1/tau) mean_i l_i sum_{t in windows} (grad r_x(s_t, a_t) - E_{b ~ pi} grad r_x(s_t, b))``,
  off during the first ``delay`` iterations (their delay);
* ``"full"`` (C): plus the policy-dependence term above, exact ``grad Q*`` (:func:`policy_term`);
* ``"flipped"`` (D): minus it (the literal "go where the model is wrong" hypothesis);
* ``"ensemble"`` (E): the loss only, with queries chosen by the disagreement of an ensemble of
  reward models (bootstrap weights), the exploration positive control.

The authors' term (B) is computed, as in their code, over every pair of the FIFO dataset with the
current policy; C and D over the pairs drawn from the current policy in this iteration, which
makes them unbiased estimates of the policy-dependence term (a test checks C against brute force).

Command (one JSON file per arm, setting and seed, written atomically; finished runs are skipped, a
finished file with another configuration is an error; a run in progress elsewhere is locked)::

    python -m birl_lite.rlhf_tabular --arms loss truncated full flipped ensemble \\
        --lengths 1 5 25 --budgets 60 600 --seeds 0-19 --out results/rlhf_tabular
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import kernels
from ._validation import DTYPE, check_choice, check_positive_int, check_real
from .mdp import TabularTask, gridworld
from .soft import expected_return, soft_policy_iteration

__all__ = [
    "ARMS",
    "ComparisonTask",
    "comparison_task",
    "Fragments",
    "sample_fragments",
    "uniform_fragments",
    "label_pairs",
    "PairDataset",
    "bradley_terry_gradient",
    "truncated_term",
    "policy_term",
    "select_disputed",
    "exact_policy_term",
    "heldout_accuracy",
    "RLHFConfig",
    "rlhf_run",
    "run_path",
    "load_records",
    "final_return",
    "setting_of",
    "tuned_lrs",
    "main",
]

#: The arms A-E of the experiment of chapter 6, in order.
ARMS = ("loss", "truncated", "full", "flipped", "ensemble")


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonTask:
    """A map with a hidden true reward (chapter 6, section "The experiment").

    Attributes:
        task: the dynamics (``task.r`` is not used by the learner).
        r_true: the hidden true reward ``[S, A]`` (labels and the true return).
        features: the learner's reward model ``r_x = features @ x``, ``[S*A, n]`` (numpy).
        name: a description.
    """

    task: TabularTask
    r_true: torch.Tensor
    features: np.ndarray
    name: str = "comparison task"

    @property
    def mdp(self):
        """The dynamics."""
        return self.task.mdp

    @property
    def n_pairs(self) -> int:
        """``S * A``, the length of ``x``."""
        return self.mdp.n_states * self.mdp.n_actions


def comparison_task(
    seed: int = 0,
    *,
    size: int = 6,
    gamma: float = 0.95,
    slip: float = 0.1,
    features: str = "rbf",
) -> ComparisonTask:
    """An open ``size x size`` grid whose best region is far from the start and a decoy is near.

    The agent starts in the top-left corner. The hidden reward of a state is a bump of height 1
    around a random cell near the far corner (drawn from ``seed``), plus a decoy bump of height
    0.4 two steps from the start, plus noise of scale 0.02; it does not depend on the action.
    With ``gamma = 0.95`` the far bump is worth the walk (the soft-optimal policy of ``r_true``
    goes there), but a learner that only sees comparisons near the start learns the decoy.

    The learner's reward is linear, ``r_x(s, a) = <features(s, a), x>``: ``features="rbf"``
    (default) is 9 Gaussian bumps of width 1.5 on a 3 x 3 lattice over the grid plus one indicator
    per action (``n = 9 + A``: the reward may depend on the action, so the authors' truncated
    term is not zero); ``"table"`` is one entry per state-action pair (``n = S * A``).

    Returns:
        :class:`ComparisonTask`.
    """
    seed = check_positive_int(seed, "seed", 0)
    size = check_positive_int(size, "size", 3)
    rng = np.random.default_rng([seed, 66])
    layout = ["#" * (size + 2)] + ["#" + "." * size + "#" for _ in range(size)] + ["#" * (size + 2)]
    layout[1] = "#S" + "." * (size - 1) + "#"
    task = gridworld(layout, gamma=gamma, slip=slip, name=f"open {size}x{size} grid")
    cells = np.asarray(task.cells, dtype=float) - 1.0
    far = [(i, j) for i in range(size) for j in range(size) if i + j >= 2 * size - 4]
    gi, gj = far[int(rng.integers(len(far)))]
    di, dj = (0, 2) if rng.random() < 0.5 else (2, 0)

    def bump(i: float, j: float) -> np.ndarray:
        return np.exp(-((cells[:, 0] - i) ** 2 + (cells[:, 1] - j) ** 2))

    r_state = bump(gi, gj) + 0.4 * bump(di, dj) + 0.02 * rng.standard_normal(len(cells))
    A = task.mdp.n_actions
    r_true = torch.as_tensor(r_state, dtype=DTYPE)[:, None].expand(-1, A)
    check_choice(features, "features", ("rbf", "table"))
    if features == "table":
        phi = np.eye(len(cells) * A)
    else:
        lattice = np.linspace(0.0, size - 1.0, 3)
        centres = np.array([(i, j) for i in lattice for j in lattice])
        d2 = ((cells[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
        rbf = np.exp(-d2 / (2 * 1.5**2))  # [S, 9]
        phi = np.concatenate(
            [np.repeat(rbf, A, axis=0), np.tile(np.eye(A), (len(cells), 1))], axis=1
        )
    return ComparisonTask(
        task, r_true.clone(), phi, name=f"comparisons on the {task.name} (seed {seed})"
    )


# --------------------------------------------------------------------------------------------
# Fragments, labels and the dataset
# --------------------------------------------------------------------------------------------


@dataclass
class Fragments:
    """``n`` fragments as count vectors over state-action pairs (index ``s * A + a``).

    Attributes:
        window: counts of the ``|sigma|`` window steps ``[n, S*A]`` (``phi(sigma)``).
        score: counts of every step up to the window's end, prefix included ``[n, S*A]`` (the
            steps whose actions the fragment's probability depends on).
        true_return: ``sum_t r_true(s_t, a_t)`` over the window ``[n]``.
    """

    window: np.ndarray
    score: np.ndarray
    true_return: np.ndarray

    def __len__(self) -> int:
        return len(self.true_return)

    def __getitem__(self, idx) -> Fragments:
        return Fragments(self.window[idx], self.score[idx], self.true_return[idx])


def _walk(
    P_cdf: np.ndarray,
    pi_cdf: np.ndarray,
    starts: np.ndarray,
    n_steps: np.ndarray,
    window_from: np.ndarray,
    rng: np.random.Generator,
    A: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``n`` walks; count the (s, a) pairs of steps ``>= window_from`` and of every step."""
    n, SA = len(starts), P_cdf.shape[0]
    window = np.zeros((n, SA))
    score = np.zeros((n, SA))
    s = starts.copy()
    rows = np.arange(n)
    for t in range(int(n_steps.max(initial=0))):
        live = rows[t < n_steps]
        if live.size == 0:
            break
        u = rng.random(live.size)
        a = np.minimum((pi_cdf[s[live]] < u[:, None]).sum(axis=1), A - 1)
        sa = s[live] * A + a
        score[live, sa] += 1.0
        in_window = t >= window_from[live]
        window[live[in_window], sa[in_window]] += 1.0
        u = rng.random(live.size)
        s[live] = np.minimum((P_cdf[sa] < u[:, None]).sum(axis=1), P_cdf.shape[1] - 1)
    return window, score


def _cdfs(ctask: ComparisonTask, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    P = ctask.mdp.P.detach().numpy().reshape(ctask.n_pairs, -1)
    return np.cumsum(P, axis=1), np.cumsum(pi, axis=1)


def sample_fragments(
    ctask: ComparisonTask, pi: np.ndarray, n: int, length: int, rng: np.random.Generator
) -> Fragments:
    """``n`` fragments of ``length`` steps from ``D_pi`` (module docstring).

    ``s_0 ~ rho``, a prefix of ``T`` steps with ``P(T = t) = (1 - gamma) gamma^t`` (so the window
    starts at ``s ~ dbar_pi``, the normalized discounted visitation), then ``length`` steps, all
    under ``pi``.

    Args:
        ctask: the task; pi: the policy ``[S, A]`` (numpy); n: the number of fragments;
        length: ``|sigma|``; rng: a numpy generator.

    Returns:
        :class:`Fragments` (``score`` counts the prefix and the window).
    """
    n = check_positive_int(n, "n", 0)
    length = check_positive_int(length, "length", 1)
    mdp = ctask.mdp
    P_cdf, pi_cdf = _cdfs(ctask, pi)
    starts = rng.choice(mdp.n_states, size=n, p=mdp.rho.numpy())
    prefix = rng.geometric(1.0 - mdp.gamma, size=n) - 1 if mdp.gamma > 0 else np.zeros(n, int)
    window, score = _walk(P_cdf, pi_cdf, starts, prefix + length, prefix, rng, mdp.n_actions)
    return Fragments(window, score, window @ ctask.r_true.reshape(-1).numpy())


def uniform_fragments(
    ctask: ComparisonTask, n: int, length: int, rng: np.random.Generator
) -> Fragments:
    """``n`` fragments with a uniform start state and uniform actions (no prefix): the held-out
    set of the accuracy metric."""
    mdp = ctask.mdp
    uniform = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    P_cdf, pi_cdf = _cdfs(ctask, uniform)
    starts = rng.integers(mdp.n_states, size=n)
    window, score = _walk(
        P_cdf, pi_cdf, starts, np.full(n, length), np.zeros(n, int), rng, mdp.n_actions
    )
    return Fragments(window, score, window @ ctask.r_true.reshape(-1).numpy())


def label_pairs(
    return_1: np.ndarray, return_2: np.ndarray, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """Synthetic labels ``y = 1`` if ``sigma_1`` is preferred: Bernoulli draws of the Bradley-Terry
    probability ``sigmoid((R_1 - R_2) / temperature)`` on the hidden returns ``[n]``.

    ``temperature = 0`` is the noiseless labeller (``y = 1[R_1 > R_2]``, a fair coin on ties).
    """
    temperature = check_real(temperature, "temperature")
    if not temperature >= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    diff = np.asarray(return_1, float) - np.asarray(return_2, float)
    u = rng.random(diff.shape)
    if temperature == 0:
        return np.where(diff == 0, (u < 0.5).astype(float), (diff > 0).astype(float))
    p = 0.5 * (1.0 + np.tanh(0.5 * diff / temperature))  # sigmoid, stable
    return (u < p).astype(float)


class PairDataset:
    """A FIFO dataset of labelled pairs of fixed ``capacity`` (the oldest pair leaves first).

    Arrays (views of the stored pairs, oldest first): ``diff = phi(sigma_1) - phi(sigma_2)``,
    ``window_sum`` and ``score_sum`` (the counts of both fragments added), ``y`` the labels and
    ``weights`` ``[m, n_weights]`` (bootstrap weights of an ensemble; ones otherwise).
    """

    def __init__(self, capacity: int, n_pairs: int, n_weights: int = 1) -> None:
        self.capacity = check_positive_int(capacity, "capacity")
        shape = (self.capacity, check_positive_int(n_pairs, "n_pairs"))
        self._diff, self._wsum, self._ssum = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self._y = np.zeros(self.capacity)
        self._w = np.ones((self.capacity, check_positive_int(n_weights, "n_weights")))
        self._next = 0  # total number of pairs ever added
        self.states_seen = np.zeros(n_pairs, dtype=bool)

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    def add(
        self, f1: Fragments, f2: Fragments, y: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        """Append pairs ``(f1[i], f2[i])`` with labels ``y[i]``."""
        n = len(y)
        if len(f1) != n or len(f2) != n:
            raise ValueError(
                f"f1, f2 and y must have one entry per pair, got {len(f1)}, {len(f2)}, {n}"
            )
        for i in range(n):
            k = self._next % self.capacity
            self._diff[k] = f1.window[i] - f2.window[i]
            self._wsum[k] = f1.window[i] + f2.window[i]
            self._ssum[k] = f1.score[i] + f2.score[i]
            self._y[k] = y[i]
            self._w[k] = 1.0 if weights is None else weights[i]
            self._next += 1
        self.states_seen |= (f1.window + f2.window).sum(axis=0) > 0

    def _order(self) -> np.ndarray:
        m = len(self)
        return (np.arange(m) + (self._next - m)) % self.capacity

    @property
    def diff(self) -> np.ndarray:
        return self._diff[self._order()]

    @property
    def window_sum(self) -> np.ndarray:
        return self._wsum[self._order()]

    @property
    def score_sum(self) -> np.ndarray:
        return self._ssum[self._order()]

    @property
    def y(self) -> np.ndarray:
        return self._y[self._order()]

    @property
    def weights(self) -> np.ndarray:
        return self._w[self._order()]


# --------------------------------------------------------------------------------------------
# The gradients (chapter 6, equations (eq-bt-grad), (eq-truncated-term), (eq-policy-term))
# --------------------------------------------------------------------------------------------


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def bradley_terry_gradient(
    x: np.ndarray, diff: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair losses and the gradient of their (weighted) mean, derived by hand.

    ``l_i = y_i softplus(-z_i) + (1 - y_i) softplus(z_i)`` with ``z_i = <x, diff_i>``, and
    ``dl_i/dz_i = sigmoid(z_i) - y_i``, so ``grad = sum_i w_i (sigmoid(z_i) - y_i) diff_i / sum w``.

    Args:
        x: ``[S*A]``; diff: ``[m, S*A]``; y: ``[m]``; weights: ``[m]`` (ones when ``None``).

    Returns:
        ``(losses [m], grad [S*A])``.
    """
    z = diff @ x
    losses = y * _softplus(-z) + (1.0 - y) * _softplus(z)
    w = np.ones_like(y) if weights is None else weights
    grad = (w * (_sigmoid(z) - y)) @ diff / max(w.sum(), 1e-300)
    return losses, grad


def _centred(counts: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``counts(s, a) - pi(a|s) sum_b counts(s, b)`` for ``counts [S*A]``."""
    S, A = pi.shape
    c = counts.reshape(S, A)
    return (c - pi * c.sum(axis=1, keepdims=True)).reshape(-1)


def truncated_term(
    pi: np.ndarray, window_sum: np.ndarray, losses: np.ndarray, tau: float
) -> np.ndarray:
    """The authors' hyper term: ``(1/tau) mean_i l_i sum_{t in windows}
    (e_{s_t a_t} - pi(.|s_t))``, the gradient of their surrogate
    ``mean_i stopgrad(l_i) (1/tau) sum_t (r_x(s_t, a_t) - E_{b ~ pi} r_x(s_t, b))`` for the
    table ``r_x = x`` ``[S*A]``.

    Args:
        pi: ``[S, A]``; window_sum: ``[m, S*A]``; losses: ``[m]`` (held fixed); tau: ``> 0``.
    """
    if len(losses) == 0:
        return np.zeros(pi.size)
    return _centred(losses @ window_sum / len(losses), pi) / tau


def policy_term(
    ctask: ComparisonTask, pi: np.ndarray, score_sum: np.ndarray, losses: np.ndarray, tau: float
) -> np.ndarray:
    """The policy-dependence term of (H1), one sample per pair (chapter 6, (eq-policy-term)).

    ``(1/tau) mean_i l_i sum_t (grad_x Q*_x(s_t, a_t) - grad_x V*_x(s_t))`` over every step of
    both fragments (prefix and window). With ``w = mean_i l_i (counts_i - pi counts_i(s))`` and
    ``dQ*/dr = (I - gamma P Pi)^{-1} = I + gamma P (I - gamma P_pi)^{-1} Pi``, it is
    ``(1/tau) (w + gamma pi * u)`` with ``(I - gamma P_pi)^T u = P^T w``: one ``S x S`` solve.

    Args:
        ctask: the task; pi: ``pi*_x`` ``[S, A]``; score_sum: ``[m, S*A]``; losses: ``[m]``;
        tau: the agent's temperature.

    Returns:
        ``[S*A]``.
    """
    mdp = ctask.mdp
    S, A = pi.shape
    if len(losses) == 0:
        return np.zeros(S * A)
    w = _centred(losses @ score_sum / len(losses), pi)
    trans = mdp.transitions
    pi_t = torch.as_tensor(pi, dtype=DTYPE)
    Pw = trans.pushforward(torch.as_tensor(w.reshape(S, A), dtype=DTYPE))  # P^T w  [S]
    u = kernels.solve_policy_system(
        kernels.policy_kernel(trans, pi_t), mdp.gamma, Pw, transpose=True
    ).x.numpy()
    return (w + mdp.gamma * (pi * u[:, None]).reshape(-1)) / tau


def select_disputed(diff: np.ndarray, X: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` candidate pairs on which an ensemble disagrees most (arm E).

    Disagreement is the standard deviation over members of the predicted preference
    ``sigmoid(<x_m, diff_i>)`` (Christiano et al., 2017, who use the variance).

    Args:
        diff: candidate feature differences ``[pool, n_features]``; X: members ``[M, n_features]``;
        n: how many to keep.

    Returns:
        ``[n]`` indices, most disputed first (ties by position).
    """
    probs = _sigmoid(diff @ X.T)  # [pool, M]
    return np.argsort(-probs.std(axis=1), kind="stable")[:n]


def heldout_accuracy(x: np.ndarray, diff: np.ndarray, true_diff: np.ndarray) -> float:
    """Fraction of pairs ranked as the hidden return ranks them (ties of ``x`` count 1/2; pairs
    with equal hidden returns are left out)."""
    keep = true_diff != 0
    z = diff[keep] @ x
    right = np.where(z == 0, 0.5, (np.sign(z) == np.sign(true_diff[keep])).astype(float))
    return float(right.mean()) if right.size else float("nan")


def exact_policy_term(
    ctask: ComparisonTask, x: np.ndarray, tau: float, temperature: float
) -> np.ndarray:
    """Brute force for one-step fragments (``|sigma| = 1``, tiny tasks): the policy-dependence term of
    ``f(x, pi*_x) = sum_{(s,a), (s',b)} D(s,a) D(s',b) E_y l``, ``D = dbar_pi(s) pi(a|s)``.

    ``pi*_x`` is computed by soft value iteration in torch (iterated to ``gamma^k < 1e-15``) and
    differentiated by autograd; the data term ``z`` is held fixed. The reference that
    :func:`policy_term` is checked against (chapter 6, section 6.4).

    Returns:
        ``[n_features]``.
    """
    mdp = ctask.mdp
    S, A = mdp.n_states, mdp.n_actions
    feats = torch.as_tensor(ctask.features, dtype=DTYPE)
    xt = torch.tensor(np.asarray(x, dtype=float), dtype=DTYPE, requires_grad=True)
    r = (feats @ xt).reshape(S, A)
    P = mdp.P
    n_sweeps = 10 + int(math.ceil(math.log(1e-15) / math.log(mdp.gamma))) if mdp.gamma > 0 else 1
    V = torch.zeros(S, dtype=DTYPE)
    for _ in range(n_sweeps):
        V = tau * torch.logsumexp((r + mdp.gamma * P @ V) / tau, dim=1)
    pi = torch.softmax((r + mdp.gamma * P @ V) / tau, dim=1)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    eye = torch.eye(S, dtype=DTYPE)
    mu = (1 - mdp.gamma) * torch.linalg.solve(eye - mdp.gamma * P_pi.T, mdp.rho)
    D = (mu[:, None] * pi).reshape(-1)
    reward = (feats @ torch.as_tensor(np.asarray(x, dtype=float), dtype=DTYPE)).detach()
    z = reward[:, None] - reward[None, :]
    R = ctask.r_true.reshape(-1)
    p = torch.sigmoid((R[:, None] - R[None, :]) / temperature)
    loss = p * torch.nn.functional.softplus(-z) + (1 - p) * torch.nn.functional.softplus(z)
    (D @ loss @ D).backward()
    return xt.grad.numpy()


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RLHFConfig:
    """Settings of one run of :func:`rlhf_run` (chapter 6, section "The experiment").

    Attributes:
        arm: one of :data:`ARMS`.
        fragment_length: ``|sigma|``.
        budget: total labelled comparisons (pairs), initial ones included.
        n_iter: iterations after the initial phase (each adds ``(budget - initial) / n_iter``
            pairs and trains the reward).
        initial_fraction: share of the budget labelled from the initial policy and pre-trained on
            (the authors' ``initial_comparisons``).
        capacity: FIFO size (pairs).
        lr: step size per unit of fragment length (the step is ``lr / |sigma|``).
        reward_steps: gradient steps on ``x`` per iteration (10x in the initial phase).
        ridge: weight of ``(ridge/2) ||x||^2``.
        label_temperature: of the labeller (0: noiseless).
        tau: the agent's temperature (the hyper terms carry ``1/tau``).
        delay: iterations after the initial phase with the hyper term off (their delay).
        hyper_scale: a factor on the hyper term (1: the exact coefficient ``1/tau``; smaller
            values are the control "is it only too large?").
        optimizer: ``"gd"``, gradient descent with step ``lr / |sigma|``; or ``"adam"`` (the authors'
            optimizer), Adam with step ``lr`` and default moments, its state kept across
            iterations (not for the ensemble arm).
        n_members: ensemble size (arm ``"ensemble"``); pool_factor: candidates per query.
        n_heldout: held-out pairs for the accuracy; size, gamma: of the map.
        features: the reward model (:func:`comparison_task`).
        seed: the task, the held-out set and the sampling (paired across arms).
    """

    arm: str = "loss"
    fragment_length: int = 5
    budget: int = 600
    n_iter: int = 30
    initial_fraction: float = 0.1
    capacity: int = 300
    lr: float = 1.0
    reward_steps: int = 10
    ridge: float = 1e-3
    label_temperature: float = 0.25
    tau: float = 0.1
    delay: int = 1
    hyper_scale: float = 1.0
    optimizer: str = "gd"
    n_members: int = 5
    pool_factor: int = 4
    n_heldout: int = 1000
    size: int = 6
    gamma: float = 0.95
    features: str = "rbf"
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.arm, "arm", ARMS)
        check_choice(self.features, "features", ("rbf", "table"))
        check_choice(self.optimizer, "optimizer", ("gd", "adam"))
        if self.optimizer == "adam" and self.arm == "ensemble":
            raise ValueError("optimizer='adam' is not implemented for arm 'ensemble'")
        for name, minimum in (
            ("fragment_length", 1),
            ("budget", 2),
            ("n_iter", 1),
            ("capacity", 1),
            ("reward_steps", 1),
            ("delay", 0),
            ("n_members", 2),
            ("pool_factor", 1),
            ("n_heldout", 1),
            ("size", 3),
            ("seed", 0),
        ):
            check_positive_int(getattr(self, name), name, minimum)
        for name in (
            "initial_fraction",
            "lr",
            "ridge",
            "label_temperature",
            "tau",
            "gamma",
            "hyper_scale",
        ):
            value = check_real(getattr(self, name), name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 < self.tau:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0 <= self.initial_fraction < 1:
            raise ValueError(f"initial_fraction must lie in [0, 1), got {self.initial_fraction}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must lie in [0, 1), got {self.gamma}")
        if self.budget - self._n_initial() < self.n_iter:
            raise ValueError(
                f"budget {self.budget} leaves fewer than one pair per iteration (n_iter={self.n_iter})"
            )

    def _n_initial(self) -> int:
        return max(1, int(round(self.initial_fraction * self.budget)))

    def to_dict(self) -> dict:
        """The settings as a JSON-serializable dict."""
        return dataclasses.asdict(self)


def _hyper(
    cfg: RLHFConfig, ctask, pi, data: PairDataset, losses: np.ndarray, n_fresh: int
) -> np.ndarray:
    """The arm's hyper term in ``x`` (the table-space term times ``features^T``): B over the
    whole FIFO (as the authors' code); C and D over the ``n_fresh`` newest pairs, drawn from the
    current policy (an unbiased estimate)."""
    if cfg.arm == "truncated":
        return truncated_term(pi, data.window_sum, losses, cfg.tau) @ ctask.features
    term = policy_term(ctask, pi, data.score_sum[-n_fresh:], losses[-n_fresh:], cfg.tau)
    return (term if cfg.arm == "full" else -term) @ ctask.features


class _Adam:
    """Adam on a vector (Kingma and Ba, 2015; beta1 0.9, beta2 0.999, eps 1e-8)."""

    def __init__(self, n: int, lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m, self.v = np.zeros(n), np.zeros(n)

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        return x - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _train_reward(
    cfg: RLHFConfig,
    ctask,
    x: np.ndarray,
    pi: np.ndarray,
    data: PairDataset,
    steps: int,
    hyper: bool,
    n_fresh: int,
    adam: _Adam | None = None,
) -> tuple[np.ndarray, float]:
    """``steps`` gradient steps on ``x``; returns ``(x, ||hyper|| / ||loss gradient||)``."""
    lr = cfg.lr / cfg.fragment_length
    diff, y = data.diff @ ctask.features, data.y
    ratio = float("nan")
    for _ in range(steps):
        losses, g = bradley_terry_gradient(x, diff, y)
        g = g + cfg.ridge * x
        if hyper:
            h = _hyper(cfg, ctask, pi, data, losses, n_fresh)
            ratio = float(np.linalg.norm(h) / max(np.linalg.norm(g), 1e-300))
            g = g + cfg.hyper_scale * h
        x = x - lr * g if adam is None else adam.step(x, g)
        if not np.abs(x).max() <= _DIVERGED:
            break
    return x, ratio


def _train_members(
    cfg: RLHFConfig, ctask, X: np.ndarray, data: PairDataset, steps: int
) -> np.ndarray:
    lr = cfg.lr / cfg.fragment_length
    diff, y, W = data.diff @ ctask.features, data.y, data.weights
    for m in range(X.shape[0]):
        for _ in range(steps):
            _, g = bradley_terry_gradient(X[m], diff, y, W[:, m])
            X[m] = X[m] - lr * (g + cfg.ridge * X[m])
    return X


#: a reward weight beyond this counts as divergence (the soft values would overflow float64)
_DIVERGED = 1e12


def _lower(ctask: ComparisonTask, x: np.ndarray, tau: float, V0):
    S, A = ctask.mdp.n_states, ctask.mdp.n_actions
    r = torch.as_tensor((ctask.features @ x).reshape(S, A))
    res = soft_policy_iteration(ctask.mdp, r, tau, V0)
    return res.pi.numpy(), res.pi, res.V


def rlhf_run(cfg: RLHFConfig) -> dict:
    """One run of the reward-learning loop with the arm of ``cfg`` (module docstring).

    Per iteration: the agent plays ``pi*_x`` (exact soft policy iteration); ``n_new`` pairs of
    fragments are drawn from it (arm ``"ensemble"``: the ``n_new`` most disputed of
    ``pool_factor * n_new`` candidates), labelled and pushed into the FIFO; the reward takes
    ``reward_steps`` gradient steps. Records, before each iteration and at the end: comparisons
    used, the normalized true return of ``pi*_x``
    (``(J(pi) - J(uniform)) / (J(pi*_true) - J(uniform))``), held-out accuracy, state coverage of
    the labelled windows, and the ratio ``||hyper term|| / ||loss gradient||``.

    Returns:
        The record of the run (JSON-serializable), with keys ``config``, ``curve`` (lists),
        ``diverged_at`` and ``wall_time``.
    """
    if not isinstance(cfg, RLHFConfig):
        raise TypeError(f"cfg must be an RLHFConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    ctask = comparison_task(cfg.seed, size=cfg.size, gamma=cfg.gamma, features=cfg.features)
    mdp, S, A = ctask.mdp, ctask.mdp.n_states, ctask.mdp.n_actions
    rng = np.random.default_rng([cfg.seed, 1])
    held_rng = np.random.default_rng([cfg.seed, 2])
    h1 = uniform_fragments(ctask, cfg.n_heldout, cfg.fragment_length, held_rng)
    h2 = uniform_fragments(ctask, cfg.n_heldout, cfg.fragment_length, held_rng)
    h_diff, h_true = (h1.window - h2.window) @ ctask.features, h1.true_return - h2.true_return
    uniform = torch.full((S, A), 1.0 / A, dtype=DTYPE)
    J_unif = float(expected_return(mdp, uniform, ctask.r_true))
    J_best = float(
        expected_return(mdp, soft_policy_iteration(mdp, ctask.r_true, cfg.tau).pi, ctask.r_true)
    )

    ensemble = cfg.arm == "ensemble"
    n_w = cfg.n_members if ensemble else 1
    data = PairDataset(cfg.capacity, S * A, n_w)
    n = ctask.features.shape[1]
    X = 0.1 * rng.standard_normal((cfg.n_members, n)) if ensemble else None
    x = np.zeros(n)
    adam = _Adam(n, cfg.lr) if cfg.optimizer == "adam" else None
    n_initial = cfg._n_initial()
    per_iter = np.diff(np.linspace(0, cfg.budget - n_initial, cfg.n_iter + 1).round()).astype(int)
    curve = {k: [] for k in ("comparisons", "true_return", "accuracy", "coverage", "hyper_ratio")}
    V = None
    used, ratio, diverged = 0, float("nan"), None
    for k in range(cfg.n_iter + 2):  # k = 0: initial phase; k = n_iter + 1: final record only
        if ensemble:
            x = X.mean(axis=0)
        try:
            pi, pi_t, V = _lower(ctask, x, cfg.tau, V)
        except FloatingPointError:  # rewards too large for float64 values: the step size diverged
            diverged = k
            break
        J = float(expected_return(mdp, pi_t, ctask.r_true))
        curve["comparisons"].append(used)
        curve["true_return"].append(round((J - J_unif) / (J_best - J_unif), 6))
        curve["accuracy"].append(round(heldout_accuracy(x, h_diff, h_true), 6))
        curve["coverage"].append(round(float(data.states_seen.reshape(S, A).any(axis=1).mean()), 6))
        curve["hyper_ratio"].append(None if not math.isfinite(ratio) else round(ratio, 6))
        if k == cfg.n_iter + 1:
            break
        n_new = n_initial if k == 0 else int(per_iter[k - 1])
        if ensemble and k > 0:
            f1 = sample_fragments(ctask, pi, cfg.pool_factor * n_new, cfg.fragment_length, rng)
            f2 = sample_fragments(ctask, pi, cfg.pool_factor * n_new, cfg.fragment_length, rng)
            pick = select_disputed((f1.window - f2.window) @ ctask.features, X, n_new)
            f1, f2 = f1[pick], f2[pick]
        else:
            f1 = sample_fragments(ctask, pi, n_new, cfg.fragment_length, rng)
            f2 = sample_fragments(ctask, pi, n_new, cfg.fragment_length, rng)
        y = label_pairs(f1.true_return, f2.true_return, cfg.label_temperature, rng)
        weights = rng.poisson(1.0, size=(n_new, n_w)).astype(float) if ensemble else None
        data.add(f1, f2, y, weights)
        used += n_new
        steps = cfg.reward_steps * (10 if k == 0 else 1)
        with np.errstate(over="ignore", invalid="ignore"):
            if ensemble:
                X = _train_members(cfg, ctask, X, data, steps)
                bad = not np.abs(X).max() <= _DIVERGED
            else:
                hyper = cfg.arm != "loss" and k > cfg.delay
                x, ratio = _train_reward(cfg, ctask, x, pi, data, steps, hyper, n_new, adam)
                bad = not np.abs(x).max() <= _DIVERGED
        if bad:  # the step size is too large for this arm: the run records where it stopped
            diverged = k
            break
    return {
        "complete": True,
        "config": cfg.to_dict(),
        "diverged_at": diverged,
        "curve": curve,
        "J_uniform": J_unif,
        "J_best": J_best,
        "wall_time": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def run_path(out: Path, cfg: RLHFConfig) -> Path:
    """``<out>/<arm>__L<L>__budget<N>__lr<lr>[__<other non-default settings>]__seed<s>.json``
    (``L<L>``: the fragment length, ``|sigma|`` in the book; ``budget<N>``: the comparisons)."""
    default = RLHFConfig()
    named = ("arm", "fragment_length", "budget", "lr", "seed")
    extra = "".join(
        f"__{f.name}={getattr(cfg, f.name)}"
        for f in dataclasses.fields(RLHFConfig)
        if f.name not in named and getattr(cfg, f.name) != getattr(default, f.name)
    )
    return Path(out) / (
        f"{cfg.arm}__L{cfg.fragment_length}__budget{cfg.budget}__lr{cfg.lr:g}{extra}"
        f"__seed{cfg.seed}.json"
    )


def _run_claimed(path: Path, cfg: RLHFConfig) -> str:
    from .experiments import run_claimed_file

    return run_claimed_file(path, cfg.to_dict(), RLHFConfig().to_dict(), lambda: rlhf_run(cfg))


def load_records(folder: str | Path) -> list[dict]:
    """Every finished results file of ``folder`` (sorted by name)."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        with open(path) as f:
            record = json.load(f)
        if isinstance(record, dict) and record.get("complete"):
            out.append(record)
    return out


def final_return(record: dict) -> float:
    """Mean normalized true return over the last 5 records; ``-inf`` for a diverged run."""
    if record.get("diverged_at") is not None:
        return float("-inf")
    return float(np.mean(record["curve"]["true_return"][-5:]))


def setting_of(config: dict) -> tuple:
    """``(arm, hyper_scale, fragment_length, budget, optimizer)``: what a step size is tuned for."""
    return (
        config["arm"],
        config["hyper_scale"],
        config["fragment_length"],
        config["budget"],
        config.get("optimizer", "gd"),
    )


def tuned_lrs(records: list[dict]) -> dict[tuple, float]:
    """The step size with the best mean :func:`final_return` over seeds, per :func:`setting_of`
    (ties: the smaller step). Every step size of a setting must have the same seeds."""
    table: dict[tuple, dict[float, dict[int, float]]] = {}
    for rec in records:
        cfg = rec["config"]
        table.setdefault(setting_of(cfg), {}).setdefault(cfg["lr"], {})[cfg["seed"]] = final_return(
            rec
        )
    best = {}
    for setting, by_lr in table.items():
        seeds = {lr: sorted(v) for lr, v in by_lr.items()}
        if len({tuple(v) for v in seeds.values()}) != 1:
            raise ValueError(f"step sizes of {setting} were run on different seeds: {seeds}")
        best[setting] = min(by_lr, key=lambda lr: (-np.mean(list(by_lr[lr].values())), lr))
    return best


def main(argv: list[str] | None = None) -> dict[str, int]:
    """CLI: arms x lengths x budgets x step sizes x seeds, one results file per run (resumable).

    ``--tuned-from DIR`` replaces ``--lrs``: each setting runs with the step size that
    :func:`tuned_lrs` picks from the finished runs in ``DIR``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m birl_lite.rlhf_tabular",
        description="Tabular reward learning from comparisons: the arms of chapter 6",
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 5, 25])
    parser.add_argument("--budgets", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1.0], help="step sizes (grid)")
    parser.add_argument(
        "--hyper-scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="factors on the hyper term (arms truncated, full, flipped only)",
    )
    parser.add_argument("--tuned-from", type=Path, default=None, help="folder of tuning runs")
    parser.add_argument("--optimizer", default="gd", choices=("gd", "adam"))
    parser.add_argument("--seeds", nargs="+", default=["0-19"], help="e.g. 0-19 or 0 3 5")
    parser.add_argument("--out", type=Path, default=Path("results/rlhf_tabular"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from .experiments import _check_writable, parse_seeds

    _check_writable(args.out)
    tuned = tuned_lrs(load_records(args.tuned_from)) if args.tuned_from is not None else None
    plan = []
    for N in args.budgets:
        for L in args.lengths:
            for arm in args.arms:
                scales = args.hyper_scales if arm in ("truncated", "full", "flipped") else [1.0]
                for scale in scales:
                    key = (arm, scale, L, N, args.optimizer)
                    if tuned is not None:
                        if key not in tuned:
                            raise ValueError(f"no tuning runs for {key}")
                        lrs = [tuned[key]]
                    else:
                        lrs = args.lrs
                    plan += [
                        RLHFConfig(
                            arm=arm,
                            fragment_length=L,
                            budget=N,
                            lr=lr,
                            hyper_scale=scale,
                            optimizer=args.optimizer,
                            seed=s,
                        )
                        for lr in lrs
                        for s in parse_seeds(args.seeds)
                    ]
    counts = {"run": 0, "skipped": 0, "locked": 0}
    for i, cfg in enumerate(plan):
        path = run_path(args.out, cfg)
        status = _run_claimed(path, cfg)
        counts[status] += 1
        if not args.quiet:
            print(f"[{i + 1}/{len(plan)}] {status:7s} {path.name}", flush=True)
    print(f"done: {counts}")
    return counts


if __name__ == "__main__":
    main()
