"""The upper level of neural RLHF: reward network, fragments, labels, FIFO, the hyper terms.

The designer learns ``r_x(s, a)``, an MLP with one output per action (as the SoBiRL authors' reward
net), from Bradley-Terry comparisons of trajectory *fragments* (``L`` consecutive steps) cut from
the agent's episodes and labelled by a synthetic labeller on the hidden true return (chapter 6,
eq-bt-loss; :func:`birl_lite.preference.bradley_terry_loss`, :func:`birl_lite.rlhf_tabular.label_pairs`).

The hyper terms (the arms of chapter 6, section 6.5) are written as *stop-gradient scalar
surrogates*: a scalar whose gradient in ``x`` is the term, so that each costs one backward pass.

* :func:`truncated_surrogate` (arm B, the authors' ``SoBiRewardLoss``):
  ``(1/tau) mean_i sg(l_i) sum_{t in windows_i} (r_x(s_t, a_t) - E_{b~pi} r_x(s_t, b))``.
* :func:`full_surrogate` (arm C): the policy-dependence term of (H1),
  ``(1/tau) mean_i l_i sum_t (grad_x Q*_x(s_t, a_t) - grad_x V*_x(s_t))`` over the prefix and the
  window of both fragments (the steps the fragments' probability depends on). The soft-optimal
  ``Q*_x`` moves with ``x`` as ``grad_x Q*_x(s, a) = E_pi[sum_k gamma^k grad_x r_x(s_k, a_k) |
  s_0 = s, a_0 = a]`` (the envelope identity of soft RL, ``dQ*/dr = (I - gamma P Pi)^{-1}``; the
  policy's own change contributes nothing to first order). A Q-network trained on ``r_x`` has
  gradients in *its own* weights, not in ``x``, and the realized continuation of the fragment is no
  substitute (it is correlated with ``l_i``, which biases the score-function product). Write the
  reward net as ``r_x(s, a) = <w_a, h_theta(s)> + b_a``: its output layer ``(w, b)`` is linear in the
  features ``phi(s, a) = e_a (x) [h(s); 1]``, so ``grad_{(w,b)} Q*_x(s, a)`` are the *successor
  features* ``phi(s, a) + psi(s, a)``, ``psi(s, a) = gamma E[sum_{k>=1} gamma^{k-1} phi(s_k, a_k)]``,
  learned by TD like a critic (:class:`ContinuationCritic`, ``A x A x (h+1)`` outputs). The
  surrogate replaces ``Q*_x`` by

      Qhat_x(s, a) = r_x(s, a) + <(w, b), sg(psi(s, a))>,

  whose gradient is exact in the output layer and truncated after one step (the authors' term)
  in the hidden layers ``theta``. For a linear reward on one-hot states (a table) the output layer
  is everything and the surrogate is the exact term: checked against
  :func:`birl_lite.rlhf_tabular.policy_term` (tests/test_rlhf_neural.py).
* arm D is ``-C``; arm E (:func:`select_disputed`) chooses queries by ensemble disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._validation import check_positive_int, check_real
from ..preference import bradley_terry_loss
from .sac import Episode, ImageEncoder, is_image, make_net, mlp

__all__ = [
    "RewardNet",
    "ABSORBING",
    "Fragments",
    "fragment_starts",
    "sample_fragments",
    "PreferenceDataset",
    "pair_losses",
    "preference_accuracy",
    "select_disputed",
    "truncated_surrogate",
    "ScoreSteps",
    "score_steps",
    "full_surrogate",
    "ContinuationCritic",
]


class RewardNet(nn.Module):
    """``r_x(s, .)``: an MLP from observations ``[B, d]`` to one reward per action ``[B, A]``.

    ``body`` computes the features ``h(s)`` (the identity when ``hidden=()``: a linear reward, a
    table on one-hot states), ``head`` is the linear output layer ``[A, h]`` (+ bias ``[A]``).
    With ``obs_shape`` of an image ``(H, W, C)`` (observations stored flat), the body starts with
    :class:`~birl_lite.rlhf.sac.ImageEncoder`.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (64, 64),
                 bias: bool = True, obs_shape: tuple[int, ...] | None = None) -> None:  # fmt: skip
        super().__init__()
        obs_dim = check_positive_int(obs_dim, "obs_dim")
        self.n_actions = check_positive_int(n_actions, "n_actions")
        if obs_shape is not None and is_image(tuple(obs_shape)):
            if int(np.prod(obs_shape)) != obs_dim:
                raise ValueError(f"obs_shape {obs_shape} does not hold obs_dim={obs_dim} values")
            enc = ImageEncoder(tuple(obs_shape))
            layers = mlp(enc.out_dim, tuple(hidden), 1)[:-1] if hidden else []
            self.body = nn.Sequential(enc, *layers)
            self.feat_dim = int(hidden[-1]) if hidden else enc.out_dim
        else:
            self.body = mlp(obs_dim, tuple(hidden), 1)[:-1] if hidden else nn.Identity()
            self.feat_dim = int(hidden[-1]) if hidden else obs_dim
        self.head = nn.Linear(self.feat_dim, self.n_actions, bias=bias)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """``h(s)`` ``[B, h]``."""
        return self.body(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``r_x(s, .)`` ``[B, A]``."""
        return self.head(self.body(obs))

    def reward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``r_x(s, a)`` ``[B]`` for ``obs [B, d]``, ``actions [B]``."""
        return self(obs).gather(1, actions.long().reshape(-1, 1))[:, 0]

    def head_features(self, obs: torch.Tensor) -> torch.Tensor:
        """``[h(s); 1]`` ``[B, h+1]`` (the ``1`` only with a bias): ``grad_{w_a, b_a} r_x(s, a)``."""
        h = self.features(obs)
        if self.head.bias is None:
            return h
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)


