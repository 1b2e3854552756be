"""Claims of chapter 7 (implicit differentiation, Nystrom iHVP) checked outside the notebook.

* BLPO's "+I" core (:func:`~birl_lite.ihvp.nystrom_plus_identity`) is exactly the damped inverse of
  ``C (M + I)^{-1} C^T``, not of the Nystrom approximation ``C M^{-1} C^T``; it uses the same
  columns as :func:`~birl_lite.ihvp.ihvp_nystrom` for the same generator.
* The zero-HVP answer ``u = v / lambda`` is a baseline the rank-5 Nystrom iHVP barely beats on the
  fitted critic of section 7.5 (it removes well under half of that baseline's error).
* ``||u|| <= ||v|| / lambda`` bounds ``u`` only: the correction ``c = grad^2_{theta w} g u`` grows
  with the mixed derivative.
"""

import torch

from birl_lite.ihvp import (
    dense_hessian,
    ihvp_exact,
    ihvp_nystrom,
    ihvp_nystrom_plus_identity,
    implicit_hypergradient,
    nystrom_plus_identity,
    nystrom_woodbury,
    value_network_problem,
)

D = torch.float64


def _spd_case(seed: int, n: int = 12, k: int = 4):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=D))
    H = Q @ torch.diag(torch.logspace(-2, 1, n, dtype=D)) @ Q.T
    H = 0.5 * (H + H.T)
    K = torch.randperm(n, generator=gen)[:k]
    v = torch.randn(n, generator=gen, dtype=D)
    return H, K, v


def test_plus_identity_core_is_the_damped_inverse_of_the_shifted_approximation():
    for seed in range(10):
        H, K, v = _spd_case(seed)
        C, M = H[:, K], H[K][:, K]
        for damping in (0.01, 1.0, 50.0):
            u, info = nystrom_plus_identity(C, M, v, damping)
            eye_k = torch.eye(len(K), dtype=D)
            H_tilde = C @ torch.linalg.solve(M + eye_k, C.T)
            dense = torch.linalg.solve(H_tilde + damping * torch.eye(len(v), dtype=D), v)
            assert torch.allclose(u, dense, rtol=1e-9, atol=1e-12)
            # BLPO's literal formula
            blpo = (
                v / damping
                - C @ torch.linalg.solve(M + C.T @ C / damping + eye_k, C.T @ v) / damping**2
            )
            assert torch.allclose(u, blpo, rtol=1e-12, atol=1e-14)
            # it differs from the Nystrom answer (shift 1 is not negligible against M here)
            u_ny, _ = nystrom_woodbury(C, M, v, damping)
            assert float((u - u_ny).norm()) > 1e-6 * float(u_ny.norm())
            # M + I is positive definite here, so the bound holds
            assert float(u.norm()) <= float(v.norm()) / damping * (1 + 1e-12)
            assert info["shifted_eigenvalues_M"].min() > 0


def test_plus_identity_with_zero_shift_is_the_plain_woodbury_formula():
    H, K, v = _spd_case(3)
    C, M = H[:, K], H[K][:, K]
    u0, _ = nystrom_plus_identity(C, M, v, 0.5, shift=0.0)
    plain, _ = nystrom_woodbury(C, M, v, 0.5, safeguard="none")
    assert torch.allclose(u0, plain, rtol=1e-12, atol=1e-14)


def test_plus_identity_solver_uses_the_same_columns_as_ihvp_nystrom():
    H, _, v = _spd_case(5, n=20)
    op = H.__matmul__
    a = ihvp_nystrom(op, v, rank=5, damping=2.0, generator=torch.Generator().manual_seed(7))
    b = ihvp_nystrom_plus_identity(
        op, v, rank=5, damping=2.0, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(a.info["indices"], b.info["indices"])
    assert a.n_hvp == b.n_hvp == 5
    K = b.info["indices"]
    u, _ = nystrom_plus_identity(H[:, K], H[K][:, K], v, 2.0)
    assert torch.allclose(b.u, u, rtol=1e-12, atol=1e-14)


def test_rank5_nystrom_removes_little_of_the_zero_hvp_error_on_the_critic():
    critic = value_network_problem(n_states=256, state_dim=4, hidden=16, fit_steps=300, seed=0)
    hvp = critic.hvp()
    H = dense_hessian(hvp)
    v = torch.randn(hvp.dim, generator=torch.Generator().manual_seed(3), dtype=D)

    def rel(u, ref):
        return float((u - ref).norm() / ref.norm())

    for damping in (1.0, 50.0):
        u_true = ihvp_exact(H.__matmul__, v, damping=damping).u
        zero = rel(v / damping, u_true)
        eigh, plus = [], []
        for s in range(5):
            g = torch.Generator().manual_seed(s)
            eigh.append(rel(ihvp_nystrom(hvp, v, rank=5, damping=damping, generator=g).u, u_true))
            g = torch.Generator().manual_seed(s)
            plus.append(
                rel(
                    ihvp_nystrom_plus_identity(hvp, v, rank=5, damping=damping, generator=g).u,
                    u_true,
                )
            )
        eigh_med, plus_med = sorted(eigh)[2], sorted(plus)[2]
        assert eigh_med < zero and plus_med < zero  # both beat doing nothing ...
        assert 1 - eigh_med / zero < 0.5  # ... by less than half of its error
        assert plus_med > eigh_med  # the +I core removes even less


def test_bound_on_u_does_not_bound_the_correction():
    # g(theta, w) = 1/2 w^T A w - s theta^T w: grad^2_{theta w} g = -s I, so c = -s u
    n = 6
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(n, n, generator=gen, dtype=D)
    A = B @ B.T + torch.eye(n, dtype=D)
    target = torch.randn(n, generator=gen, dtype=D)
    theta = torch.zeros(n, dtype=D)
    norms = []
    for s in (1.0, 10.0, 100.0):
        w_star = torch.linalg.solve(A, s * theta)
        res = implicit_hypergradient(
            lambda t, w: 0.5 * ((w - target) ** 2).sum(),
            lambda t, w, s=s: 0.5 * w @ A @ w - s * t @ w,
            theta,
            w_star,
            solver="nystrom",
            rank=2,
            damping=1.0,
            generator=torch.Generator().manual_seed(1),
        )
        u = res.ihvp.u
        v = w_star - target
        assert float(u.norm()) <= float(v.norm()) / 1.0 * (1 + 1e-12)
        norms.append(float(res.correction.norm()))
    assert norms[2] > 50 * norms[0]
