"""Discrete soft actor-critic on a *learned* reward: the lower level of neural RLHF (chapter 10).

CleanRL's discrete SAC (``sac_atari.py``; Christodoulou, 2019), as adapted by the SoBiRL authors
(``sac_subroutine.py``), with MLPs for vector observations: twin soft Q-networks with target
networks, a categorical actor, the temperature (the book's ``tau``, SAC's ``alpha``) fixed or
auto-tuned towards the entropy target ``scale * log |A|``, a replay buffer. The reward is *not*
the environment's: every sampled batch is relabelled by the reward function ``reward(batch)``
(the current ``r_x``), so the soft Bellman target is

    y = r_x(s, a) + gamma (1 - terminated) sum_b pi(b|s') (min_k Q'_k(s', b) - tau log pi(b|s')),

the sampled soft Bellman backup of chapter 1 (eq-soft-bellman) for the policy ``pi``, and the actor
minimizes ``E_s sum_a pi(a|s) (tau log pi(a|s) - min_k Q_k(s, a))`` (its minimizer is
``softmax(Q / tau)``, the soft-greedy policy of eq-soft-policy). :func:`env_reward` passes the
environment's own reward through (the "true reward" baseline and the learning test).

Observations: ``Box`` (flattened to float32) or ``Discrete`` (one-hot); actions: ``Discrete``.
Image observations (a ``Box`` of shape ``(H, W, C)``, as MinAtar's ``(10, 10, 4)``) are stored
flat as well; every network of the package reads them through a small CNN (:class:`ImageEncoder`,
MinAtar's: one 3x3 convolution, 16 channels), selected by the observation shape
(:func:`make_net`); vector observations get the plain MLPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_positive_int, check_real

__all__ = [
    "SACConfig",
    "Batch",
    "Episode",
    "RewardFn",
    "env_reward",
    "ObsEncoder",
    "mlp",
    "ImageEncoder",
    "make_net",
    "is_image",
    "twin_net",
    "TwinMLP",
    "TwinNet",
    "ReplayBuffer",
    "DiscreteSAC",
]


@dataclass(frozen=True)
class SACConfig:
    """Hyperparameters of :class:`DiscreteSAC` (defaults: small, for a CPU).

    Attributes:
        hidden: hidden layer widths of the Q-networks and the actor.
        gamma: discount. q_lr, policy_lr: Adam step sizes (``eps = 1e-4`` as CleanRL).
        batch_size: replay batch. buffer_size: replay capacity (oldest first out).
        learning_starts: environment steps with uniform random actions before any update.
        update_every: environment steps per gradient update (the authors: 4).
        target_every: environment steps between target updates; polyak: the target moves
            ``polyak`` of the way (1.0 with ``target_every=8000``: the authors' periodic copy).
        temperature: the fixed temperature ``tau``, or the initial one when ``autotune``.
        autotune: learn ``log tau`` so that the policy entropy tracks
            ``target_entropy_scale * log |A|`` (the authors: scale 0.89).
        reward_clip: clamp the (scaled) reward to ``[-c, c]`` in the target (the authors: 1);
            ``None``: no clamp.
        reward_scale: a factor on the reward in the target, before the clamp (LunarLander's
            true reward is in the hundreds per episode; 0.1 keeps the soft values moderate).
        continuing: do not send termination to the agent: a transition into a terminal state is
            stored as one into the next episode's first state, with ``terminated = 0`` (the
            environment is still reset), so the agent sees one continuing task (Christiano et
            al., 2017, appendix A: a termination condition carries information about the task
            even when the reward is hidden). With a learned reward this removes the bonus for staying
            alive (or for ending early) that an offset of ``r_x`` would otherwise pay, an offset
            that comparisons of equal-length fragments cannot identify (chapter 10, section 10.3).
            Episode records, returns and truncations are unchanged. Not the default of the RLHF
            runs: on LunarLander-v3 (arm A, 150k agent steps, seeds 0-2; chapter 10, section
            10.4) it ended at true returns 20, -3, 58 against 122, -3, 121 without it, with
            episodes of ~150 steps against ~480.
    """

    hidden: tuple[int, ...] = (64, 64)
    gamma: float = 0.99
    q_lr: float = 3e-4
    policy_lr: float = 3e-4
    batch_size: int = 64
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    update_every: int = 1
    target_every: int = 1
    polyak: float = 0.005
    temperature: float = 0.1
    autotune: bool = False
    target_entropy_scale: float = 0.89
    reward_clip: float | None = None
    reward_scale: float = 1.0
    continuing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for h in self.hidden:
            check_positive_int(h, "hidden")
        for name in ("batch_size", "buffer_size", "update_every", "target_every"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.learning_starts, "learning_starts", 0)
        for name, lo, hi in (
            ("gamma", 0.0, 1.0 - 1e-12),
            ("polyak", 1e-12, 1.0),
            ("target_entropy_scale", 0.0, 1.0),
        ):
            v = check_real(getattr(self, name), name)
            if not lo <= v <= hi:
                raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {v}")
        for name in ("q_lr", "policy_lr", "temperature", "reward_scale"):
            v = check_real(getattr(self, name), name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number > 0, got {v}")
        if not isinstance(self.continuing, bool):
            raise TypeError(f"continuing must be a bool, got {self.continuing!r}")
        if self.reward_clip is not None and not check_real(self.reward_clip, "reward_clip") > 0:
            raise ValueError(f"reward_clip must be > 0 or None, got {self.reward_clip}")


@dataclass
class Batch:
    """A replay batch (``B`` transitions; ``d`` the encoded observation size).

    Attributes:
        obs, next_obs: ``[B, d]`` float32; actions: ``[B]`` int64; env_reward: ``[B]`` (the
        environment's reward, hidden from a learner of ``r_x``); terminated: ``[B]`` float32.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    next_obs: torch.Tensor
    env_reward: torch.Tensor
    terminated: torch.Tensor


@dataclass
class Episode:
    """One finished episode: ``obs [T, d]`` (encoded, the states where the actions were taken),
    ``actions [T]``, ``rewards [T]`` (environment reward), ``terminated`` (vs truncated)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool

    def __len__(self) -> int:
        return len(self.actions)


#: ``reward(batch) -> [B]``: the reward the agent maximizes (a learned ``r_x``, or :func:`env_reward`).
RewardFn = Callable[[Batch], torch.Tensor]


def env_reward(batch: Batch) -> torch.Tensor:
    """The environment's own reward ``[B]`` (the true-reward baseline)."""
    return batch.env_reward


class ObsEncoder:
    """Observations as float32 vectors: ``Box`` flattened, ``Discrete`` one-hot.

    Args:
        space: the environment's observation space. Raises ``TypeError`` for any other space.

    Attributes:
        dim: the length of the encoded vector.
        shape: the observation's shape before flattening (``(dim,)`` for one-hot); a shape
            ``(H, W, C)`` makes the networks convolutional (:func:`make_net`).
    """

    def __init__(self, space: gym.Space) -> None:
        if isinstance(space, gym.spaces.Discrete):
            self.dim, self._n = int(space.n), int(space.n)
            self.shape: tuple[int, ...] = (self.dim,)
        elif isinstance(space, gym.spaces.Box):
            self.dim, self._n = int(np.prod(space.shape)), None
            self.shape = tuple(int(k) for k in space.shape)
        else:
            raise TypeError(
                f"observation space must be Box or Discrete, got {type(space).__name__}"
            )

    def __call__(self, obs: object) -> np.ndarray:
        """One observation -> ``[d]`` float32."""
        if self._n is not None:
            out = np.zeros(self.dim, dtype=np.float32)
            out[int(obs)] = 1.0
            return out
        return np.asarray(obs, dtype=np.float32).reshape(-1)


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """``Linear-ReLU`` layers of widths ``hidden``, then a linear layer to ``n_out``."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


class ImageEncoder(nn.Module):
    """A small CNN for image observations stored flat: ``[B, H*W*C]`` (channels last, as
    MinAtar's ``(10, 10, 4)``) to features ``[B, out_dim]``: ``Conv2d(C, channels, 3)``, ReLU,
    flatten (MinAtar's baseline network without its linear layer)."""

    def __init__(self, shape: tuple[int, int, int], channels: int = 16) -> None:
        super().__init__()
        H, W, C = (check_positive_int(k, "shape") for k in shape)
        if H < 3 or W < 3:
            raise ValueError(f"image observations need H, W >= 3, got shape {shape}")
        self.shape = (H, W, C)
        self.conv = nn.Conv2d(C, check_positive_int(channels, "channels"), 3)
        # channels-last weights: the permuted input already has that layout (2x faster on a CPU)
        self.conv.to(memory_format=torch.channels_last)
        self.out_dim = channels * (H - 2) * (W - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H*W*C]`` to ``[B, out_dim]``."""
        img = x.reshape(-1, *self.shape).permute(0, 3, 1, 2)
        return torch.relu(self.conv(img)).flatten(1)


def is_image(shape: tuple[int, ...]) -> bool:
    """Whether observations of ``shape`` are images (``(H, W, C)``, read by a CNN)."""
    return len(shape) == 3


def make_net(shape: tuple[int, ...], hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """The network for observations of ``shape`` (flattened to ``prod(shape)`` inputs): an
    :func:`mlp` for vectors; :class:`ImageEncoder` then the MLP for images ``(H, W, C)``."""
    if not is_image(tuple(shape)):
        return mlp(int(np.prod(shape)), tuple(hidden), n_out)
    enc = ImageEncoder(tuple(shape))
    return nn.Sequential(enc, *mlp(enc.out_dim, tuple(hidden), n_out))


class TwinNet(nn.Module):
    """Two independent networks evaluated as one module, ``forward(x) -> [2, B, n_out]`` (the
    twin soft Q-networks for image observations; :class:`TwinMLP` fuses the vector case)."""

    def __init__(self, nets: list[torch.nn.Module]) -> None:
        super().__init__()
        if len(nets) != 2:
            raise ValueError(f"TwinNet needs two networks, got {len(nets)}")
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both networks: ``x [B, d]`` to ``[2, B, out]``."""
        return torch.stack([net(x) for net in self.nets])


def twin_net(shape: tuple[int, ...], hidden: tuple[int, ...], n_out: int) -> torch.nn.Module:
    """Twin Q-networks for observations of ``shape``: :class:`TwinMLP` for vectors,
    :class:`TwinNet` of two :func:`make_net` for images."""
    if not is_image(tuple(shape)):
        return TwinMLP(int(np.prod(shape)), tuple(hidden), n_out)
    return TwinNet([make_net(shape, hidden, n_out) for _ in range(2)])


class TwinMLP(nn.Module):
    """Two independent MLPs of the same shape evaluated as one (the twin soft Q-networks).

    The weights of layer ``l`` are stacked ``[2, n_in, n_out]`` and applied with one batched
    matrix product, so both networks cost one set of kernels forward and backward (about half
    the per-update overhead of two ``nn.Sequential`` on a CPU). Each half is initialized as
    :func:`mlp` initializes its layers (PyTorch's ``nn.Linear`` default), independently.

    ``forward(x [B, d]) -> [2, B, n_out]``; ``net(x)[k]`` is network ``k``.
    """

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int) -> None:
        super().__init__()
        pair = [mlp(n_in, tuple(hidden), n_out) for _ in range(2)]
        lin = [[m for m in net if isinstance(m, nn.Linear)] for net in pair]
        self._wb: list[tuple[nn.Parameter, nn.Parameter]] = []
        for i, (a, b) in enumerate(zip(*lin, strict=True)):
            w = nn.Parameter(torch.stack([a.weight.detach().T, b.weight.detach().T]).contiguous())
            c = nn.Parameter(torch.stack([a.bias.detach(), b.bias.detach()])[:, None].contiguous())
            self.register_parameter(f"w{i}", w)
            self.register_parameter(f"b{i}", c)
            self._wb.append((w, c))  # plain references: no Module lookups in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both networks at once: ``x [B, d]`` to ``[2, B, out]`` (batched matrix products)."""
        (w, b), *rest = self._wb
        h = torch.baddbmm(b, x.expand(2, *x.shape), w)
        for w, b in rest:
            h = torch.baddbmm(b, torch.relu(h), w)
        return h


class ReplayBuffer:
    """A FIFO replay buffer of ``capacity`` transitions, sampled uniformly with replacement."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.capacity = check_positive_int(capacity, "capacity")
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.n_added = 0

    def __len__(self) -> int:
        return min(self.n_added, self.capacity)

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
            terminated: bool) -> None:  # fmt: skip
        """Append one transition (overwrites the oldest when full)."""
        k = self.n_added % self.capacity
        self.obs[k], self.actions[k], self.rewards[k] = obs, action, reward
        self.next_obs[k], self.terminated[k] = next_obs, float(terminated)
        self.n_added += 1

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        """``n`` transitions drawn uniformly (with replacement)."""
        i = rng.integers(len(self), size=n)
        t = torch.from_numpy
        return Batch(t(self.obs[i]), t(self.actions[i]), t(self.next_obs[i]),
                     t(self.rewards[i]), t(self.terminated[i]))  # fmt: skip


@dataclass
class _Stats:
    global_step: int = 0
    n_updates: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    episode_terminated: list[bool] = field(default_factory=list)  # False: truncated


class DiscreteSAC:
    """Discrete SAC on ``env`` maximizing ``reward`` (module docstring).

    Args:
        env: a gymnasium env with ``Box``/``Discrete`` observations and ``Discrete`` actions.
        reward: :data:`RewardFn` (relabels every sampled batch); :func:`env_reward` for the truth.
        cfg: :class:`SACConfig`. seed: seeds the networks, the actions, the replay sampling and
            the environment (same seed, same numbers on CPU).

    Attributes: ``q, q_target`` (:class:`TwinMLP`, :class:`TwinNet` for images: the twin soft
    Q-networks, ``q(obs)[k]``),
    ``actor``, ``encoder``,
    ``buffer``, ``stats`` (steps, updates, finished episodes' true returns and lengths),
    ``finished`` (the :class:`Episode` records since the last :meth:`drain_episodes`).
    """

    def __init__(self, env: gym.Env, reward: RewardFn, cfg: SACConfig | None = None,
                 seed: int = 0) -> None:  # fmt: skip
        cfg = SACConfig() if cfg is None else cfg
        if not isinstance(cfg, SACConfig):
            raise TypeError(f"cfg must be a SACConfig, got {type(cfg).__name__}")
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(
                f"discrete SAC needs a Discrete action space, got {env.action_space} "
                "(continuous actions: use a continuous SAC)"
            )
        if not callable(reward):
            raise TypeError(f"reward must be callable, got {type(reward).__name__}")
        seed = check_positive_int(seed, "seed", 0)
        self.env, self.reward, self.cfg = env, reward, cfg
        self.encoder = ObsEncoder(env.observation_space)
        self.n_actions = int(env.action_space.n)
        # seeding block: networks, action draws, replay draws, environment
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.rng = np.random.default_rng([seed, 2])
        d, A = self.encoder.dim, self.n_actions
        shape = self.encoder.shape
        self.q = twin_net(shape, cfg.hidden, A)  # the twin soft Q-networks, [2, B, A]
        self.q_target = twin_net(shape, cfg.hidden, A)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.actor = make_net(shape, cfg.hidden, A)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=cfg.q_lr, eps=1e-4, foreach=True)
        self.actor_opt = torch.optim.Adam(
            self.actor.parameters(), lr=cfg.policy_lr, eps=1e-4, foreach=True
        )
        self.log_tau = torch.tensor([math.log(cfg.temperature)], requires_grad=cfg.autotune)
        self.target_entropy = cfg.target_entropy_scale * math.log(A)
        self.tau_opt = torch.optim.Adam([self.log_tau], lr=cfg.q_lr, eps=1e-4)
        self.buffer = ReplayBuffer(cfg.buffer_size, d)
        self.stats, self.finished = _Stats(), []
        raw, _ = env.reset(seed=seed)
        self._obs = self.encoder(raw)
        self._ep_obs, self._ep_act, self._ep_rew = [], [], []

    @property
    def temperature(self) -> float:
        """The current temperature ``tau`` (SAC's alpha)."""
        return float(self.log_tau.detach().exp())

    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, log_probs)`` of the actor, each ``[B, A]``, for ``obs [B, d]``."""
        logits = self.actor(obs)
        return F.softmax(logits, dim=1), F.log_softmax(logits, dim=1)

    def critic_loss(self, b: Batch, next_probs: torch.Tensor, next_logp: torch.Tensor
                    ) -> torch.Tensor:  # fmt: skip
        """Twin soft Bellman regression on batch ``b`` (module docstring, the target ``y``)."""
        with torch.no_grad():
            q_next = self.q_target(b.next_obs).min(dim=0).values
            v_next = (next_probs * (q_next - self.temperature * next_logp)).sum(dim=1)
            r = self.reward(b).reshape(-1).float() * self.cfg.reward_scale
            if self.cfg.reward_clip is not None:
                r = r.clamp(-self.cfg.reward_clip, self.cfg.reward_clip)
            y = r + self.cfg.gamma * (1.0 - b.terminated) * v_next
        q = self.q(b.obs).gather(2, b.actions[None, :, None].expand(2, -1, 1))[:, :, 0]
        return F.mse_loss(q, y.expand(2, -1), reduction="none").mean(dim=1).sum()

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, probs, log_probs)``: ``mean_s sum_a pi(a|s)(tau log pi(a|s) - min_k Q_k(s,a))``."""
        probs, logp = self.policy(obs)
        with torch.no_grad():
            q = self.q(obs).min(dim=0).values
        return (probs * (self.temperature * logp - q)).sum(dim=1).mean(), probs, logp

    def update(self) -> Batch:
        """One gradient step on the critics, the actor and (autotune) the temperature.

        Returns the batch it used (other learners, e.g. the successor critic, reuse it)."""
        b = self.buffer.sample(self.cfg.batch_size, self.rng)
        with torch.no_grad():
            next_probs, next_logp = self.policy(b.next_obs)
        q_loss = self.critic_loss(b, next_probs, next_logp)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        a_loss, probs, logp = self.actor_loss(b.obs)
        self.actor_opt.zero_grad()
        a_loss.backward()
        self.actor_opt.step()
        if self.cfg.autotune:
            entropy_gap = (probs.detach() * (logp.detach() + self.target_entropy)).sum(dim=1)
            t_loss = -(self.log_tau.exp() * entropy_gap).mean()
            self.tau_opt.zero_grad()
            t_loss.backward()
            self.tau_opt.step()
        self.stats.n_updates += 1
        return b

    @torch.no_grad()
    def update_target(self) -> None:
        """Move the target Q-networks ``polyak`` of the way to the online ones."""
        torch._foreach_lerp_(
            list(self.q_target.parameters()), list(self.q.parameters()), self.cfg.polyak
        )

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int:
        """An action drawn from the actor (uniform before ``learning_starts``)."""
        if self.stats.global_step < self.cfg.learning_starts:
            return int(torch.randint(self.n_actions, (1,), generator=self.gen))
        probs, _ = self.policy(torch.from_numpy(obs)[None])
        return int(torch.multinomial(probs[0], 1, generator=self.gen))

    def train(self, n_steps: int, on_update: Callable[[Batch], None] | None = None) -> None:
        """Run ``n_steps`` environment steps, updating every ``update_every`` steps.

        Args:
            n_steps: environment steps. on_update: called with each update's batch.
        """
        cfg = self.cfg
        for _ in range(check_positive_int(n_steps, "n_steps", 0)):
            a = self.act(self._obs)
            raw, rew, term, trunc, _ = self.env.step(a)
            nxt = self.encoder(raw)
            first = self.encoder(self.env.reset()[0]) if term or trunc else None
            if term and cfg.continuing:  # the next episode's first state, not a terminal one
                self.buffer.add(self._obs, a, float(rew), first, False)
            else:
                self.buffer.add(self._obs, a, float(rew), nxt, term)
            self._ep_obs.append(self._obs)
            self._ep_act.append(a)
            self._ep_rew.append(float(rew))
            self.stats.global_step += 1
            if term or trunc:
                ep = Episode(np.stack(self._ep_obs), np.asarray(self._ep_act),
                             np.asarray(self._ep_rew), bool(term))  # fmt: skip
                self.finished.append(ep)
                self.stats.episode_returns.append(float(ep.rewards.sum()))
                self.stats.episode_lengths.append(len(ep))
                self.stats.episode_terminated.append(bool(term))
                self._ep_obs, self._ep_act, self._ep_rew = [], [], []
                nxt = first
            self._obs = nxt
            step = self.stats.global_step
            if step > cfg.learning_starts and step % cfg.update_every == 0:
                b = self.update()
                if on_update is not None:
                    on_update(b)
            if step > cfg.learning_starts and step % cfg.target_every == 0:
                self.update_target()

    def drain_episodes(self) -> list[Episode]:
        """The episodes finished since the last call (and forget them)."""
        out, self.finished = self.finished, []
        return out

    def episode_ends(self, last: int = 20) -> tuple[float, float]:
        """Mean length of the last ``last`` finished episodes, and the fraction of them that
        ended by termination (the rest were truncated at the time limit); NaN if none. On
        LunarLander a stalled agent shows here: long episodes, truncated (it hovers), or short
        ones, terminated (it crashes or lands)."""
        n = self.stats.episode_lengths[-last:]
        ends = self.stats.episode_terminated[-last:]
        if not n:
            return float("nan"), float("nan")
        return float(np.mean(n)), float(np.mean(ends))

    def mean_return(self, last: int = 20) -> float:
        """Mean environment return of the last ``last`` finished episodes (NaN if none)."""
        r = self.stats.episode_returns[-last:]
        return float(np.mean(r)) if r else float("nan")
