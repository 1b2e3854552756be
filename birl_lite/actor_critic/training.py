"""The training loop shared by ``ppo``, ``ppo-nested``, ``blpo-cg`` and ``blpo-nystrom``.

Pseudo-code::

    seed torch, numpy and the envs; build the actor, the critic, two Adam optimizers
    for each rollout:
        collect num_steps vector steps with the actor                  (rollout.RolloutCollector)
        V(s_t), V(s'_t), log pi_old(a_t|s_t) in one batched pass; GAE; targets G_t = A_t + V(s_t)
        (minibatch "chunks" / "transitions": cut the segments into pieces, split_segments)
        for each epoch, for each minibatch of whole segments (or chunks, or transitions):
            ppo_update (ppo)  or  blpo_update (ppo-nested, blpo-cg, blpo-nystrom)
        record the learning curve (env steps, returns of the episodes completed, wall time)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from .._threads import blas_threads
from .blpo import blpo_update
from .blpo_numpy import blpo_update_numpy
from .config import ACConfig
from .networks import Actor, Critic
from .ppo import ppo_update
from .rollout import Rollout, RolloutCollector, discount_matrix, gae, make_vector_env, to_torch

__all__ = [
    "TrainResult",
    "TrainState",
    "final_return",
    "minibatch",
    "prepare_batch",
    "split_segments",
    "train",
]


@dataclass
class TrainState:
    """Networks, optimizers and the generators of one run."""

    actor: Actor
    critic: Critic
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    actor_params: list[torch.Tensor]
    critic_params: list[torch.Tensor]
    gen: torch.Generator


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        config: the :class:`~birl_lite.actor_critic.config.ACConfig` of the run.
        episode_steps, episode_returns, episode_lengths, episode_wall: every completed training
            episode (env steps at its end, raw undiscounted return, length, seconds since start).
        curve_steps, curve_wall: env steps and seconds at the end of each rollout update.
        curve_return: mean return of the last 20 completed episodes at that point (NaN before
            the first episode ends).
        diagnostics: per rollout update, the mean over its minibatch updates of every number the
            update returns (e.g. ``correction_ratio``, ``correction_cos`` for ``blpo-*``).
        wall_time: total seconds. cpu_time: the CPU seconds the process used meanwhile (all its
            threads: ``time.process_time``), which, unlike the wall time, does not count the
            time the run waited for a busy core or was paused. state: the trained
            :class:`TrainState`.
    """

    config: ACConfig
    episode_steps: list[int]
    episode_returns: list[float]
    episode_lengths: list[int]
    episode_wall: list[float]
    curve_steps: list[int] = field(default_factory=list)
    curve_return: list[float] = field(default_factory=list)
    curve_wall: list[float] = field(default_factory=list)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    wall_time: float = 0.0
    cpu_time: float = 0.0
    state: TrainState | None = None

    @property
    def final_return(self) -> float:
        """Mean return of the last 20 training episodes (NaN if none finished)."""
        return final_return(self.episode_returns)


def final_return(returns: list[float], n: int = 20) -> float:
    """Mean of the last ``n`` entries of ``returns`` (NaN if empty)."""
    return float(np.mean(returns[-n:])) if len(returns) else float("nan")


def _build(cfg: ACConfig, envs: gym.vector.SyncVectorEnv) -> TrainState:
    gen = torch.Generator().manual_seed(cfg.seed)
    obs_dim = envs.single_observation_space.shape[0]
    space = envs.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    act_dim = int(space.n) if discrete else int(space.shape[0])
    actor = Actor(obs_dim, act_dim, discrete, cfg.hidden, gen, cfg.log_std_init)
    critic = Critic(obs_dim, cfg.hidden, gen)
    actor_params = list(actor.parameters())
    critic_params = list(critic.parameters())
    return TrainState(
        actor,
        critic,
        torch.optim.Adam(actor_params, lr=cfg.actor_lr, eps=1e-5, fused=True),
        torch.optim.Adam(critic_params, lr=cfg.critic_lr, eps=1e-5, fused=True),
        actor_params,
        critic_params,
        gen,
    )


