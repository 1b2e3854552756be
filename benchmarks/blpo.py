"""Benchmark of the actor-critic code of chapters 8-9 on CartPole-v1 (one core, one thread).

1. Steps per second of our PPO, PPO-nested, BLPO-CG and BLPO-Nystrom with the published BLPO
   settings (4 envs x 128 steps, 4 epochs, 4 minibatches), measured side by side in this run
   (runs interleaved, median over repeats), and the wall-time ratio of each to our PPO
   (target: BLPO-Nystrom <= 1.5x; the published JAX code: 2.07x).
   Our PPO computes its gradients with autograd, while BLPO's update uses the derivatives written
   out in ``birl_lite.actor_critic.derivatives`` (autograd's per-operation overhead dominates on
   these small networks). For a like-for-like ratio the table has one more row, ``ppo-by-hand``:
   the same PPO update with those hand-derived derivatives (:func:`ppo_update_by_hand` below),
   and the RESULT line reports BLPO-Nystrom's wall time relative to it as well.
   The ``*-numpy`` rows run the nested algorithms with ``ACConfig(backend="numpy")`` (the same
   update with the same formulas in numpy, ``birl_lite.actor_critic.blpo_numpy``: equal up to
   float32 rounding), and ``ppo-by-hand-numpy`` is the PPO update by hand in numpy
   (:func:`ppo_update_by_hand_numpy`), the like-for-like PPO for that backend. The issue's
   target compares BLPO-Nystrom with our PPO; the RESULT line gives both backends and both
   like-for-like ratios.
2. Our PPO against stable-baselines3 PPO with matched settings (same envs, rollout length,
   epochs, minibatch size, learning rate, 64-64 tanh actor and critic; target: ours >= 1.2x SB3's
   steps/s). stable-baselines3 is an optional benchmark dependency: if it is not importable, this
   comparison is skipped with a message.

Run:  python benchmarks/blpo.py [--quick]
      (--quick: PPO, the two PPOs by hand and BLPO-Nystrom on both backends only, 16k steps,
      3 repeats, < 60 s; every
      algorithm first runs a 1k-step warm-up that is not timed)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from birl_lite.actor_critic import make_config, train
from birl_lite.actor_critic.blpo import adam_step_flat
from birl_lite.actor_critic.blpo_numpy import (
    numpy_forward,
    numpy_layers,
    numpy_policy_log_prob,
    numpy_policy_vjp,
)
from birl_lite.actor_critic.derivatives import (
    mlp_forward,
    mse_grad,
    policy_log_prob,
    policy_vjp,
)
from birl_lite.actor_critic.ppo import normalize, step_flat, surrogate_partials

ALGOS = (
    "ppo",
    "ppo-by-hand",
    "ppo-by-hand-numpy",
    "ppo-nested",
    "blpo-cg",
    "blpo-nystrom",
    "blpo-cg-numpy",
    "blpo-nystrom-numpy",
)


def ppo_update_by_hand(state, mb: dict[str, torch.Tensor], cfg) -> dict[str, float]:
    """:func:`birl_lite.actor_critic.ppo.ppo_update` with the hand-derived derivatives that
    BLPO's update uses: the same step (up to float rounding), without autograd."""
    n = mb["obs"].shape[0] * mb["obs"].shape[1]
    obs = mb["obs"].reshape(n, -1)
    actions = mb["actions"].reshape(n, *mb["actions"].shape[2:])
    pol = mlp_forward(state.actor.net, obs)
    ratio = torch.exp(policy_log_prob(state.actor, pol, actions) - mb["old_logp"].reshape(n))
    adv = normalize(mb["adv"]) if cfg.norm_adv else mb["adv"]
    dJ_dratio, _ = surrogate_partials(ratio, adv.reshape(n), cfg.clip_coef)
    g_theta = policy_vjp(state.actor, pol, actions, (dJ_dratio * ratio).unsqueeze(0))[0]
    g_w = mse_grad(mlp_forward(state.critic.net, obs), mb["returns"])
    step_flat(state.actor_opt, state.actor_params, -g_theta, cfg.max_grad_norm)
    step_flat(state.critic_opt, state.critic_params, g_w, cfg.max_grad_norm)
    return {}


def ppo_update_by_hand_numpy(state, mb: dict[str, torch.Tensor], cfg) -> dict[str, float]:
    """:func:`ppo_update_by_hand` with the numpy derivatives of the numpy backend
    (``birl_lite.actor_critic.blpo_numpy``): the like-for-like PPO for ``backend="numpy"``."""
    n = mb["obs"].shape[0] * mb["obs"].shape[1]
    obs = mb["obs"].numpy().reshape(n, -1)
    actions = mb["actions"].numpy().reshape(n, *mb["actions"].shape[2:])
    pol = numpy_forward(numpy_layers(state.actor.net), obs)
    logp, aux = numpy_policy_log_prob(state.actor, pol.y, actions)
    ratio = np.exp(logp - mb["old_logp"].numpy().reshape(n))
    adv = (normalize(mb["adv"]) if cfg.norm_adv else mb["adv"]).numpy().reshape(n)
    clipped = np.clip(ratio, 1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)
    dJ_dratio = np.where(ratio * adv <= clipped * adv, adv, 0.0) / n
    g_theta = numpy_policy_vjp(state.actor, pol, actions, aux, (dJ_dratio * ratio)[None])[0]
    crit = numpy_forward(numpy_layers(state.critic.net), obs)
    g_w = crit.vjp((2.0 / n) * (crit.y - mb["returns"].numpy().reshape(n, 1)))
    adam_step_flat(
        state.actor_opt, state.actor_params, torch.from_numpy(-g_theta), cfg.max_grad_norm
    )
    adam_step_flat(state.critic_opt, state.critic_params, torch.from_numpy(g_w), cfg.max_grad_norm)
    return {}


