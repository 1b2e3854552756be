"""Tests of birl_lite.ihvp: iHVP solvers against dense solves, AID against finite differences."""

import math

import pytest
import torch

from birl_lite.exercises.ch07 import check_woodbury
from birl_lite.ihvp import (
    HVP,
    IHVPResult,
    dense_hessian,
    ihvp_cg,
    ihvp_exact,
    ihvp_neumann,
    ihvp_nystrom,
    implicit_hypergradient,
    make_hvp,
    nystrom_woodbury,
    ridge_problem,
    value_network_problem,
)

D = torch.float64

# torch's forward-mode AD (backend="func") warns once about its own use of torch.jit.script
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def random_spd(n: int, seed: int, cond: float = 100.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=D))
    lam = torch.logspace(0, math.log10(cond), n, dtype=D)
    return Q @ torch.diag(lam) @ Q.T


def random_indefinite(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=D)
    return 0.5 * (A + A.T)


def matvec(H):
    return lambda x: H @ x


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------
# HVP
# ------------------------------------------------------------------------------------------


def test_make_hvp_matches_dense_hessian_flat_and_both_backends():
    H = random_spd(7, 0)
    b = torch.arange(7, dtype=D)

    def loss(w):
        return 0.5 * w @ H @ w - b @ w + (w**4).sum() / 12

    w0 = torch.linspace(-1, 1, 7, dtype=D)
    H_true = H + torch.diag(w0**2)
    v = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=D)
    for backend in ("autograd", "func"):
        hvp = make_hvp(loss, w0, backend=backend)
        assert hvp.dim == 7 and hvp.n_hvp == 0
        assert torch.allclose(hvp(v), H_true @ v, atol=1e-12, rtol=0)
        assert hvp.n_hvp == 1
        assert torch.allclose(hvp.grad, H @ w0 - b + w0**3 / 3, atol=1e-12)
    assert torch.allclose(dense_hessian(make_hvp(loss, w0)), H_true, atol=1e-12)


def test_make_hvp_dict_params_matches_torch_func_hessian():
    pb = value_network_problem(n_states=32, state_dim=2, hidden=3, seed=0)
    hvp = pb.hvp()
    flat = hvp.flatten(pb.params)
    assert flat.shape == (pb.dim,)
    back = hvp.unflatten(flat)
    assert set(back) == set(pb.params) and all(torch.equal(back[k], pb.params[k]) for k in back)

    def flat_loss(p):
        return pb.loss(hvp.unflatten(p))

    H_ref = torch.func.hessian(flat_loss)(flat)
    assert torch.allclose(dense_hessian(hvp), 0.5 * (H_ref + H_ref.T), atol=1e-12)
    v = torch.randn(pb.dim, generator=torch.Generator().manual_seed(0), dtype=D)
    assert torch.allclose(pb.hvp(backend="func")(v), H_ref @ v, atol=1e-12)


def test_hvp_shape_errors():
    hvp = make_hvp(lambda w: (w**2).sum(), torch.zeros(4, dtype=D))
    with pytest.raises(ValueError, match="shape"):
        hvp(torch.zeros(5, dtype=D))
    with pytest.raises(ValueError, match="scalar"):
        make_hvp(lambda w: w**2, torch.zeros(4, dtype=D))
    with pytest.raises(ValueError, match="1-D"):
        make_hvp(lambda w: (w**2).sum(), torch.zeros(2, 2, dtype=D))
    with pytest.raises(ValueError, match="keys"):
        value_network_problem(n_states=8, hidden=2).hvp().flatten({"x": torch.zeros(1)})


