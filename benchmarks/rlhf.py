"""Benchmark: cost per agent step of our discrete SAC and of the RLHF arms (issue 16).

Three measurements on LunarLander-v3, one process, ``torch.set_num_threads(1)``, the same
settings (``birl_lite.rlhf.loop``'s default :class:`~birl_lite.rlhf.sac.SACConfig`: the
configuration of the committed runs), taken in interleaved repeats:

1. ``ours``: :class:`birl_lite.rlhf.sac.DiscreteSAC` on the true reward.
2. ``reference``: a plain single-file discrete SAC written the way CleanRL's ``sac_atari.py``
   is written (Christodoulou 2019; our own re-implementation of that script's training loop, not
   its code), with MLPs in place of the CNN for vector observations: a one-env
   ``gym.vector.SyncVectorEnv``, two separate Q-networks and two targets, ``Categorical``
   sampling, ``.item()`` on the temperature, the same losses, optimizers (Adam, ``eps=1e-4``) and
   update schedule. It answers "is our SAC as fast per step as the usual implementation".
3. ``arm A`` and ``arm C``: :func:`birl_lite.rlhf.loop.rlhf_run` (reward model training,
   comparisons and, for C, the continuation critic and the scalar surrogate included), same
   steps; the issue's target is C over A <= 1.2x.

Steps per second: the CPU time of a whole run (``learning_starts=500`` random steps included,
~1% of it) over its learning steps; the ratios use process CPU time, which is less disturbed than
wall time by other work on a shared machine (wall times are printed too). Arms A and C also pay
for their 100 held-out pairs (10,000 random environment steps) and the reward model's training.

Measured (--quick, busy 2-core machine, 2 repeats): ours 2.76 ms per step, the reference 3.26
(ours/reference 0.85: the twin Q-networks as one batched module), arm A 1.08x ours, arm C
1.30x arm A (above the issue's 1.2x at this short length, where C's continuation critic and
score steps weigh most; noisy).

Arm C's overhead was then profiled (cProfile, the --quick settings): the continuation critic's
TD step (every 4 SAC updates; a 1,040-output layer for LunarLander, ``A x A x (h+1)``) and, in
long runs, the surrogate over the score steps. Two changes that keep the estimator: the TD step
computes ``psi`` for the taken actions only (the other outputs got no gradient), and score steps
shared by several pairs (pairs cut from one episode share its prefix) are evaluated once
(``ScoreSteps.index``). Measured after, on the same busy machine: the TD step alone 3.61 -> 3.26
ms CPU (0.90x, interleaved micro-benchmark, batch 128); --quick arm C 1.12x and 1.31x arm A in
two runs; the full setting (6,000 learning steps, 3 repeats) 1.16x after, 0.97x for the code
before the change run the same hour (RESULT ours_over_reference_cpu=0.84
armC_over_armA_cpu=0.97): on this machine the benchmark does not resolve arm C's overhead from
noise (+-0.15), so whether the 1.2x target is met is not established by it.

Measured on an idle 2-core machine (other work paused, December 2026): the full setting twice,
``RESULT ours_over_reference_cpu=0.78 armC_over_armA_cpu=1.16`` and ``0.82 ... 1.19``; and
``--runs-scale`` (arms A and C side by side, one core each): arm A 454 s CPU, arm C 534 s,
``RESULT armC_over_armA_cpu_runs_scale=1.18``. Arm C's overhead is under the issue's 1.2x in all
three, by a small margin; at the runs' scale it is measured with arm C's crashing agent (below).

Run:  python benchmarks/rlhf.py [--quick]      (--quick: fewer steps and repeats, < 60 s)
      python benchmarks/rlhf.py --runs-scale   (arms A and C at the committed runs' scale)
Ends with a ``RESULT`` line.

``--runs-scale``: the measurement above runs 3 reward updates on at most 200 comparisons, where the
committed runs make 30 on up to 2,000; arm C's surrogate is paid at every minibatch step of every
reward update, so its share may differ at that scale. This mode trains arm A and arm C with the
committed runs' exact configuration (chapter 10's ``EXPERIMENT``: 150k agent steps, seed 0), one
process each, side by side (one core each; about 10 minutes on an idle 2-core machine), and
reports their CPU times. It measures what a run of each arm costs, behaviour included: arm C's
agent crashes (chapter 10, section 10.4), so its episodes, and with them the prefixes its score
steps run over, are shorter than a learning agent's would be.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from birl_lite.rlhf.loop import RLHFConfig, _default_sac, rlhf_run
from birl_lite.rlhf.sac import DiscreteSAC, SACConfig, env_reward

ENV = "LunarLander-v3"


def _net(d: int, hidden: tuple[int, ...], n_out: int) -> nn.Module:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, n_out))


def reference_sac(cfg: SACConfig, steps: int, seed: int = 0) -> None:
    """A plain discrete SAC training loop in the style of CleanRL's ``sac_atari.py`` (module
    docstring), ``steps`` environment steps on ``ENV``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(ENV)])
    d, A = envs.single_observation_space.shape[0], int(envs.single_action_space.n)
    actor = _net(d, cfg.hidden, A)
    qf1, qf2 = _net(d, cfg.hidden, A), _net(d, cfg.hidden, A)
    qf1_t, qf2_t = _net(d, cfg.hidden, A), _net(d, cfg.hidden, A)
    qf1_t.load_state_dict(qf1.state_dict())
    qf2_t.load_state_dict(qf2.state_dict())
    q_opt = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=cfg.q_lr, eps=1e-4)
    a_opt = torch.optim.Adam(actor.parameters(), lr=cfg.policy_lr, eps=1e-4)
    log_alpha = torch.full((1,), float(np.log(cfg.temperature)), requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.q_lr, eps=1e-4)
    alpha = log_alpha.exp().item()
    target_entropy = cfg.target_entropy_scale * float(np.log(A))
    n = cfg.buffer_size
    b_obs, b_next = np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)
    b_act, b_rew, b_done = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.float32)
    obs, _ = envs.reset(seed=seed)
    for step in range(steps):
        if step < cfg.learning_starts:
            actions = np.array([envs.single_action_space.sample()])
        else:
            with torch.no_grad():
                actions = Categorical(logits=actor(torch.Tensor(obs))).sample().numpy()
        next_obs, rewards, term, trunc, infos = envs.step(actions)
        k = step % n
        b_obs[k], b_act[k], b_rew[k], b_done[k] = obs[0], actions[0], rewards[0], term[0]
        b_next[k] = next_obs[0]  # (the autoreset step is stored too, as a one-env sketch may)
        obs = next_obs
        if step > cfg.learning_starts and step % cfg.update_every == 0:
            i = rng.integers(min(step + 1, n), size=cfg.batch_size)
            o, o2 = torch.from_numpy(b_obs[i]), torch.from_numpy(b_next[i])
            a, r, done = (
                torch.from_numpy(b_act[i]),
                torch.from_numpy(b_rew[i]),
                torch.from_numpy(b_done[i]),
            )
            with torch.no_grad():
                logits2 = actor(o2)
                p2, logp2 = F.softmax(logits2, dim=1), F.log_softmax(logits2, dim=1)
                q2 = torch.min(qf1_t(o2), qf2_t(o2))
                v2 = (p2 * (q2 - alpha * logp2)).sum(dim=1)
                y = r * cfg.reward_scale + (1 - done) * cfg.gamma * v2
            q1a = qf1(o).gather(1, a[:, None]).view(-1)
            q2a = qf2(o).gather(1, a[:, None]).view(-1)
            q_loss = F.mse_loss(q1a, y) + F.mse_loss(q2a, y)
            q_opt.zero_grad()
            q_loss.backward()
            q_opt.step()
            logits = actor(o)
            p, logp = F.softmax(logits, dim=1), F.log_softmax(logits, dim=1)
            with torch.no_grad():
                qmin = torch.min(qf1(o), qf2(o))
            a_loss = (p * (alpha * logp - qmin)).sum(dim=1).mean()
            a_opt.zero_grad()
            a_loss.backward()
            a_opt.step()
            if cfg.autotune:
                al = (
                    (p.detach() * (-log_alpha.exp() * (logp + target_entropy).detach()))
                    .sum(1)
                    .mean()
                )
                alpha_opt.zero_grad()
                al.backward()
                alpha_opt.step()
                alpha = log_alpha.exp().item()
        if step > cfg.learning_starts and step % cfg.target_every == 0:
            for net, tgt in ((qf1, qf1_t), (qf2, qf2_t)):
                for p_, tp in zip(net.parameters(), tgt.parameters(), strict=True):
                    tp.data.copy_(cfg.polyak * p_.data + (1 - cfg.polyak) * tp.data)
    envs.close()


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _run_cpu(arm: str) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``arm`` in the committed runs' configuration (seed 0)."""
    torch.set_num_threads(1)
    cfg = RLHFConfig(env=ENV, arm=arm, steps=150_000, alternate=5_000, budget=2_000,
                     initial_comparisons=200, seed=0)  # fmt: skip
    return _timed(lambda: rlhf_run(cfg))


