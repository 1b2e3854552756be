"""Model-free bilevel RL with neural networks: reward learning from preferences (chapter 10).

* :mod:`birl_lite.rlhf.sac`: discrete soft actor-critic on a learned reward (the lower level).
* :mod:`birl_lite.rlhf.reward_model`: the reward net, fragments, labels, the FIFO, and the hyper
  terms of chapter 6's arms as stop-gradient scalar surrogates (arm C with a continuation critic).
* :mod:`birl_lite.rlhf.loop`: the RLHF loop and the command ``python -m birl_lite.rlhf``.

The committed LunarLander-v3 runs (results/rlhf)::

    python -m birl_lite.rlhf --envs LunarLander-v3 --arms true loss --seeds 0-2 --steps 150000 \\
        --alternate 5000 --budget 2000 --initial-comparisons 200 --fragment-length 25 \\
        --out results/rlhf
    # arm A with fragments padded by the absorbing state (files named __absorbing=True)
    python -m birl_lite.rlhf --envs LunarLander-v3 --arms loss --seeds 0-2 --steps 150000 \\
        --alternate 5000 --budget 2000 --initial-comparisons 200 --fragment-length 25 \\
        --set absorbing=true --out results/rlhf

The sweep, ``bash tools/sweep_rlhf.sh`` (resumable; its comments list every command and its
measured cost): the true-reward baseline and the arms A-E, 10 seeds on LunarLander-v3 (with the
variants of arm A and arm B that chapter 10, section 10.4 reads), then 5 seeds on MinAtar Breakout
into ``results/rlhf_minatar``::

    python -m birl_lite.rlhf --arms true loss truncated full flipped ensemble --envs LunarLander-v3 \\
        --steps 150000 --seeds 0-9 --alternate 5000 --budget 2000 --initial-comparisons 200 \\
        --fragment-length 25 --workers 2 --no-progress --out results/rlhf
    python -m birl_lite.rlhf --arms true loss truncated full flipped ensemble \\
        --envs MinAtar/Breakout-v1 --steps 100000 --seeds 0-4 --set absorbing=true \\
        --sac update_every=4 --alternate 5000 --budget 2000 --initial-comparisons 200 \\
        --fragment-length 25 --workers 2 --no-progress --out results/rlhf_minatar
"""

from .loop import ARMS, BASELINE, RLHFConfig, rlhf_run
from .sac import DiscreteSAC, SACConfig, env_reward

__all__ = ["ARMS", "BASELINE", "RLHFConfig", "rlhf_run", "DiscreteSAC", "SACConfig", "env_reward"]
