"""Hyperparameters of the actor-critic algorithms of chapters 8-9 (PPO, PPO-nested, BLPO).

The defaults are the published BLPO settings for discrete control (Prakash et al., 2026; chapter 8,
section 8.1, and chapter 9, section 9.1): 4 envs x 128 steps, 4 epochs, gamma 0.99, lambda 0.95,
clip 0.2, actor lr 2.5e-4, critic lr 1e-3, 3 nested critic steps, Nystrom rank 5, damping 50,
correction norm bound 1.0, no entropy bonus, separate 64-64 tanh actor and critic.
:data:`ENV_PRESETS` overrides a few of them per environment (Pendulum-v1), and
:data:`CONTINUOUS_PRESET` replaces them with CleanRL's continuous-control settings on every MuJoCo
environment (chapter 9, issue 14: the paper's main domain).
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
    "BACKENDS",
    "CONTINUOUS_PER_ALGO",
    "CONTINUOUS_PRESET",
    "ENV_PRESETS",
    "MINIBATCHES",
    "MIXED_TERMS",
    "NYSTROM_INDICES",
    "PRESETS",
    "ACConfig",
    "is_mujoco",
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

#: How a rollout is cut into minibatches (:attr:`ACConfig.minibatch`): whole env segments, the
#: contiguous chunks of ``num_steps / num_minibatches`` steps of every env segment, or shuffled
#: single transitions (CleanRL's; ``ppo`` only).
MINIBATCHES = ("segments", "chunks", "transitions")

#: Named settings (:attr:`ACConfig.preset`): ``"book"`` (the defaults) or ``"authors"``.
PRESETS = ("book", "authors")

#: Where the nested algorithms' update computes its derivatives (:attr:`ACConfig.backend`):
#: torch (the default, bit for bit the committed runs) or numpy (the same numbers up to float32
#: rounding, cheaper on small networks).
BACKENDS = ("torch", "numpy")

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
#: minibatches of shuffled single transitions (here, whole env segments for every algorithm;
#: ``minibatch="transitions"`` gives theirs for ``ppo``, a separate choice) and
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

#: CleanRL's ``ppo_continuous_action.py`` settings, which :func:`make_config` applies (in place of
#: :data:`ENV_PRESETS`) to every MuJoCo environment (:func:`is_mujoco`: Hopper-v5, Walker2d-v5,
#: HalfCheetah-v5, InvertedDoublePendulum-v5, ...): 1 env x 2048 steps, 10 epochs, 32
#: minibatches, lr 3e-4 annealed, gamma 0.99, lambda 0.95, clip 0.2, no entropy bonus, gradient
#: norm 0.5, 64-64 tanh networks, log-std initialised at 0, observations and rewards normalized
#: (both clipped to +-10; actions are always clipped to the bounds in the rollout).
#: The preset is keyed on a list of ids (the MuJoCo entry points), not on the action space, so
#: Pendulum-v1 and custom ``Box`` environments keep their previous settings.
#:
#: Per algorithm: ``ppo`` shuffles single transitions into the 32 minibatches of 64, and clips
#: its value loss, as CleanRL. The nested algorithms need trajectory structure (the advantages
#: are recomputed from the updated critic along the trajectory, and the book's mixed term sums
#: later losses of the episode), so they take the 32 contiguous 64-step chunks of the rollout
#: (``minibatch="chunks"``: same number and size of minibatches; the advantage beyond a chunk's
#: end is the rollout critic's, a constant). Differences from CleanRL that remain: two Adam
#: optimizers (actor and critic, both at 3e-4, each clipped to norm 0.5) instead of one on the
#: joint loss with ``vf_coef`` 0.5 (Adam is invariant to that coefficient up to its ``eps``),
#: and the critic steps of the nested algorithms (``critic_steps`` 3).
CONTINUOUS_PRESET: dict[str, object] = {
    "num_envs": 1,
    "num_steps": 2048,
    "update_epochs": 10,
    "num_minibatches": 32,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_coef": 0.2,
    "actor_lr": 3e-4,
    "critic_lr": 3e-4,
    "anneal_lr": True,
    "norm_adv": True,
    "ent_coef": 0.0,
    "max_grad_norm": 0.5,
    "clip_grad": True,
    "hidden": 64,
    "log_std_init": 0.0,
    "normalize_obs": True,
    "normalize_reward": True,
    "clip_reward": True,
}

#: The per-algorithm part of the continuous preset (see :data:`CONTINUOUS_PRESET`).
CONTINUOUS_PER_ALGO: dict[str, dict] = {
    "ppo": {"minibatch": "transitions", "clip_vloss": True},
    "ppo-nested": {"minibatch": "chunks"},
    "blpo-cg": {"minibatch": "chunks"},
    "blpo-nystrom": {"minibatch": "chunks"},
}


def is_mujoco(env_id: str) -> bool:
    """Whether ``env_id`` is a registered gymnasium MuJoCo environment (its entry point is in
    ``gymnasium.envs.mujoco``), the ids :data:`CONTINUOUS_PRESET` applies to."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a str, got {type(env_id).__name__}")
    spec = gym.registry.get(env_id)
    entry = getattr(spec, "entry_point", None)
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


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
        num_minibatches: minibatches per epoch, of ``batch_size / num_minibatches`` transitions
            (what one minibatch holds depends on ``minibatch``).
        minibatch: ``"segments"`` (default): each minibatch is ``num_envs / num_minibatches``
            whole env segments of ``num_steps`` contiguous steps (GAE runs along a trajectory,
            so BLPO needs whole segments; every algorithm uses the same minibatches).
            ``"chunks"``: every env segment is cut into ``num_minibatches`` contiguous chunks of
            ``num_steps / num_minibatches`` steps, and each minibatch is ``num_envs`` chunks
            (with 1 env, one chunk); the nested algorithms recompute the advantages within the
            chunk from the updated critic and add the rollout critic's advantage beyond its end,
            discounted (a constant), so that at the rollout critic they equal the rollout's GAE.
            ``"transitions"``: shuffled single transitions (CleanRL's PPO; ``ppo`` only, the
            nested algorithms need trajectories).
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
        nystrom_rank, nystrom_damping: rank ``m >= 1`` and damping ``nu > 0`` of the Nystrom
            iHVP.
        cg_iters, cg_damping: iterations and damping ``nu >= 0`` of the CG iHVP (``blpo-cg``).
        correction_bound: ``cbar`` (the book's c-bar): the implicit correction is rescaled so that
            its norm is at most ``cbar * ||grad_theta J||``.
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
        clip_reward: clip the rewards used for learning (normalized, if ``normalize_reward``)
            to ``[-10, 10]``, as CleanRL's continuous PPO.
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
        backend: where the minibatch update of ``ppo-nested`` / ``blpo-*`` computes its
            derivatives: ``"torch"`` (default; :func:`~birl_lite.actor_critic.blpo.blpo_update`,
            which the committed runs used) or ``"numpy"``
            (:func:`~birl_lite.actor_critic.blpo_numpy.blpo_update_numpy`: the same update with the
            same formulas in numpy, about a third cheaper on 64-64 networks, equal up to float32
            rounding, not bit for bit; chapter 9, "Where the time goes"). Not for ``ppo`` (its
            update uses autograd) nor with ``ent_coef > 0``.
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
    minibatch: str = "segments"
    clip_reward: bool = False
    backend: str = "torch"

    def __post_init__(self) -> None:
        check_choice(self.algo, "algo", ALGOS)
        check_choice(self.correction_control, "correction_control", ("none", "random"))
        check_choice(self.mixed_term, "mixed_term", MIXED_TERMS)
        check_choice(self.nystrom_indices, "nystrom_indices", NYSTROM_INDICES)
        check_choice(self.preset, "preset", PRESETS)
        check_choice(self.minibatch, "minibatch", MINIBATCHES)
        check_choice(self.backend, "backend", BACKENDS)
        if self.backend == "numpy" and self.algo == "ppo":
            raise ValueError(
                "backend='numpy' applies to the nested algorithms (ppo-nested, blpo-cg, "
                "blpo-nystrom) only: ppo's update uses autograd"
            )
        if self.backend == "numpy" and self.ent_coef != 0:
            raise ValueError(
                f"backend='numpy' does not support an entropy bonus: ent_coef must be 0, got "
                f"{self.ent_coef!r} (use backend='torch')"
            )
        if self.minibatch == "transitions" and self.algo != "ppo":
            raise ValueError(
                f"minibatch='transitions' applies to algo='ppo' only (the nested algorithms need "
                f"contiguous trajectories: use 'chunks'), got algo={self.algo!r}"
            )
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
        if self.minibatch == "segments" and self.num_envs % self.num_minibatches != 0:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_envs ({self.num_envs}): "
                "minibatches are whole env segments (or set minibatch='chunks' / 'transitions')"
            )
        if self.minibatch == "chunks" and self.num_steps % self.num_minibatches != 0:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_steps "
                f"({self.num_steps}) with minibatch='chunks': each env segment is cut into "
                "num_minibatches chunks"
            )
        if self.minibatch == "transitions" and self.batch_size % self.num_minibatches != 0:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_envs * num_steps "
                f"({self.batch_size}) with minibatch='transitions'"
            )
        for name in (
            "anneal_lr",
            "norm_adv",
            "normalize_obs",
            "normalize_reward",
            "clip_grad",
            "clip_vloss",
            "clip_reward",
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
        """The gradient-norm bound of every optimizer step, ``max_grad_norm``, or ``None`` (no
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

    @property
    def segment_length(self) -> int:
        """Steps per contiguous piece of trajectory that minibatches are made of, ``num_steps``
        (``"segments"``), ``num_steps / num_minibatches`` (``"chunks"``) or 1
        (``"transitions"``)."""
        if self.minibatch == "segments":
            return self.num_steps
        if self.minibatch == "chunks":
            return self.num_steps // self.num_minibatches
        return 1

    def to_dict(self) -> dict:
        """The fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)


def make_config(algo: str, env_id: str, **overrides) -> ACConfig:
    """An :class:`ACConfig` for ``algo`` on ``env_id``: defaults, then :data:`ENV_PRESETS` (or,
    for a MuJoCo id, :data:`CONTINUOUS_PRESET` and its per-algorithm part
    :data:`CONTINUOUS_PER_ALGO`), then :data:`AUTHORS_PRESET` if ``preset="authors"``, then
    ``overrides`` (unknown names raise ``TypeError`` naming them; an override contradicting the
    preset raises ``ValueError``)."""
    known = {f.name for f in dataclasses.fields(ACConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown ACConfig field(s): {unknown}; known: {sorted(known)}")
    if isinstance(env_id, str) and is_mujoco(env_id):
        kwargs = {**CONTINUOUS_PRESET, **CONTINUOUS_PER_ALGO.get(algo, {})}
    else:
        kwargs = dict(ENV_PRESETS.get(env_id, {}))
    if overrides.get("preset") == "authors" and algo in AUTHORS_PRESET:
        kwargs.update(AUTHORS_PRESET[algo])
    kwargs.update(overrides)
    return ACConfig(algo=algo, env_id=env_id, **kwargs)
