"""Tests of birl_lite.linear_solve: every method against torch.linalg.solve, and every failure loud."""

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from birl_lite.linear_solve import ConvergenceWarning, SolveResult, nystrom_woodbury, solve

D = torch.float64


def random_spd(n: int, seed: int, cond: float = 50.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=D))
    return Q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=D)) @ Q.T


def random_nonsymmetric(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 3.0 * torch.eye(n, dtype=D) + torch.randn(n, n, generator=gen, dtype=D) / math.sqrt(n)


def random_stochastic(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    P = torch.rand(n, n, generator=gen, dtype=D)
    return P / P.sum(1, keepdim=True)


def rhs(n: int, seed: int, k: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + seed)
    shape = (n,) if k is None else (n, k)
    return torch.randn(*shape, generator=gen, dtype=D)


def reference(A: torch.Tensor, b: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    return torch.linalg.solve(A + damping * torch.eye(A.shape[0], dtype=A.dtype), b)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Counting:
    """A matrix-free operator with optional ``matmat`` / ``columns`` that counts its calls."""

    def __init__(self, A: torch.Tensor, matmat: bool = False, columns: bool = False) -> None:
        self.A = A
        self.calls = {"call": 0, "matmat": 0, "columns": 0}
        if matmat:
            self.matmat = self._matmat
        if columns:
            self.columns = self._columns

    def __call__(self, x):
        self.calls["call"] += 1
        return self.A @ x

    def _matmat(self, X):
        self.calls["matmat"] += 1
        return self.A @ X

    def _columns(self, K):
        self.calls["columns"] += 1
        return self.A[:, K]


def nan_after(A: torch.Tensor, good_calls: int):
    calls = [0]

    def matvec(x):
        calls[0] += 1
        y = A @ x
        return y if calls[0] <= good_calls else torch.full_like(y, float("nan"))

    return matvec


# ------------------------------------------------------------------------------------------
# Direct solves
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("damping", [0.0, 0.4])
def test_direct_dense_and_callable_match_torch_solve(seed, k, damping):
    for A in (random_spd(9, seed), random_nonsymmetric(9, seed)):
        b = rhs(9, seed, k)
        ref = reference(A, b, damping)
        for op in (A, lambda x, A=A: A @ x, Counting(A, matmat=True), Counting(A, columns=True)):
            res = solve(op, b, method="direct", damping=damping)
            assert isinstance(res, SolveResult) and res.method == "direct"
            assert res.x.shape == b.shape and res.x.dtype == b.dtype
            assert rel(res.x, ref) < 1e-12
            assert res.iterations == 0 and res.converged and res.residual < 1e-13


def test_direct_materializes_callables_with_their_fastest_product():
    A = random_spd(6, 0)
    op = Counting(A, matmat=True, columns=True)
    solve(op, rhs(6, 0), method="direct")
    assert op.calls == {"call": 0, "matmat": 1, "columns": 0}
    op = Counting(A, columns=True)
    res = solve(op, rhs(6, 0), method="direct")
    assert op.calls == {"call": 0, "matmat": 0, "columns": 1} and res.info["products"] == 6
    op = Counting(A)
    solve(op, rhs(6, 0), method="direct")
    assert op.calls["call"] == 6  # one product per unit vector, none for the residual


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok"])
def test_direct_scipy_sparse_every_format_and_multiple_columns(fmt):
    n = 40
    P = sp.random(n, n, density=0.1, random_state=np.random.default_rng(0), format="csr")
    P = sp.diags(1.0 / np.maximum(np.asarray(P.sum(1)).ravel(), 1e-12)) @ P
    A = (sp.identity(n) - 0.9 * P).asformat(fmt)
    b = rhs(n, 0, 4)
    ref = reference(torch.as_tensor(A.toarray()), b, 0.1)
    res = solve(A, b, method="direct", damping=0.1)
    assert res.info["factorization"] == "splu"
    assert rel(res.x, ref) < 1e-12 and res.converged and res.x.shape == (n, 4)


def test_direct_linear_operator():
    A = random_nonsymmetric(8, 3)
    An = A.numpy()
    L = spla.LinearOperator((8, 8), matvec=lambda x: An @ x, dtype=np.float64)
    b = rhs(8, 3)
    assert rel(solve(L, b, method="direct").x, reference(A, b)) < 1e-12


def test_direct_singular_systems_raise():
    A = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=D))
    b = torch.ones(3, dtype=D)
    for op in (A, lambda x: A @ x, sp.csr_matrix(A.numpy())):
        with pytest.raises(ValueError, match=r"A \+ damping I is singular"):
            solve(op, b, method="direct")
    assert solve(A, b, method="direct", damping=1e-3).converged  # damping makes it regular


# ------------------------------------------------------------------------------------------
# Iterative solves
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_matches_dense_solve_dense_callable_sparse(seed):
    A = random_spd(15, seed)
    b = rhs(15, seed)
    for damping in (0.0, 0.3):
        ref = reference(A, b, damping)
        for op in (A, lambda x: A @ x, sp.csr_matrix(A.numpy())):
            res = solve(op, b, method="cg", damping=damping, tol=1e-12)
            assert res.converged and res.residual <= 1e-12 and 0 < res.iterations <= 15 * 10
            assert rel(res.x, ref) < 1e-9
            assert len(res.info["residual_norms"]) == res.iterations + 1


def test_cg_multiple_columns_and_x0():
    A = random_spd(12, 4)
    B = rhs(12, 4, 3)
    B[:, 1] = 0.0  # a zero column is solved by x = 0 with no iteration
    res = solve(A, B, method="cg", tol=1e-12)
    assert res.x.shape == (12, 3) and rel(res.x, reference(A, B)) < 1e-9
    assert torch.equal(res.x[:, 1], torch.zeros(12, dtype=D))
    assert len(res.info["columns"]) == 3 and res.info["columns"][1]["residual_norms"].numel() == 1
    per_column = [solve(A, B[:, j], method="cg", tol=1e-12) for j in range(3)]
    assert res.iterations == max(r.iterations for r in per_column)
    assert res.residual == max(r.residual for r in per_column)
    # a good starting point needs fewer iterations; the exact one needs none
    x_star = reference(A, B[:, 0])
    near = solve(A, B[:, 0], method="cg", tol=1e-12, x0=x_star + 1e-6)
    assert near.converged and near.iterations < per_column[0].iterations
    exact = solve(A, B[:, 0], method="cg", tol=1e-8, x0=x_star)
    assert exact.iterations == 0 and exact.converged


def test_cg_negative_curvature_is_reported_and_zero_curvature_stops():
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(10, 10, generator=gen, dtype=D)
    res = solve(0.5 * (B + B.T), torch.ones(10, dtype=D), method="cg", max_iter=10, warn=False)
    assert res.info["negative_curvature"]
    # p^T A p = 0 at the first step: CG cannot take it; stop, flag, warn (not a silent zero)
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=D))
    with pytest.warns(ConvergenceWarning, match="did not reach"):
        res = solve(A, torch.ones(2, dtype=D), method="cg")
    assert res.info["breakdown"] and res.info["breakdown_iteration"] == 1
    assert not res.converged and res.iterations == 0 and res.residual == pytest.approx(1.0)


