"""Benchmark of the iHVP solvers of birl_lite.ihvp (chapter 7, section 7.5).

1. Equal HVP budgets (5, 10, 20) on the Hessian of a small value network's squared loss (the tanh
   critic of chapter 7, 369 parameters, float64, damping lambda = 1 so that H + lambda I is
   positive definite): relative error of u = (H + lambda I)^{-1} v against the dense solve, and
   time per call,
   measured side by side in this run (ratios to CG at the same budget), next to two controls: the
   Nystrom form BLPO's code solves (a "+I" core, ihvp_nystrom_plus_identity, same columns) and
   the answer that uses no HVP, u = v / lambda.
2. Robustness: random symmetric indefinite matrices with three coordinates the "loss" ignores
   (zero rows and columns, so sampled Nystrom blocks are often singular), lambda = 1e-3, budget 20:
   count of non-finite results over 1000 trials for each solver (target: zero for Nystrom), and of
   finite results violating ||u|| <= ||v|| / lambda (BLPO's "+I" core included).

Run:  python benchmarks/ihvp.py [--quick]     (--quick: fewer timing repeats and Nystrom draws)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from birl_lite.ihvp import (
    dense_hessian,
    ihvp_cg,
    ihvp_exact,
    ihvp_neumann,
    ihvp_nystrom,
    ihvp_nystrom_plus_identity,
    value_network_problem,
)

D = torch.float64


def rel_err(u: torch.Tensor, ref: torch.Tensor) -> float:
    return float((u - ref).norm() / ref.norm())


def timed(fn, repeats: int) -> tuple[object, float]:
    """(result of the last call, median seconds per call)."""
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def budget_table(repeats: int, n_draws: int) -> dict:
    critic = value_network_problem(n_states=256, state_dim=4, hidden=16, fit_steps=300, seed=0)
    hvp = critic.hvp()
    H = dense_hessian(hvp)
    eig = torch.linalg.eigvalsh(H)
    damping = 1.0
    v = torch.randn(hvp.dim, generator=torch.Generator().manual_seed(3), dtype=D)
    u_true = ihvp_exact(H.__matmul__, v, damping=damping).u
    alpha = 1.0 / (float(eig[-1]) + damping)
    print(
        f"value network: d = {hvp.dim}, eigenvalues in [{float(eig[0]):.3f}, {float(eig[-1]):.3f}], "
        f"damping = {damping:g}, Neumann alpha = 1/(mu_max + damping)"
    )
    _, t_exact = timed(lambda: ihvp_exact(hvp, v, damping=damping), max(1, repeats // 3))
    rows = {}
    for m in (5, 10, 20):
        res_cg, t_cg = timed(
            lambda m=m: ihvp_cg(hvp, v, max_iter=m, damping=damping, tol=0.0), repeats
        )
        res_ne, t_ne = timed(
            lambda m=m: ihvp_neumann(hvp, v, n_terms=m, alpha=alpha, damping=damping), repeats
        )
        ny_errs, ny_times, plus_errs = [], [], []
        for s in range(n_draws):
            gen_seed = 1000 * m + s
            res_ny, t_ny = timed(
                lambda m=m, g=gen_seed: ihvp_nystrom(
                    hvp, v, rank=m, damping=damping, generator=torch.Generator().manual_seed(g)
                ),
                1,
            )
            ny_errs.append(rel_err(res_ny.u, u_true))
            ny_times.append(t_ny)
            res_plus = ihvp_nystrom_plus_identity(
                hvp, v, rank=m, damping=damping, generator=torch.Generator().manual_seed(gen_seed)
            )
            plus_errs.append(rel_err(res_plus.u, u_true))
        assert res_cg.n_hvp == res_ne.n_hvp == res_ny.n_hvp == m
        rows[m] = {
            "CG": (rel_err(res_cg.u, u_true), t_cg),
            "Neumann": (rel_err(res_ne.u, u_true), t_ne),
            "Nystrom": (statistics.median(ny_errs), statistics.median(ny_times)),
            "Nystrom+I": (statistics.median(plus_errs), float("nan")),
        }
    print(
        f"\n{'HVPs':>5} {'solver':<9}{'rel. error':>12}{'ms/call':>10}{'time/CG':>9}"
        f"{'error/CG':>10}"
    )
    for m, row in rows.items():
        for name, (err, t) in row.items():
            print(
                f"{m:>5} {name:<9}{err:>12.2e}{1e3 * t:>10.2f}{t / row['CG'][1]:>9.2f}"
                f"{err / row['CG'][0]:>10.2g}"
            )
    print(
        f"no HVP (u = v / damping): rel. error {rel_err(v / damping, u_true):.2e}; Nystrom+I = "
        "BLPO's '+I' core on the same columns (not timed)"
    )
    print(
        f"(exact dense reference: {hvp.dim} HVPs + LU, {1e3 * t_exact:.1f} ms/call, "
        f"{t_exact / rows[20]['CG'][1]:.0f}x CG with 20 HVPs; Nystrom error: median of "
        f"{n_draws} column draws)"
    )
    return rows


def indefinite_trials(n_trials: int, budget: int = 20, damping: float = 1e-3) -> dict:
    names = [
        "CG",
        "Neumann",
        "Nystrom (plain solve)",
        "Nystrom (+I core, BLPO)",
        "Nystrom (eigh safeguard)",
    ]
    non_finite = dict.fromkeys(names, 0)
    above = dict.fromkeys(names, 0)
    gen = torch.Generator().manual_seed(12345)
    for t in range(n_trials):
        n = int(torch.randint(20, 61, (1,), generator=gen))
        B = torch.randn(n, n, generator=gen, dtype=D)
        H = 0.5 * (B + B.T)
        H[:3, :] = 0.0
        H[:, :3] = 0.0
        v = torch.randn(n, generator=gen, dtype=D)
        op = H.__matmul__
        alpha = 1.0 / float(torch.linalg.matrix_norm(H, 2))
        outs = {
            "CG": ihvp_cg(op, v, max_iter=budget, damping=damping).u,
            "Neumann": ihvp_neumann(op, v, n_terms=budget, alpha=alpha, damping=damping).u,
            "Nystrom (plain solve)": ihvp_nystrom(
                op,
                v,
                rank=budget,
                damping=damping,
                safeguard="none",
                generator=torch.Generator().manual_seed(t),
            ).u,
            "Nystrom (+I core, BLPO)": ihvp_nystrom_plus_identity(
                op, v, rank=budget, damping=damping, generator=torch.Generator().manual_seed(t)
            ).u,
            "Nystrom (eigh safeguard)": ihvp_nystrom(
                op, v, rank=budget, damping=damping, generator=torch.Generator().manual_seed(t)
            ).u,
        }
        bound = float(v.norm()) / damping
        for name, u in outs.items():
            finite = bool(torch.isfinite(u).all())
            non_finite[name] += not finite
            above[name] += finite and float(u.norm()) > bound * (1 + 1e-12)
    print(
        f"\n{n_trials} random indefinite trials (d in 20..60, 3 ignored coordinates, "
        f"damping = {damping:g}, {budget} HVPs each)"
    )
    print(f"{'solver':<26}{'non-finite':>11}{'finite, ||u|| > ||v||/damping':>32}")
    for name in names:
        print(f"{name:<26}{non_finite[name]:>11d}{above[name]:>32d}")
    return {"non_finite": non_finite, "above": above}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (<= 60 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    repeats, n_draws = (3, 5) if args.quick else (15, 21)
    rows = budget_table(repeats, n_draws)
    trials = indefinite_trials(1000)
    elapsed = time.perf_counter() - t0
    print(f"\ntotal {elapsed:.1f} s")
    nf = trials["non_finite"]
    r20 = rows[20]
    print(
        "RESULT ihvp: value-net Hessian, 20 HVPs, rel. error CG "
        f"{r20['CG'][0]:.1e} / Neumann {r20['Neumann'][0]:.1e} / Nystrom {r20['Nystrom'][0]:.1e}, "
        f"time vs CG Neumann {r20['Neumann'][1] / r20['CG'][1]:.2f}x Nystrom "
        f"{r20['Nystrom'][1] / r20['CG'][1]:.2f}x; non-finite over 1000 indefinite trials: "
        f"Nystrom(eigh) {nf['Nystrom (eigh safeguard)']}, Nystrom(+I) "
        f"{nf['Nystrom (+I core, BLPO)']}, Nystrom(plain) "
        f"{nf['Nystrom (plain solve)']}, CG {nf['CG']}, Neumann {nf['Neumann']}"
    )


if __name__ == "__main__":
    main()
