"""The BLPO hypergradient on a tabular MDP, exactly and by sampling (chapter 8, section 8.3).

A softmax actor ``pi_theta(a|s) = softmax(theta[s])`` and a linear critic ``V_w(s) = phi(s) . w``
on a small :class:`~birl_lite.mdp.TabularMDP`, with episodes of ``T`` steps from ``rho``. Data are
sampled by the rollout policy ``pi_old = pi_{theta_old}``.

* Follower (critic) loss, with targets fixed per rollout (the finite-horizon values
  ``y_t(s) = E_old[G_t | s_t = s]`` of the rollout policy, ``G_t`` the return to the horizon)::

      L(theta, w) = (1/T) sum_t sum_s p_t^theta(s) (phi(s) . w - y_t(s))^2,
      p_0 = rho,  p_{t+1} = p_t P_{pi_theta}                    (theta enters through the data)

  (the sampled loss ``mean_t (phi(s_t) . w - G_t)^2`` has this expectation plus a
  ``w``-independent variance).
* Leader (actor) objective: the PPO surrogate at ``theta = theta_old`` (clipping is inactive at
  ratio 1), with GAE advantages computed from the critic ``w``::

      J(theta, w) = (1/T) sum_t sum_s p_t^old(s) sum_a pi_theta(a|s) Abar_t^w(s, a),
      Abar_t^w(s, a) = E_old[A_t^GAE(w) | s_t = s, a_t = a]
                     = sum_{l=0}^{T-1-t} (gamma lam)^l D_l(s, a),
      D_0 = deltabar,  D_l(s, a) = sum_s' P(s'|s, a) (P_old^{l-1} deltabar_old)(s'),
      deltabar(s, a) = r(s, a) + gamma (P V_w)(s, a) - V_w(s).

* Best response ``w*(theta)`` in closed form (weighted least squares), the Hessian
  ``grad^2_ww L = (2/T) sum_t Phi^T diag(p_t) Phi``, the mixed term ``grad_theta (grad_w L . u)``
  and the hypergradient ``grad F = grad_theta J - grad^2_{theta w} L [grad^2_ww L]^{-1} grad_w J``
  by autograd; and, independently, ``d/dtheta J(theta, w*(theta))`` by autograd through the closed
  form of ``w*`` (no implicit function theorem).

The sampled estimator :func:`sampled_hypergradient` is the one BLPO uses on networks
(:mod:`birl_lite.actor_critic.blpo`): the same differentiable GAE, clipped surrogate, follower
loss, iHVP and score-function mixed term, on ``N`` sampled trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import (
    DTYPE,
    ArrayLike,
    as_tensor,
    check_choice,
    check_positive_int,
    check_real,
)
from ..ihvp import ihvp_cg, ihvp_exact, ihvp_nystrom, make_hvp
from ..mdp import TabularMDP, random_mdp, random_reward
from ..soft import reward_under, transition_under
from .blpo import differentiable_gae
from .ppo import clipped_surrogate, critic_loss
from .rollout import discount_matrix

__all__ = [
    "EstimatorComparison",
    "EstimatorStats",
    "ExactHypergradient",
    "LeaderAlignment",
    "RatioWeightRow",
    "SampledHypergradient",
    "Trajectories",
    "TabularBLPOProblem",
    "compare_estimators",
    "estimator_stats",
    "exact_advantage_gradient",
    "exact_hypergradient",
    "leader_alignment",
    "per_step_ratio_expectation",
    "ratio_weight_check",
    "sample_trajectories",
    "sampled_hypergradient",
    "tabular_blpo_problem",
]


@dataclass(frozen=True)
class TabularBLPOProblem:
    """A softmax-actor / linear-critic Stackelberg problem on a tabular MDP.

    Attributes:
        mdp: dynamics ``P [S, A, S]``, ``gamma``, ``rho``.
        r: rewards ``[S, A]``.
        phi: critic features ``[S, k]`` (one-hot: ``torch.eye(S)``).
        theta_old: logits ``[S, A]`` of the rollout policy.
        horizon: episode length ``T``.
        lam: GAE ``lambda``.
    """

    mdp: TabularMDP
    r: torch.Tensor
    phi: torch.Tensor
    theta_old: torch.Tensor
    horizon: int
    lam: float

    @property
    def pi_old(self) -> torch.Tensor:
        """The rollout policy ``softmax(theta_old)``, ``[S, A]``."""
        return torch.softmax(self.theta_old, dim=-1)

    def state_distributions(self, pi: torch.Tensor) -> torch.Tensor:
        """``p_t(s) = Pr(s_t = s)`` under ``pi`` for ``t = 0..T-1``, ``[T, S]`` (differentiable)."""
        P_pi = transition_under(self.mdp, pi)
        p = [self.mdp.rho]
        for _ in range(self.horizon - 1):
            p.append(p[-1] @ P_pi)
        return torch.stack(p)

    def targets(self) -> torch.Tensor:
        """``y_t(s) = E_old[G_t | s_t = s]``, return to the horizon, ``[T, S]``."""
        pi = self.pi_old
        P_pi, r_pi = transition_under(self.mdp, pi), reward_under(pi, self.r)
        V = [torch.zeros(self.mdp.n_states, dtype=DTYPE)]
        for _ in range(self.horizon):
            V.append(r_pi + self.mdp.gamma * P_pi @ V[-1])
        return torch.stack(V[1:][::-1])

    def follower_loss(self, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``L(theta, w)`` (without its ``w``-independent variance term), a scalar."""
        p = self.state_distributions(torch.softmax(theta, dim=-1))
        resid = self.phi @ w - self.targets()  # [T, S]
        return (p * resid.square()).sum() / self.horizon

    def best_response(self, theta: torch.Tensor) -> torch.Tensor:
        """``w*(theta)``: the weighted least-squares fit ``[k]`` (differentiable in ``theta``)."""
        p = self.state_distributions(torch.softmax(theta, dim=-1))
        weight = p.sum(0)  # [S]
        A = self.phi.T @ (weight[:, None] * self.phi)
        b = self.phi.T @ (p * self.targets()).sum(0)
        return torch.linalg.solve(A, b)

    def proximal_response(
        self, theta: torch.Tensor, anchor: torch.Tensor, damping: float
    ) -> torch.Tensor:
        """``argmin_w L(theta, w) + (damping/2) ||w - anchor||^2`` ``[k]`` in closed form
        (differentiable in ``theta``; ``anchor`` is held fixed): the proximal follower whose
        implicit gradient is BLPO's damped formula (chapter 8, section 8.2)."""
        p = self.state_distributions(torch.softmax(theta, dim=-1))
        A = self.phi.T @ (p.sum(0)[:, None] * self.phi)
        b = self.phi.T @ (p * self.targets()).sum(0)
        eye = torch.eye(A.shape[0], dtype=DTYPE)
        scale = 2.0 / self.horizon  # grad_w L = scale (A w - b)
        return torch.linalg.solve(scale * A + damping * eye, scale * b + damping * anchor.detach())

    def expected_advantages(self, w: torch.Tensor) -> torch.Tensor:
        """``Abar_t^w(s, a)``, ``[T, S, A]``: the expected GAE under the rollout policy."""
        g, gl = self.mdp.gamma, self.mdp.gamma * self.lam
        V = self.phi @ w
        delta = self.r + g * self.mdp.expect_next(V) - V[:, None]  # [S, A]
        P_old = transition_under(self.mdp, self.pi_old)
        delta_old = reward_under(self.pi_old, delta)  # [S]
        D = [delta]
        x = delta_old
        for _ in range(1, self.horizon):
            D.append(self.mdp.expect_next(x))
            x = P_old @ x
        D = torch.stack(D)  # [T, S, A], D[l]
        A = []
        for t in range(self.horizon):
            n = self.horizon - t
            coef = gl ** torch.arange(n, dtype=DTYPE)
            A.append(torch.einsum("l,lsa->sa", coef, D[:n]))
        return torch.stack(A)

    def leader_objective(self, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``J(theta, w)``: the surrogate with data from ``pi_old``, a scalar."""
        p_old = self.state_distributions(self.pi_old)
        pi = torch.softmax(theta, dim=-1)
        return torch.einsum("ts,sa,tsa->", p_old, pi, self.expected_advantages(w)) / self.horizon


def tabular_blpo_problem(
    n_states: int = 6,
    n_actions: int = 3,
    n_features: int | None = 4,
    *,
    horizon: int = 10,
    gamma: float = 0.9,
    lam: float = 0.95,
    seed: int = 0,
) -> TabularBLPOProblem:
    """A random :class:`TabularBLPOProblem`: :func:`~birl_lite.mdp.random_mdp`, rewards
    ``U(0, 1)``, Gaussian features ``[S, n_features]`` (one-hot when ``n_features=None``) and
    logits ``theta_old ~ N(0, 1)``; deterministic in ``seed``."""
    S = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions")
    horizon = check_positive_int(horizon, "horizon", minimum=2)
    lam = check_real(lam, "lam")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    mdp = random_mdp(S, A, seed, gamma=gamma)
    r = random_reward(S, A, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    if n_features is None:
        phi = torch.eye(S, dtype=DTYPE)
    else:
        k = check_positive_int(n_features, "n_features")
        if k > S:
            raise ValueError(f"n_features must be <= n_states={S}, got {k}")
        phi = torch.randn(S, k, generator=gen, dtype=DTYPE)
    theta_old = torch.randn(S, A, generator=gen, dtype=DTYPE)
    return TabularBLPOProblem(mdp, r, phi, theta_old, horizon, float(lam))


@dataclass
class ExactHypergradient:
    """Exact terms at ``(theta_old, w*)`` (:func:`exact_hypergradient`).

    Attributes:
        w_star: best response ``[k]``. hessian: ``grad^2_ww L`` ``[k, k]``.
        grad_theta: ``grad_theta J`` ``[S, A]``. grad_w: ``grad_w J`` ``[k]``.
        u: ``hessian^{-1} grad_w`` ``[k]``. mixed: ``grad^2_{theta w} L u`` ``[S, A]``.
        hypergradient: ``grad_theta - mixed`` ``[S, A]``.
        total_derivative: ``d/dtheta J(theta, w*(theta))`` by autograd through ``w*`` ``[S, A]``.
    """

    w_star: torch.Tensor
    hessian: torch.Tensor
    grad_theta: torch.Tensor
    grad_w: torch.Tensor
    u: torch.Tensor
    mixed: torch.Tensor
    hypergradient: torch.Tensor
    total_derivative: torch.Tensor


def exact_hypergradient(problem: TabularBLPOProblem, damping: float = 0.0) -> ExactHypergradient:
    """Every term of the BLPO hypergradient at ``theta_old`` and ``w*(theta_old)``, exactly.

    With ``damping = nu > 0`` the iHVP is ``u = (H + nu I)^{-1} grad_w J`` (BLPO's damped
    solve) and ``total_derivative`` is that of ``J(theta, w+(theta))`` for the *proximal*
    follower ``w+(theta) = argmin_w L(theta, w) + (nu/2) ||w - w_k||^2`` anchored at
    ``w_k = w*(theta_old)`` (:meth:`TabularBLPOProblem.proximal_response`), whose Hessian is
    ``H + nu I``: the damped formula is its exact implicit gradient (chapter 8, section 8.2).
    """
    nu = check_real(damping, "damping")
    if nu < 0:
        raise ValueError(f"damping must be >= 0, got {nu}")
    th = problem.theta_old.clone().requires_grad_(True)
    w_star = problem.best_response(problem.theta_old).detach()
    w = w_star.clone().requires_grad_(True)
    J = problem.leader_objective(th, w)
    g_theta, g_w = torch.autograd.grad(J, (th, w))
    H = torch.func.hessian(lambda x: problem.follower_loss(problem.theta_old, x))(w_star)
    u = torch.linalg.solve(H + nu * torch.eye(H.shape[0], dtype=DTYPE), g_w)
    grad_w_L = torch.autograd.grad(problem.follower_loss(th, w), w, create_graph=True)[0]
    (mixed,) = torch.autograd.grad(grad_w_L @ u, th)
    th2 = problem.theta_old.clone().requires_grad_(True)
    response = problem.best_response(th2) if nu == 0 else problem.proximal_response(th2, w_star, nu)
    (total,) = torch.autograd.grad(problem.leader_objective(th2, response), th2)
    return ExactHypergradient(w_star, H.detach(), g_theta, g_w, u, mixed, g_theta - mixed, total)


@dataclass
class Trajectories:
    """``N`` sampled episodes of ``T`` steps: ``states``, ``actions``, ``next_states`` (int64)
    and ``rewards`` (float64), all ``[T, N]``."""

    states: torch.Tensor
    actions: torch.Tensor
    next_states: torch.Tensor
    rewards: torch.Tensor


def sample_trajectories(problem: TabularBLPOProblem, n: int, seed: int) -> Trajectories:
    """``n`` episodes of ``T`` steps under ``pi_old`` from ``rho`` (vectorized inverse-CDF draws,
    the same sampling rule as :class:`~birl_lite.envs.TabularEnv`), deterministic in ``seed``."""
    n = check_positive_int(n, "n")
    rng = np.random.default_rng(seed)
    P = problem.mdp.P.numpy()
    cdf_rho = np.cumsum(problem.mdp.rho.numpy())
    cdf_pi = np.cumsum(problem.pi_old.numpy(), axis=-1)
    cdf_P = np.cumsum(P, axis=-1)
    r = problem.r.numpy()
    T = problem.horizon

    def draw(cdf_rows: np.ndarray) -> np.ndarray:
        u = rng.random(cdf_rows.shape[0]) * cdf_rows[:, -1]
        return np.minimum((cdf_rows <= u[:, None]).sum(-1), cdf_rows.shape[1] - 1)

    s = draw(np.broadcast_to(cdf_rho, (n, cdf_rho.size)))
    S_, A_, S2_, R_ = [], [], [], []
    for _ in range(T):
        a = draw(cdf_pi[s])
        s2 = draw(cdf_P[s, a])
        S_.append(s)
        A_.append(a)
        S2_.append(s2)
        R_.append(r[s, a])
        s = s2
    to = torch.from_numpy
    return Trajectories(
        to(np.stack(S_)), to(np.stack(A_)), to(np.stack(S2_)), to(np.stack(R_)).to(DTYPE)
    )


@dataclass
class SampledHypergradient:
    """The sampled BLPO estimator (:func:`sampled_hypergradient`); fields as in
    :class:`ExactHypergradient` (``hessian`` is the sampled one), plus ``n`` trajectories."""

    grad_theta: torch.Tensor
    grad_w: torch.Tensor
    hessian: torch.Tensor
    u: torch.Tensor
    mixed: torch.Tensor
    hypergradient: torch.Tensor
    n: int


def sampled_hypergradient(
    problem: TabularBLPOProblem,
    w: ArrayLike,
    n: int,
    *,
    seed: int = 0,
    solver: str = "exact",
    rank: int | None = None,
    damping: float = 0.0,
    u: ArrayLike | None = None,
    strict: bool = True,
    mixed_term: str = "book",
    indices: torch.Tensor | None = None,
) -> SampledHypergradient:
    """BLPO's estimator of the hypergradient from ``n`` sampled episodes (chapter 8, equation
    (eq-ac-mixed)).

    Exactly the computation of :func:`~birl_lite.actor_critic.blpo.blpo_update` with the linear
    critic: GAE from ``V_w`` (differentiable in ``w``), the clipped surrogate at ratio 1, the
    follower loss ``mean (V_w(s_t) - G_t)^2`` with Monte-Carlo return targets ``G_t``, its
    Hessian by HVPs, the iHVP, and the mixed term
    ``grad_theta mean_t ratio_t sum_{t' > t} 2 (V_w(s_t') - G_t') phi(s_t') . u``.

    Args:
        problem: the tabular problem. w: critic weights ``[k]`` (``w*`` for the check).
        n: number of episodes. seed: sampling seed.
        solver: ``"exact"``, ``"cg"`` (to convergence) or ``"nystrom"`` (``rank``) for the iHVP.
        damping: damping ``lambda >= 0`` of the iHVP.
        u: if given, use this ``u`` (e.g. the exact one) instead of solving: isolates the
            mixed-term estimator.
        strict: sum the later losses ``t' > t`` only (BLPO's estimator, unbiased); ``False``
            includes ``t' = t``, which is biased with sampled return targets (chapter 8 shows it).
        mixed_term: ``"book"`` (the estimator above) or ``"authors"``: the one of the BLPO
            authors' public code (:attr:`~birl_lite.actor_critic.config.ACConfig.mixed_term`),
            ``grad_theta mean_t ratio_t q_t`` with the same-step
            ``q_t = 2 [(grad_w A_t . u)(V_w(s_t) - G_t) + A_t phi(s_t) . u]`` (their code sums
            over the minibatch; averaged here, like the book's, so that both have its scale).
        indices: explicit Nystrom column indices (fixed indices); default: drawn with ``seed``.

    Returns:
        :class:`SampledHypergradient`.
    """
    check_choice(mixed_term, "mixed_term", ("book", "authors"))
    w0 = as_tensor(w, "w")
    traj = sample_trajectories(problem, n, seed)
    T, g = problem.horizon, problem.mdp.gamma
    phi = problem.phi
    theta = problem.theta_old.clone().requires_grad_(True)
    wv = w0.clone().requires_grad_(True)
    # Monte-Carlo returns to the horizon: the follower's targets G_t
    G = torch.zeros_like(traj.rewards)
    running = torch.zeros(traj.rewards.shape[1], dtype=DTYPE)
    for t in range(T - 1, -1, -1):
        running = traj.rewards[t] + g * running
        G[t] = running
    no_ends = np.zeros((T, 1))  # every episode lasts T steps: one matrix serves all of them
    gae_matrix = torch.from_numpy(discount_matrix(no_ends, g * problem.lam)).to(DTYPE)
    causal = torch.from_numpy(discount_matrix(no_ends, 1.0, strict=strict)).to(DTYPE)
    gae_matrix = gae_matrix.expand(n, T, T)
    # leader: GAE from the current critic, surrogate at ratio 1
    V, V_next = phi[traj.states] @ wv, phi[traj.next_states] @ wv
    adv = differentiable_gae(V, V_next, traj.rewards, torch.zeros_like(V), gae_matrix, g)
    logp = torch.log_softmax(theta, dim=-1)[traj.states, traj.actions]
    old = torch.log_softmax(problem.theta_old, dim=-1)[traj.states, traj.actions]
    ratio = torch.exp(logp - old)
    J = clipped_surrogate(ratio, adv, 0.2)
    g_theta, g_w = torch.autograd.grad(J, (theta, wv), retain_graph=True)
    # follower: sampled loss, its Hessian by HVPs, the iHVP
    feats = phi[traj.states]

    def follower(x: torch.Tensor) -> torch.Tensor:
        return critic_loss(feats @ x, G)

    hvp = make_hvp(follower, w0)
    k = w0.numel()
    H = torch.stack([hvp(e) for e in torch.eye(k, dtype=DTYPE)], dim=1)
    if u is None:
        if solver == "exact":
            u = ihvp_exact(hvp, g_w, damping=damping).u
        elif solver == "cg":
            u = ihvp_cg(hvp, g_w, max_iter=10 * k, tol=1e-12, damping=damping).u
        elif solver == "nystrom":
            u = ihvp_nystrom(
                hvp,
                g_w,
                rank=rank or k,
                damping=damping,
                generator=None if indices is not None else torch.Generator().manual_seed(seed),
                indices=indices,
            ).u
        else:
            raise ValueError(f"solver must be 'exact', 'cg' or 'nystrom', got {solver!r}")
    else:
        u = as_tensor(u, "u")
    if mixed_term == "book":  # mixed term by the score function, later losses only
        with torch.no_grad():
            q = 2.0 * (feats @ w0 - G) * (feats @ u)
            C = causal[0] @ q  # C_t = sum_{t' > t} q_t'  (t' >= t if not strict)
        (mixed,) = torch.autograd.grad((ratio * C).mean(), theta)
    else:  # the authors': d/dw [2 A_t(w) (V_w(s_t) - G_t)] . u, the same step
        with torch.no_grad():
            zeros = torch.zeros_like(traj.rewards)
            du, du_next = feats @ u, phi[traj.next_states] @ u
            dA = differentiable_gae(du, du_next, zeros, zeros, gae_matrix, g)  # A is linear in w
            q = 2.0 * (dA * (feats @ w0 - G) + adv.detach() * du)
        (mixed,) = torch.autograd.grad((ratio * q).mean(), theta)
    return SampledHypergradient(g_theta, g_w, H, u, mixed, g_theta - mixed, n)


# --------------------------------------------------------------------------------------------
# Chapter 8, sections 8.9-8.11: the two estimators, the ratio weight, and the leader objective


def _returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns to the horizon ``G_t = sum_{k >= t} gamma^(k-t) r_k``, ``[T, N]``."""
    G = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[1], dtype=rewards.dtype)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        G[t] = running
    return G