def prepare_batch(
    state: TrainState, ro: Rollout, cfg: ACConfig, *, matrices: bool = True
) -> dict[str, torch.Tensor]:
    """A rollout as tensors ``[T, E, ...]`` plus what every update needs: ``old_logp``, GAE
    advantages ``adv`` from the current critic, targets ``returns = adv + V(s_t)`` (fixed for the
    rollout), the values ``values = V(s_t)`` and, if ``matrices``, the ``[E, T, T]`` ``gae_matrix`` and ``causal_matrix`` of
    :func:`~birl_lite.actor_critic.rollout.discount_matrix`."""
    batch = to_torch(ro)
    with torch.no_grad():
        values = state.critic(batch["obs"])
        next_values = state.critic(batch["next_obs"])
        batch["old_logp"] = state.actor.log_prob(batch["obs"], batch["actions"])
    adv = gae(
        ro.rewards,
        values.numpy(),
        next_values.numpy(),
        ro.terminated,
        ro.dones,
        cfg.gamma,
        cfg.gae_lambda,
    )
    batch["adv"] = torch.from_numpy(adv)
    batch["returns"] = batch["adv"] + values
    batch["values"] = values  # V_old(s_t), for PPO's value clipping
    if matrices:
        batch["gae_matrix"] = torch.from_numpy(
            discount_matrix(ro.dones, cfg.gamma * cfg.gae_lambda)
        )
        batch["causal_matrix"] = torch.from_numpy(discount_matrix(ro.dones, 1.0, strict=True))
    return batch


def split_segments(
    batch: dict[str, torch.Tensor], length: int, cfg: ACConfig, *, matrices: bool = True
) -> dict[str, torch.Tensor]:
    """Cut every env segment of a prepared batch (no matrices yet) into contiguous pieces of
    ``length`` steps, which become the segments minibatches are drawn from (chapter 9: the
    minibatches of the continuous-control preset, ``ACConfig.minibatch``).

    Piece ``j`` of env ``e`` becomes pseudo-env ``j * E + e``: ``[T, E, ...]`` tensors become
    ``[length, (T / length) * E, ...]``. With ``matrices``, adds the ``[E', length, length]``
    ``gae_matrix`` and ``causal_matrix`` of the pieces (sums stop at a piece's end) and
    ``gae_tail [length, E']``: the rollout's GAE advantage at the first step after the piece,
    discounted by ``(gamma lambda)^(length - t)`` where the episode runs on, so that GAE within
    the piece plus ``gae_tail`` is the rollout's advantage ``adv`` (up to float rounding); the
    nested algorithms differentiate the first part only. ``length = 1`` gives single transitions.

    Args:
        batch: from :func:`prepare_batch` with ``matrices=False``.
        length: piece length, a divisor of ``T``.
        cfg: gives ``gamma`` and ``gae_lambda``.
        matrices: whether to add the matrices and ``gae_tail`` (the nested algorithms need them).

    Returns:
        the new batch dict (the input is not modified).
    """
    if "gae_matrix" in batch:
        raise ValueError("batch must come from prepare_batch(..., matrices=False)")
    T, E = batch["rewards"].shape
    if isinstance(length, bool) or not isinstance(length, int) or length < 1 or T % length:
        raise ValueError(f"length must be a divisor of T = {T}, got {length!r}")
    k = T // length
    out = {}
    for key, v in batch.items():
        rest = v.shape[2:]
        out[key] = v.reshape(k, length, E, *rest).transpose(0, 1).reshape(length, k * E, *rest)
    if matrices:
        dones = out["dones"].numpy()
        factor = cfg.gamma * cfg.gae_lambda
        gae_m = discount_matrix(dones, factor)
        out["gae_matrix"] = torch.from_numpy(gae_m)
        out["causal_matrix"] = torch.from_numpy(discount_matrix(dones, 1.0, strict=True))
        # the advantage at the first step of the next piece of the same env (0 after the last)
        nxt = torch.cat([out["adv"][0, E:], torch.zeros(E, dtype=out["adv"].dtype)])
        reach = torch.from_numpy(gae_m[:, :, -1]).T * (1.0 - out["dones"][-1])  # [length, E']
        out["gae_tail"] = (factor * reach * nxt).to(out["adv"].dtype)
    return out