# ------------------------------------------------------------------------------------------
# Solvers on random SPD matrices
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_dense_solve(seed):
    H = random_spd(12, seed)
    v = torch.randn(12, generator=torch.Generator().manual_seed(seed), dtype=D)
    for damping in (0.0, 0.7):
        res = ihvp_exact(matvec(H), v, damping=damping)
        ref = torch.linalg.solve(H + damping * torch.eye(12, dtype=D), v)
        assert res.n_hvp == 12 and rel(res.u, ref) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_matches_dense_solve_to_1e8(seed):
    n = 20
    H = random_spd(n, seed, cond=1e3)
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D)
    for damping in (0.0, 0.1):
        ref = torch.linalg.solve(H + damping * torch.eye(n, dtype=D), v)
        res = ihvp_cg(matvec(H), v, max_iter=5 * n, tol=1e-14, damping=damping)
        assert rel(res.u, ref) < 1e-8
        assert res.n_hvp == len(res.info["residual_norms"]) - 1
    few = ihvp_cg(matvec(H), v, max_iter=3)
    assert few.n_hvp == 3 and not few.info["converged"] and rel(few.u, ref) > 1e-3


def test_cg_and_neumann_count_hvps_through_hvp_object():
    pb = value_network_problem(n_states=64, hidden=6, fit_steps=50, seed=1)
    hvp = pb.hvp()
    v = hvp.grad.clone()
    res = ihvp_cg(hvp, v, max_iter=7, tol=0.0, damping=1.0)
    assert res.n_hvp == 7 and hvp.n_hvp == 7
    res = ihvp_neumann(hvp, v, n_terms=4, alpha=0.01, damping=1.0)
    assert res.n_hvp == 4 and hvp.n_hvp == 11


@pytest.mark.parametrize("seed", [0, 1])
def test_neumann_converges_for_alpha_below_two_over_lambda_max(seed):
    n = 10
    H = random_spd(n, seed, cond=10.0)  # eigenvalues in [1, 10]
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D)
    ref = torch.linalg.solve(H, v)
    lam_max = float(torch.linalg.eigvalsh(H)[-1])
    errs = [
        rel(ihvp_neumann(matvec(H), v, n_terms=m, alpha=1.0 / lam_max).u, ref)
        for m in (10, 50, 400)
    ]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-10
    # alpha close to 2 / lambda_max still converges (slower); beyond it the series diverges
    ok = ihvp_neumann(matvec(H), v, n_terms=800, alpha=1.9 / lam_max)
    assert rel(ok.u, ref) < 1e-8 and not ok.info["growing"]
    bad = ihvp_neumann(matvec(H), v, n_terms=60, alpha=2.2 / lam_max)
    assert rel(bad.u, ref) > 1.0 and bad.info["growing"]


def test_neumann_partial_sum_formula():
    H = random_spd(5, 3)
    v = torch.ones(5, dtype=D)
    alpha, damping, m = 0.05, 0.3, 6
    A = H + damping * torch.eye(5, dtype=D)
    B = torch.eye(5, dtype=D) - alpha * A
    ref = alpha * sum(torch.linalg.matrix_power(B, j) @ v for j in range(m + 1))
    res = ihvp_neumann(matvec(H), v, n_terms=m, alpha=alpha, damping=damping)
    assert torch.allclose(res.u, ref, atol=1e-14) and res.n_hvp == m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nystrom_exact_when_rank_equals_dimension(seed):
    n = 15
    H = random_spd(n, seed)
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D)
    for damping in (1e-2, 1.0, 50.0):
        ref = torch.linalg.solve(H + damping * torch.eye(n, dtype=D), v)
        res = ihvp_nystrom(
            matvec(H), v, rank=n, damping=damping, generator=torch.Generator().manual_seed(seed)
        )
        assert res.n_hvp == n and res.info["rank_kept"] == n
        assert rel(res.u, ref) < 1e-10
        plain = ihvp_nystrom(
            matvec(H),
            v,
            rank=n,
            damping=damping,
            safeguard="none",
            generator=torch.Generator().manual_seed(seed),
        )
        assert rel(plain.u, ref) < 1e-8


