"""The neural RLHF loop (chapter 10): discrete SAC on a learned reward, comparisons, the arms.

Per iteration (the authors' ``PreferenceComparisons.train``, imitation style): cut fragment
pairs from the agent's episodes of the last phase (the first phase: ``learning_starts`` random
steps, the authors' initial comparisons from the untrained agent), label them on the hidden true
return, push them into the FIFO, train the reward on the FIFO (loss + the arm's hyper term), then
train the agent ``alternate`` environment steps on the new reward. Comparisons per iteration
follow the hyperbolic schedule ``1 / (1 + t)``, ``t`` in ``[0, 1]``. The arms are those of
chapter 6 (:data:`ARMS`; :mod:`birl_lite.rlhf.reward_model` for the surrogates): B over the
minibatch's windows with the current policy (their code), C and D over the fresh pairs (drawn
from the current policy) with prefix and window, E the loss only with disputed queries.

Metrics, after each iteration: agent steps, comparisons used, the true return (mean environment
return of the last 20 training episodes), the greedy policy's mean true return over
``eval_episodes`` episodes on a separate env, held-out accuracy on pairs from a uniformly random
policy, accuracy on the fresh on-policy pairs before training on them, the temperature, wall time.
The arm ``"true"`` (:data:`BASELINE`) is the same agent on the environment's reward.

The agent's defaults (``_default_sac``), tuned on LunarLander-v3's *true* reward within a CPU
budget (one core, ~150k agent steps; phase 2a of issue 16): CleanRL's discrete SAC with
``hidden=(128, 128)``, ``batch_size=128``, one update every 2 environment steps (CleanRL and the
authors: 4; 2 halves the steps a CPU budget needs), Polyak targets ``0.005`` every step (the
authors' hard copy every 8,000 steps learns too slowly at this budget), Adam ``3e-4``,
``learning_starts=5000`` (random steps: also the untrained agent's episodes the initial comparisons
are cut from), autotuned temperature with the entropy target ``0.7 log |A|`` (0.3 let the
temperature fall to ~0.005 and the lander hovered until truncation for 70k steps; 0.7 is the
setting of pomdp-baselines' SAC-discrete on LunarLander; the authors' 0.89 is for Atari),
``reward_scale=0.1`` and no clamp (LunarLander's landing/crash bonus is +-100: the authors'
clamp to 1 would remove it; the learned reward inherits the true reward's units when the labeller's
temperature is 1, so the same scale serves both).

Command (one JSON file per env, arm, settings and seed, written atomically; resumable; a
finished file with another configuration is an error; a run in progress elsewhere is locked;
progress bars over runs and, one run at a time, over its iterations; ``--workers N`` trains ``N``
runs in parallel on a local Ray instance, ``--address`` joins a Ray cluster, as
``python -m birl_lite.experiments`` does through :func:`birl_lite.experiments.run_on_ray`).
The commands of the committed results and of the sweep: :mod:`birl_lite.rlhf`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from .._validation import check_choice, check_positive_int, check_real
from ..rlhf_tabular import label_pairs
from .reward_model import (
    ContinuationCritic,
    PreferenceDataset,
    RewardNet,
    fragment_starts,
    full_surrogate,
    pair_losses,
    preference_accuracy,
    sample_fragments,
    score_steps,
    select_disputed,
    truncated_surrogate,
)
from .sac import Batch, DiscreteSAC, Episode, ObsEncoder, SACConfig, env_reward

__all__ = [
    "ARMS",
    "BASELINE",
    "LEGACY",
    "RLHFConfig",
    "make_env",
    "query_schedule",
    "random_episodes",
    "rlhf_run",
    "reference_config",
    "run_path",
    "main",
]

#: The arms A-E of chapter 6, in order.
ARMS = ("loss", "truncated", "full", "flipped", "ensemble")
#: The true-reward baseline, the same agent, schedule and budget of agent steps, trained on the
#: environment's own reward (no comparisons, no reward model).
BASELINE = "true"


def _default_sac() -> SACConfig:
    """The agent of the RLHF runs, tuned on LunarLander-v3's true reward (module docstring)."""
    return SACConfig(
        hidden=(128, 128),
        batch_size=128,
        learning_starts=5000,
        update_every=2,
        autotune=True,
        target_entropy_scale=0.7,
        reward_scale=0.1,
        reward_clip=None,
    )


