"""M-SoBiRL: model-based bilevel RL with an amortized adjoint [YGY], and its exact variant.

Chapter 4 of the book, equation (eq-ch4-msobirl). The algorithm keeps three
warm-started states: the upper-level variable ``x_k``, the lower-level values ``V_k`` and the
adjoint ``w_k``. One outer step reads like the pseudo-code:

    pi_k    = softmax((r_{x_k} + gamma P V_k) / tau)                          policy of the current values
    G_k     = pi_k * df/dpi(x_k, pi_k),   b_k = sum_a G_k - gamma P^T G_k      right-hand side of (H2)
    A_k     = (I - gamma P_{pi_k})^T
    w_{k+1} = w_k - zeta A_k^T (A_k w_k - b_k)                                 one gradient step on 1/2||A w - b||^2
    h_k     = grad_x f + (1/tau) sum_{s,a} (G_k - pi_k w_{k+1}) grad_x r_{x_k}  the (H2) estimate
    x_{k+1} = x_k - beta h_k
    V_{k+1} = T^N_{x_{k+1}} V_k                                                N warm-started soft-VI sweeps

The *exact* variant replaces the last line by a full solve ``V_{k+1} = V*_{x_{k+1}}`` (soft policy
iteration, i.e. Newton, warm-started) and the adjoint step by the exact solve ``A_k w = b_k``, so
``h_k = grad phi(x_k)``: plain gradient descent on the hyperobjective.

Implementation notes (why it is fast): the hot loop calls the unchecked kernels of
:mod:`birl_lite.kernels` (the same soft backup, policy kernel and adjoint step every chapter uses),
uses the problem's analytic derivatives when it has them
(:class:`~birl_lite.problems.BilevelProblem`), runs without autograd, validates everything once
before the loop and never inside it. The values are kept as ``U = V / tau``, so the kernels run at
temperature 1: ``U <- logsumexp_a(r_x / tau + gamma P U)``; the log-sum-exp and the softmax
subtract the maximum, so the algorithm is stable at small temperatures (``tau = 0.01``), where
the published code overflows.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass

import torch

from . import kernels
from ._validation import DTYPE, ArrayLike, as_tensor, check_finite, check_positive_int, check_real
from .first_order import hypergradient
from .linear_solve import ConvergenceWarning
from .problems import BilevelProblem, _autograd_upper

__all__ = ["MSoBiRLConfig", "MSoBiRLHistory", "MSoBiRLResult", "m_sobirl", "amortized_adjoint_step"]


@dataclass(frozen=True)
class MSoBiRLConfig:
    """Hyperparameters of :func:`m_sobirl` (defaults: the paper's synthetic experiment).

    Attributes:
        beta: upper-level step size (paper: ``8e-3``).
        zeta: adjoint step size (paper: ``0.5``).
        n_sweeps: ``N``, warm-started soft-VI sweeps per outer step (paper: 10).
        n_adjoint_steps: gradient steps on ``1/2 ||A_k w - b_k||^2`` per outer step (paper: 1).
        max_iter: number of outer steps ``K`` (paper: 3000).
        tol: stop as soon as ``||h_k|| <= tol`` (``0``: always run ``max_iter`` steps).
        seed: seed of the initial adjoint ``w_0 ~ N(0, I_S)`` (as in the paper's code).
        exact: run the exact variant (full lower-level solve and exact adjoint every step).
        forward_tol: exact variant: relative tolerance of the lower-level solve, stopping at
            ``||T V - V||_inf <= forward_tol * max(1, (||r||_inf + tau log A) / (1 - gamma))``.
        record_true_grad: also record ``phi(x_k)`` and ``||grad phi(x_k)||`` from the exact
            hypergradient (:func:`birl_lite.first_order.hypergradient`); outside the timings.
        record_iterates: also record every iterate ``x_k``.
        adjoint: how the amortized variant updates ``w`` (ignored when ``exact``): ``"gradient"``
            (the paper's step on ``1/2 ||A_k w - b_k||^2`` with step size ``zeta``), ``"sweep"``
            (the fixed-point sweep ``w <- b_k + gamma P_{pi_k}^T w`` of chapter 3, a contraction
            with factor ``gamma`` in the l1 norm; no step size) or ``"exact"`` (the
            solve ``A_k w = b_k``, with the lower level still amortized). ``n_adjoint_steps``
            steps of the first two per outer step.
        direction: the update direction ``h_k``: ``"h2"`` (the (H2) estimate, the algorithm) or
            one of two negative controls of chapter 4 that ignore part of the lower level:
            ``"myopic"`` keeps only the immediate-reward part of the bracket of (H1), i.e.
            ``w(s) = sum_a G_k(s, a)`` (exercise 3.3's truncated bracket, ``gamma = 0`` in the
            adjoint), and ``"direct"`` uses ``h_k = grad_x f(x_k, pi_k)`` alone.
    """

    beta: float = 8e-3
    zeta: float = 0.5
    n_sweeps: int = 10
    n_adjoint_steps: int = 1
    max_iter: int = 3000
    tol: float = 0.0
    seed: int = 0
    exact: bool = False
    forward_tol: float = 1e-12
    record_true_grad: bool = False
    record_iterates: bool = False
    adjoint: str = "gradient"
    direction: str = "h2"

    def __post_init__(self) -> None:
        if self.adjoint not in ("gradient", "sweep", "exact"):
            raise ValueError(
                f"adjoint must be 'gradient', 'sweep' or 'exact', got {self.adjoint!r}"
            )
        if self.direction not in ("h2", "myopic", "direct"):
            raise ValueError(
                f"direction must be 'h2', 'myopic' or 'direct', got {self.direction!r}"
            )
        for name in ("beta", "zeta", "forward_tol"):
            value = check_real(getattr(self, name), name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
            object.__setattr__(self, name, value)
        tol = check_real(self.tol, "tol")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a finite number >= 0, got {tol}")
        object.__setattr__(self, "tol", tol)
        object.__setattr__(self, "n_sweeps", check_positive_int(self.n_sweeps, "n_sweeps"))
        object.__setattr__(
            self, "n_adjoint_steps", check_positive_int(self.n_adjoint_steps, "n_adjoint_steps")
        )
        object.__setattr__(self, "max_iter", check_positive_int(self.max_iter, "max_iter", 0))
        object.__setattr__(self, "seed", check_positive_int(self.seed, "seed", 0))
        for name in ("exact", "record_true_grad", "record_iterates"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")


@dataclass
class MSoBiRLHistory:
    """What :func:`m_sobirl` records along the way (float64 tensors).

    Attributes:
        f: ``f[k] = f(x_k, pi_k)``, the upper objective at the policy the algorithm holds,
            ``k = 0..n_iter`` (what the paper's code logs).
        h_norm: ``||h_k||``, the norm of every hypergradient estimate computed.
        time: seconds spent in each outer step (without the optional recordings below).
        phi: ``phi(x_k) = f(x_k, pi*_{x_k})``, ``k = 0..n_iter`` (``record_true_grad``), else ``None``.
        grad_norm: ``||grad phi(x_k)||`` (``record_true_grad``), else ``None``.
        x: ``[n_iter + 1, n]`` iterates (``record_iterates``), else ``None``.
    """

    f: torch.Tensor
    h_norm: torch.Tensor
    time: torch.Tensor
    phi: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None
    x: torch.Tensor | None = None

    def min_grad_norm_sq(self) -> torch.Tensor:
        """``min_{j <= k} ||grad phi(x_j)||^2`` for every ``k`` (the quantity of the O(1/k) rate)."""
        if self.grad_norm is None:
            raise ValueError("grad_norm was not recorded: run m_sobirl with record_true_grad=True")
        return torch.cummin(self.grad_norm**2, dim=0).values


@dataclass
class MSoBiRLResult:
    """The output of :func:`m_sobirl`.

    Attributes:
        x: the last iterate ``x_K`` ``[n]``.
        V: the lower-level values held at the end ``[S]`` (``V*_{x_K}`` for the exact variant).
        w: the last adjoint ``[S]``.
        pi: ``pi_K = softmax((r_{x_K} + gamma P V_K) / tau)`` ``[S, A]``.
        n_iter: outer steps taken (updates of ``x``).
        converged: whether the run stopped because ``||h_k|| <= tol``.
        history: :class:`MSoBiRLHistory`.
        config: the :class:`MSoBiRLConfig` used.
    """

    x: torch.Tensor
    V: torch.Tensor
    w: torch.Tensor
    pi: torch.Tensor
    n_iter: int
    converged: bool
    history: MSoBiRLHistory
    config: MSoBiRLConfig

    @property
    def seconds_per_iter(self) -> float:
        """Median seconds per outer step."""
        return float(self.history.time.median()) if self.history.time.numel() else float("nan")


def amortized_adjoint_step(
    P_pi: ArrayLike, gamma: float, w: ArrayLike, b: ArrayLike, zeta: float
) -> torch.Tensor:
    """One gradient step on ``1/2 ||A w - b||^2`` with ``A = (I - gamma P_pi)^T`` (chapter 4, equation (eq-ch4-msobirl)).

    ``w_new = w - zeta A^T (A w - b) = w - zeta (I - gamma P_pi) ((I - gamma P_pi)^T w - b)``.
    The fixed point is the adjoint of (H2), ``A w = b``; the step converges for
    ``0 < zeta < 2 / ||A||_2^2`` at the linear rate ``1 - zeta sigma_min(A)^2``.

    Args:
        P_pi: the state-to-state kernel ``[S, S]`` of the current policy.
        gamma: discount factor.
        w: current adjoint ``[S]``.
        b: right-hand side ``[S]``.
        zeta: step size ``> 0``.

    Returns:
        ``w_new`` of shape ``[S]``.
    """
    P_pi = as_tensor(P_pi, "P_pi")
    w, b = as_tensor(w, "w"), as_tensor(b, "b")
    S = w.shape[0]
    if tuple(P_pi.shape) != (S, S) or tuple(b.shape) != (S,) or w.ndim != 1:
        raise ValueError(
            f"P_pi must be [S, S] and w, b [S]; got {tuple(P_pi.shape)}, {tuple(w.shape)}, {tuple(b.shape)}"
        )
    gamma, zeta = check_real(gamma, "gamma"), check_real(zeta, "zeta")
    return kernels.adjoint_gradient_step(P_pi, gamma, w, b, zeta)


def _as_problem(problem) -> BilevelProblem:
    if isinstance(problem, BilevelProblem):
        return problem
    if isinstance(problem, tuple) and len(problem) == 5:
        return BilevelProblem(*problem)
    raise TypeError(
        "problem must be a BilevelProblem or a tuple (mdp, reward_fn, upper_fn, x0, tau), "
        f"got {type(problem).__name__}"
    )


def m_sobirl(
    problem: BilevelProblem | tuple,
    config: MSoBiRLConfig | None = None,
    *,
    x0: ArrayLike | None = None,
    V0: ArrayLike | None = None,
    w0: ArrayLike | None = None,
    **overrides,
) -> MSoBiRLResult:
    """Run M-SoBiRL (chapter 4, equation (eq-ch4-msobirl)), or its exact variant with ``exact=True``.

    Args:
        problem: a :class:`~birl_lite.problems.BilevelProblem`, or a tuple
            ``(mdp, reward_fn, upper_fn, x0, tau)``.
        config: the hyperparameters (:class:`MSoBiRLConfig`; its defaults when ``None``).
        x0: starting point ``[n]`` (``problem.x0`` when ``None``).
        V0: initial values ``[S]`` (zeros when ``None``; the exact variant solves from there).
        w0: initial adjoint ``[S]`` (``N(0, I)`` drawn with ``seed`` when ``None``).
        **overrides: fields of :class:`MSoBiRLConfig` to change, e.g. ``beta=1e-2, max_iter=500``.

    Returns:
        :class:`MSoBiRLResult` with the final ``x``, ``V``, ``w``, ``pi`` and the history.

    Raises:
        ValueError: (or TypeError) a bad problem, an unknown or invalid hyperparameter, or a
            problem whose ``reward_fn`` / ``upper_fn`` / analytic derivatives are inconsistent
            (checked once at ``x0`` by :meth:`~birl_lite.problems.BilevelProblem.check`).
        FloatingPointError: the iterates became non-finite (the step size ``beta`` is too large).
    """
    problem = _as_problem(problem)
    if config is None:
        config = MSoBiRLConfig()
    elif not isinstance(config, MSoBiRLConfig):
        raise TypeError(f"config must be an MSoBiRLConfig, got {type(config).__name__}")
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(MSoBiRLConfig)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(MSoBiRLConfig))
            raise TypeError(f"unknown hyperparameter(s) {unknown}; valid: {valid}")
        config = dataclasses.replace(config, **overrides)
    cfg = config

    mdp, tau = problem.mdp, problem.tau
    S, A, n = mdp.n_states, mdp.n_actions, problem.dim
    x = problem.x0.clone() if x0 is None else _vector(x0, "x0", n)
    problem.check(x)  # once: shapes, finiteness, analytic derivatives against autograd
    V = torch.zeros(S, dtype=DTYPE) if V0 is None else _vector(V0, "V0", S)
    if w0 is None:
        gen = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(S, generator=gen, dtype=DTYPE)
    else:
        w = _vector(w0, "w0", S)

    # ---- constants (no reshapes or checks inside the loop) ----------------------------------
    gamma, inv_tau = mdp.gamma, 1.0 / tau
    trans = mdp.transitions
    if trans.sparse:
        raise TypeError("m_sobirl: the problem's MDP must have dense transitions")
    beta, zeta, N, m = cfg.beta, cfg.zeta, cfg.n_sweeps, cfg.n_adjoint_steps
    exact_adjoint = cfg.exact or cfg.adjoint == "exact"
    sweep_adjoint = cfg.adjoint == "sweep"
    h2_direction, myopic_direction = cfg.direction == "h2", cfg.direction == "myopic"
    reward_fn = problem.reward_fn
    jacobian = problem.reward_jacobian or (lambda z: torch.func.jacrev(reward_fn)(z))
    upper = problem.upper_value_and_grad or (lambda z, p: _autograd_upper(problem.upper_fn, z, p))

    def solve_lower(r_s: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Exact variant: Newton (soft policy iteration) on ``U = V / tau`` to ``forward_tol``."""
        scale = kernels.value_scale(r_s * tau, tau, A, gamma)  # r_s is flat [S*A]
        U, _, ok = kernels.soft_policy_iteration(
            trans, gamma, r_s, 1.0, U, cfg.forward_tol * max(1.0, scale) / tau, 100
        )
        if not ok:
            warnings.warn(
                "m_sobirl (exact): soft policy iteration did not reach forward_tol in 100 Newton "
                "steps",
                ConvergenceWarning,
                stacklevel=3,
            )
        return U

    # Inference mode (no autograd bookkeeping at all) when the problem has analytic derivatives;
    # otherwise autograd is needed for them, and no_grad only switches off the graph of the loop.
    # The values are kept in units of tau (U = V / tau, r_s = r / tau): the kernels then run at
    # temperature 1, and one sweep is U <- logsumexp_a(r / tau + gamma P U).
    analytic = problem.reward_jacobian is not None and problem.upper_value_and_grad is not None
    with torch.inference_mode() if analytic else torch.no_grad():
        U = V * inv_tau
        r_s = reward_fn(x).reshape(-1) * inv_tau  # r_{x_k} / tau, flat [S*A]
        if cfg.exact:
            U = solve_lower(r_s, U)

        xs = [x] if (cfg.record_iterates or cfg.record_true_grad) else None
        f_hist: list[torch.Tensor] = []
        h_hist: list[torch.Tensor] = []
        t_hist: list[float] = []
        converged = False
        k = 0
        while True:
            t0 = time.perf_counter()
            # 1. the policy of the current values: pi_k = softmax((r_{x_k} + gamma P V_k) / tau)
            pi = kernels.softmax_policy(kernels.q_values(trans, gamma, r_s, U), 1.0)
            # 2. upper-level partial derivatives and the right-hand side of the adjoint system
            f, df_dx, df_dpi = upper(x, pi)
            f_hist.append(f)
            if k == cfg.max_iter:
                break
            G = pi * df_dpi  # G(s, a) = pi(a|s) df/dpi(a|s)
            b = kernels.adjoint_rhs(trans, gamma, G)
            P_pi = kernels.policy_kernel(trans, pi)
            # 3. adjoint: gradient step(s) on 1/2 ||A w - b||^2, A = (I - gamma P_pi)^T (exact: solve)
            if exact_adjoint:
                w = kernels.solve_policy_system(P_pi, gamma, b, transpose=True).x
            elif sweep_adjoint:  # w <- b + gamma P_pi^T w (chapter 3's adjoint sweep)
                for _ in range(m):
                    w = torch.addmv(b, P_pi.T, w, alpha=gamma)
            else:
                for _ in range(m):
                    w = kernels.adjoint_gradient_step(P_pi, gamma, w, b, zeta)
            # 4. hypergradient estimate (H2): grad_x f + (1/tau) sum_{s,a} (G - pi w) grad_x r
            if h2_direction:
                J = jacobian(x).reshape(S * A, n)
                coef = (G - pi * w.unsqueeze(1)).view(-1)
                h = torch.addmv(df_dx, J.T, coef, alpha=inv_tau)
            elif myopic_direction:  # negative control: w(s) = sum_a G(s, a)
                J = jacobian(x).reshape(S * A, n)
                coef = (G - pi * G.sum(dim=1, keepdim=True)).view(-1)
                h = torch.addmv(df_dx, J.T, coef, alpha=inv_tau)
            else:  # negative control "direct": grad_x f only
                h = df_dx.clone()
            h_norm = torch.linalg.vector_norm(h)
            h_hist.append(h_norm)
            if cfg.tol > 0 and float(h_norm) <= cfg.tol:
                converged = True
                t_hist.append(time.perf_counter() - t0)
                break
            # 5. upper-level step
            x = torch.add(x, h, alpha=-beta)
            # 6. lower level at x_{k+1}: N warm-started soft-VI sweeps (exact: solve to tolerance)
            r_s = reward_fn(x).reshape(-1) * inv_tau
            if cfg.exact:
                U = solve_lower(r_s, U)
            else:
                for _ in range(N):
                    U = kernels.soft_backup(trans, gamma, r_s, U, 1.0)
            t_hist.append(time.perf_counter() - t0)
            k += 1
            if xs is not None:
                xs.append(x)
            if k % 64 == 0 and not bool(torch.isfinite(h_norm)):
                break
        V = U * tau

    # outputs as ordinary tensors (clones of inference-mode tensors can be used with autograd)
    x, V, w, pi = x.clone(), V.clone(), w.clone(), pi.clone()
    if xs is not None:
        xs = [xk.clone() for xk in xs]
    f_t = torch.stack(f_hist).to(DTYPE)
    h_t = torch.stack(h_hist).to(DTYPE) if h_hist else torch.zeros(0, dtype=DTYPE)
    if not bool(torch.isfinite(f_t).all() and torch.isfinite(h_t).all()):
        bad = int(torch.nonzero(~torch.isfinite(h_t))[0]) if h_t.numel() else 0
        raise FloatingPointError(
            f"m_sobirl diverged: non-finite hypergradient estimate at step {bad} "
            f"(beta={cfg.beta:g} is too large for this problem at tau={tau:g})"
        )
    history = MSoBiRLHistory(
        f=f_t,
        h_norm=h_t,
        time=torch.tensor(t_hist, dtype=DTYPE),
        x=torch.stack(xs) if cfg.record_iterates else None,
    )
    if cfg.record_true_grad:
        history.phi, history.grad_norm = _true_gradients(problem, history, xs, cfg, x)
    return MSoBiRLResult(
        x=x, V=V, w=w, pi=pi, n_iter=k, converged=converged, history=history, config=cfg
    )


def _vector(v, name: str, size: int) -> torch.Tensor:
    t = as_tensor(v, name).detach().clone()
    if tuple(t.shape) != (size,):
        raise ValueError(f"{name} must have shape [{size}], got {tuple(t.shape)}")
    check_finite(t, name)
    return t


def _true_gradients(problem: BilevelProblem, history, xs, cfg, x_last):
    """``phi(x_k)`` and ``||grad phi(x_k)||`` by the exact first-order hypergradient (H2)."""
    if xs is None:
        raise RuntimeError("internal: record_true_grad needs the iterates")  # pragma: no cover
    phis, norms = [], []
    V = None
    for xk in xs:
        res = hypergradient(problem.mdp, problem.reward_fn, problem.upper_fn, xk, problem.tau, V0=V)
        V = res.V
        phis.append(float(res.phi))
        norms.append(float(res.grad.norm()))
    return torch.tensor(phis, dtype=DTYPE), torch.tensor(norms, dtype=DTYPE)