def test_nystrom_exact_on_low_rank_psd_with_enough_columns():
    # H of rank 3: any 3 columns spanning its range give H_k = H exactly
    gen = torch.Generator().manual_seed(4)
    B = torch.randn(9, 3, generator=gen, dtype=D)
    H = B @ B.T
    v = torch.randn(9, generator=gen, dtype=D)
    ref = torch.linalg.solve(H + 0.5 * torch.eye(9, dtype=D), v)
    res = ihvp_nystrom(matvec(H), v, rank=3, damping=0.5, indices=torch.tensor([0, 4, 8]))
    assert rel(res.u, ref) < 1e-10


def test_nystrom_is_deterministic_in_the_generator():
    H = random_spd(30, 5)
    v = torch.ones(30, dtype=D)
    a = ihvp_nystrom(matvec(H), v, rank=5, damping=1.0, generator=torch.Generator().manual_seed(7))
    b = ihvp_nystrom(matvec(H), v, rank=5, damping=1.0, generator=torch.Generator().manual_seed(7))
    c = ihvp_nystrom(matvec(H), v, rank=5, damping=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.u, b.u) and torch.equal(a.info["indices"], b.info["indices"])
    assert not torch.equal(a.info["indices"], c.info["indices"])


@pytest.mark.parametrize("seed", range(4))
def test_woodbury_formula_against_dense_inverse(seed):
    gen = torch.Generator().manual_seed(seed)
    n, k, damping = 12, 4, 0.3
    H = random_spd(n, seed)
    K = torch.randperm(n, generator=gen)[:k]
    C, M = H[:, K], H[K][:, K]
    v = torch.randn(n, generator=gen, dtype=D)
    dense = torch.linalg.inv(C @ torch.linalg.inv(M) @ C.T + damping * torch.eye(n, dtype=D)) @ v
    formula = v / damping - C @ torch.linalg.solve(M + C.T @ C / damping, C.T @ v) / damping**2
    assert rel(formula, dense) < 1e-10
    for safeguard in ("eigh", "none"):
        u, _ = nystrom_woodbury(C, M, v, damping, safeguard=safeguard)
        assert rel(u, dense) < 1e-10


# ------------------------------------------------------------------------------------------
# Indefinite and singular H
# ------------------------------------------------------------------------------------------


def test_nystrom_never_nan_on_indefinite_or_singular_h():
    n_nonfinite_safe = n_nonfinite_plain = 0
    for seed in range(60):
        H = random_indefinite(20, seed)
        H[:, :3] = 0.0  # three parameters the loss ignores: M is singular whenever K hits them
        H[:3, :] = 0.0
        v = torch.randn(20, generator=torch.Generator().manual_seed(seed), dtype=D)
        for rank in (1, 5, 20):
            gen = torch.Generator().manual_seed(seed)
            res = ihvp_nystrom(matvec(H), v, rank=rank, damping=1e-3, generator=gen)
            ok = bool(torch.isfinite(res.u).all())
            n_nonfinite_safe += not ok
            # the safeguarded core has weights in [0, 1): ||u|| <= ||v|| / damping
            assert float(res.u.norm()) <= float(v.norm()) / 1e-3 * (1 + 1e-12)
            plain = ihvp_nystrom(
                matvec(H),
                v,
                rank=rank,
                damping=1e-3,
                safeguard="none",
                generator=torch.Generator().manual_seed(seed),
            )
            n_nonfinite_plain += not bool(torch.isfinite(plain.u).all())
    assert n_nonfinite_safe == 0
    assert n_nonfinite_plain > 0  # the unguarded formula does break: the safeguard matters


def test_nystrom_negative_definite_block_falls_back_to_v_over_damping():
    H = -random_spd(6, 0)
    v = torch.ones(6, dtype=D)
    res = ihvp_nystrom(matvec(H), v, rank=6, damping=2.0)
    assert res.info["rank_kept"] == 0 and torch.allclose(res.u, v / 2.0)


