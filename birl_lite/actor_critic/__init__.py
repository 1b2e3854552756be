"""Actor-critic algorithms on gymnasium control tasks (chapters 8-9).

The hypergradient they estimate is chapter 8, equation (eq-ac-hypergradient).

* :mod:`birl_lite.actor_critic.config`: :class:`~birl_lite.actor_critic.config.ACConfig`, the hyperparameters (published BLPO defaults).
* :mod:`birl_lite.actor_critic.networks`: separate tanh actor (Categorical / diagonal Gaussian) and critic.
* :mod:`birl_lite.actor_critic.rollout`: vector envs with same-step autoreset, rollouts, GAE, episode statistics.
* :mod:`birl_lite.actor_critic.ppo`: the PPO baseline update.
* :mod:`birl_lite.actor_critic.blpo`: nesting (``ppo-nested``) and the BLPO hypergradient (``blpo-cg``, ``blpo-nystrom``).
* :mod:`birl_lite.actor_critic.derivatives`: the networks' gradients, Hessian-vector products and Nystrom columns written out (what BLPO uses; checked against autograd).
* :mod:`birl_lite.actor_critic.blpo_numpy`: the same update in numpy (``ACConfig(backend="numpy")``: equal up to float32 rounding, cheaper on small networks).
* :mod:`birl_lite.actor_critic.training`: the loop every algorithm shares (:func:`~birl_lite.actor_critic.training.train`).
* :mod:`birl_lite.actor_critic.tabular_check`: the exact BLPO hypergradient on a tabular MDP vs the sampled estimator.
"""

from .blpo import BLPODirection, blpo_direction, blpo_update, clip_correction, differentiable_gae
from .blpo_numpy import blpo_update_numpy
from .config import ALGOS, ENV_PRESETS, ACConfig, make_config
from .networks import Actor, Critic
from .ppo import clipped_surrogate, critic_loss, ppo_update
from .rollout import Rollout, RolloutCollector, discount_matrix, gae, make_vector_env
from .training import TrainResult, final_return, train

__all__ = [
    "ALGOS",
    "BLPODirection",
    "ENV_PRESETS",
    "ACConfig",
    "Actor",
    "Critic",
    "Rollout",
    "RolloutCollector",
    "TrainResult",
    "blpo_direction",
    "blpo_update",
    "blpo_update_numpy",
    "clip_correction",
    "clipped_surrogate",
    "critic_loss",
    "differentiable_gae",
    "discount_matrix",
    "final_return",
    "gae",
    "make_config",
    "make_vector_env",
    "ppo_update",
    "train",
]