def minibatch(batch: dict[str, torch.Tensor], envs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The whole segments of the envs ``envs`` (indices): ``[T, m, ...]`` tensors, ``[m, T, T]``
    matrices."""
    return {k: (v[envs] if k.endswith("matrix") else v[:, envs]) for k, v in batch.items()}


#: The nested algorithms' minibatch update per :attr:`ACConfig.backend`.
_UPDATES = {"torch": blpo_update, "numpy": blpo_update_numpy}


def train(
    cfg: ACConfig,
    *,
    callback: Callable[[int, TrainResult], None] | None = None,
    threads: int | None = 1,
    update: Callable[[TrainState, dict, ACConfig], dict] | None = None,
) -> TrainResult:
    """Train ``cfg.algo`` on ``cfg.env_id`` for ``cfg.total_steps`` env steps.

    Deterministic on CPU for a fixed ``cfg.seed`` (torch, numpy and the envs are seeded; one
    torch thread by default).

    Args:
        cfg: the hyperparameters.
        callback: called after every rollout update as ``callback(env_steps, result_so_far)``.
        threads: ``torch.set_num_threads`` for the run (``None``: leave as is), and for
            ``backend="numpy"`` numpy's BLAS threads too; the previous thread counts are
            restored afterwards, and torch's global random state too (the run
            seeds a forked generator).
        update: a minibatch update ``update(state, minibatch, cfg)`` to use instead of the one
            ``cfg.algo`` selects (for variants such as the benchmark's hand-derived PPO); it
            gets the same minibatches, with the GAE matrices unless ``cfg.algo == "ppo"``.

    Returns:
        :class:`TrainResult`.
    """
    if not isinstance(cfg, ACConfig):
        raise TypeError(f"cfg must be an ACConfig, got {type(cfg).__name__}")
    if update is not None and not callable(update):
        raise TypeError(f"update must be callable, got {type(update).__name__}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        # seed a private copy of torch's global generator: the caller's random state is untouched
        with torch.random.fork_rng(devices=[]), _blas_threads(cfg, threads):
            torch.manual_seed(cfg.seed)
            return _train_seeded(cfg, callback, update)
    finally:
        torch.set_num_threads(previous_threads)


def _blas_threads(cfg: ACConfig, threads: int | None) -> contextlib.AbstractContextManager:
    """For ``backend="numpy"``, numpy's BLAS limited to ``threads`` for the run (as torch's
    thread count; restored afterwards); otherwise nothing."""
    if cfg.backend != "numpy" or threads is None:
        return contextlib.nullcontext()
    return blas_threads(threads)


def _train_seeded(
    cfg: ACConfig,
    callback: Callable[[int, TrainResult], None] | None,
    update: Callable[[TrainState, dict, ACConfig], dict] | None,
) -> TrainResult:
    """The body of :func:`train`, run with torch's generator seeded by ``cfg.seed``."""
    envs = make_vector_env(cfg.env_id, cfg.num_envs)
    try:
        envs.action_space.seed(cfg.seed)
        state = _build(cfg, envs)
        collector = RolloutCollector(
            envs,
            state.actor,
            seed=cfg.seed,
            gamma=cfg.gamma,
            normalize_obs=cfg.normalize_obs,
            normalize_reward=cfg.normalize_reward,
            clip_reward=cfg.clip_reward,
        )
        log = collector.episodes
        result = TrainResult(cfg, log.steps, log.returns, log.lengths, log.wall, state=state)
        if update is None:
            update = _UPDATES[cfg.backend] if cfg.algo != "ppo" else ppo_update
        nested = cfg.algo != "ppo"
        T = cfg.num_steps
        pieces = cfg.batch_size // cfg.segment_length  # segments minibatches are drawn from
        per_mb = pieces // cfg.num_minibatches
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        collector.t0 = t0
        for it in range(cfg.num_updates):
            if cfg.anneal_lr:
                frac = 1.0 - it / cfg.num_updates
                state.actor_opt.param_groups[0]["lr"] = frac * cfg.actor_lr
                state.critic_opt.param_groups[0]["lr"] = frac * cfg.critic_lr
            ro = collector.collect(T)
            if cfg.minibatch == "segments":
                batch = prepare_batch(state, ro, cfg, matrices=nested)
            else:
                batch = prepare_batch(state, ro, cfg, matrices=False)
                batch = split_segments(batch, cfg.segment_length, cfg, matrices=nested)
            sums: dict[str, float] = {}
            for _ in range(cfg.update_epochs):
                perm = torch.randperm(pieces, generator=state.gen)
                for j in range(cfg.num_minibatches):
                    info = update(state, minibatch(batch, perm[j * per_mb : (j + 1) * per_mb]), cfg)
                    for key, value in (info or {}).items():
                        sums[key] = sums.get(key, 0.0) + float(value)
            n_updates = cfg.update_epochs * cfg.num_minibatches
            for key, total in sums.items():
                result.diagnostics.setdefault(key, []).append(total / n_updates)
            result.curve_steps.append(collector.global_step)
            result.curve_return.append(final_return(log.returns))
            result.curve_wall.append(time.perf_counter() - t0)
            if callback is not None:
                callback(collector.global_step, result)
        result.wall_time = time.perf_counter() - t0
        result.cpu_time = time.process_time() - cpu0
        return result
    finally:
        envs.close()