def test_cg_and_neumann_misbehave_on_indefinite_h():
    H = torch.diag(torch.tensor([3.0, 1.0, -0.5, 2.0], dtype=D))
    v = torch.ones(4, dtype=D)
    res = ihvp_neumann(matvec(H), v, n_terms=200, alpha=0.3)
    assert res.info["growing"] and float(res.u.norm()) > 1e10
    cg = ihvp_cg(matvec(random_indefinite(10, 0)), torch.ones(10, dtype=D), max_iter=10)
    assert cg.info["negative_curvature"]


def test_exact_raises_on_singular_system():
    H = torch.diag(torch.tensor([1.0, 0.0], dtype=D))
    with pytest.raises(ValueError, match="singular"):
        ihvp_exact(matvec(H), torch.ones(2, dtype=D))


# ------------------------------------------------------------------------------------------
# Errors and structure
# ------------------------------------------------------------------------------------------


def test_clear_errors():
    H = random_spd(5, 0)
    v = torch.ones(5, dtype=D)
    op = matvec(H)
    with pytest.raises(ValueError, match="rank must be <= the dimension 5"):
        ihvp_nystrom(op, v, rank=6, damping=1.0)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        ihvp_nystrom(op, v, rank=0, damping=1.0)
    with pytest.raises(ValueError, match="damping"):
        ihvp_nystrom(op, v, rank=2, damping=-1.0)
    with pytest.raises(ValueError, match="damping"):
        ihvp_nystrom(op, v, rank=2, damping=0.0)
    with pytest.raises(ValueError, match="damping"):
        ihvp_cg(op, v, max_iter=3, damping=-0.1)
    with pytest.raises(ValueError, match="damping"):
        ihvp_neumann(op, v, n_terms=3, alpha=0.1, damping=-0.1)
    with pytest.raises(ValueError, match="n_terms must be >= 1"):
        ihvp_neumann(op, v, n_terms=0, alpha=0.1)
    with pytest.raises(ValueError, match="alpha"):
        ihvp_neumann(op, v, n_terms=3, alpha=0.0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        ihvp_cg(op, v, max_iter=0)
    with pytest.raises(ValueError, match=r"returned shape \(5,\), expected \(4,\)"):
        ihvp_cg(lambda x: torch.ones(5, dtype=D), torch.ones(4, dtype=D), max_iter=2)
    hvp = make_hvp(lambda w: (w**2).sum(), torch.zeros(5, dtype=D))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        ihvp_cg(hvp, torch.ones(6, dtype=D), max_iter=2)
    with pytest.raises(TypeError, match="generator"):
        ihvp_nystrom(op, v, rank=2, damping=1.0, generator=0)
    with pytest.raises(ValueError, match="distinct"):
        ihvp_nystrom(op, v, rank=2, damping=1.0, indices=[1, 1])
    with pytest.raises(ValueError, match="safeguard"):
        ihvp_nystrom(op, v, rank=2, damping=1.0, safeguard="magic")
    with pytest.raises(ValueError, match="solver"):
        pb = ridge_problem(dim=3)
        implicit_hypergradient(
            pb.outer_loss,
            pb.inner_loss,
            torch.zeros(3, dtype=D),
            torch.zeros(3, dtype=D),
            solver="lu",
        )


def test_dict_vectors_in_dict_out():
    pb = value_network_problem(n_states=64, hidden=5, fit_steps=30, seed=2)
    hvp = pb.hvp()
    v_flat = hvp.grad.clone()
    v_dict = hvp.unflatten(v_flat)
    for solve, kw in (
        (ihvp_cg, {"max_iter": 5}),
        (ihvp_neumann, {"n_terms": 5, "alpha": 0.01}),
        (ihvp_nystrom, {"rank": 5, "damping": 1.0}),
        (ihvp_exact, {}),
    ):
        kw = dict(kw, damping=kw.get("damping", 1.0))
        gen = {"generator": torch.Generator().manual_seed(0)} if solve is ihvp_nystrom else {}
        a = solve(hvp, v_flat, **kw, **gen)
        gen = {"generator": torch.Generator().manual_seed(0)} if solve is ihvp_nystrom else {}
        b = solve(hvp, v_dict, **kw, **gen)
        assert isinstance(a, IHVPResult) and isinstance(a.u, torch.Tensor)
        assert isinstance(b.u, dict) and set(b.u) == set(v_dict)
        assert torch.allclose(hvp.flatten(b.u), a.u, atol=1e-14)


# ------------------------------------------------------------------------------------------
# Implicit hypergradient
# ------------------------------------------------------------------------------------------


def test_ridge_closed_form_and_implicit_hypergradient_match_finite_differences():
    pb = ridge_problem(dim=6, seed=3)
    theta = torch.linspace(-2.0, 1.0, 6, dtype=D)
    closed = pb.hypergradient(theta)
    eps = 1e-5
    fd = torch.stack(
        [
            (pb.hyperobjective(theta + eps * e) - pb.hyperobjective(theta - eps * e)) / (2 * eps)
            for e in torch.eye(6, dtype=D)
        ]
    )
    assert rel(closed, fd) < 1e-7
    w = pb.w_star(theta)
    for solver, kw in (
        ("exact", {}),
        ("cg", {"max_iter": 50, "tol": 1e-14}),
        ("nystrom", {"rank": 6, "damping": 1e-12}),
    ):
        res = implicit_hypergradient(pb.outer_loss, pb.inner_loss, theta, w, solver=solver, **kw)
        assert rel(res.grad, closed) < 1e-8, solver
        assert torch.allclose(res.grad, res.direct - res.correction)
    approx = implicit_hypergradient(pb.outer_loss, pb.inner_loss, theta, w, solver="cg", max_iter=2)
    assert rel(approx.grad, closed) > 1e-6 and approx.n_hvp == 2


def test_implicit_hypergradient_dict_variables_and_direct_term():
    # f depends on theta directly as well; compare with a dense closed form
    gen = torch.Generator().manual_seed(0)
    A = random_spd(4, 1)
    B = torch.randn(4, 3, generator=gen, dtype=D)
    c = torch.randn(4, generator=gen, dtype=D)

    def inner(th, w):
        return 0.5 * w["a"] @ A @ w["a"] - (B @ th["x"]) @ w["a"]

    def outer(th, w):
        return 0.5 * ((w["a"] - c) ** 2).sum() + 0.5 * (th["x"] ** 2).sum()

    x = torch.tensor([0.3, -0.2, 0.5], dtype=D)
    w_star = torch.linalg.solve(A, B @ x)
    res = implicit_hypergradient(outer, inner, {"x": x}, {"a": w_star}, solver="exact")
    ref = x + B.T @ torch.linalg.solve(A, w_star - c)  # dw*/dx = A^{-1} B
    assert isinstance(res.grad, dict) and torch.allclose(res.grad["x"], ref, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Exercise checker
# ------------------------------------------------------------------------------------------


def test_check_woodbury_accepts_reference_and_rejects_wrong(capsys):
    def right(C, M, damping, v):
        return v / damping - C @ torch.linalg.solve(M + C.T @ C / damping, C.T @ v) / damping**2

    def wrong(C, M, damping, v):  # forgets one factor 1/damping
        return v / damping - C @ torch.linalg.solve(M + C.T @ C / damping, C.T @ v) / damping

    assert check_woodbury(right, n_cases=10)
    assert "PASS" in capsys.readouterr().out
    assert not check_woodbury(wrong, n_cases=10)
    assert "FAIL" in capsys.readouterr().out
    assert not check_woodbury(lambda C, M, damping, v: "nope", n_cases=3)


def test_hvp_object_is_reused_by_solvers():
    hvp = make_hvp(lambda w: 0.5 * (w**2).sum(), torch.zeros(3, dtype=D))
    assert isinstance(hvp, HVP) and "dim=3" in repr(hvp)
    res = ihvp_cg(hvp, torch.ones(3, dtype=D), max_iter=5)
    assert res.n_hvp == 1 and torch.allclose(res.u, torch.ones(3, dtype=D))


def test_hessian_columns_for_callables_hvps_and_structured_operators():
    from birl_lite.actor_critic.derivatives import MSEHessian
    from birl_lite.actor_critic.networks import Critic
    from birl_lite.actor_critic.ppo import critic_loss
    from birl_lite.ihvp import hessian_columns

    gen = torch.Generator().manual_seed(4)
    A = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    A = A + A.T
    K = torch.tensor([4, 0, 5])
    torch.testing.assert_close(hessian_columns(lambda x: A @ x, K, dim=6), A[:, K])
    with pytest.raises(ValueError, match="dim is required"):
        hessian_columns(lambda x: A @ x, K)
    critic = Critic(3, 8, gen).double()
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(20, generator=gen, dtype=torch.float64)
    params = {k: p.detach() for k, p in critic.named_parameters()}
    hvp = make_hvp(lambda p: critic_loss(torch.func.functional_call(critic, p, (x,)), y), params)
    K = torch.randperm(hvp.dim, generator=gen)[:6]
    by_hvps = hessian_columns(hvp, K)
    assert hvp.n_hvp == 6
    torch.testing.assert_close(by_hvps, dense_hessian(hvp)[:, K], rtol=1e-10, atol=1e-12)
    structured = hessian_columns(MSEHessian(critic.net, x, y), K)
    torch.testing.assert_close(structured, by_hvps, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Failures are loud
# ------------------------------------------------------------------------------------------


def test_non_finite_hvp_raises_instead_of_returning_a_default():
    # before: Nystrom returned v / damping and CG returned 0 with only a flag in info
    v = torch.ones(6, dtype=D)

    def nan_hvp(x):
        return torch.full_like(x, float("nan"))

    for solve, kw in (
        (ihvp_nystrom, {"rank": 3, "damping": 1.0}),
        (ihvp_cg, {"max_iter": 5}),
        (ihvp_neumann, {"n_terms": 5, "alpha": 0.1}),
        (ihvp_exact, {}),
    ):
        with pytest.raises(FloatingPointError, match="non-finite value"):
            solve(nan_hvp, v, **kw)
    # NaN outside the sampled block with a negative definite block: returned v / damping before
    H = -torch.eye(6, dtype=D)

    def partly_nan(x):
        y = H @ x
        y[5] = float("nan")
        return y

    with pytest.raises(FloatingPointError, match="non-finite value"):
        ihvp_nystrom(partly_nan, v, rank=3, damping=2.0, indices=torch.tensor([0, 1, 2]))
    pb = value_network_problem(n_states=16, hidden=3, seed=0)
    hvp = pb.hvp()

    def inf_hvp(x):
        return hvp(x) * float("inf")

    with pytest.raises(FloatingPointError, match="non-finite value"):
        ihvp_nystrom(inf_hvp, hvp.grad, rank=4, damping=1.0)


def test_non_finite_right_hand_side_is_rejected():
    H = random_spd(5, 0)
    v = torch.tensor([1.0, float("nan"), 0.0, 2.0, 1.0], dtype=D)
    for solve, kw in (
        (ihvp_nystrom, {"rank": 3, "damping": 1.0}),
        (ihvp_cg, {"max_iter": 5}),
        (ihvp_neumann, {"n_terms": 5, "alpha": 0.1}),
        (ihvp_exact, {}),
    ):
        with pytest.raises(ValueError, match="v must be finite"):
            solve(matvec(H), v, **kw)
    pb = value_network_problem(n_states=16, hidden=3, seed=0)
    v_dict = {k: torch.full_like(p, float("inf")) for k, p in pb.params.items()}
    with pytest.raises(ValueError, match="v must be finite"):
        ihvp_cg(pb.hvp(), v_dict, max_iter=3)
