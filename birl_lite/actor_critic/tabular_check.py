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

from .._validation import DTYPE, ArrayLike, as_tensor, check_positive_int, check_real
from ..ihvp import ihvp_cg, ihvp_exact, ihvp_nystrom, make_hvp
from ..mdp import TabularMDP, random_mdp, random_reward
from ..soft import reward_under, transition_under
from .blpo import differentiable_gae
from .ppo import clipped_surrogate, critic_loss
from .rollout import discount_matrix

__all__ = [
    "ExactHypergradient",
    "SampledHypergradient",
    "Trajectories",
    "TabularBLPOProblem",
    "exact_hypergradient",
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


def exact_hypergradient(problem: TabularBLPOProblem) -> ExactHypergradient:
    """Every term of the BLPO hypergradient at ``theta_old`` and ``w*(theta_old)``, exactly."""
    th = problem.theta_old.clone().requires_grad_(True)
    w_star = problem.best_response(problem.theta_old).detach()
    w = w_star.clone().requires_grad_(True)
    J = problem.leader_objective(th, w)
    g_theta, g_w = torch.autograd.grad(J, (th, w))
    H = torch.func.hessian(lambda x: problem.follower_loss(problem.theta_old, x))(w_star)
    u = torch.linalg.solve(H, g_w)
    grad_w_L = torch.autograd.grad(problem.follower_loss(th, w), w, create_graph=True)[0]
    (mixed,) = torch.autograd.grad(grad_w_L @ u, th)
    th2 = problem.theta_old.clone().requires_grad_(True)
    (total,) = torch.autograd.grad(problem.leader_objective(th2, problem.best_response(th2)), th2)
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

    Returns:
        :class:`SampledHypergradient`.
    """
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
                generator=torch.Generator().manual_seed(seed),
            ).u
        else:
            raise ValueError(f"solver must be 'exact', 'cg' or 'nystrom', got {solver!r}")
    else:
        u = as_tensor(u, "u")
    # mixed term by the score function, later losses only
    with torch.no_grad():
        q = 2.0 * (feats @ w0 - G) * (feats @ u)
        C = causal[0] @ q  # C_t = sum_{t' > t} q_t'  (t' >= t if not strict)
    (mixed,) = torch.autograd.grad((ratio * C).mean(), theta)
    return SampledHypergradient(g_theta, g_w, H, u, mixed, g_theta - mixed, n)