@dataclass(frozen=True)
class EstimatorStats:
    """Bias and noise of ``B`` independent sampled estimates against an exact value
    (:func:`estimator_stats`); every number is relative to ``||exact||``.

    Attributes:
        rel_bias: ``||mean_b x_b - x*|| / ||x*||``.
        rel_bias_se: its standard error, ``||std_b x_b|| / sqrt(B) / ||x*||``.
        rel_std: the noise of one estimate, ``sqrt(mean_b ||x_b - mean||^2) / ||x*||``.
        cosine: ``cos(mean_b x_b, x*)``.
        best_scale: the scalar ``a`` minimizing ``||a mean_b x_b - x*||``.
        scaled_rel_bias: ``||best_scale mean_b x_b - x*|| / ||x*||``, the bias that no rescaling
            (e.g. a sum in place of a mean) removes.
        n_batches: ``B``.
    """

    rel_bias: float
    rel_bias_se: float
    rel_std: float
    cosine: float
    best_scale: float
    scaled_rel_bias: float
    n_batches: int


def estimator_stats(estimates: torch.Tensor, exact: torch.Tensor) -> EstimatorStats:
    """:class:`EstimatorStats` of ``estimates [B, ...]`` (``B >= 2`` independent draws) against
    ``exact [...]`` (chapter 8, sections 8.4 and 8.9)."""
    B = estimates.shape[0]
    if B < 2:
        raise ValueError(f"estimator_stats needs at least 2 estimates, got {B}")
    x = estimates.reshape(B, -1).to(DTYPE)
    ref = exact.reshape(-1).to(DTYPE)
    if x.shape[1] != ref.numel():
        raise ValueError(f"estimates [B, ...] must match exact {tuple(exact.shape)}")
    norm = float(ref.norm())
    mean = x.mean(0)
    a = float(mean @ ref) / max(float(mean @ mean), 1e-300)
    return EstimatorStats(
        rel_bias=float((mean - ref).norm()) / norm,
        rel_bias_se=float(x.std(0).norm()) / (B**0.5 * norm),
        rel_std=float((x - mean).square().sum(1).mean().sqrt()) / norm,
        cosine=float(mean @ ref) / max(float(mean.norm()) * norm, 1e-300),
        best_scale=a,
        scaled_rel_bias=float((a * mean - ref).norm()) / norm,
        n_batches=B,
    )


