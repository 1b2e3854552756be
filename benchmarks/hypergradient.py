"""Benchmark: the first-order hypergradient (H1/H2) against its reference methods.

Compares, on random MDPs with A = 10 actions, an upper-level variable x in R^32, gamma = 0.99 and
tau = 0.1, the time and the relative error (against a high-precision reference) of

* the first-order hypergradient (H2 and H1) with the fast forward solve (soft policy iteration =
  Newton's method), and (H2) with soft value iteration as the forward solve;
* autograd through K unrolled soft value-iteration sweeps, with the smallest K (on a grid of ratio
  2^(1/4)) whose error is <= 1e-6;
* central finite differences (2n + 1 forward solves);
* generic AID with the Hessian in softmax-logit space (pseudo-inverse), where it fits in memory.

Two MDP families: ``dense`` (the issue's family: every P[s, a, :] dense, U(0, 1) weights normalized)
and ``ring`` (each (s, a) moves to 5 states within distance 3 on a ring: a slowly mixing chain, where
unrolling needs about log(1e-6) / log(gamma) sweeps). The reference is the first-order (H2)
hypergradient with the forward solve converged to relative tolerance 1e-15; the table also reports
its distance to the finite-difference and long-unrolled estimates (independent checks).

Targets (issue 3): at S = 1000, the first-order hypergradient (with the fast forward solve) is at
least 50x faster than unrolled autograd at equal accuracy 1e-6, and its cost beyond the converged
forward solve is at most the forward solve itself.

Usage: ``python benchmarks/hypergradient.py [--quick]``. Timings are the minimum over repeats,
measured side by side in one run on one thread; they are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import birl_lite as bl
from birl_lite.first_order import hypergradient
from birl_lite.reference_methods import (
    aid_hypergradient,
    finite_difference_hypergradient,
    unrolled_hypergradient,
)

D = torch.float64
A, N, GAMMA, TAU = 10, 32, 0.99, 0.1
TARGET_ERR = 1e-6


def ring_mdp(S: int, seed: int, width: int = 3, k: int = 5) -> bl.TabularMDP:
    """Each (s, a) moves to ``k`` distinct states within distance ``width`` on a ring of ``S`` states."""
    rng = np.random.default_rng(seed)
    offsets = np.arange(-width, width + 1)
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            nxt = (s + rng.choice(offsets, size=min(k, len(offsets)), replace=False)) % S
            w = rng.uniform(size=len(nxt)) + 1e-12
            np.add.at(P[s, a], nxt, w / w.sum())
    return bl.TabularMDP(P, GAMMA)


def make_problem(family: str, S: int, seed: int = 0):
    mdp = bl.random_mdp(S, A, seed=seed, gamma=GAMMA) if family == "dense" else ring_mdp(S, seed)
    rng = np.random.default_rng(seed + 1)
    r0 = torch.as_tensor(rng.uniform(size=(S, A)), dtype=D)
    F = torch.as_tensor(rng.normal(size=(S, A, N)) / math.sqrt(N), dtype=D)
    r_U = torch.as_tensor(rng.uniform(size=(S, A)), dtype=D)
    x = torch.as_tensor(rng.normal(size=N), dtype=D)

    def reward_fn(z):
        return r0 + 0.5 * torch.tanh(F @ z)

    def upper_fn(z, pi):
        return -(1 - mdp.gamma) * bl.expected_return(mdp, pi, r_U) + 5e-3 * (z**2).sum()

    return mdp, reward_fn, upper_fn, x


def timed(fn, repeats: int):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def unrolled_at_accuracy(mdp, rf, uf, x, ref, k_max: int):
    """Smallest K on the grid round(2^(j/4)) with error <= TARGET_ERR: bracket by doubling, refine."""
    cache = {}

    def err(K):
        if K not in cache:
            t, out = timed(lambda: unrolled_hypergradient(mdp, rf, uf, x, TAU, K), 1)
            cache[K] = (t, rel(out.grad, ref))
        return cache[K][1]

    j = 0
    while err(max(1, round(2 ** (j / 4)))) > TARGET_ERR:
        if round(2 ** (j / 4)) >= k_max:
            return None
        j += 4
    lo, hi = max(0, j - 4), j  # error(2^(lo/4)) > target unless j == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if err(max(1, round(2 ** (mid / 4)))) <= TARGET_ERR:
            hi = mid
        else:
            lo = mid
    K = max(1, round(2 ** (hi / 4)))
    t, e = cache[K]
    if t < 0.5:  # cheap: re-time with repeats, like the other methods
        t2, out = timed(lambda: unrolled_hypergradient(mdp, rf, uf, x, TAU, K), 3)
        t, e = min(t, t2), rel(out.grad, ref)
    return K, t, e


def run_case(family: str, S: int, quick: bool) -> dict:
    mdp, rf, uf, x = make_problem(family, S)
    reps = 2 if S >= 1000 else 3
    hypergradient(mdp, rf, uf, x, TAU)  # warm-up (torch.func loads its decompositions once)
    ref_res = hypergradient(mdp, rf, uf, x, TAU, tol=1e-15)
    ref = ref_res.grad
    row: dict = {"family": family, "S": S}

    t, h2 = timed(lambda: hypergradient(mdp, rf, uf, x, TAU, form="H2"), reps)
    tm = h2.info["timings"]
    row["H2"] = (t, rel(h2.grad, ref))
    row["H2_forward"] = tm["forward"]
    row["H2_beyond"] = tm["jacobian"] + tm["upper"] + tm["linear"]
    t, h1 = timed(lambda: hypergradient(mdp, rf, uf, x, TAU, form="H1"), reps)
    row["H1"] = (t, rel(h1.grad, ref))
    if not (quick and S >= 1000):
        t, hv = timed(lambda: hypergradient(mdp, rf, uf, x, TAU, forward="value_iteration"), 1)
        row["H2_vi"] = (t, rel(hv.grad, ref))
    k_max = 8192
    row["unrolled"] = unrolled_at_accuracy(mdp, rf, uf, x, ref, k_max)

    # Inside an outer loop the forward solve is warm-started at the previous iterate's V*. Both
    # methods get the same warm start V0 = V*(x + 0.01 u); for unrolling it does not shorten the
    # truncated derivative series, so we re-measure its error at K* / 2^(1/4) and K*.
    u = torch.as_tensor(np.random.default_rng(7).normal(size=N), dtype=D)
    V_warm = hypergradient(mdp, rf, uf, x + 0.01 * u, TAU).V
    t, hw = timed(lambda: hypergradient(mdp, rf, uf, x, TAU, V0=V_warm), reps)
    row["H2_warm"] = (t, rel(hw.grad, ref))
    row["H2_warm_newton"] = hw.info["forward_iterations"]
    if row["unrolled"] is not None:
        K_star = row["unrolled"][0]
        warm = []
        for K in sorted({max(1, round(K_star / 2**0.25)), K_star}):
            t, out = timed(lambda K=K: unrolled_hypergradient(mdp, rf, uf, x, TAU, K, V0=V_warm), 1)
            warm.append((K, t, rel(out.grad, ref)))
        ok = [w for w in warm if w[2] <= TARGET_ERR]
        row["unrolled_warm"] = ok[0] if ok else None
        row["unrolled_warm_all"] = warm
    if not (quick and S >= 1000):
        t, fd = timed(lambda: finite_difference_hypergradient(mdp, rf, uf, x, TAU), 1)
        row["FD"] = (t, rel(fd.grad, ref))
    if S * A <= (100 if quick else 1000):
        t, aid = timed(lambda: aid_hypergradient(mdp, rf, uf, x, TAU), 1)
        row["AID"] = (t, rel(aid.grad, ref))
    return row


def fmt(entry) -> str:
    if entry is None:
        return f"{'-':>21s}"
    t, e = entry
    return f"{t * 1e3:10.1f} ms {e:8.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweep, finishes within 60 s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    if args.quick:
        cases = [
            ("dense", 10),
            ("dense", 100),
            ("dense", 1000),
            ("ring", 10),
            ("ring", 100),
            ("ring", 300),
        ]
    else:
        cases = [(f, S) for f in ("dense", "ring") for S in (10, 100, 1000)]
    rows = []
    for family, S in cases:
        rows.append(run_case(family, S, args.quick))
        print(f"  done {family} S={S} ({time.perf_counter() - t_start:.0f} s)", flush=True)

    print()
    print(
        f"A = {A}, n = {N}, gamma = {GAMMA}, tau = {TAU}; time (min over repeats), relative error "
        "vs the high-precision reference"
    )
    head = (
        f"{'family':6s} {'S':>5s} | {'first-order H2 (PI)':>21s} | {'first-order H1 (PI)':>21s} | "
        f"{'H2 with VI forward':>21s} | {'unrolled at 1e-6':>27s} | {'finite differences':>21s} | "
        f"{'AID (Hessian, pinv)':>21s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        un = r["unrolled"]
        un_s = (
            f"{'> k_max':>27s}"
            if un is None
            else f"K={un[0]:<5d}{un[1] * 1e3:9.1f} ms {un[2]:7.1e}"
        )
        print(
            f"{r['family']:6s} {r['S']:5d} | {fmt(r['H2'])} | {fmt(r['H1'])} | {fmt(r.get('H2_vi'))} | "
            f"{un_s} | {fmt(r.get('FD'))} | {fmt(r.get('AID'))}"
        )

    print()
    print("Ratios (measured side by side in this run):")
    print(
        f"{'family':6s} {'S':>5s} | {'unrolled / first-order':>22s} | {'AID / first-order':>17s} | "
        f"{'FD / first-order':>16s} | {'forward solve':>13s} | {'beyond forward':>14s} | {'beyond / fwd':>12s}"
    )
    summary = {}
    warm_ratios = {}
    for r in rows:
        t_fo = r["H2"][0]
        un = r["unrolled"]
        ratio_un = un[1] / t_fo if un is not None else float("inf")
        ratio_aid = r["AID"][0] / t_fo if "AID" in r else float("nan")
        ratio_fd = r["FD"][0] / t_fo if "FD" in r else float("nan")
        beyond = r["H2_beyond"] / r["H2_forward"]
        summary[(r["family"], r["S"])] = (ratio_un, beyond, un)
        unw = r.get("unrolled_warm")
        warm_ratios[(r["family"], r["S"])] = unw[1] / r["H2_warm"][0] if unw else float("nan")
        print(
            f"{r['family']:6s} {r['S']:5d} | {ratio_un:22.1f} | {ratio_aid:17.1f} | {ratio_fd:16.1f} | "
            f"{r['H2_forward'] * 1e3:10.1f} ms | {r['H2_beyond'] * 1e3:11.1f} ms | {beyond:12.2f}"
        )
    print()
    print(
        "Warm-started forward solve (V0 = V* at x + 0.01 u, as inside an outer loop), both methods:"
    )
    print(
        f"{'family':6s} {'S':>5s} | {'first-order H2 (PI)':>21s} | {'Newton steps':>12s} | "
        f"{'unrolled warm: K, time, error':>40s} | {'ratio':>6s}"
    )
    for r in rows:
        unw_all = r.get("unrolled_warm_all", [])
        unw_s = ", ".join(f"K={K} {t * 1e3:.1f} ms {e:.1e}" for K, t, e in unw_all) or "-"
        ratio = warm_ratios[(r["family"], r["S"])]
        print(
            f"{r['family']:6s} {r['S']:5d} | {fmt(r['H2_warm'])} | {r['H2_warm_newton']:12d} | "
            f"{unw_s:>40s} | {ratio:6.1f}"
        )
    print()
    print(
        "AID is skipped where the S*A x S*A Hessian is too large for this machine's time budget "
        "(S*A > 1000; > 100 with --quick); FD and VI-forward are skipped at S = 1000 with --quick."
    )
    print(f"total time {time.perf_counter() - t_start:.0f} s")

    parts = []
    for family in ("dense", "ring"):
        key = (family, 1000)
        if key not in summary:
            continue
        ratio_un, beyond, un = summary[key]
        k_str = f"K={un[0]}" if un is not None else "K>k_max"
        parts.append(
            f"{family} S=1000: unrolled({k_str})/first-order = {ratio_un:.1f}x "
            f"(target >= 50x: {'MET' if ratio_un >= 50 else 'NOT MET'}; warm-started both: "
            f"{warm_ratios[key]:.1f}x), "
            f"beyond-forward/forward = {beyond:.2f} (target <= 1: {'MET' if beyond <= 1 else 'NOT MET'})"
        )
    if not parts:
        parts.append("no S=1000 case run")
    print("RESULT hypergradient: " + "; ".join(parts))


if __name__ == "__main__":
    main()