def test_neumann_is_the_policy_evaluation_sweep():
    n, gamma, m = 20, 0.9, 15
    P = random_stochastic(n, 0)
    r = rhs(n, 0)
    x = torch.zeros(n, dtype=D)
    for _ in range(m):
        x = r + gamma * P @ x
    A = torch.eye(n, dtype=D) - gamma * P
    res = solve(A, r, method="neumann", tol=0.0, max_iter=m, warn=False)
    assert res.iterations == m and not res.converged
    torch.testing.assert_close(res.x, x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(res.info["residual_vector"], r - A @ res.x)
    assert res.residual == pytest.approx(float((r - A @ res.x).norm() / r.norm()), rel=1e-12)
    full = solve(A, r, method="neumann", tol=1e-11)
    assert full.converged and full.residual <= 1e-11 and rel(full.x, reference(A, r)) < 1e-9


def test_neumann_partial_sums_damping_alpha_x0_and_columns():
    H = random_spd(6, 2, cond=10.0)
    v = rhs(6, 2, 2)
    alpha, damping, m = 0.08, 0.5, 9
    Bm = torch.eye(6, dtype=D) - alpha * (H + damping * torch.eye(6, dtype=D))
    # m steps from zero give the series alpha sum_{j < m} B^j v
    series = alpha * sum(torch.linalg.matrix_power(Bm, j) @ v for j in range(m))
    res = solve(
        H, v, method="neumann", alpha=alpha, damping=damping, tol=0.0, max_iter=m, warn=False
    )
    torch.testing.assert_close(res.x, series, rtol=1e-12, atol=1e-14)
    assert res.info["residual_vector"].shape == (6, 2)
    x_star = reference(H, v, damping)
    start = solve(H, v, method="neumann", alpha=alpha, damping=damping, x0=x_star, tol=1e-10)
    assert start.iterations == 0 and start.converged and torch.equal(start.x, x_star)


def test_neumann_divergence_overflows_loudly():
    with pytest.raises(FloatingPointError, match="value .* at iteration 1025 .*diverging"):
        solve(
            3.0 * torch.eye(3, dtype=D),
            torch.ones(3, dtype=D),
            method="neumann",
            tol=0.0,
            max_iter=5000,
        )


@pytest.mark.parametrize("method", ["gmres", "bicgstab"])
def test_krylov_scipy_methods(method):
    A = random_nonsymmetric(14, 5)
    B = rhs(14, 5, 2)
    ref = reference(A, B, 0.2)
    for op in (A, lambda x: A @ x, sp.csr_matrix(A.numpy())):
        res = solve(op, B, method=method, damping=0.2, tol=1e-11)
        assert res.converged and res.residual <= 1e-11 and res.iterations > 0
        assert rel(res.x, ref) < 1e-8 and res.x.shape == B.shape
    x_star = ref[:, 0]
    warm = solve(A, B[:, 0], method=method, damping=0.2, tol=1e-8, x0=x_star)
    assert warm.converged and warm.iterations <= 1


@pytest.mark.parametrize("form", ["dense", "csr", "coo", "linear_operator", "callable"])
def test_every_method_on_one_spd_system_in_every_form(form):
    # tridiagonal 1-D Laplacian + I: SPD, eigenvalues in (1, 5), sparse
    n = 30
    L = sp.diags([-np.ones(n - 1), 2.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]) + sp.identity(n)
    dense = torch.as_tensor(L.toarray())
    A = {
        "dense": dense,
        "csr": L.tocsr(),
        "coo": L.tocoo(),
        "linear_operator": spla.aslinearoperator(L.tocsr()),
        "callable": lambda x: dense @ x,
    }[form]
    B = rhs(n, 9, 2)
    ref = reference(dense, B, 0.5)
    for method, kw in (
        ("direct", {}),
        ("cg", {}),
        ("neumann", {"alpha": 1 / 5.5}),
        ("gmres", {}),
        ("bicgstab", {}),
        ("nystrom", {"rank": n}),
    ):
        unmeasured = method == "nystrom" and form == "callable"  # residual would cost a product
        res = solve(A, B, method=method, damping=0.5, **kw, warn=not unmeasured)
        assert rel(res.x, ref) < 1e-8, method
        assert res.converged != unmeasured, method


def test_float32_right_hand_side_keeps_its_dtype():
    A = random_spd(7, 1)
    b = rhs(7, 1).float()
    for method, kw in (
        ("direct", {}),
        ("cg", {"tol": 1e-5}),
        ("nystrom", {"rank": 7, "damping": 1.0}),
    ):
        res = solve(lambda x: A.float() @ x, b, method=method, **kw, warn=False)
        assert res.x.dtype == torch.float32
    res = solve(A, b, method="gmres", tol=1e-6)
    assert res.x.dtype == torch.float32 and res.converged


# ------------------------------------------------------------------------------------------
# Nystrom
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_nystrom_full_rank_is_exact_and_columns_solve_at_once(seed):
    A = random_spd(10, seed)
    B = rhs(10, seed, 3)
    for damping in (1e-2, 1.0):
        ref = reference(A, B, damping)
        res = solve(A, B, method="nystrom", rank=10, damping=damping)
        assert rel(res.x, ref) < 1e-9 and res.converged and res.info["rank_kept"] == 10
        one = solve(A, B[:, 1], method="nystrom", indices=res.info["indices"], damping=damping)
        torch.testing.assert_close(one.x, res.x[:, 1], rtol=1e-12, atol=1e-14)


def test_nystrom_matches_the_woodbury_formula_and_is_deterministic():
    A = random_spd(25, 3)
    b = rhs(25, 3)
    K = torch.tensor([3, 17, 8, 0])
    res = solve(A, b, method="nystrom", indices=K, damping=0.5, warn=False)
    u, _ = nystrom_woodbury(A[:, K], A[K][:, K], b, 0.5)
    assert torch.equal(res.x, u) and torch.equal(res.info["indices"], K)
    dense = A[:, K] @ torch.linalg.solve(A[K][:, K], A[K, :])
    assert rel(res.x, reference(dense, b, 0.5)) < 1e-10
    # the residual is against A itself: a rank-4 approximation does not reach 1e-10
    assert res.info["residual_measured"] and res.residual > 1e-3 and not res.converged

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return solve(A, b, method="nystrom", rank=5, damping=1.0, generator=g, warn=False)

    a, a2, c = draw(7), draw(7), draw(8)
    assert torch.equal(a.x, a2.x) and torch.equal(a.info["indices"], a2.info["indices"])
    assert not torch.equal(a.info["indices"], c.info["indices"])


def test_nystrom_uses_structured_columns_and_does_not_measure_matrix_free_residuals():
    A = random_spd(12, 6)
    op = Counting(A, matmat=True, columns=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve(op, rhs(12, 6), method="nystrom", rank=4, damping=1.0, warn=False)
    assert op.calls == {"call": 0, "matmat": 0, "columns": 1} and res.info["products"] == 4
    assert math.isnan(res.residual) and not res.info["residual_measured"] and not res.converged
    with pytest.warns(ConvergenceWarning, match="not measured"):
        solve(op, rhs(12, 6), method="nystrom", rank=4, damping=1.0)


# ------------------------------------------------------------------------------------------
# Convergence flags and warnings
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cg", "neumann", "gmres", "bicgstab"])
def test_converged_is_residual_below_tol(method):
    A = random_spd(10, 7, cond=5.0)
    A = A / float(torch.linalg.eigvalsh(A)[-1])  # eigenvalues in [0.2, 1]: Richardson converges
    b = rhs(10, 7)
    ok = solve(A, b, method=method, tol=1e-9)
    assert ok.converged and ok.residual <= 1e-9
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        short = solve(A, b, method=method, tol=1e-30, max_iter=1)
    assert not short.converged and short.residual > 1e-30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = solve(A, b, method=method, tol=1e-30, max_iter=1, warn=False)
    assert not quiet.converged


def test_exact_solution_within_the_budget_is_converged_even_with_zero_tolerance():
    b = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Richardson with alpha = 2 on A = I / 2 lands on x = 2 b in one step
        res = solve(
            0.5 * torch.eye(3, dtype=D), b, method="neumann", alpha=2.0, tol=0.0, max_iter=1
        )
        assert res.converged and res.residual == 0.0 and torch.equal(res.x, 2 * b)
        # CG on the identity: exact after one iteration
        res = solve(lambda x: x, b, method="cg", tol=0.0, max_iter=1)
        assert res.converged and res.iterations == 1 and torch.equal(res.x, b)
        zero = solve(torch.eye(3, dtype=D), torch.zeros(3, dtype=D), method="cg")
        assert zero.converged and zero.residual == 0.0 and zero.iterations == 0


def test_convergence_warning_is_a_runtime_warning():
    assert issubclass(ConvergenceWarning, RuntimeWarning)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["direct", "cg", "neumann", "gmres", "bicgstab", "nystrom"])
def test_non_finite_operator_output_raises_with_the_iteration(method):
    A = random_spd(6, 0)
    A = A / float(torch.linalg.eigvalsh(A)[-1])
    kw = {"rank": 3, "damping": 1.0} if method == "nystrom" else {"tol": 0.0, "max_iter": 20}
    if method == "direct":
        kw = {}
    with pytest.raises(FloatingPointError, match="operator A returned a non-finite value"):
        solve(nan_after(A, 0), torch.ones(6, dtype=D), method=method, **kw)
    if method in ("cg", "neumann"):
        with pytest.raises(FloatingPointError, match="at iteration 3"):
            solve(nan_after(A, 2), torch.ones(6, dtype=D), method=method, **kw)
    bad = A.clone()
    bad[2, 2] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite"):
        solve(bad, torch.ones(6, dtype=D), method=method, **kw, warn=False)


def test_clear_errors():
    A = random_spd(4, 0)
    b = torch.ones(4, dtype=D)
    with pytest.raises(ValueError, match="b must be finite"):
        solve(A, torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=D))
    with pytest.raises(TypeError, match="b must be a torch tensor"):
        solve(A, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="method must be one of"):
        solve(A, b, method="lu")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="damping"):
            solve(A, b, damping=bad)
    with pytest.raises(ValueError, match="damping must be a finite number > 0"):
        solve(A, b, method="nystrom", rank=2)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        solve(A, b, method="nystrom", rank=0, damping=1.0)
    with pytest.raises(ValueError, match="rank must be <= the dimension 4"):
        solve(A, b, method="nystrom", rank=5, damping=1.0)
    with pytest.raises(ValueError, match="needs rank"):
        solve(A, b, method="nystrom", damping=1.0)
    with pytest.raises(ValueError, match="distinct"):
        solve(A, b, method="nystrom", indices=[1, 1], damping=1.0)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        solve(A, b, method="nystrom", indices=[1, 7], damping=1.0)
    with pytest.raises(TypeError, match="generator"):
        solve(A, b, method="nystrom", rank=2, damping=1.0, generator=3)
    with pytest.raises(ValueError, match="square"):
        solve(torch.ones(4, 3, dtype=D), b)
    with pytest.raises(ValueError, match="square"):
        solve(sp.csr_matrix(np.ones((4, 3))), b)
    with pytest.raises(ValueError, match="A is 4 x 4 but b has 5 rows"):
        solve(A, torch.ones(5, dtype=D))
    with pytest.raises(ValueError, match=r"returned shape \(5,\), expected \(4,\)"):
        solve(lambda x: torch.ones(5, dtype=D), b, method="cg")
    with pytest.raises(TypeError, match="A must be a torch tensor"):
        solve("A", b)
    with pytest.raises(ValueError, match="x0 must be a tensor of the shape of b"):
        solve(A, b, method="cg", x0=torch.zeros(3, dtype=D))
    with pytest.raises(ValueError, match="x0 is only used by iterative methods"):
        solve(A, b, x0=torch.zeros(4, dtype=D))
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        solve(A, b, method="cg", max_iter=0)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        solve(A, b, method="neumann", alpha=0.0)
    with pytest.raises(ValueError, match="alpha is only used by method='neumann'"):
        solve(A, b, method="cg", alpha=0.5)
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        solve(A, b, method="cg", tol=-1.0)
    with pytest.raises(ValueError, match="only used by method='nystrom'"):
        solve(A, b, method="cg", rank=2)