# --------------------------------------------------------------------------------------------
# Fragments, labels, the FIFO
# --------------------------------------------------------------------------------------------


#: The action recorded at a padded step of a fragment (:func:`sample_fragments` with
#: ``absorbing=True``): the episode has terminated, the step is in the absorbing state, whose
#: reward is fixed at 0 for every reward model (masked in every fragment return, never learned).
ABSORBING = -1


@dataclass
class Fragments:
    """``n`` fragments of ``L`` steps.

    Attributes:
        obs: the observations ``[n, L, d]`` (zeros at padded steps).
        actions: ``[n, L]``; :data:`ABSORBING` at padded steps (after termination).
        true_return: the hidden return of the window ``[n]`` (padded steps pay 0).
        episode: index of the episode each was cut from ``[n]``.
        start: its first step in that episode ``[n]``.
    """

    obs: np.ndarray
    actions: np.ndarray
    true_return: np.ndarray
    episode: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return len(self.true_return)

    def __getitem__(self, idx: object) -> Fragments:
        return Fragments(self.obs[idx], self.actions[idx], self.true_return[idx],
                         self.episode[idx], self.start[idx])  # fmt: skip


def fragment_starts(episode: Episode, length: int, absorbing: bool = False) -> int:
    """How many fragments of ``length`` steps can start in ``episode``: ``len - length + 1``
    (at least 0), or ``len`` when ``absorbing`` and the episode terminated (a fragment may run
    into termination, padded with absorbing steps; never after a truncation, whose future is
    unknown)."""
    if absorbing and episode.terminated:
        return len(episode)
    return max(len(episode) - length + 1, 0)


