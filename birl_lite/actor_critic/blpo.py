"""BLPO (Prakash et al., 2026): actor-critic as a Stackelberg game (math.md section 7, chapter 8).

Leader: the actor theta. Follower: the critic w, with loss L(theta, w) = mean_t (V_w(s_t) - G_t)^2
(targets G_t fixed per rollout; L depends on theta only through the data distribution). One
minibatch update (``ppo-nested`` stops after step 2, ``blpo-cg`` / ``blpo-nystrom`` do it all):

    1. nesting:      repeat K times:  w <- Adam descent step on L(w)       (approximate best response)
    2. leader:       A_t(w) = GAE from V_w, differentiable in w;  J = PPO clipped surrogate with A(w)
                     g_theta = grad_theta J,   g_w = grad_w J
    3. iHVP:         u ~ (grad^2_ww L + rho I)^{-1} g_w                     (Nystrom rank k, or CG)
    4. mixed term:   q_t = grad_w l_t . u = 2 (V_w(s_t) - G_t) (grad_w V_w(s_t) . u)
                     C_t = sum_{t' > t, same episode} q_t'
                     c   = grad_theta mean_t ratio_t(theta) C_t    (score function, importance ratio)
    5. clipping:     c <- c * min(1, beta ||g_theta|| / ||c||)
    6. actor step:   theta <- Adam ascent step along g_theta - c

Step 4 uses the later losses t' > t only. With a fixed target function the term t' = t has mean
zero, but with sampled return targets G_t (which depend on a_t) it does not and would bias the
estimate; chapter 8 checks the whole estimator against the exact hypergradient on a tabular MDP
(:mod:`birl_lite.actor_critic.tabular_check`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ihvp import ihvp_cg, ihvp_nystrom, make_hvp
from .config import ACConfig
from .ppo import clipped_surrogate, critic_loss, normalize, step

__all__ = [
    "BLPODirection",
    "blpo_direction",
    "blpo_update",
    "clip_correction",
    "differentiable_gae",
]


def differentiable_gae(
    values: torch.Tensor,
    next_values: torch.Tensor,
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    gae_matrix: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """GAE as a linear map of the TD errors, differentiable in the values (all ``[T, m]``).

    ``delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)`` and
    ``A[:, e] = gae_matrix[e] @ delta[:, e]`` with ``gae_matrix`` from
    :func:`~birl_lite.actor_critic.rollout.discount_matrix` (``factor = gamma * lambda``).
    """
    delta = rewards + gamma * (1.0 - terminated) * next_values - values
    return torch.einsum("etu,ue->te", gae_matrix, delta)


def clip_correction(
    correction: torch.Tensor, direct: torch.Tensor, beta: float
) -> tuple[torch.Tensor, float]:
    """Rescale ``correction`` so that ``||correction|| <= beta ||direct||`` (flat vectors).

    Returns the clipped correction and the scale factor applied (1.0 when not clipped)."""
    c_norm = float(correction.norm())
    bound = beta * float(direct.norm())
    if c_norm > bound:
        scale = bound / c_norm if c_norm > 0 else 0.0
        return correction * scale, scale
    return correction, 1.0


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


@dataclass
class BLPODirection:
    """The actor's update direction on one minibatch (:func:`blpo_direction`).

    Attributes:
        g_theta: ``grad_theta J`` (flat). g_w: ``grad_w J`` (flat; ``None`` without correction).
        u: the iHVP ``(grad^2_ww L + rho I)^{-1} g_w`` (flat; ``None`` without correction).
        correction_raw: the mixed term ``grad^2_{theta w} L u`` before clipping (flat or ``None``).
        correction: after clipping (flat or ``None``). scale: the clipping factor (1: unclipped).
        direction: ``g_theta - correction`` (flat), the ascent direction of the actor.
        n_hvp: Hessian-vector products used.
    """

    g_theta: torch.Tensor
    g_w: torch.Tensor | None
    u: torch.Tensor | None
    correction_raw: torch.Tensor | None
    correction: torch.Tensor | None
    scale: float
    direction: torch.Tensor
    n_hvp: int


def blpo_direction(
    state,
    mb: dict[str, torch.Tensor],
    cfg: ACConfig,
    *,
    solver: str | None = None,
    rank: int | None = None,
    rho: float | None = None,
) -> BLPODirection:
    """Steps 2-5 of the BLPO update (module docstring) at the current actor and critic.

    Args:
        state: holds ``actor``, ``critic``, their parameter lists and ``gen`` (Nystrom indices).
        mb: minibatch tensors ``[T, m, ...]`` with ``gae_matrix`` and ``causal_matrix``.
        cfg: hyperparameters; ``cfg.algo`` chooses the iHVP (``ppo-nested``: no correction).
        solver: override of the iHVP: ``"nystrom"``, ``"cg"`` or ``"none"`` (for ablations).
        rank, rho: overrides of the Nystrom rank / the damping (of Nystrom or CG).

    Returns:
        :class:`BLPODirection`.
    """
    actor, critic = state.actor, state.critic
    obs, returns = mb["obs"], mb["returns"]
    if solver is None:
        solver = {"blpo-nystrom": "nystrom", "blpo-cg": "cg"}.get(cfg.algo, "none")
    if solver not in ("nystrom", "cg", "none"):
        raise ValueError(f"solver must be 'nystrom', 'cg' or 'none', got {solver!r}")

    # 2. leader objective with GAE recomputed from the current critic
    correct = solver != "none"
    with torch.set_grad_enabled(correct):
        v_all = critic(torch.cat([obs, mb["next_obs"]]))
        T = obs.shape[0]
        adv = differentiable_gae(
            v_all[:T], v_all[T:], mb["rewards"], mb["terminated"], mb["gae_matrix"], cfg.gamma
        )
        if cfg.norm_adv:
            adv = normalize(adv)
    ratio = torch.exp(actor.log_prob(obs, mb["actions"]) - mb["old_logp"])
    J = clipped_surrogate(ratio, adv, cfg.clip_coef)
    if cfg.ent_coef > 0:
        J = J + cfg.ent_coef * actor.entropy(obs).mean()
    if not correct:
        g = _flat(torch.autograd.grad(J, state.actor_params))
        return BLPODirection(g, None, None, None, None, 1.0, g, 0)
    grads = torch.autograd.grad(J, state.actor_params + state.critic_params, retain_graph=True)
    n_actor = len(state.actor_params)
    g_theta, g_w = _flat(grads[:n_actor]), _flat(grads[n_actor:])

    # 3. iHVP u ~ (H + rho I)^{-1} g_w, H the Hessian of the follower loss on this minibatch
    params = {k: p.detach() for k, p in critic.named_parameters()}

    def follower_loss(p):
        return critic_loss(torch.func.functional_call(critic, p, (obs,)), returns)

    hvp = make_hvp(follower_loss, params)
    if solver == "nystrom":
        res = ihvp_nystrom(
            hvp,
            g_w,
            rank=cfg.nystrom_rank if rank is None else rank,
            rho=cfg.nystrom_rho if rho is None else rho,
            generator=state.gen,
        )
    else:
        res = ihvp_cg(
            hvp,
            g_w,
            max_iter=cfg.cg_iters if rank is None else rank,
            rho=cfg.cg_rho if rho is None else rho,
            tol=1e-10,
        )
    u = hvp.unflatten(res.u)

    # 4. mixed term by the score function: grad_theta mean_t ratio_t * C_t
    with torch.no_grad():
        v, dv = critic.value_and_jvp(obs, u)
        q = 2.0 * (v - returns) * dv
        causal = torch.einsum("etu,ue->te", mb["causal_matrix"], q)
    surrogate = (ratio * causal).mean()
    c_raw = _flat(torch.autograd.grad(surrogate, state.actor_params))

    # 5. clip the correction relative to the direct gradient
    c, scale = clip_correction(c_raw, g_theta, cfg.correction_bound)
    return BLPODirection(g_theta, g_w, res.u, c_raw, c, scale, g_theta - c, res.n_hvp)


def blpo_update(state, mb: dict[str, torch.Tensor], cfg: ACConfig) -> dict[str, float]:
    """One minibatch update of ``ppo-nested``, ``blpo-cg`` or ``blpo-nystrom`` (``cfg.algo``).

    ``state`` holds ``actor``, ``critic``, their optimizers and parameter lists, and ``gen`` (the
    generator of the Nystrom indices); ``mb`` the minibatch tensors ``[T, m, ...]`` including
    ``gae_matrix`` and ``causal_matrix`` ``[m, T, T]``. Returns diagnostics."""
    # 1. nesting: K critic steps towards the best response w*(theta)
    for _ in range(cfg.critic_steps):
        L = critic_loss(state.critic(mb["obs"]), mb["returns"])
        state.critic_opt.zero_grad(set_to_none=True)
        L.backward()
        step(state.critic_opt, state.critic_params, cfg.max_grad_norm)

    # 2.-5. the hypergradient (or the plain policy gradient for ppo-nested)
    d = blpo_direction(state, mb, cfg)

    # 6. ascent on the leader objective: gradient of -direction, clipped, Adam step
    offset = 0
    for p in state.actor_params:
        n = p.numel()
        p.grad = -d.direction[offset : offset + n].view_as(p)
        offset += n
    step(state.actor_opt, state.actor_params, cfg.max_grad_norm)
    return {"correction_scale": d.scale, "n_hvp": float(d.n_hvp)}
