"""Benchmark: the tabular core at scale, sparse MDPs from 10^3 to 10^6 states.

Measures, on one thread, for two families of sparse MDPs with A = 4, gamma = 0.99, tau = 0.1:

* ``grid``: a random maze (``random_layout``, 10% walls, slip 0.1) of about S cells: about 3
  successors per (s, a), so sparse LU would also do; the solver is BiCGSTAB for both families;
* ``random``: ``random_mdp(..., support=10, sparse=True)``: 10 random successors per (s, a), where
  sparse LU fills in (64 s and 1.5 GB at S = 10^4) and only a Krylov method scales;

the time and peak memory (resident set of a fresh process) of soft policy iteration (Newton with
inexact BiCGSTAB steps) and of the first-order hypergradient (H2: forward solve, one adjoint solve,
one vector-Jacobian product), for a state-aggregation reward ``r_x(s, a) = r(s, a) + x[g(s)]`` with
64 groups and the upper objective ``f = -J(pi) + 0.005 ||x||^2`` (:func:`negative_return`). Where
the dense ``[S, A, S]`` path fits (S <= 2000) it runs side by side on the same instance, and the
table reports the relative difference of the two hypergradients. The growth exponent is the slope
of log time against log S over the sparse sizes.

A second table, "H2 at large n": an MLP reward with n = 20,217 parameters on a sparse random MDP
(S = 500): the hypergradient against one forward solve plus one vector-Jacobian product (the
target: within 2x), and the old way, the ``[S, A, n]`` Jacobian of (H1) (one backward pass per
entry of r), as the control (skipped with --quick).

Targets: S = 10^5 hypergradient <= 5 s and S = 10^6 <= 60 s within 8 GB; agreement with the dense
path to 1e-8 relative; H2 at n = 20,097 within 2x of forward + VJP.

Usage: ``python benchmarks/scale.py [--quick]`` (quick: up to S = 10^5, under a minute). Each
size runs in a fresh subprocess so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np
import torch

TAU, GAMMA, N_GROUPS = 0.1, 0.99, 64


def build(kind: str, S: int, sparse: bool = True):
    """The instance of size about ``S``; ``sparse=False`` gives the same MDP with dense P."""
    from birl_lite.mdp import gridworld, random_layout, random_mdp, random_reward

    if kind == "grid":
        side = int(round(math.sqrt(S / 0.9))) + 2  # about 10% of the interior are walls
        task = gridworld(
            random_layout(side, side, 0, wall_fraction=0.1), gamma=GAMMA, slip=0.1, sparse=True
        )
        mdp, r = task.mdp, task.r
    else:
        mdp = random_mdp(S, 4, 0, gamma=GAMMA, support=10, sparse=True)
        r = random_reward(S, 4, 1)
    return (mdp if sparse else mdp.to_dense()), r


def problem(mdp, r):
    """A state-aggregation shaping reward and the upper objective -J + (ridge / 2)||x||^2."""
    from birl_lite.first_order import negative_return

    S = mdp.n_states
    rng = np.random.default_rng(2)
    group = torch.from_numpy(rng.integers(0, N_GROUPS, size=S))
    # every state pays a small random reward, so that J and its gradient are not zero on mazes
    # whose goal the soft-optimal policy never reaches
    r = r + 0.1 * torch.from_numpy(rng.random((S, 1)))

    def reward_fn(x: torch.Tensor) -> torch.Tensor:
        return r + x[group].unsqueeze(1)

    upper_fn, upper_value_and_grad = negative_return(mdp, r, ridge=0.01)
    x = torch.linspace(-0.5, 0.5, N_GROUPS, dtype=torch.float64)
    return reward_fn, upper_fn, upper_value_and_grad, x


def one(kind: str, S: int, backend: str) -> dict:
    """Run one size in this process; returns times, the gradient and the peak RSS."""
    from birl_lite.first_order import hypergradient
    from birl_lite.soft import soft_policy_iteration

    torch.set_num_threads(1)
    # warm-up on a small instance of the same kind (first-call costs of torch and scipy)
    small, r_small = build(kind, 200, sparse=backend == "sparse")
    rf, uf, uvg, x = problem(small, r_small)
    hypergradient(small, rf, uf, x, TAU, upper_value_and_grad=uvg)
    t0 = time.perf_counter()
    mdp, r = build(kind, S, sparse=backend == "sparse")
    t_build = time.perf_counter() - t0
    reward_fn, upper_fn, uvg, x = problem(mdp, r)
    t0 = time.perf_counter()
    sol = soft_policy_iteration(mdp, r, TAU)
    t_forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    h = hypergradient(mdp, reward_fn, upper_fn, x, TAU, upper_value_and_grad=uvg)
    t_hyper = time.perf_counter() - t0
    return {
        "kind": kind,
        "S": mdp.n_states,
        "backend": backend,
        "build": t_build,
        "forward": t_forward,
        "newton_steps": sol.n_iter,
        "hypergradient": t_hyper,
        "grad": h.grad.tolist(),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def mlp_row(S: int = 500, hidden: int = 133, control: bool = True) -> dict:
    """H2 with an MLP reward of n ~ 20k parameters: hypergradient vs forward + one VJP, and H1."""
    from birl_lite.first_order import hypergradient, negative_return
    from birl_lite.mdp import random_mdp, random_reward
    from birl_lite.soft import soft_policy_iteration

    torch.set_num_threads(1)
    mdp = random_mdp(S, 4, 0, gamma=GAMMA, support=10, sparse=True)
    r = random_reward(S, 4, 1)
    d_in = 16
    feats = torch.randn(S, 4, d_in, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shapes = [(hidden, d_in), (hidden,), (hidden, hidden), (hidden,), (1, hidden), (1,)]
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)

    def reward_fn(x: torch.Tensor) -> torch.Tensor:
        W1, b1, W2, b2, W3, b3 = (
            p.reshape(s) for p, s in zip(torch.split(x, sizes), shapes, strict=True)
        )
        h = torch.tanh(feats @ W1.T + b1)
        h = torch.tanh(h @ W2.T + b2)
        return r + (h @ W3.T + b3).squeeze(-1)

    x = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    upper_fn, uvg = negative_return(mdp, r, ridge=0.01)

    def best(fn, repeats=3):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    with torch.no_grad():
        r_x = reward_fn(x)
    t_fwd, sol = best(lambda: soft_policy_iteration(mdp, r_x, TAU))
    c = torch.randn(S, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def vjp():
        x_ = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(reward_fn(x_), x_, grad_outputs=c)
        return g

    t_vjp, _ = best(vjp)
    t_h2, _ = best(
        lambda: hypergradient(mdp, reward_fn, upper_fn, x, TAU, upper_value_and_grad=uvg)
    )
    t_h2_unchecked, _ = best(
        lambda: hypergradient(
            mdp, reward_fn, upper_fn, x, TAU, upper_value_and_grad=uvg, check_reward=False
        )
    )
    if control:  # the [S, A, n] Jacobian of (H1), one backward pass per entry of r
        t_jac, J = best(
            lambda: torch.autograd.functional.jacobian(reward_fn, x, vectorize=False), repeats=1
        )
    else:
        t_jac, J = float("nan"), torch.zeros(0)
    return {
        "n": n,
        "S": S,
        "forward": t_fwd,
        "vjp": t_vjp,
        "hypergradient_h2": t_h2,
        "ratio": t_h2 / (t_fwd + t_vjp),
        "ratio_unchecked": t_h2_unchecked / (t_fwd + t_vjp),
        "jacobian": t_jac,
        "jacobian_mb": J.numel() * 8 / 2**20,
    }


def run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S up to 10^5, under a minute")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "S", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--mlp", choices=("full", "quick"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2])))
        return
    if args.mlp:
        print(json.dumps(mlp_row(control=args.mlp == "full")))
        return

    sizes = [1000, 10_000, 100_000] if args.quick else [1000, 2000, 10_000, 100_000, 1_000_000]
    dense_sizes = [1000] if args.quick else [1000, 2000]  # dense P and LU: S^2 A floats, S^3
    print(f"tau = {TAU}, gamma = {GAMMA}, A = 4, one thread; times in seconds, memory = peak RSS\n")
    print(
        f"{'family':>7} {'S':>9} {'backend':>7} {'build':>7} {'forward':>8} {'Newton':>6} "
        f"{'hypergrad':>9} {'peak MB':>8} {'rel. diff to dense':>18}"
    )
    rows, summary = [], {}
    for kind in ("grid", "random"):
        for S in sorted(set(sizes) | set(dense_sizes)):
            sparse = run_child(["--one", kind, str(S), "sparse"]) if S in sizes else None
            dense = run_child(["--one", kind, str(S), "dense"]) if S in dense_sizes else None
            diff = ""
            if sparse and dense:
                gs, gd = np.array(sparse["grad"]), np.array(dense["grad"])
                rel = float(np.abs(gs - gd).max() / max(np.abs(gd).max(), 1e-300))
                diff = f"{rel:.1e}"
                summary[f"{kind}_agree_{S}"] = rel
            for row in (dense, sparse):
                if row is None:
                    continue
                rows.append(row)
                print(
                    f"{kind:>7} {row['S']:>9} {row['backend']:>7} {row['build']:>7.2f} "
                    f"{row['forward']:>8.3f} {row['newton_steps']:>6} "
                    f"{row['hypergradient']:>9.3f} {row['peak_mb']:>8.0f} "
                    f"{diff if row is sparse else '':>18}"
                )
        sp_rows = [r for r in rows if r["kind"] == kind and r["backend"] == "sparse"]
        logS = np.log([r["S"] for r in sp_rows])
        slope = float(np.polyfit(logS, np.log([r["hypergradient"] for r in sp_rows]), 1)[0])
        print(f"{kind}: hypergradient time grows like S^{slope:.2f} (sparse, fitted)\n")
        summary[f"{kind}_exponent"] = slope
        for r in sp_rows:
            summary[f"{kind}_hyper_{r['S']}"] = r["hypergradient"]
            summary[f"{kind}_mb_{r['S']}"] = r["peak_mb"]

    m = run_child(["--mlp", "quick" if args.quick else "full"])
    print(f"H2 at large n: MLP reward, n = {m['n']}, sparse random MDP S = {m['S']}")
    print(f"  one forward solve        {m['forward']:.3f} s")
    print(f"  one VJP through reward   {m['vjp']:.4f} s")
    print(
        f"  hypergradient (H2)       {m['hypergradient_h2']:.3f} s  = {m['ratio']:.2f}x (forward + VJP)"
    )
    if math.isnan(m["jacobian"]):
        print("  control: the [S, A, n] Jacobian (what H1 needs): skipped with --quick")
    else:
        print(
            f"  control: the [S, A, n] Jacobian alone (what H1 needs) {m['jacobian']:.2f} s, "
            f"{m['jacobian_mb']:.0f} MB"
        )
    parts = [f"{k}={v:.3g}" for k, v in summary.items()]
    parts.append(f"h2_mlp_ratio={m['ratio']:.2f}")
    print("RESULT scale: " + "; ".join(parts))


if __name__ == "__main__":
    main()