@dataclass(frozen=True)
class EstimatorComparison:
    """The book's and the authors' estimators on the exact tabular check
    (:func:`compare_estimators`).

    Attributes:
        mixed: ``{"book", "authors"}`` -> :class:`EstimatorStats` of the mixed term with the
            exact ``u`` (the estimator alone) against the exact mixed term.
        hypergradient: ``{"book", "book, fixed indices", "authors"}`` -> stats of the whole
            estimate (sampled Hessian, Nystrom iHVP of rank ``rank``; ``book``: fresh indices per
            batch, the other two: ``fixed_indices`` in every batch) against the exact
            hypergradient.
        n: episodes per batch. rank, damping: of the Nystrom iHVP. fixed_indices: ``[rank]``.
    """

    mixed: dict[str, EstimatorStats]
    hypergradient: dict[str, EstimatorStats]
    n: int
    rank: int
    damping: float
    fixed_indices: torch.Tensor


def compare_estimators(
    problem: TabularBLPOProblem,
    *,
    n: int = 10_000,
    n_batches: int = 20,
    seed: int = 0,
    rank: int = 2,
    damping: float = 1.0,
) -> EstimatorComparison:
    """Bias and variance of the book's and the authors' BLPO estimators (chapter 8, section 8.9).

    ``n_batches`` independent batches of ``n`` episodes (seeds ``seed + b``); on each, the mixed
    term of both estimators with the exact ``u``, and the whole hypergradient estimate with a
    Nystrom iHVP of rank ``rank`` and damping ``damping``: the book's with fresh indices per
    batch, the authors' with one fixed draw (seeded by ``seed``), and the book's mixed term with
    the fixed indices (which separates the two changes).

    Returns:
        :class:`EstimatorComparison`.
    """
    n = check_positive_int(n, "n")
    n_batches = check_positive_int(n_batches, "n_batches", minimum=2)
    exact = exact_hypergradient(problem)
    k = exact.w_star.numel()
    rank = check_positive_int(rank, "rank")
    if rank > k:
        raise ValueError(f"rank must be <= the number of critic features {k}, got {rank}")
    fixed = torch.randperm(k, generator=torch.Generator().manual_seed(seed))[:rank]
    mixed: dict[str, list[torch.Tensor]] = {"book": [], "authors": []}
    hyper: dict[str, list[torch.Tensor]] = {"book": [], "book, fixed indices": [], "authors": []}
    runs = {
        "book": ("book", None),
        "book, fixed indices": ("book", fixed),
        "authors": ("authors", fixed),
    }
    for b in range(n_batches):
        kw = dict(seed=seed + b)
        for name in mixed:
            est = sampled_hypergradient(problem, exact.w_star, n, u=exact.u, mixed_term=name, **kw)
            mixed[name].append(est.mixed)
        for name, (term, idx) in runs.items():
            est = sampled_hypergradient(
                problem,
                exact.w_star,
                n,
                solver="nystrom",
                rank=rank,
                damping=damping,
                mixed_term=term,
                indices=idx,
                **kw,
            )
            hyper[name].append(est.hypergradient)
    return EstimatorComparison(
        {name: estimator_stats(torch.stack(v), exact.mixed) for name, v in mixed.items()},
        {name: estimator_stats(torch.stack(v), exact.hypergradient) for name, v in hyper.items()},
        n,
        rank,
        float(damping),
        fixed,
    )