@dataclass(frozen=True)
class RLHFConfig:
    """Settings of one run of :func:`rlhf_run`.

    Attributes:
        env: a gymnasium id (``MinAtar/...`` ids register MinAtar first). arm: one of :data:`ARMS`,
            or :data:`BASELINE` (``"true"``: the agent on the environment's reward).
        steps: agent environment steps in total. alternate: agent steps per iteration (the
            authors: 10,000). budget: comparisons in total; initial_comparisons: of them, labelled
            from the untrained agent (the authors: 600 of 9,000).
        fragment_length: ``L`` (the authors: 25). capacity: FIFO size (the authors: 3,000).
        label_temperature: of the Bernoulli labeller (0: noiseless; the authors: 1).
        terminal_penalty: subtracted from a window's true return when it ends the episode by
            termination (CartPole pays +1 every step: without it every label is a coin flip).
        absorbing: fragments may run into termination, padded with the absorbing state whose
            reward is fixed at 0 (:func:`~birl_lite.rlhf.reward_model.sample_fragments`): this
            identifies the reward's offset, which equal-length windows inside episodes cannot.
            Not the default: on LunarLander-v3 (arm A, 150k steps, seeds 0-2) it reached mean
            true returns 125, -25, -31 against 122, -3, 121 without it (two seeds hovered until
            truncation; a likely cause, not tested: the early episodes end in crashes, so a
            per-step bonus for staying alive fits those labels as well as a crash penalty). The
            baseline arm has no fragments and always records ``False``.
        normalize_reward: the agent sees ``(r_x - m) / s`` instead of ``r_x``, with ``m`` and
            ``s`` the mean and standard deviation of ``r_x`` over 4,096 transitions drawn from
            the replay buffer after each update of the reward model (Christiano et al., 2017,
            normalize the learned reward's scale the same way). Comparisons fix ``r_x`` only up to
            an offset and, with saturated labels, compress its scale; this fixes both for the
            agent (the offset to zero on the states it visits). Accuracies are unchanged (an
            affine map with ``s > 0``). Use with ``sac.reward_scale = 1``. The baseline arm
            always records ``False``. Not the default: on LunarLander-v3 (arm A, 150k steps,
            10 seeds; chapter 10, section 10.4) it was level with ``False`` on the final true
            return (paired -4 +- 54) and lower on the greedy return.
        reward_hidden, reward_lr, reward_batch: the reward net and its Adam(W) optimizer.
        reward_epochs: passes over the FIFO per iteration; initial_epochs: on the initial data.
            (Chosen, not tuned, for LunarLander-v3 with 2,000 comparisons: AdamW ``1e-3`` and 3
            passes reached held-out accuracy ~0.87 by 100k agent steps, seed 0; the authors'
            ``3e-4`` with one pass was not compared at this budget.)
        hyper_delay: agent steps before the hyper term is on (the authors: 1e5).
        hyper_scale: a factor on the hyper term (coefficient ``hyper_scale / tau``).
        max_score_steps: score steps kept per pair for arm C/D (subsampled, reweighted).
        critic_every: agent updates per TD step of arm C/D's continuation critic (its cost).
        n_members, pool_factor: the ensemble of arm E and its candidate pool.
        n_heldout: held-out pairs (uniformly random policy) for the accuracy.
        eval_episodes: episodes of the greedy policy (``argmax`` of the actor) on a separate
            env after each iteration, their mean true return recorded as ``eval_return``
            (0: none); they do not touch the training streams (same seed, same training).
        sac: the agent's :class:`~birl_lite.rlhf.sac.SACConfig`. seed: everything.
    """

    env: str = "CartPole-v1"
    arm: str = "loss"
    steps: int = 20_000
    alternate: int = 2_000
    budget: int = 600
    initial_comparisons: int = 60
    fragment_length: int = 25
    capacity: int = 3_000
    label_temperature: float = 1.0
    terminal_penalty: float = 0.0
    absorbing: bool = False
    normalize_reward: bool = False
    reward_hidden: tuple[int, ...] = (64, 64)
    reward_lr: float = 1e-3
    reward_batch: int = 64
    reward_epochs: int = 3
    initial_epochs: int = 20
    hyper_delay: int = 0
    hyper_scale: float = 1.0
    max_score_steps: int = 256
    critic_every: int = 4
    n_members: int = 3
    pool_factor: int = 4
    n_heldout: int = 500
    eval_episodes: int = 5
    sac: SACConfig = field(default_factory=_default_sac)
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.arm, "arm", (BASELINE, *ARMS))
        if not isinstance(self.env, str):
            raise TypeError(f"env must be a gymnasium id (str), got {type(self.env).__name__}")
        if isinstance(self.sac, dict):
            object.__setattr__(self, "sac", SACConfig(**self.sac))
        if not isinstance(self.sac, SACConfig):
            raise TypeError(f"sac must be a SACConfig, got {type(self.sac).__name__}")
        object.__setattr__(self, "reward_hidden", tuple(self.reward_hidden))
        for name, lo in (("steps", 1), ("alternate", 1), ("budget", 1), ("initial_comparisons", 1),
                         ("fragment_length", 1), ("capacity", 1), ("reward_batch", 1),
                         ("reward_epochs", 1), ("initial_epochs", 1), ("hyper_delay", 0),
                         ("max_score_steps", 1), ("critic_every", 1), ("n_members", 2), ("pool_factor", 1),
                         ("n_heldout", 1), ("eval_episodes", 0), ("seed", 0)):  # fmt: skip
            check_positive_int(getattr(self, name), name, lo)
        for name in ("label_temperature", "terminal_penalty", "reward_lr", "hyper_scale"):
            v = check_real(getattr(self, name), name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        for name in ("absorbing", "normalize_reward"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.arm == BASELINE:  # no learned reward: the settings mean nothing, one name per run
            object.__setattr__(self, "absorbing", LEGACY["absorbing"])
            object.__setattr__(self, "normalize_reward", LEGACY["normalize_reward"])
        if self.steps < self.alternate:
            raise ValueError(f"steps ({self.steps}) must be >= alternate ({self.alternate})")
        if self.budget - self.initial_comparisons < self.n_iter:
            raise ValueError(
                f"budget {self.budget} leaves fewer than one comparison per iteration after "
                f"{self.initial_comparisons} initial ones ({self.n_iter} iterations)"
            )

    @property
    def n_iter(self) -> int:
        """Iterations after the initial one, ``steps // alternate``."""
        return self.steps // self.alternate

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def make_env(env_id: str, seed: int = 0) -> gym.Env:
    """``gym.make(env_id)`` with clear errors: unknown id, non-Discrete actions (``ValueError``);
    a missing extra (box2d for LunarLander, ...) raises gymnasium's ``DependencyNotInstalled``,
    whose message names what to install.

    ``MinAtar/...`` ids register MinAtar's environments first."""
    if env_id.startswith("MinAtar/") and env_id not in gym.registry:
        import minatar.gym

        minatar.gym.register_envs()
    try:
        env = gym.make(env_id)
    except gym.error.DependencyNotInstalled:
        raise
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment {env_id!r}: {exc}") from exc
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError(
            f"{env_id} has action space {env.action_space}: discrete SAC needs Discrete actions"
        )
    ObsEncoder(env.observation_space)  # TypeError for unsupported observations
    env.action_space.seed(seed)
    return env


def query_schedule(total: int, n_iter: int) -> list[int]:
    """Comparisons per iteration ``[n_iter]``: ``total`` shared in proportion to
    ``1 / (1 + t)``, ``t = linspace(0, 1, n_iter)`` (the authors' hyperbolic schedule), rounded
    by largest remainders so that they sum to ``total``."""
    total, n_iter = check_positive_int(total, "total", 0), check_positive_int(n_iter, "n_iter")
    p = 1.0 / (1.0 + np.linspace(0.0, 1.0, n_iter))
    share = p / p.sum() * total
    out = np.floor(share).astype(int)
    out[np.argsort(-(share - out), kind="stable")[: total - out.sum()]] += 1
    return out.tolist()


def random_episodes(env: gym.Env, encoder: ObsEncoder, min_steps: int, rng: np.random.Generator,
                    first_seed: int = 0, min_length: int = 1,
                    max_steps: int | None = None) -> list[Episode]:  # fmt: skip
    """Episodes of the uniformly random policy on ``env`` (resets seeded ``first_seed``,
    ``first_seed + 1``, ...; actions drawn from ``rng``), until they hold ``min_steps`` steps and
    one of them has at least ``min_length``, or more than ``max_steps`` steps in all. Used for the
    held-out pairs of :func:`rlhf_run` and by chapter 10's check of arm B's first update."""
    episodes: list[Episode] = []
    n = 0
    while n < min_steps or not any(len(e) >= min_length for e in episodes):
        raw, _ = env.reset(seed=first_seed + len(episodes))
        obs, act, rew, term, trunc = [], [], [], False, False
        while not (term or trunc):
            a = int(rng.integers(env.action_space.n))
            obs.append(encoder(raw))
            raw, r, term, trunc, _ = env.step(a)
            act.append(a)
            rew.append(float(r))
        episodes.append(Episode(np.stack(obs), np.asarray(act), np.asarray(rew), bool(term)))
        n += len(act)
        if max_steps is not None and n > max_steps:
            break
    return episodes


def _heldout(cfg: RLHFConfig, encoder: ObsEncoder) -> list[tuple]:
    """``n_heldout`` pairs of fragments from a uniformly random policy on a separate env:
    windows inside episodes (the first results' held-out set), then, when ``cfg.absorbing``,
    pairs drawn as the training pairs are (running into termination, padded)."""
    env = make_env(cfg.env, cfg.seed + 10_000)
    rng = np.random.default_rng([cfg.seed, 3])
    need = 4 * cfg.n_heldout * cfg.fragment_length
    episodes = random_episodes(env, encoder, need, rng, first_seed=cfg.seed * 1000,
                               min_length=cfg.fragment_length, max_steps=50 * need)  # fmt: skip
    t = torch.from_numpy
    out = []
    for absorbing in (False, True) if cfg.absorbing else (False,):
        f1, f2 = (
            sample_fragments(
                episodes, cfg.n_heldout, cfg.fragment_length, rng, cfg.terminal_penalty, absorbing
            )
            for _ in range(2)
        )
        out.append(
            (t(f1.obs), t(f1.actions), t(f2.obs), t(f2.actions), f1.true_return - f2.true_return)
        )
    return out[::-1]  # the training distribution first


@torch.no_grad()
def greedy_return(agent: DiscreteSAC, env: gym.Env, n: int, seed: int,
                  max_steps: int = 10_000) -> float | None:  # fmt: skip
    """Mean true return of ``n`` episodes of the greedy policy ``argmax_a pi(a|s)`` on ``env``
    (resets seeded ``seed, seed + 1, ...``; an episode is cut after ``max_steps`` steps, for
    envs without a time limit such as MinAtar's); ``None`` when ``n = 0``."""
    if n == 0:
        return None
    total = 0.0
    for k in range(n):
        raw, _ = env.reset(seed=seed + k)
        done, t = False, 0
        while not done:
            obs = torch.from_numpy(agent.encoder(raw))[None]
            raw, r, term, trunc, _ = env.step(int(agent.actor(obs).argmax()))
            total += float(r)
            t += 1
            done = term or trunc or t >= max_steps
    return total / n


class _MeanReward(torch.nn.Module):
    """The ensemble's mean reward (the agent's reward in arm E)."""

    def __init__(self, members: list[RewardNet]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(obs) for m in self.members]).mean(dim=0)


def _probs_fn(agent: DiscreteSAC):
    @torch.no_grad()
    def probs(obs: torch.Tensor) -> torch.Tensor:
        return agent.policy(obs)[0]

    return probs


def rlhf_run(cfg: RLHFConfig, progress: object = None) -> dict:
    """One run of the neural RLHF loop with the arm of ``cfg`` (module docstring).

    Args:
        cfg: :class:`RLHFConfig`. progress: called as ``progress(iteration, n_iter, curve)``
            after each iteration if given (``curve``: the record's curve so far).

    Returns:
        The record (JSON-ready), with ``config``, ``curve`` (lists, one entry per iteration:
        ``agent_steps``, ``comparisons``, ``true_return`` (mean of the last 20 episodes),
        ``eval_return``, ``heldout_accuracy``, ``onpolicy_accuracy``, ``temperature``,
        ``episode_length`` and ``terminated_fraction`` (of the last 20 episodes; absent from files
        written before they existed), ``wall_time``, and ``heldout_accuracy_inside`` with
        ``absorbing``), ``n_episodes``, ``wall_time``, ``complete``.
    """
    if not isinstance(cfg, RLHFConfig):
        raise TypeError(f"cfg must be an RLHFConfig, got {type(cfg).__name__}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    env = make_env(cfg.env, cfg.seed)
    horizon = env.spec.max_episode_steps if env.spec is not None else None
    if horizon is not None and cfg.fragment_length > horizon:
        raise ValueError(
            f"fragment_length={cfg.fragment_length} is longer than an episode of {cfg.env} "
            f"(at most {horizon} steps)"
        )
    encoder = ObsEncoder(env.observation_space)
    d, A, L = encoder.dim, int(env.action_space.n), cfg.fragment_length
    baseline = cfg.arm == BASELINE
    held = None if baseline else _heldout(cfg, encoder)
    ensemble = cfg.arm == "ensemble"
    torch.manual_seed(cfg.seed + 20_000)
    members = [
        RewardNet(d, A, cfg.reward_hidden, obs_shape=encoder.shape)
        for _ in range(cfg.n_members if ensemble else 1)
    ]
    reward = _MeanReward(members) if ensemble else members[0]
    opts = [torch.optim.AdamW(m.parameters(), lr=cfg.reward_lr) for m in members]

    shift_scale = [0.0, 1.0]  # the agent sees (r_x - shift) / scale (normalize_reward)

    @torch.no_grad()
    def learned_reward(b: Batch) -> torch.Tensor:  # r_x(s, a) of each transition, [B]
        return reward(b.obs).gather(1, b.actions[:, None])[:, 0]

    def agent_reward(b: Batch) -> torch.Tensor:
        return (learned_reward(b) - shift_scale[0]) / shift_scale[1]

    norm_rng = np.random.default_rng([cfg.seed, 3])

    def normalize() -> None:
        if cfg.normalize_reward and len(agent.buffer):
            r = learned_reward(agent.buffer.sample(4096, norm_rng)).double()
            shift_scale[:] = [float(r.mean()), max(float(r.std()), 1e-8)]

    agent = DiscreteSAC(env, env_reward if baseline else agent_reward, cfg.sac, seed=cfg.seed)
    probs = _probs_fn(agent)
    critic = None
    if cfg.arm in ("full", "flipped"):
        torch.manual_seed(cfg.seed + 30_000)
        k = members[0].feat_dim + 1
        critic = ContinuationCritic(d, A, k, cfg.sac.hidden, cfg.sac.gamma, lr=1e-3, polyak=0.02,
                                    obs_shape=encoder.shape)  # fmt: skip

        def train_critic(b: Batch) -> None:
            if agent.stats.n_updates % cfg.critic_every:
                return
            with torch.no_grad():
                nf = members[0].head_features(b.next_obs)
            critic.update(b.obs, b.actions, b.next_obs, b.terminated, probs(b.next_obs), nf)

    rng = np.random.default_rng([cfg.seed, 1])
    data = PreferenceDataset(cfg.capacity, L, d, len(members))
    schedule = [cfg.initial_comparisons] + query_schedule(
        cfg.budget - cfg.initial_comparisons, cfg.n_iter
    )
    keys = ("agent_steps", "comparisons", "true_return", "eval_return", "heldout_accuracy",
            "onpolicy_accuracy", "temperature", "episode_length", "terminated_fraction",
            "wall_time")  # fmt: skip
    if cfg.absorbing and not baseline:
        keys += ("heldout_accuracy_inside",)
    eval_env = make_env(cfg.env, cfg.seed + 40_000) if cfg.eval_episodes else None
    curve: dict[str, list] = {k: [] for k in keys}
    used = 0
    agent.train(cfg.sac.learning_starts)  # the untrained agent's episodes: initial comparisons
    for it, n_new in enumerate(schedule):
        if baseline:  # the true-reward baseline: no comparisons, no reward model
            agent.drain_episodes()
            on_acc, n_new = None, 0
        else:
            episodes = agent.drain_episodes()
            # rare: collect until an episode offers a fragment
            while not any(fragment_starts(e, L, cfg.absorbing) for e in episodes):
                if agent.stats.global_step > cfg.steps + 100 * L + cfg.sac.learning_starts:
                    raise ValueError(f"no episode of {cfg.env} reaches fragment_length={L}")
                agent.train(L)
                episodes += agent.drain_episodes()
            if ensemble and it > 0:
                c1 = sample_fragments(
                    episodes, cfg.pool_factor * n_new, L, rng, cfg.terminal_penalty, cfg.absorbing
                )
                c2 = sample_fragments(
                    episodes, cfg.pool_factor * n_new, L, rng, cfg.terminal_penalty, cfg.absorbing
                )
                t = torch.from_numpy
                pick = select_disputed(
                    members, t(c1.obs), t(c1.actions), t(c2.obs), t(c2.actions), n_new
                )
                f1, f2 = c1[pick], c2[pick]
            else:
                f1 = sample_fragments(episodes, n_new, L, rng, cfg.terminal_penalty, cfg.absorbing)
                f2 = sample_fragments(episodes, n_new, L, rng, cfg.terminal_penalty, cfg.absorbing)
            fresh = [torch.from_numpy(a) for a in (f1.obs, f1.actions, f2.obs, f2.actions)]
            on_acc = preference_accuracy(reward, *fresh, f1.true_return - f2.true_return)
            y = label_pairs(f1.true_return, f2.true_return, cfg.label_temperature, rng)
            w = (
                rng.poisson(1.0, size=(n_new, len(members))).astype(np.float32)
                if ensemble
                else None
            )
            data.push(f1, f2, y, w)
            used += n_new
            hyper = (
                cfg.arm in ("truncated", "full", "flipped")
                and agent.stats.global_step > cfg.hyper_delay
            )
            coef = cfg.hyper_scale / agent.temperature * (-1.0 if cfg.arm == "flipped" else 1.0)
            steps = None
            if hyper and cfg.arm != "truncated":
                steps = score_steps(episodes, f1, f2, probs, critic, rng, cfg.max_score_steps)
                y_fresh = torch.as_tensor(y, dtype=torch.float32)
            epochs = cfg.initial_epochs if it == 0 else cfg.reward_epochs
            for _ in range(epochs):
                order = rng.permutation(len(data))
                for lo in range(0, len(order), cfg.reward_batch):
                    o1, a1, o2, a2, yb, wb = data.tensors(order[lo : lo + cfg.reward_batch])
                    for j, (net, opt) in enumerate(zip(members, opts, strict=True)):
                        losses = pair_losses(net, o1, a1, o2, a2, yb)
                        loss = (losses * wb[:, j]).sum() / wb[:, j].sum().clamp_min(1e-8)
                        if hyper and cfg.arm == "truncated":
                            obs_w, act_w = torch.cat([o1, o2], dim=1), torch.cat([a1, a2], dim=1)
                            p = probs(obs_w.reshape(-1, d)).reshape(*act_w.shape, A)
                            loss = loss + truncated_surrogate(net, obs_w, act_w, p, losses, coef)
                        elif steps is not None:
                            l_fresh = pair_losses(net, *fresh, y_fresh)
                            loss = loss + full_surrogate(net, steps, l_fresh, coef)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
        if not baseline:
            normalize()
        if it < len(schedule) - 1:
            agent.train(cfg.alternate, train_critic if critic is not None else None)
        mean_ret = agent.mean_return(20)
        held_acc = [] if baseline else [preference_accuracy(reward, *h) for h in held]
        ev = greedy_return(agent, eval_env, cfg.eval_episodes, 1_000_000 * (cfg.seed + 1))
        values = (agent.stats.global_step, used, mean_ret, ev, held_acc[0] if held_acc else None,
                  on_acc, agent.temperature, *agent.episode_ends(20), time.perf_counter() - t0,
                  *held_acc[1:])  # fmt: skip
        for k_, v in zip(keys, values, strict=True):
            curve[k_].append(None if isinstance(v, float) and not math.isfinite(v) else v)
        if progress is not None:
            progress(it, len(schedule), curve)
    return {
        "complete": True,
        "config": cfg.to_dict(),
        "curve": curve,
        "n_episodes": len(agent.stats.episode_returns),
        "wall_time": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


#: The values that reproduce the behaviour from before a field existed. A results file written
#: without the field was run with this value (``absorbing`` False, fragments inside episodes),
#: whatever the field's default.
LEGACY = {"absorbing": False, "normalize_reward": False}


def reference_config() -> dict:
    """The settings a results file is compared with where it lacks a field, and that file names
    leave out: :class:`RLHFConfig`'s defaults with :data:`LEGACY`'s values (so the first results
    files keep their names and stay valid, and a run with ``absorbing`` is named so)."""
    return {**RLHFConfig().to_dict(), **LEGACY}


def run_path(out: Path, cfg: RLHFConfig) -> Path:
    """``<out>/<env>__<arm>__steps<N>__budget<B>[__<other settings>]__seed<s>.json``, the other
    settings being those that differ from :func:`reference_config` (``/`` in an env id becomes
    ``-``)."""
    default, mine = reference_config(), cfg.to_dict()
    named = ("env", "arm", "steps", "budget", "seed", "sac")
    extra = "".join(
        f"__{k}={mine[k]}" for k in mine if k not in named and mine[k] != default[k]
    ).replace(" ", "")
    extra += "".join(
        f"__sac.{k}={v}" for k, v in mine["sac"].items() if v != default["sac"][k]
    ).replace(" ", "")
    name = cfg.env.replace("/", "-")
    return (
        Path(out)
        / f"{name}__{cfg.arm}__steps{cfg.steps}__budget{cfg.budget}{extra}__seed{cfg.seed}.json"
    )


def _pairs(items: list[str], cls: type) -> dict:
    """``["key=value", ...]`` -> a dict of ``cls``'s fields (values parsed as JSON when they
    parse, else kept as strings); an unknown key is a ``ValueError``."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _run_claimed(path: Path, cfg: RLHFConfig, progress: object = None) -> str:
    """Run ``cfg`` into ``path`` unless finished ("skipped") or claimed elsewhere ("locked");
    a finished file with another configuration raises ``ValueError`` (a field missing from an
    older file counts as its :func:`reference_config` value). ``progress``: as in
    :func:`rlhf_run`."""
    from ..experiments import run_claimed_file

    return run_claimed_file(
        path, cfg.to_dict(), reference_config(), lambda: rlhf_run(cfg, progress)
    )


def _run_job(job: tuple[Path, RLHFConfig]) -> tuple[Path, str]:
    """``(path, status)`` of :func:`_run_claimed` on ``job = (path, cfg)``: the unit of work of
    a parallel command."""
    return job[0], _run_claimed(*job)


def main(argv: list[str] | None = None) -> dict[str, int]:
    """CLI: envs x arms x seeds, one results file per run (resumable)."""
    p = argparse.ArgumentParser(
        prog="python -m birl_lite.rlhf",
        description="Neural RLHF with discrete SAC: the arms of chapter 6",
    )
    p.add_argument("--envs", nargs="+", default=["CartPole-v1"])
    p.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        choices=(BASELINE, *ARMS),
        help=f"{BASELINE!r}: the true-reward baseline",
    )
    p.add_argument("--seeds", nargs="+", default=["0"], help="e.g. 0-9 or 0 3 5")
    p.add_argument("--steps", type=int, default=RLHFConfig.steps)
    p.add_argument("--alternate", type=int, default=RLHFConfig.alternate)
    p.add_argument("--budget", type=int, default=RLHFConfig.budget)
    p.add_argument("--initial-comparisons", type=int, default=RLHFConfig.initial_comparisons)
    p.add_argument("--fragment-length", type=int, default=RLHFConfig.fragment_length)
    p.add_argument("--terminal-penalty", type=float, default=RLHFConfig.terminal_penalty)
    p.add_argument("--hyper-delay", type=int, default=RLHFConfig.hyper_delay)
    p.add_argument("--hyper-scale", type=float, default=RLHFConfig.hyper_scale)
    p.add_argument("--n-heldout", type=int, default=RLHFConfig.n_heldout)
    p.add_argument("--learning-starts", type=int, default=_default_sac().learning_starts)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="other RLHFConfig settings, e.g. reward_epochs=3 (values as JSON)",
    )
    p.add_argument(
        "--sac",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="SACConfig settings, e.g. update_every=2 hidden=[128,128] (JSON values)",
    )
    p.add_argument("--out", type=Path, default=Path("results/rlhf"))
    from ..experiments import _check_writable, add_parallel_arguments, parse_seeds

    add_parallel_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, no line per run")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _check_writable(args.out)
    sac = dataclasses.replace(
        _default_sac(), **{"learning_starts": args.learning_starts, **_pairs(args.sac, SACConfig)}
    )
    extra = _pairs(args.set, RLHFConfig)
    plan = [
        RLHFConfig(
            env=e,
            arm=a,
            steps=args.steps,
            alternate=args.alternate,
            budget=args.budget,
            initial_comparisons=args.initial_comparisons,
            fragment_length=args.fragment_length,
            terminal_penalty=args.terminal_penalty,
            hyper_delay=args.hyper_delay,
            hyper_scale=args.hyper_scale,
            n_heldout=args.n_heldout,
            sac=sac,
            seed=s,
            **extra,
        )  # fmt: skip
        for e in args.envs
        for a in args.arms
        for s in parse_seeds(args.seeds)
    ]
    for e in args.envs:
        make_env(e).close()  # fail on an unknown env before any training
    return _execute(plan, args.out.absolute(), args.workers, args.address,
                    progress=not (args.quiet or args.no_progress), verbose=not args.quiet)  # fmt: skip


def _execute(plan: list[RLHFConfig], out: Path, workers: int, address: str | None,
             progress: bool, verbose: bool) -> dict[str, int]:  # fmt: skip
    """Train every run of ``plan`` without a finished file, one after the other (progress bars
    over runs and over the iterations of the current run) or on Ray
    (:func:`birl_lite.experiments.run_on_ray`, one CPU a run; a bar over runs)."""
    from tqdm.auto import tqdm

    from ..experiments import is_finished_file, run_on_ray

    counts = {"run": 0, "skipped": 0, "locked": 0}
    jobs = [(run_path(out, cfg), cfg) for cfg in plan]
    bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress, position=0)

    def done(status: str, path: Path) -> None:
        counts[status] += 1
        bar.update(1)
        if verbose:
            bar.write(f"[{sum(counts.values())}/{len(jobs)}] {status:7s} {path.name}")

    try:
        if workers == 1 and address is None:
            for path, cfg in jobs:
                inner = tqdm(total=cfg.n_iter + 1, desc=f"{cfg.env} {cfg.arm} seed {cfg.seed}",
                             unit="it", leave=False, disable=not progress, position=1)  # fmt: skip
                try:
                    status = _run_claimed(path, cfg, lambda *_, b=inner: b.update(1))
                finally:
                    inner.close()
                done(status, path)
        else:
            todo = []
            for path, cfg in jobs:  # finished runs need no Ray task (nor Ray, when all are)
                if is_finished_file(path, cfg.to_dict(), reference_config()):
                    done("skipped", path)
                else:
                    todo.append((path, cfg))
            if todo:
                for path, status in run_on_ray(_run_job, todo, workers, address):
                    done(status, path)
    finally:
        bar.close()
    print(f"done: {counts}")
    return counts