def runs_scale() -> None:
    """Arms A and C at the committed runs' scale, side by side (module docstring)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        (wa, ca), (wc, cc) = pool.map(_run_cpu, ["loss", "full"])
    print(
        f"{ENV}, the committed runs' configuration (150k agent steps, 2,000 comparisons, seed 0),"
    )
    print("arms A and C in two processes side by side")
    print(f"{'':10s}{'wall s':>9s}{'cpu s':>9s}")
    print(f"{'arm A':10s}{wa:9.1f}{ca:9.1f}")
    print(f"{'arm C':10s}{wc:9.1f}{cc:9.1f}")
    print(f"RESULT armC_over_armA_cpu_runs_scale={cc / ca:.2f} (target <= 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 60 s)")
    parser.add_argument(
        "--runs-scale",
        action="store_true",
        help="arms A and C at the committed runs' scale, two processes (~10 min)",
    )
    args = parser.parse_args()
    if args.runs_scale:
        runs_scale()
        return
    torch.set_num_threads(1)
    learn, repeats = (1_000, 2) if args.quick else (6_000, 3)
    starts = 500
    sac = dataclasses.replace(_default_sac(), learning_starts=starts)
    total = starts + learn
    alternate = learn // 3
    rlhf = dict(env=ENV, steps=learn, alternate=alternate, budget=200, initial_comparisons=50,
                n_heldout=100, sac=sac)  # fmt: skip

    def ours() -> None:
        DiscreteSAC(gym.make(ENV), env_reward, sac, seed=0).train(total)

    cases = {
        "ours": ours,
        "reference": lambda: reference_sac(sac, total),
        "arm A": lambda: rlhf_run(RLHFConfig(arm="loss", **rlhf)),
        "arm C": lambda: rlhf_run(RLHFConfig(arm="full", **rlhf)),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            times[k].append(_timed(fn))
    print(f"{ENV}: {learn} learning steps after {starts} random ones, {repeats} interleaved "
          f"repeats (median); SAC {sac.hidden}, batch {sac.batch_size}, "
          f"update_every {sac.update_every}")  # fmt: skip
    print(f"{'':10s}{'wall s':>9s}{'cpu s':>9s}{'steps/s (cpu)':>15s}{'ms/step (cpu)':>15s}")
    med = {}
    for k, v in times.items():
        w, c = np.median([t[0] for t in v]), np.median([t[1] for t in v])
        med[k] = c
        print(f"{k:10s}{w:9.2f}{c:9.2f}{learn / c:15.0f}{1e3 * c / learn:15.3f}")
    ref = med["ours"] / med["reference"]
    ca = med["arm C"] / med["arm A"]
    aa = med["arm A"] / med["ours"]
    print(
        f"RESULT ours_over_reference_cpu={ref:.2f} armC_over_armA_cpu={ca:.2f} (target <= 1.2) "
        f"armA_over_sac_cpu={aa:.2f} ours_steps_per_s={learn / med['ours']:.0f}"
    )


if __name__ == "__main__":
    main()
