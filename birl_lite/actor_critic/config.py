"""Hyperparameters of the actor-critic algorithms of chapters 8-9 (PPO, PPO-nested, BLPO).

The defaults are the published BLPO settings for discrete control (Prakash et al., 2026; chapter 8,
section 8.1, and chapter 9, section 9.1): 4 envs x 128 steps, 4 epochs, gamma 0.99, lambda 0.95,
clip 0.2, actor lr 2.5e-4, critic lr 1e-3, 3 nested critic steps, Nystrom rank 5, damping 50,
correction norm bound 1.0, no entropy bonus, separate 64-64 tanh actor and critic.
:data:`ENV_PRESETS` overrides a few of them per environment (Pendulum-v1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import gymnasium as gym

from .._validation import check_choice

__all__ = [
    "ALGOS",
    "AUTHORS_PRESET",
    "ENV_PRESETS",
    "MIXED_TERMS",
    "NYSTROM_INDICES",
    "PRESETS",
    "ACConfig",
    "make_config",
]

#: The four algorithms sharing one rollout / GAE / evaluation code path.
#:
#: * ``ppo``: one joint actor and critic step per minibatch, advantages from the rollout critic.
#: * ``ppo-nested``: ``critic_steps`` critic steps, then one actor step whose GAE advantages are
#:   recomputed from the updated critic (nesting alone: the critic's approximate best response).
#: * ``blpo-cg`` / ``blpo-nystrom``: ``ppo-nested`` plus the implicit correction of the
#:   hypergradient (chapter 8, equation (eq-ac-hypergradient)), its iHVP by conjugate gradient
#:   or by Nystrom.
ALGOS = ("ppo", "ppo-nested", "blpo-cg", "blpo-nystrom")

#: Estimators of BLPO's mixed term (:attr:`ACConfig.mixed_term`): the book's (chapter 8,
#: equation (eq-ac-mixed)) and the one of the authors' public code.
MIXED_TERMS = ("book", "authors")

#: Nystrom column indices (:attr:`ACConfig.nystrom_indices`): drawn afresh at every update, or
#: drawn once per run (the authors' code).
NYSTROM_INDICES = ("fresh", "fixed")

#: Named settings (:attr:`ACConfig.preset`): ``"book"`` (the defaults) or ``"authors"``.
PRESETS = ("book", "authors")

_AUTHORS_COMMON = {"anneal_lr": False, "clip_grad": False}

#: The settings of the BLPO authors' discrete-action code (their ``main.py`` and the
#: ``Stackelberg_RL/discrete`` and ``Baselines/PJax_PPO.py`` modules) that differ from the book's
#: defaults, per algorithm: no learning-rate annealing ("Always False!") and no gradient-norm clip
#: (their optimizers are plain Adam) for all; no advantage normalisation for the nested
#: algorithms; for ``blpo-cg`` 20 CG iterations without damping (``--lam`` 0); for ``ppo`` (their
#: PureJaxRL baseline) value clipping with the policy's clip range and one Adam at 2.5e-4 for a
#: joint actor-critic module, whose actor and critic are separate towers, so that with no
#: gradient clip it is the book's two Adam optimizers with ``critic_lr = 2.5e-4`` (Adam is
#: invariant to their value-loss coefficient up to its ``eps``). Not reproduced: their PPO's
#: minibatches of shuffled single transitions (here, whole env segments for every algorithm) and
#: the ``+ I`` in their Nystrom core (chapter 7). The estimator of their code is a separate
#: choice: ``mixed_term="authors"``, ``nystrom_indices="fixed"``.
AUTHORS_PRESET: dict[str, dict] = {
    "ppo": {**_AUTHORS_COMMON, "critic_lr": 2.5e-4, "clip_vloss": True},
    "ppo-nested": {**_AUTHORS_COMMON, "norm_adv": False},
    "blpo-cg": {**_AUTHORS_COMMON, "norm_adv": False, "cg_iters": 20, "cg_damping": 0.0},
    "blpo-nystrom": {**_AUTHORS_COMMON, "norm_adv": False},
}

#: Per-environment overrides of the defaults (applied by :func:`make_config` when the field is
#: not given explicitly). Pendulum-v1 needs a shorter horizon (gamma 0.9), longer rollouts, more
#: epochs and normalized observations/rewards to learn within a few hundred thousand steps
#: (the rl-baselines3-zoo PPO settings for Pendulum, without gSDE).
ENV_PRESETS: dict[str, dict] = {
    "Pendulum-v1": {
        "num_steps": 512,
        "gamma": 0.9,
        "update_epochs": 10,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "normalize_obs": True,
        "normalize_reward": True,
        "anneal_lr": True,
    },
}


@dataclass(frozen=True)
class ACConfig:
    """All hyperparameters of one training run (documented defaults; see the module docstring).

    Attributes:
        algo: one of :data:`ALGOS`.
        env_id: a registered gymnasium id with a ``Discrete`` or ``Box`` action space and a
            ``Box`` observation space (CartPole-v1, Acrobot-v1, Pendulum-v1, ...).
        total_steps: environment steps (summed over the vector envs) to train for.
        seed: seeds torch, numpy and the envs (env ``i`` gets ``seed + i``).
        num_envs: parallel envs in the ``SyncVectorEnv`` (same-step autoreset).
        num_steps: steps per env per rollout; a rollout has ``num_envs * num_steps`` transitions.
        update_epochs: passes over each rollout.
        num_minibatches: minibatches per epoch; each is ``num_envs / num_minibatches`` whole
            env segments of ``num_steps`` contiguous steps (GAE runs along a trajectory, so BLPO
            needs whole segments; every algorithm uses the same minibatches).
        gamma: discount. gae_lambda: GAE lambda.
        clip_coef: PPO clipping epsilon.
        actor_lr, critic_lr: Adam learning rates (separate optimizers).
        anneal_lr: linearly decay both learning rates to 0 over training (CleanRL's default).
        critic_steps: nested critic steps per minibatch before the actor step (``ppo-nested``,
            ``blpo-*``); ``ppo`` always takes one joint step.
        norm_adv: standardize advantages per minibatch (inside the differentiable path for BLPO).
        ent_coef: entropy bonus (0: none, as BLPO).
        max_grad_norm: global gradient-norm clipping of each network's step.
        clip_grad: clip the gradient norm to ``max_grad_norm`` (``False``: no clipping, as the
            authors' code).
        clip_vloss: PPO's value clipping (``ppo`` only): the critic loss is
            ``mean max((V - G)^2, (V_old + clip(V - V_old, -clip_coef, clip_coef) - G)^2)`` with
            ``V_old`` the rollout critic's values (CleanRL's and PureJaxRL's form).
        nystrom_rank, nystrom_damping: rank ``k >= 1`` and damping ``lambda > 0`` of the Nystrom
            iHVP.
        cg_iters, cg_damping: iterations and damping ``lambda >= 0`` of the CG iHVP (``blpo-cg``).
        correction_bound: ``beta``: the implicit correction is rescaled so that its norm is at
            most ``beta * ||grad_theta J||``.
        correction_control: ``"none"`` (the method), or ``"random"``: a control that replaces the
            (clipped) correction by a random vector of the same norm (``blpo-*`` only).
        ppo_critic_steps: critic steps per minibatch of ``ppo`` (with the rollout's advantages;
            the actor step is taken after the first): ``3`` is the control that separates "more
            critic optimisation" from nesting. Default 1, the standard joint step.
        hidden: width of the two tanh hidden layers of the actor and of the critic.
        normalize_obs: running mean/std observation normalization (same update rule as
            gymnasium's ``NormalizeObservation``, applied in the rollout so that the final
            observation of a truncated episode is normalized too).
        normalize_reward: divide rewards by the running std of the discounted return (as
            gymnasium's ``NormalizeReward``); episode statistics always record raw rewards.
        log_std_init: initial log standard deviation of the Gaussian policy (Box actions).
        mixed_term: the estimator of the mixed term ``grad^2_{theta w} L u`` (``blpo-*``):
            ``"book"`` (default; chapter 8, equation (eq-ac-mixed): each ratio paired with the
            *later* critic losses of its episode, averaged over the minibatch) or ``"authors"``
            (the BLPO authors' public code: ``grad_theta (grad_w f2 . u)`` with
            ``f2 = 2 sum_t ratio_t A_t(w) (V_w(s_t) - G_t)``, each ratio paired with the
            *same-step* critic residual weighted by the advantage, differentiated in ``w``
            through ``A`` too, summed, not averaged, over the minibatch).
        nystrom_indices: ``"fresh"`` (default: new Nystrom column indices at every update, from
            the run's generator) or ``"fixed"`` (one draw for the whole run, as the authors'
            code, whose indices come from one fixed random key; here the draw is seeded by
            ``seed``). Only ``blpo-nystrom`` uses it.
        preset: ``"book"`` (default) or ``"authors"``: :func:`make_config` then applies
            :data:`AUTHORS_PRESET` for ``algo``; a config labelled ``"authors"`` must hold those
            values (``ValueError`` naming the first that differs).
    """

    algo: str = "blpo-nystrom"
    env_id: str = "CartPole-v1"
    total_steps: int = 500_000
    seed: int = 0
    num_envs: int = 4
    num_steps: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    actor_lr: float = 2.5e-4
    critic_lr: float = 1e-3
    anneal_lr: bool = True
    critic_steps: int = 3
    norm_adv: bool = True
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    nystrom_rank: int = 5
    nystrom_damping: float = 50.0
    cg_iters: int = 5
    cg_damping: float = 50.0
    correction_bound: float = 1.0
    correction_control: str = "none"
    ppo_critic_steps: int = 1
    hidden: int = 64
    normalize_obs: bool = False
    normalize_reward: bool = False
    log_std_init: float = 0.0
    mixed_term: str = "book"
    nystrom_indices: str = "fresh"
    clip_grad: bool = True
    clip_vloss: bool = False
    preset: str = "book"

    def __post_init__(self) -> None:
        check_choice(self.algo, "algo", ALGOS)
        check_choice(self.correction_control, "correction_control", ("none", "random"))
        check_choice(self.mixed_term, "mixed_term", MIXED_TERMS)
        check_choice(self.nystrom_indices, "nystrom_indices", NYSTROM_INDICES)
        check_choice(self.preset, "preset", PRESETS)
        if self.preset == "authors":
            for name, value in AUTHORS_PRESET[self.algo].items():
                if getattr(self, name) != value:
                    raise ValueError(
                        f"preset='authors' sets {name}={value!r} for {self.algo}, got "
                        f"{getattr(self, name)!r} (to vary it, give the fields without the preset)"
                    )
        if self.clip_vloss and self.algo != "ppo":
            raise ValueError(f"clip_vloss applies to algo='ppo' only, got algo={self.algo!r}")
        if self.correction_control != "none" and not self.algo.startswith("blpo"):
            raise ValueError(
                f"correction_control={self.correction_control!r} needs a correction: algo must "
                f"be blpo-cg or blpo-nystrom, got {self.algo!r}"
            )
        if self.mixed_term != "book" and not self.algo.startswith("blpo"):
            raise ValueError(
                f"mixed_term={self.mixed_term!r} needs a correction: algo must be blpo-cg or "
                f"blpo-nystrom, got {self.algo!r}"
            )
        if self.nystrom_indices != "fresh" and self.algo != "blpo-nystrom":
            raise ValueError(
                f"nystrom_indices={self.nystrom_indices!r} applies to algo='blpo-nystrom' only, "
                f"got {self.algo!r}"
            )
        if not isinstance(self.env_id, str) or self.env_id not in gym.registry:
            raise ValueError(
                f"env_id must be a registered gymnasium id (e.g. 'CartPole-v1'), got {self.env_id!r}"
            )
        for name in (
            "total_steps",
            "num_envs",
            "num_steps",
            "update_epochs",
            "num_minibatches",
            "critic_steps",
            "cg_iters",
            "hidden",
            "ppo_critic_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if (
            isinstance(self.nystrom_rank, bool)
            or not isinstance(self.nystrom_rank, int)
            or self.nystrom_rank < 1
        ):
            raise ValueError(f"nystrom_rank must be an integer >= 1, got {self.nystrom_rank!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.ppo_critic_steps != 1 and self.algo != "ppo":
            raise ValueError(
                "ppo_critic_steps applies to algo='ppo' only (the nested algorithms take "
                f"critic_steps), got algo={self.algo!r}"
            )
        if self.num_envs % self.num_minibatches != 0:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_envs ({self.num_envs}): "
                "minibatches are whole env segments"
            )
        for name in (
            "anneal_lr",
            "norm_adv",
            "normalize_obs",
            "normalize_reward",
            "clip_grad",
            "clip_vloss",
        ):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
        for name in (
            "gamma",
            "gae_lambda",
            "clip_coef",
            "actor_lr",
            "critic_lr",
            "ent_coef",
            "max_grad_norm",
            "nystrom_damping",
            "cg_damping",
            "correction_bound",
            "log_std_init",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        for name in ("clip_coef", "actor_lr", "critic_lr", "max_grad_norm", "nystrom_damping"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("ent_coef", "cg_damping", "correction_bound"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def grad_clip_norm(self) -> float | None:
        """The gradient-norm bound of every optimizer step: ``max_grad_norm``, or ``None`` (no
        clipping) when ``clip_grad`` is off."""
        return self.max_grad_norm if self.clip_grad else None

    @property
    def batch_size(self) -> int:
        """Transitions per rollout, ``num_envs * num_steps``."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """The number of rollouts in a run, ``ceil(total_steps / batch_size)``."""
        return -(-self.total_steps // self.batch_size)

    def to_dict(self) -> dict:
        """The fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)


def make_config(algo: str, env_id: str, **overrides) -> ACConfig:
    """An :class:`ACConfig` for ``algo`` on ``env_id``: defaults, then :data:`ENV_PRESETS`, then
    :data:`AUTHORS_PRESET` if ``preset="authors"``, then ``overrides`` (unknown names raise
    ``TypeError`` naming them; an override contradicting the preset raises ``ValueError``)."""
    known = {f.name for f in dataclasses.fields(ACConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown ACConfig field(s): {unknown}; known: {sorted(known)}")
    kwargs = dict(ENV_PRESETS.get(env_id, {}))
    if overrides.get("preset") == "authors" and algo in AUTHORS_PRESET:
        kwargs.update(AUTHORS_PRESET[algo])
    kwargs.update(overrides)
    return ACConfig(algo=algo, env_id=env_id, **kwargs)
