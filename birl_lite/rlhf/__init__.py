"""Model-free bilevel RL with neural networks: reward learning from preferences (chapter 10).

* :mod:`birl_lite.rlhf.sac`: discrete soft actor-critic on a learned reward (the lower level).
* :mod:`birl_lite.rlhf.reward_model`: the reward net, fragments, labels, the FIFO, and the hyper
  terms of chapter 6's arms as stop-gradient scalar surrogates (arm C with a continuation critic).
* :mod:`birl_lite.rlhf.loop`: the RLHF loop and the command ``python -m birl_lite.rlhf``.
"""

from .loop import ARMS, BASELINE, RLHFConfig, rlhf_run
from .sac import DiscreteSAC, SACConfig, env_reward

__all__ = ["ARMS", "BASELINE", "RLHFConfig", "rlhf_run", "DiscreteSAC", "SACConfig", "env_reward"]