def sample_fragments(
    episodes: list[Episode],
    n: int,
    length: int,
    rng: np.random.Generator,
    terminal_penalty: float = 0.0,
    absorbing: bool = False,
) -> Fragments:
    """``n`` fragments cut uniformly from ``episodes`` (imitation's ``RandomFragmenter``).

    Without ``absorbing`` (the first results' behaviour): an episode is drawn with probability
    proportional to its length among those with at least ``length`` steps, then a start uniformly
    in ``[0, len - length]``. Bradley-Terry on such equal-length windows cannot identify a
    constant added to the reward, and in a terminating task that constant decides whether ending
    the episode (landing, crashing) beats going on.

    With ``absorbing``: a window is drawn uniformly among all windows, where a terminated episode
    also offers the windows that run into its termination (starts ``0 .. len - 1``); the steps
    after termination are the absorbing state, recorded with the action :data:`ABSORBING`, where
    every reward model pays exactly 0, as does the environment, and as the agent's soft Bellman
    target assumes (no bootstrap after termination). A fragment with ``k`` real steps then
    compares ``k`` rewards with the other fragment's, which identifies the offset.

    The hidden true return is the window's environment reward, minus ``terminal_penalty`` when
    the window contains the episode's termination (the authors' ``consider_terminate``; needed
    where every step pays the same, as CartPole's ``+1``).

    Raises:
        ValueError: no episode offers a window of ``length`` steps.
    """
    n = check_positive_int(n, "n", 0)
    length = check_positive_int(length, "length")
    penalty = check_real(terminal_penalty, "terminal_penalty")
    counts = [fragment_starts(ep, length, absorbing) for ep in episodes]
    ok = [i for i, c in enumerate(counts) if c > 0]
    if not ok:
        longest = max((len(ep) for ep in episodes), default=0)
        raise ValueError(
            f"fragment_length={length} is longer than every episode (longest {longest} steps, "
            f"{len(episodes)} episodes): use a shorter fragment_length"
        )
    size = counts if absorbing else [len(ep) for ep in episodes]  # legacy: weight by length
    w = np.array([size[i] for i in ok], float)
    pick = np.asarray(ok)[rng.choice(len(ok), size=n, p=w / w.sum())]
    starts = np.array([rng.integers(0, counts[i]) for i in pick], dtype=int)
    d = episodes[ok[0]].obs.shape[1]
    obs = np.zeros((n, length, d), np.float32)
    act = np.full((n, length), ABSORBING, np.int64)
    ret = np.zeros(n)
    for j, (i, s) in enumerate(zip(pick, starts, strict=True)):
        ep = episodes[i]
        k = min(length, len(ep) - s)  # real steps; the rest is absorbing
        obs[j, :k], act[j, :k] = ep.obs[s : s + k], ep.actions[s : s + k]
        ret[j] = ep.rewards[s : s + k].sum()
        if ep.terminated and s + length >= len(ep):
            ret[j] -= penalty
    return Fragments(obs, act, ret, pick.astype(int), starts)