def time_ours(algo: str, steps: int, seed: int) -> tuple[float, float]:
    """(seconds, final return) of one training run of our code (``*-numpy``: the numpy backend,
    ``ACConfig(backend="numpy")``, or for PPO :func:`ppo_update_by_hand_numpy`)."""
    name, numpy_ = algo.removesuffix("-numpy"), algo.endswith("-numpy")
    by_hand = name == "ppo-by-hand"
    kw = {"backend": "numpy"} if numpy_ and not by_hand else {}
    cfg = make_config("ppo" if by_hand else name, "CartPole-v1", total_steps=steps, seed=seed, **kw)
    update = None
    if by_hand:
        update = ppo_update_by_hand_numpy if numpy_ else ppo_update_by_hand
    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # the numpy PPO's BLAS, as train() does
        res = train(cfg, update=update)
    return time.perf_counter() - t0, res.final_return


def time_sb3(steps: int, seed: int) -> tuple[float, float]:
    """(seconds, mean of the last 20 training episodes) of SB3 PPO with matched settings."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=4, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=128,
        batch_size=128,
        n_epochs=4,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        learning_rate=2.5e-4,
        ent_coef=0.0,
        max_grad_norm=0.5,
        seed=seed,
        device="cpu",
        verbose=0,
        policy_kwargs={
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.Tanh,
        },
    )
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - t0
    returns = [ep["r"] for ep in model.ep_info_buffer][-20:]
    return wall, (sum(returns) / len(returns) if returns else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="PPO and BLPO-Nystrom, 16k steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, repeats = (16_384, 3) if args.quick else (100_352, 3)
    have_sb3 = importlib.util.find_spec("stable_baselines3") is not None
    ours = (
        ("ppo", "ppo-by-hand", "ppo-by-hand-numpy", "blpo-nystrom", "blpo-nystrom-numpy")
        if args.quick
        else ALGOS
    )
    names = list(ours) + (["sb3-ppo"] if have_sb3 else [])
    for name in ours:  # warm-up: imports, allocator, first-call overheads
        time_ours(name, 1024, 99)
    if have_sb3:
        time_sb3(1024, 99)
    walls: dict[str, list[float]] = {n: [] for n in names}
    rets: dict[str, list[float]] = {n: [] for n in names}
    print(f"CartPole-v1, {steps} env steps per run, {repeats} repeats (interleaved), 1 thread")
    for rep in range(repeats):
        for name in names:
            wall, ret = time_sb3(steps, rep) if name == "sb3-ppo" else time_ours(name, steps, rep)
            walls[name].append(wall)
            rets[name].append(ret)
    med = {n: statistics.median(w) for n, w in walls.items()}
    print(
        f"\n{'algorithm':<20}{'median wall s':>15}{'steps/s':>10}{'wall / our PPO':>16}"
        f"{'last-20 return':>16}"
    )
    for n in names:
        print(
            f"{n:<20}{med[n]:>15.2f}{steps / med[n]:>10.0f}{med[n] / med['ppo']:>16.2f}"
            f"{statistics.mean(rets[n]):>16.1f}"
        )
    ratio = med["blpo-nystrom"] / med["ppo"]
    ratio_hand = med["blpo-nystrom"] / med["ppo-by-hand"]
    ratio_np = med["blpo-nystrom-numpy"] / med["ppo"]
    ratio_np_hand = med["blpo-nystrom-numpy"] / med["ppo-by-hand-numpy"]
    print("\nBLPO-Nystrom / PPO wall time (published code: 2.07x; target <= 1.5x):")
    for label, r in (("torch backend (the default)", ratio), ("numpy backend", ratio_np)):
        print(f"  {label:<28} {r:.2f}x ({'meets' if r <= 1.5 else 'misses'} the target)")
    print(
        f"Like for like (PPO with the same hand-derived derivatives): torch {ratio_hand:.2f}x, "
        f"numpy {ratio_np_hand:.2f}x"
    )
    if have_sb3:
        speed = med["sb3-ppo"] / med["ppo"]
        sb3_msg = f"our PPO / SB3 PPO steps/s = {speed:.2f}x (target >= 1.2x)"
    else:
        sb3_msg = "SB3 comparison skipped: stable_baselines3 is not importable"
    print(sb3_msg)
    print(
        f"RESULT blpo_over_ppo_wall={ratio:.2f} blpo_numpy_over_ppo_wall={ratio_np:.2f} "
        f"blpo_over_ppo_by_hand_wall={ratio_hand:.2f} "
        f"blpo_numpy_over_ppo_by_hand_numpy_wall={ratio_np_hand:.2f} "
        f"ppo_steps_per_s={steps / med['ppo']:.0f} "
        f"blpo_nystrom_steps_per_s={steps / med['blpo-nystrom']:.0f} "
        + (f"ppo_over_sb3_speed={speed:.2f}" if have_sb3 else "sb3=skipped")
    )


if __name__ == "__main__":
    main()