@dataclass(frozen=True)
class RatioWeightRow:
    """The mixed term at ``theta = theta_old + step z`` from ``pi_old`` data
    (:func:`ratio_weight_check`).

    Attributes:
        step: the size of the move. mean_abs_log_ratio: ``E_old |log rho_t(theta)|``.
        per_step: stats of ``grad_theta mean_t rho_t(theta) C_t`` (the per-step ratio in place
            of ``log pi``, chapter 8 step 4) against the exact mixed term at ``theta``.
        product: stats of ``grad_theta mean_t' W_t'(theta) q_t'`` with the exact weight
            ``W_t' = prod_{k < t'} rho_k(theta)``.
        exact_norm: ``||grad^2_{theta w} L(theta, w) u||``.
        per_step_bias: ``||E_old[per-step estimate] - exact|| / ||exact||`` computed exactly
            (:func:`per_step_ratio_expectation`), free of sampling noise.
    """

    step: float
    mean_abs_log_ratio: float
    per_step: EstimatorStats
    product: EstimatorStats
    exact_norm: float
    per_step_bias: float


def per_step_ratio_expectation(
    problem: TabularBLPOProblem, theta: torch.Tensor, w: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """The exact expectation under ``pi_old`` of the per-step-ratio mixed-term estimator
    ``(1/T) sum_t grad_theta rho_t(theta) C_t`` (chapter 8, equation (eq-ac-mixed) with the
    ratio of step 4), ``[S, A]``.

    ``E_old[C_t | s_t = s, a_t = a] = sum_s' P(s'|s, a) D_{t+1}(s')`` with
    ``D_t = qbar_t + P_old D_{t+1}`` (``D_T = 0``) and ``qbar_t(s) = 2 (phi(s) . w - y_t(s))
    phi(s) . u`` (``E_old[G_t | s_t] = y_t``), so the expectation is
    ``grad_theta (1/T) sum_t sum_s p_t^old(s) sum_a pi_theta(a|s) Cbar_t(s, a)``.
    """
    T = problem.horizon
    y = problem.targets()
    v, du = problem.phi @ w, problem.phi @ u
    qbar = 2.0 * (v[None, :] - y) * du[None, :]  # [T, S]
    P_old = transition_under(problem.mdp, problem.pi_old)
    D = torch.zeros(problem.mdp.n_states, dtype=DTYPE)
    Cbar = [torch.zeros_like(problem.r)] * T
    for t in range(T - 1, -1, -1):
        Cbar[t] = problem.mdp.expect_next(D)  # later losses only: D_{t+1}
        D = qbar[t] + P_old @ D
    p_old = problem.state_distributions(problem.pi_old)
    th = theta.detach().clone().requires_grad_(True)
    pi = torch.softmax(th, dim=-1)
    (grad,) = torch.autograd.grad(torch.einsum("ts,sa,tsa->", p_old, pi, torch.stack(Cbar)) / T, th)
    return grad


def ratio_weight_check(
    problem: TabularBLPOProblem,
    *,
    steps: tuple[float, ...] = (0.0, 0.25, 0.5),
    n: int = 10_000,
    n_batches: int = 10,
    seed: int = 0,
) -> list[RatioWeightRow]:
    """The per-step ratio in place of ``log pi`` against the exact importance weight (chapter 8,
    section 8.10).

    After the first PPO epoch the actor is at ``theta != theta_old`` while the data still come
    from ``pi_old``. The mixed term at ``theta`` is ``grad_theta (grad_w L(theta, w) . u)`` with
    ``L``'s state distributions under ``pi_theta`` (targets of ``pi_old``). Since the state at
    ``t'`` depends on the actions before it, the unbiased score-function estimator from old data
    weights ``q_t'`` by ``W_t' = prod_{k < t'} rho_k``; BLPO (and the book) use
    ``sum_t grad rho_t C_t`` instead, which equals it at ``theta_old`` only. Both are evaluated at
    ``w = w*``, the exact ``u``, ``theta = theta_old + step z`` with ``z ~ N(0, I)`` (seeded by
    ``seed``), on ``n_batches`` batches of ``n`` episodes (seeds ``seed + b``).

    Returns:
        One :class:`RatioWeightRow` per step.
    """
    n = check_positive_int(n, "n")
    n_batches = check_positive_int(n_batches, "n_batches", minimum=2)
    exact = exact_hypergradient(problem)
    w, u = exact.w_star, exact.u
    z = torch.randn(
        problem.theta_old.shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE
    )
    T = problem.horizon
    causal = torch.from_numpy(discount_matrix(np.zeros((T, 1)), 1.0, strict=True))[0].to(DTYPE)
    logp_old = torch.log_softmax(problem.theta_old, dim=-1)
    batches = []
    for b in range(n_batches):
        traj = sample_trajectories(problem, n, seed + b)
        feats = problem.phi[traj.states]
        G = _returns_to_go(traj.rewards, problem.mdp.gamma)
        q = 2.0 * (feats @ w - G) * (feats @ u)  # [T, N]
        batches.append((traj, q, causal @ q))
    rows = []
    for step in steps:
        theta = (problem.theta_old + float(step) * z).requires_grad_(True)
        wv = w.clone().requires_grad_(True)
        grad_w = torch.autograd.grad(problem.follower_loss(theta, wv), wv, create_graph=True)[0]
        (ref,) = torch.autograd.grad(grad_w @ u, theta)
        per_step, product, abs_log = [], [], []
        for traj, q, C in batches:
            log_ratio = (
                torch.log_softmax(theta, dim=-1)[traj.states, traj.actions]
                - logp_old[traj.states, traj.actions]
            )
            (g1,) = torch.autograd.grad((log_ratio.exp() * C).mean(), theta, retain_graph=True)
            before = torch.cumsum(log_ratio, 0) - log_ratio  # sum_{k < t'} log rho_k
            (g2,) = torch.autograd.grad((before.exp() * q).mean(), theta)
            per_step.append(g1)
            product.append(g2)
            abs_log.append(float(log_ratio.detach().abs().mean()))
        rows.append(
            RatioWeightRow(
                float(step),
                float(np.mean(abs_log)),
                estimator_stats(torch.stack(per_step), ref),
                estimator_stats(torch.stack(product), ref),
                float(ref.norm()),
                float((per_step_ratio_expectation(problem, theta, w, u) - ref).norm() / ref.norm()),
            )
        )
    return rows


def exact_advantage_gradient(problem: TabularBLPOProblem) -> torch.Tensor:
    """The policy gradient with exact advantages, ``[S, A]`` (chapter 8, section 8.11).

    ``grad_theta (1/T) sum_t sum_s p_t^old(s) sum_a pi_theta(a|s) A_t(s, a)`` at ``theta_old``,
    with the finite-horizon advantages of the rollout policy
    ``A_t(s, a) = r(s, a) + gamma (P y_{t+1})(s, a) - y_t(s)`` (``y`` from
    :meth:`TabularBLPOProblem.targets`, ``y_T = 0``): ``grad_theta J`` as it would be with a
    perfect critic (with exact values GAE's expectation is ``A_t`` for every ``lambda``).
    """
    y = problem.targets()  # [T, S]
    T, g = problem.horizon, problem.mdp.gamma
    y_next = torch.cat([y[1:], torch.zeros_like(y[:1])])
    adv = torch.stack(
        [problem.r + g * problem.mdp.expect_next(y_next[t]) - y[t][:, None] for t in range(T)]
    )
    p_old = problem.state_distributions(problem.pi_old)
    theta = problem.theta_old.clone().requires_grad_(True)
    pi = torch.softmax(theta, dim=-1)
    (grad,) = torch.autograd.grad(torch.einsum("ts,sa,tsa->", p_old, pi, adv) / T, theta)
    return grad


@dataclass(frozen=True)
class LeaderAlignment:
    """Cosines with the exact-advantage policy gradient on random instances
    (:func:`leader_alignment`).

    Attributes:
        seeds: the instances' seeds.
        cos_hypergradient: ``cos(grad F, g*)`` ``[n]``, ``grad F`` the exact hypergradient and
            ``g*`` :func:`exact_advantage_gradient`.
        cos_policy_gradient: ``cos(grad_theta J(theta, w*), g*)`` ``[n]``.
    """

    seeds: list[int]
    cos_hypergradient: torch.Tensor
    cos_policy_gradient: torch.Tensor

    @property
    def count_less_aligned(self) -> int:
        """On how many instances the hypergradient is less aligned with ``g*`` than
        ``grad_theta J`` is."""
        return int((self.cos_hypergradient < self.cos_policy_gradient).sum())


def leader_alignment(n_instances: int = 30, seed: int = 0, **problem_kwargs) -> LeaderAlignment:
    """Is the leader's objective ``F(theta) = J(theta, w*(theta))`` a sensible one? (chapter 8,
    section 8.11.) On ``n_instances`` random problems (:func:`tabular_blpo_problem` with seeds
    ``seed, seed + 1, ...`` and ``problem_kwargs``), the cosine of the exact hypergradient and of
    the plain ``grad_theta J`` (both at ``w*``) with the exact-advantage policy gradient.

    Returns:
        :class:`LeaderAlignment`.
    """
    n_instances = check_positive_int(n_instances, "n_instances")
    seeds = [seed + i for i in range(n_instances)]
    cos_h, cos_g = [], []

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))

    for s in seeds:
        problem = tabular_blpo_problem(seed=s, **problem_kwargs)
        exact = exact_hypergradient(problem)
        target = exact_advantage_gradient(problem)
        cos_h.append(cos(exact.hypergradient, target))
        cos_g.append(cos(exact.grad_theta, target))
    return LeaderAlignment(
        seeds, torch.tensor(cos_h, dtype=DTYPE), torch.tensor(cos_g, dtype=DTYPE)
    )