class PreferenceDataset:
    """A FIFO of labelled pairs of fixed ``capacity`` (the oldest pair leaves first), as the
    authors' comparison queue. Arrays (oldest first): ``obs1, obs2 [m, L, d]``,
    ``act1, act2 [m, L]``, ``y [m]`` (1: fragment 1 preferred), ``weights [m, M]`` (bootstrap
    weights of an ensemble; ones otherwise)."""

    def __init__(self, capacity: int, length: int, obs_dim: int, n_weights: int = 1) -> None:
        self.capacity = check_positive_int(capacity, "capacity")
        L, d = check_positive_int(length, "length"), check_positive_int(obs_dim, "obs_dim")
        self._o1, self._o2 = (
            np.zeros((capacity, L, d), np.float32),
            np.zeros((capacity, L, d), np.float32),
        )
        self._a1, self._a2 = np.zeros((capacity, L), np.int64), np.zeros((capacity, L), np.int64)
        self._y = np.zeros(capacity, np.float32)
        self._w = np.ones((capacity, check_positive_int(n_weights, "n_weights")), np.float32)
        self.n_added = 0

    def __len__(self) -> int:
        return min(self.n_added, self.capacity)

    def push(self, f1: Fragments, f2: Fragments, y: np.ndarray,
             weights: np.ndarray | None = None) -> None:  # fmt: skip
        """Append the pairs ``(f1[i], f2[i])`` with labels ``y[i]`` (and bootstrap weights)."""
        if not len(f1) == len(f2) == len(y):
            raise ValueError(
                f"f1, f2, y need one entry per pair, got {len(f1)}, {len(f2)}, {len(y)}"
            )
        for i in range(len(y)):
            k = self.n_added % self.capacity
            self._o1[k], self._a1[k], self._o2[k], self._a2[k] = (
                f1.obs[i],
                f1.actions[i],
                f2.obs[i],
                f2.actions[i],
            )
            self._y[k] = y[i]
            self._w[k] = 1.0 if weights is None else weights[i]
            self.n_added += 1

    def order(self) -> np.ndarray:
        """Storage indices, oldest first."""
        m = len(self)
        return (np.arange(m) + (self.n_added - m)) % self.capacity

    def tensors(self, idx: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
        """``(obs1, act1, obs2, act2, y, weights)`` of the pairs ``idx`` (positions, oldest first;
        all when ``None``)."""
        k = self.order() if idx is None else self.order()[idx]
        t = torch.from_numpy
        return (t(self._o1[k]), t(self._a1[k]), t(self._o2[k]), t(self._a2[k]), t(self._y[k]),
                t(self._w[k]))  # fmt: skip


def _returns(net: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``sum_t r_x(s_t, a_t)`` ``[m]`` of fragments ``obs [m, L, d]``, ``act [m, L]``; an
    :data:`ABSORBING` step pays exactly 0."""
    m, L = act.shape
    r = net(obs.reshape(m * L, *obs.shape[2:]))
    real = act >= 0
    if bool(real.all()):
        return r.gather(1, act.reshape(-1, 1)).reshape(m, L).sum(dim=1)
    r = r.gather(1, act.clamp_min(0).reshape(-1, 1)).reshape(m, L)
    return torch.where(real, r, torch.zeros((), dtype=r.dtype)).sum(dim=1)


def pair_losses(net: nn.Module, obs1: torch.Tensor, act1: torch.Tensor, obs2: torch.Tensor,
                act2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Per-pair Bradley-Terry losses ``[m]`` (chapter 6, eq-bt-loss):
    ``l = y softplus(-z) + (1 - y) softplus(z)``, ``z = R_x(sigma_1) - R_x(sigma_2)``, via
    :func:`birl_lite.preference.bradley_terry_loss` (float64, differentiable in the net)."""
    z = _returns(net, obs1, act1) - _returns(net, obs2, act2)
    return bradley_terry_loss(z, y).float()


@torch.no_grad()
def preference_accuracy(net: nn.Module, obs1: torch.Tensor, act1: torch.Tensor,
                        obs2: torch.Tensor, act2: torch.Tensor, true_diff: np.ndarray) -> float:  # fmt: skip
    """Fraction of pairs ranked as the hidden returns rank them (``true_diff = R_1 - R_2 [m]``);
    a tie of the model counts 1/2; pairs with equal hidden returns are left out (NaN if none)."""
    z = (_returns(net, obs1, act1) - _returns(net, obs2, act2)).numpy()
    keep = np.asarray(true_diff) != 0
    z, s = z[keep], np.sign(np.asarray(true_diff)[keep])
    right = np.where(z == 0, 0.5, (np.sign(z) == s).astype(float))
    return float(right.mean()) if right.size else float("nan")


@torch.no_grad()
def select_disputed(members: list[nn.Module], obs1: torch.Tensor, act1: torch.Tensor,
                    obs2: torch.Tensor, act2: torch.Tensor, n: int) -> np.ndarray:  # fmt: skip
    """Indices of the ``n`` candidate pairs on which the ensemble disagrees most (arm E): the
    standard deviation over members of ``sigmoid(z_m)`` (Christiano et al., 2017), most disputed
    first (the formula of :func:`birl_lite.rlhf_tabular.select_disputed`)."""
    p = torch.stack(
        [torch.sigmoid(_returns(m, obs1, act1) - _returns(m, obs2, act2)) for m in members]
    )
    return np.argsort(-p.std(dim=0).numpy(), kind="stable")[: check_positive_int(n, "n", 0)]


# --------------------------------------------------------------------------------------------
# The hyper terms as scalar surrogates
# --------------------------------------------------------------------------------------------


def _centred_reward(net: RewardNet, obs: torch.Tensor, act: torch.Tensor,
                    probs: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``r_x(s, a) - sum_b pi(b|s) r_x(s, b)`` ``[N]`` for ``obs [N, d]``, ``probs [N, A]``
    (fixed); 0 at an :data:`ABSORBING` step (its reward is 0 whatever ``x``)."""
    r = net(obs)
    real = act >= 0
    if bool(real.all()):
        return r.gather(1, act.reshape(-1, 1))[:, 0] - (probs * r).sum(dim=1)
    c = r.gather(1, act.clamp_min(0).reshape(-1, 1))[:, 0] - (probs * r).sum(dim=1)
    return torch.where(real, c, torch.zeros((), dtype=c.dtype))


def truncated_surrogate(net: RewardNet, obs: torch.Tensor, act: torch.Tensor, probs: torch.Tensor,
                        losses: torch.Tensor, coef: float) -> torch.Tensor:  # fmt: skip
    """The authors' hyper term as a surrogate (arm B; their ``SoBiRewardLoss``):
    ``coef * mean_i sg(l_i) sum_t (r_x(s_t, a_t) - E_{b~pi} r_x(s_t, b))``.

    Args:
        net: the reward. obs: the window steps of both fragments of each pair ``[m, T, d]``;
        act: ``[m, T]``; probs: the agent's ``pi(.|s_t)`` ``[m, T, A]`` (no gradient);
        losses: ``l_i`` ``[m]`` (detached here); coef: ``1/tau`` (times a scale).

    Returns:
        A scalar; its gradient in ``net`` is chapter 6's eq-truncated-term for a network.
    """
    m, T, d = obs.shape
    c = _centred_reward(net, obs.reshape(m * T, d), act.reshape(-1), probs.reshape(m * T, -1))
    return coef * (losses.detach() * c.reshape(m, T).sum(dim=1)).mean()


@dataclass
class ScoreSteps:
    """The steps of fresh pairs that their probability depends on (prefix and window of both
    fragments), flattened, with what arm C needs precomputed under the current policy.

    A step shared by several pairs (pairs cut from one episode share its prefix) is stored and
    evaluated once: ``obs``, ``actions``, ``probs`` hold the ``U`` distinct steps, ``index`` maps
    each of the ``N`` (pair, step) entries to its step.

    Attributes:
        obs: the observations of the distinct steps ``[U, d]``.
        actions: their actions ``[U]``.
        index: the distinct step of each entry ``[N]``, in ``0..U-1``.
        pair: the pair of each entry ``[N]``, in ``0..m-1``.
        weight: ``[N]``, ``n_i / k_i`` when only ``k_i`` of a pair's ``n_i`` steps are kept.
        probs: ``pi(.|s_t)`` of the distinct steps ``[U, A]``.
        cont: per pair ``[m, A, h+1]``, ``sum_t w_t (psi(s_t, a_t) - E_pi psi(s_t, .))``, the
            output layer's continuation, held fixed.
        n_pairs: ``m``.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    index: torch.Tensor
    pair: torch.Tensor
    weight: torch.Tensor
    probs: torch.Tensor
    cont: torch.Tensor
    n_pairs: int


@torch.no_grad()
def score_steps(
    episodes: list[Episode],
    f1: Fragments,
    f2: Fragments,
    policy: object,
    critic: ContinuationCritic | None,
    rng: np.random.Generator,
    max_steps: int = 256,
) -> ScoreSteps:
    """Collect the score steps of the pairs ``(f1[i], f2[i])`` (episode start to window end of
    each fragment) and precompute ``pi`` and the continuation term of :func:`full_surrogate`.

    Args:
        episodes: the episodes the fragments were cut from.
        f1: the first fragment of each pair.
        f2: the second fragment of each pair.
        policy: ``obs [N, d] -> probs [N, A]``.
        critic: the continuation critic; ``None`` gives zeros, the hidden-layer part only.
        rng: draws ``max_steps`` steps per pair without replacement when it has more; the weights
            ``n_i / k_i`` keep the sum unbiased.
        max_steps: the most steps kept per pair.
    """
    offset = np.concatenate([[0], np.cumsum([len(ep) for ep in episodes])])
    obs, act, key, pair, wt = [], [], [], [], []
    for i in range(len(f1)):
        ends = [(f.episode[i], f.start[i] + f.obs.shape[1]) for f in (f1, f2)]
        o = np.concatenate([episodes[e].obs[:end] for e, end in ends])
        a = np.concatenate([episodes[e].actions[:end] for e, end in ends])
        k = np.concatenate([offset[e] + np.arange(min(end, len(episodes[e]))) for e, end in ends])
        n = len(a)
        keep = rng.choice(n, size=max_steps, replace=False) if n > max_steps else np.arange(n)
        obs.append(o[keep])
        act.append(a[keep])
        key.append(k[keep])
        pair.append(np.full(len(keep), i))
        wt.append(np.full(len(keep), n / len(keep), np.float32))
    _, first, index = np.unique(np.concatenate(key), return_index=True, return_inverse=True)
    obs_t = torch.from_numpy(np.concatenate(obs)[first])
    act_t = torch.from_numpy(np.concatenate(act)[first])
    index_t = torch.from_numpy(index.reshape(-1))
    pair_t, w_t = torch.from_numpy(np.concatenate(pair)), torch.from_numpy(np.concatenate(wt))
    probs = policy(obs_t)
    m = len(f1)
    if critic is None:
        cont = torch.zeros(m, 1, 1)
    else:
        psi = critic(obs_t)  # [U, A, A, h+1]
        diff = psi[torch.arange(len(act_t)), act_t] - torch.einsum("na,nakh->nkh", probs, psi)
        cont = torch.zeros(m, *diff.shape[1:]).index_add_(
            0, pair_t, w_t[:, None, None] * diff[index_t]
        )
    return ScoreSteps(obs_t, act_t, index_t, pair_t, w_t, probs, cont, m)


def full_surrogate(net: RewardNet, steps: ScoreSteps, losses: torch.Tensor,
                   coef: float) -> torch.Tensor:  # fmt: skip
    """The policy-dependence term of (H1) as a surrogate (arm C; module docstring):
    ``coef * mean_i sg(l_i) sum_t (Qhat_x(s_t, a_t) - E_{b~pi} Qhat_x(s_t, b))`` with
    ``Qhat_x = r_x + <(w, b), sg(psi)>``.

    Args:
        net: the reward. steps: :func:`score_steps` of the ``m`` pairs. losses: ``l_i`` ``[m]``
        (detached here). coef: ``1/tau`` (times a scale; ``-1/tau`` is arm D).

    Returns:
        A scalar whose gradient is exact in the output layer (``(1/tau) mean_i l_i sum_t
        (grad Q* - grad V*)``, chapter 6 eq-policy-term) and truncated after one step in the
        hidden layers.
    """
    loss_i = losses.detach()
    c = _centred_reward(net, steps.obs, steps.actions, steps.probs)  # once per distinct step
    per_pair = torch.zeros(steps.n_pairs).index_add(0, steps.pair, steps.weight * c[steps.index])
    if steps.cont.shape[1] > 1:
        head = (
            net.head.weight
            if net.head.bias is None
            else torch.cat([net.head.weight, net.head.bias[:, None]], dim=1)
        )  # [A, h+1]
        per_pair = per_pair + (steps.cont * head).sum(dim=(1, 2))
    return coef * (loss_i * per_pair).mean()


class ContinuationCritic(nn.Module):
    """``psi(s, a) = gamma E[sum_{k>=1} gamma^{k-1} phi(s_k, a_k) | s, a]``, the successor features
    of the continuation, ``phi(s, a) = e_a (x) [h(s); 1]`` the reward head's features
    (:meth:`RewardNet.head_features`): ``grad_{(w,b)} Q*_x(s, a) = phi(s, a) + psi(s, a)``.

    An MLP (a CNN first for image ``obs_shape``) ``obs [B, d] -> [B, A, A, h+1]`` (action taken,
    reward action, feature), trained by TD on the agent's replay batches: the target is
    ``gamma (1 - terminated) sum_b pi(b|s') (e_b (x) [h(s'); 1] + psi'(s', b))`` with a Polyak
    target network ``psi'`` (the same recursion as the soft critic, on vectors).
    """

    def __init__(self, obs_dim: int, n_actions: int, feat_dim: int, hidden: tuple[int, ...] = (64, 64),
                 gamma: float = 0.99, lr: float = 1e-3, polyak: float = 0.01,
                 obs_shape: tuple[int, ...] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.A, self.k = (
            check_positive_int(n_actions, "n_actions"),
            check_positive_int(feat_dim, "feat_dim"),
        )
        self.gamma, self.polyak = check_real(gamma, "gamma"), check_real(polyak, "polyak")
        shape = (check_positive_int(obs_dim, "obs_dim"),) if obs_shape is None else obs_shape
        self.net = make_net(shape, tuple(hidden), self.A * self.A * self.k)
        self.target = make_net(shape, tuple(hidden), self.A * self.A * self.k)
        self.target.load_state_dict(self.net.state_dict())
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``psi(s, .)`` ``[B, A, A, h+1]``."""
        return self.net(obs).reshape(-1, self.A, self.A, self.k)

    def update(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor,
               terminated: torch.Tensor, next_probs: torch.Tensor,
               next_features: torch.Tensor) -> float:  # fmt: skip
        """One TD step on a batch (``next_features = [h(s'); 1]`` ``[B, h+1]``, ``next_probs =
        pi(.|s')`` ``[B, A]``); returns the loss."""
        with torch.no_grad():
            nxt = self.target(next_obs).reshape(-1, self.A, self.A, self.k)
            y = next_probs[:, :, None] * next_features[:, None, :]  # E_b e_b (x) phi
            y = y + torch.einsum("nb,nbkh->nkh", next_probs, nxt)
            y = self.gamma * (1.0 - terminated)[:, None, None] * y
        # psi(s, a) of the taken actions only: the output layer's rows of each action, applied
        # to the transitions that took it (the other actions' outputs would get no gradient;
        # this skips computing them, 1/A of the output layer's cost)
        h = self.net[:-1](obs)
        out = self.net[-1]
        w = out.weight.reshape(self.A, self.A * self.k, -1)
        b = out.bias.reshape(self.A, self.A * self.k)
        actions = actions.long()
        rows, preds = [], []
        for a in range(self.A):
            idx = (actions == a).nonzero(as_tuple=True)[0]
            if len(idx):
                rows.append(idx)
                preds.append(torch.nn.functional.linear(h[idx], w[a], b[a]))
        pred = torch.cat(preds).reshape(-1, self.A, self.k)
        loss = torch.nn.functional.mse_loss(pred, y[torch.cat(rows)])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.target.parameters()), list(self.net.parameters()), self.polyak
            )
        return float(loss.detach())
