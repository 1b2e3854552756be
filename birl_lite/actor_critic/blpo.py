"""BLPO (Prakash et al., 2026): actor-critic as a Stackelberg game (chapters 8 and 9).

Leader: the actor theta. Follower: the critic w, with loss L(theta, w) = mean_t (V_w(s_t) - G_t)^2
(targets G_t fixed per rollout; L depends on theta only through the data distribution). One
minibatch update (``ppo-nested`` stops after step 2, ``blpo-cg`` / ``blpo-nystrom`` do it all):

    1. nesting:      repeat K times:  w <- Adam descent step on L(w)       (approximate best response)
    2. leader:       A_t(w) = GAE from V_w, differentiable in w;  J = PPO clipped surrogate with A(w)
                     g_theta = grad_theta J,   g_w = grad_w J
    3. iHVP:         u ~ (grad^2_ww L + nu I)^{-1} g_w                      (Nystrom rank m, or CG)
    4. mixed term:   q_t = grad_w l_t . u = 2 (V_w(s_t) - G_t) (grad_w V_w(s_t) . u)
                     C_t = sum_{t' > t, same episode} q_t'
                     c   = grad_theta mean_t ratio_t(theta) C_t    (score function, importance ratio)
    5. clipping:     c <- c * min(1, cbar ||g_theta|| / ||c||)
    6. actor step:   theta <- Adam ascent step along g_theta - c

Step 4 is the book's estimator (``cfg.mixed_term = "book"``, the default). ``"authors"`` is the one
of the authors' public code: c = grad_theta (grad_w f2 . u) with
f2 = 2 sum_t ratio_t A_t(w) (V_w(s_t) - G_t), i.e. q_t = 2 [(grad_w A_t . u)(V_w(s_t) - G_t) +
A_t (grad_w V_w(s_t) . u)] paired with the ratio of the *same* step, summed over the minibatch.
``cfg.nystrom_indices = "fixed"`` draws the Nystrom columns once per run (as their code) instead
of at every update. Chapter 8, section 8.9, compares the two estimators on the exact tabular check.

The book's step 4 uses the later losses t' > t only. With a fixed target function the term t' = t has mean
zero, but with sampled return targets G_t (which depend on a_t) it does not and would bias the
estimate; chapter 8 checks the whole estimator against the exact hypergradient on a tabular MDP
(:mod:`birl_lite.actor_critic.tabular_check`).

Every derivative above (steps 1-4) is computed from the formulas written out in
:mod:`birl_lite.actor_critic.derivatives`, not by autograd: on 64-64 networks autograd's
per-operation overhead, not arithmetic, dominates the cost (chapter 9, "Where the time goes").
``tests/test_derivatives.py`` checks the result against an autograd implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.optim.optimizer as _optimizer_module

from ..ihvp import ihvp_cg
from ..linear_solve import nystrom_woodbury
from .config import ACConfig
from .derivatives import (
    MSEHessian,
    mlp_forward,
    mlp_jvp,
    mlp_vjp,
    mse_grad,
    policy_log_prob,
    policy_vjp,
)
from .ppo import _set_grads, surrogate_partials

if TYPE_CHECKING:  # training imports this module
    from .training import TrainState

__all__ = [
    "BLPODirection",
    "adam_step_flat",
    "blpo_direction",
    "blpo_update",
    "clip_correction",
    "differentiable_gae",
    "update_diagnostics",
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
    correction: torch.Tensor, direct: torch.Tensor, cbar: float
) -> tuple[torch.Tensor, float]:
    """Rescale ``correction`` so that ``||correction|| <= cbar ||direct||`` (flat vectors; ``cbar``
    is the book's bound c-bar, ``ACConfig.correction_bound``).

    Returns the clipped correction and the scale factor applied (1.0 when not clipped)."""
    c_norm = float(correction.norm())
    bound = cbar * float(direct.norm())
    if c_norm > bound:
        scale = bound / c_norm if c_norm > 0 else 0.0
        return correction * scale, scale
    return correction, 1.0


def adam_step_flat(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    flat: torch.Tensor,
    max_norm: float | None,
) -> None:
    """:func:`~.ppo.step_flat` (clip the norm of the flat gradient to ``max_norm``, ``None``: no
    clipping; one Adam step), with the same numbers bit for bit and about a fifth of the cost.

    For the ``torch.optim.Adam(fused=True)`` optimizers of
    :func:`~birl_lite.actor_critic.training.train` (one parameter group holding ``params``,
    plain Adam, state initialized, no hooks) it calls the kernel ``Optimizer.step`` ends in,
    ``torch._fused_adam_``, directly, after the same ``step += 1``: on these small networks
    ``Optimizer.step``'s bookkeeping (grouping by device, hooks, profiling) costs several times
    the kernel. The gradients go to the kernel as views of ``flat`` (``p.grad`` is left unset).
    Any other optimizer or setting, and the first step (which creates Adam's state), take
    ``optimizer.step()``.
    """
    if max_norm is not None:
        flat = flat * (max_norm / (flat.norm() + 1e-6)).clamp(max=1.0)
    lean = _lean_adam_state(optimizer, params)
    if lean is None:
        _set_grads(params, flat)
        optimizer.step()
        for p in params:  # as on the lean path: no gradient left behind
            p.grad = None
        return
    group, steps, exp_avgs, exp_avg_sqs = lean
    grads, offset = [], 0
    for p in params:
        k = p.numel()
        grads.append(flat[offset : offset + k].view_as(p))
        offset += k
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        amsgrad=False,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def _lean_adam_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]):
    """``(group, steps, exp_avgs, exp_avg_sqs)`` when :func:`adam_step_flat` may call the fused
    kernel directly (see there), else ``None``."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if (
        not group.get("fused")
        or group["amsgrad"]
        or group["maximize"]
        or group["capturable"]
        or group["differentiable"]
        or group.get("decoupled_weight_decay", False)
        or not isinstance(group["lr"], float)
        or not all(isinstance(b, float) for b in group["betas"])
        or len(group["params"]) != len(params)
        or any(p is not q for p, q in zip(group["params"], params, strict=True))
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _optimizer_module._global_optimizer_pre_hooks
        or _optimizer_module._global_optimizer_post_hooks
    ):
        return None
    state = optimizer.state
    steps, exp_avgs, exp_avg_sqs = [], [], []
    for p in params:
        st = state.get(p)
        if not st or p.dtype != params[0].dtype:
            return None
        steps.append(st["step"])
        exp_avgs.append(st["exp_avg"])
        exp_avg_sqs.append(st["exp_avg_sq"])
    return group, steps, exp_avgs, exp_avg_sqs


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


@dataclass
class BLPODirection:
    """The actor's update direction on one minibatch (:func:`blpo_direction`).

    Attributes:
        g_theta: ``grad_theta J`` (flat). g_w: ``grad_w J`` (flat; ``None`` without correction).
        u: the iHVP ``(grad^2_ww L + nu I)^{-1} g_w`` (flat; ``None`` without correction).
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
    state: TrainState,
    mb: dict[str, torch.Tensor],
    cfg: ACConfig,
    *,
    solver: str | None = None,
    rank: int | None = None,
    damping: float | None = None,
) -> BLPODirection:
    """Steps 2-5 of the BLPO update (module docstring) at the current actor and critic.

    Every derivative is by the explicit formulas of :mod:`~.derivatives` (backpropagation and
    its R-operator written out, batched), which give the numbers autograd gives at a fraction
    of its overhead on these small networks; ``tests/test_derivatives.py`` checks this function
    against an autograd implementation.

    Args:
        state: holds ``actor``, ``critic``, their parameter lists and ``gen`` (Nystrom indices).
        mb: minibatch tensors ``[T, m, ...]`` with ``gae_matrix`` and ``causal_matrix`` (and,
            for ``minibatch="chunks"``, ``gae_tail``: see
            :func:`~birl_lite.actor_critic.training.split_segments`).
        cfg: hyperparameters; ``cfg.algo`` chooses the iHVP (``ppo-nested``: no correction).
        solver: override of the iHVP: ``"nystrom"``, ``"cg"`` or ``"none"`` (for ablations).
        rank, damping: overrides of the Nystrom rank (or CG's iterations) / of the damping
            ``nu`` (of Nystrom or CG).

    Returns:
        :class:`BLPODirection`.
    """
    actor, critic = state.actor, state.critic
    if solver is None:
        solver = {"blpo-nystrom": "nystrom", "blpo-cg": "cg"}.get(cfg.algo, "none")
    if solver not in ("nystrom", "cg", "none"):
        raise ValueError(f"solver must be 'nystrom', 'cg' or 'none', got {solver!r}")
    T, m = mb["rewards"].shape
    n = T * m
    obs = mb["obs"].reshape(n, -1)
    returns = mb["returns"].reshape(n)
    actions = mb["actions"].reshape(n, *mb["actions"].shape[2:])

    # 2. leader objective J(theta, w): clipped surrogate with GAE from the current critic
    crit = mlp_forward(critic.net, torch.cat([obs, mb["next_obs"].reshape(n, -1)]))
    values = crit.y.reshape(2, T, m)
    adv = differentiable_gae(
        values[0], values[1], mb["rewards"], mb["terminated"], mb["gae_matrix"], cfg.gamma
    )
    if "gae_tail" in mb:  # minibatch="chunks": the rollout's advantage beyond the chunk, a constant
        adv = adv + mb["gae_tail"]
    adv_scale = 1.0
    if cfg.norm_adv:  # statistics are constants: ppo.normalize, with the std computed once
        std = adv.std()
        adv_scale = 1.0 / (float(std) + 1e-8)
        adv = (adv - adv.mean()) / (std + 1e-8)
    pol = mlp_forward(actor.net, obs)
    ratio = torch.exp(policy_log_prob(actor, pol, actions) - mb["old_logp"].reshape(n))
    dJ_dratio, dJ_dadv = surrogate_partials(ratio, adv.reshape(n), cfg.clip_coef)
    # d/dlogp of J (and, below, of the score-function surrogate): ratio_t d/dratio_t
    cotangents = [dJ_dratio * ratio]

    correct = solver != "none"
    if correct:
        # g_w = grad_w J through A(w): GAE's transpose, then d delta / dV, then backprop
        d_delta = torch.einsum("etu,te->ue", mb["gae_matrix"], (dJ_dadv * adv_scale).view(T, m))
        dV = torch.cat([-d_delta, cfg.gamma * (1.0 - mb["terminated"]) * d_delta])
        g_w = mlp_vjp(crit, dV.reshape(2 * n, 1))

        # 3. iHVP u ~ (H + nu I)^{-1} g_w, H the Hessian of the follower loss on this minibatch
        hessian = MSEHessian(critic.net, obs, returns, acts=crit.rows(n))
        if solver == "nystrom":
            u, n_hvp = _nystrom_ihvp(state, cfg, hessian, g_w, rank, damping)
        else:
            res = ihvp_cg(
                hessian,
                g_w,
                max_iter=cfg.cg_iters if rank is None else rank,
                damping=cfg.cg_damping if damping is None else damping,
                tol=1e-10,
            )
            u, n_hvp = res.u, res.n_hvp

        if cfg.mixed_term == "book":
            # 4. mixed term by the score function: c = grad_theta mean_t ratio_t C_t, with
            #    q_t = 2 (V_w(s_t) - G_t) (grad_w V_w(s_t) . u) and C_t = sum_{t' > t} q_t'
            dv = mlp_jvp(hessian.acts, u).reshape(T, m)
            q = 2.0 * (values[0] - mb["returns"]) * dv
            causal = torch.einsum("etu,ue->te", mb["causal_matrix"], q).reshape(n)
            cotangents.append(ratio * causal / n)
        else:
            # 4'. the authors' estimator: c = grad_theta sum_t ratio_t q_t with
            #     q_t = d/dw [2 A_t(w) (V_w(s_t) - G_t)] . u (same step, through A(w) too)
            dvv = mlp_jvp(crit, u).reshape(2, T, m)  # tangents of V(s_t), V(s'_t)
            d_delta = cfg.gamma * (1.0 - mb["terminated"]) * dvv[1] - dvv[0]
            dA = torch.einsum("etu,ue->te", mb["gae_matrix"], d_delta) * adv_scale
            q = 2.0 * (dA * (values[0] - mb["returns"]) + adv * dvv[0])
            cotangents.append(ratio * q.reshape(n))

    grads = policy_vjp(actor, pol, actions, torch.stack(cotangents))
    g_theta = grads[0]
    if cfg.ent_coef > 0:  # entropy bonus: a rarely used extra, differentiated by autograd
        ent = cfg.ent_coef * actor.entropy(obs).mean()
        g_theta = g_theta + _flat(torch.autograd.grad(ent, state.actor_params))
    if not correct:
        _check_direction(g_theta)
        return BLPODirection(g_theta, None, None, None, None, 1.0, g_theta, 0)

    # 5. clip the correction relative to the direct gradient
    c_raw = grads[1]
    c, scale = clip_correction(c_raw, g_theta, cfg.correction_bound)
    if cfg.correction_control == "random":  # the control: a random direction of the same norm
        c = _random_control(state, cfg, c)
    direction = g_theta - c
    _check_direction(direction)
    return BLPODirection(g_theta, g_w, u, c_raw, c, scale, direction, n_hvp)


def _check_direction(direction: torch.Tensor | np.ndarray) -> None:
    """The one finiteness check of the update (the iHVP's inputs and Hessian columns are not
    checked one by one on this path: a NaN or inf anywhere upstream reaches the direction).
    Takes a tensor or, on the numpy backend, an array (one numpy call instead of three torch
    ones)."""
    if isinstance(direction, np.ndarray):
        finite = bool(np.isfinite(direction).all())
    else:
        finite = bool(torch.isfinite(direction).all())
    if not finite:
        raise FloatingPointError(
            "the BLPO direction is not finite (NaN or inf in the policy gradient, the critic's "
            "Hessian or the iHVP)"
        )


def _nystrom_ihvp(
    state: TrainState,
    cfg: ACConfig,
    hessian: MSEHessian,
    g_w: torch.Tensor,
    rank: int | None,
    damping: float | None,
) -> tuple[torch.Tensor, int]:
    """``u = (H_m + nu I)^{-1} g_w`` (rank ``m``): the numbers of
    :func:`~birl_lite.ihvp.ihvp_nystrom` (same index draw from ``state.gen``, same columns, same
    Woodbury solve), without its argument checks and its finiteness checks of ``g_w`` and of
    the columns, which cost as much as the solve on these sizes (the caller checks the final
    direction once). Returns ``(u, m)``."""
    k = cfg.nystrom_rank if rank is None else rank
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= hessian.dim:
        raise ValueError(f"rank must be an integer in [1, {hessian.dim}], got {k!r}")
    K = _nystrom_indices(state, cfg, hessian.dim, k)
    C = hessian.columns(K)
    lam = cfg.nystrom_damping if damping is None else damping
    try:
        u, _ = nystrom_woodbury(C, C[K, :], g_w, lam)
    except torch.linalg.LinAlgError as err:  # eigh fails on NaN: say where it came from
        if not bool(torch.isfinite(C).all()):
            raise FloatingPointError(
                "the BLPO direction is not finite: the critic's Hessian columns contain NaN or inf"
            ) from err
        raise
    return u, k


def _nystrom_indices(state: TrainState, cfg: ACConfig, dim: int, k: int) -> torch.Tensor:
    """The ``k`` Nystrom column indices of this update (``cfg.nystrom_indices``): a fresh draw
    from ``state.gen``, or the first ``k`` of the run's fixed permutation."""
    if cfg.nystrom_indices == "fixed":
        return _fixed_indices(state, cfg, dim)[:k]
    return torch.randperm(dim, generator=state.gen)[:k]


def _random_control(state: TrainState, cfg: ACConfig, c: torch.Tensor) -> torch.Tensor:
    """The control ``correction_control="random"``: a Gaussian direction with the norm of ``c``,
    from the run's control generator."""
    z = torch.randn(c.shape, generator=_control_generator(state, cfg), dtype=c.dtype)
    return z * (c.norm() / z.norm().clamp_min(1e-30))


def _fixed_indices(state: TrainState, cfg: ACConfig, dim: int) -> torch.Tensor:
    """A random permutation of the ``dim`` critic coordinates drawn once per run (seeded by
    ``cfg.seed``; the Nystrom columns of ``nystrom_indices="fixed"`` are its first ``k``)."""
    perm = getattr(state, "fixed_nystrom_perm", None)
    if perm is None or perm.numel() != dim:
        gen = torch.Generator().manual_seed(cfg.seed + 104_729)
        perm = torch.randperm(dim, generator=gen)
        state.fixed_nystrom_perm = perm
    return perm


def _control_generator(state: TrainState, cfg: ACConfig) -> torch.Generator:
    """The generator of the random-correction control, separate from the Nystrom indices'."""
    gen = getattr(state, "control_gen", None)
    if gen is None:
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        state.control_gen = gen
    return gen


def blpo_update(state: TrainState, mb: dict[str, torch.Tensor], cfg: ACConfig) -> dict[str, float]:
    """One minibatch update of ``ppo-nested``, ``blpo-cg`` or ``blpo-nystrom`` (``cfg.algo``).

    ``state`` holds ``actor``, ``critic``, their optimizers and parameter lists, and ``gen`` (the
    generator of the Nystrom indices); ``mb`` the minibatch tensors ``[T, m, ...]`` including
    ``gae_matrix`` and ``causal_matrix`` ``[m, T, T]``. Returns diagnostics: ``correction_scale``
    (the clipping factor), ``n_hvp`` and, with a correction, ``correction_ratio``
    (``||c|| / ||grad_theta J||`` before clipping) and ``correction_cos`` (``cos(c, grad J)``)."""
    # 1. nesting: K critic steps towards the best response w*(theta)
    obs = mb["obs"].reshape(-1, mb["obs"].shape[-1])
    g = None  # one gradient buffer for the K steps
    for _ in range(cfg.critic_steps):
        g = mse_grad(mlp_forward(state.critic.net, obs), mb["returns"], g)
        adam_step_flat(state.critic_opt, state.critic_params, g, cfg.grad_clip_norm)

    # 2.-5. the hypergradient (or the plain policy gradient for ppo-nested)
    d = blpo_direction(state, mb, cfg)

    # 6. ascent on the leader objective: gradient of -direction, clipped, Adam step
    adam_step_flat(state.actor_opt, state.actor_params, -d.direction, cfg.grad_clip_norm)
    return update_diagnostics(d)


def update_diagnostics(d: BLPODirection) -> dict[str, float]:
    """The diagnostics :func:`blpo_update` returns for the direction ``d``: ``correction_scale``,
    ``n_hvp`` and, with a correction, ``correction_ratio`` (``||c|| / ||grad_theta J||`` before
    clipping) and ``correction_cos`` (``cos(c, grad_theta J)``)."""
    out = {"correction_scale": d.scale, "n_hvp": float(d.n_hvp)}
    if d.correction_raw is not None:
        g_norm = float(d.g_theta.norm())
        c_norm = float(d.correction_raw.norm())
        out["correction_ratio"] = c_norm / max(g_norm, 1e-30)
        out["correction_cos"] = float(d.correction_raw @ d.g_theta) / max(c_norm * g_norm, 1e-30)
    return out
