"""PPO (Schulman et al., 2017), the baseline of chapter 9: one joint actor and critic step per
minibatch, advantages computed once per rollout from the rollout critic.

    for each minibatch (whole env segments) of the rollout, for each epoch:
        ratio_t   = pi_theta(a_t|s_t) / pi_old(a_t|s_t)
        J(theta)  = mean_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t)     (A_t fixed)
        L(w)      = mean_t (V_w(s_t) - G_t)^2                                          (G_t fixed)
        theta    <- Adam ascent step on J;   w <- Adam descent step on L
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .config import ACConfig

if TYPE_CHECKING:  # training imports this module
    from .training import TrainState

__all__ = [
    "clipped_surrogate",
    "critic_loss",
    "ppo_update",
    "step",
    "step_flat",
    "surrogate_partials",
    "value_loss",
]


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """PPO's clipped objective ``mean min(ratio A, clip(ratio, 1-eps, 1+eps) A)`` (to maximize)."""
    return torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * adv).mean()


def surrogate_partials(
    ratio: torch.Tensor, adv: torch.Tensor, clip_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial derivatives of :func:`~.ppo.clipped_surrogate` ``J = mean_i min(r_i A_i,
    clip(r_i) A_i)``: ``(dJ/dr, dJ/dA)``, both shaped like ``ratio``.

    Where the unclipped term is the minimum (ties included): ``dJ/dr = A / n``, ``dJ/dA = r / n``;
    elsewhere the clipped term is, so ``dJ/dr = 0`` and ``dJ/dA = clip(r) / n``."""
    n = ratio.numel()
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    unclipped = ratio * adv <= clipped * adv
    return torch.where(unclipped, adv, 0.0) / n, torch.where(unclipped, ratio, clipped) / n


def critic_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """The follower loss ``L = mean_t (V_w(s_t) - G_t)^2`` (chapter 8, eq. (eq-ac-follower))."""
    return (values - returns).square().mean()


def normalize(adv: torch.Tensor) -> torch.Tensor:
    """Standardize advantages within a minibatch, the mean and std treated as constants.

    For PPO the advantages are constants anyway. For BLPO, whose advantages are a function of
    the critic ``w``, differentiating through the statistics would make ``grad_w J`` vanish at
    ratio 1: then ``J = mean(A_norm) = 0`` for every ``w``. Normalization is a rescaling of the
    actor's step, not part of the leader's objective, so its statistics are not differentiated.
    """
    return (adv - adv.mean().detach()) / (adv.std().detach() + 1e-8)


def step(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_norm: float | None
) -> None:
    """Clip the global gradient norm of ``params`` to ``max_norm`` (``None``: no clipping) and
    take an optimizer step."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()


def _set_grads(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        k = p.numel()
        p.grad = flat[offset : offset + k].view_as(p)
        offset += k


def step_flat(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    flat: torch.Tensor,
    max_norm: float | None,
) -> None:
    """:func:`step` for a flat gradient: clip its norm to ``max_norm`` (the scaling of
    ``torch.nn.utils.clip_grad_norm_``; ``None``: no clipping) and take an optimizer step."""
    if max_norm is not None:
        flat = flat * (max_norm / (flat.norm() + 1e-6)).clamp(max=1.0)
    _set_grads(params, flat)
    optimizer.step()


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """PPO's critic loss: :func:`critic_loss`, or with ``clip`` (and the rollout critic's
    ``old_values``) the clipped form ``mean max((V - G)^2, (V_old + clip(V - V_old, -clip, clip)
    - G)^2)`` of CleanRL and PureJaxRL (the BLPO authors' PPO baseline). All ``[T, m]``."""
    if clip is None:
        return critic_loss(values, returns)
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return torch.maximum((values - returns).square(), (clipped - returns).square()).mean()


def ppo_update(state: TrainState, mb: dict[str, torch.Tensor], cfg: ACConfig) -> dict[str, float]:
    """One PPO minibatch update (joint actor and critic step; ``cfg.ppo_critic_steps - 1`` more
    critic steps after it, the advantages staying those of the rollout). ``state`` holds
    ``actor``, ``critic`` and their optimizers; ``mb`` the minibatch tensors ``[T, m, ...]``.
    Returns diagnostics (``critic_loss``)."""
    actor, critic = state.actor, state.critic
    logp = actor.log_prob(mb["obs"], mb["actions"])
    ratio = torch.exp(logp - mb["old_logp"])
    adv = normalize(mb["adv"]) if cfg.norm_adv else mb["adv"]
    J = clipped_surrogate(ratio, adv, cfg.clip_coef)
    if cfg.ent_coef > 0:
        J = J + cfg.ent_coef * actor.entropy(mb["obs"]).mean()
    vclip = (mb["values"], cfg.clip_coef) if cfg.clip_vloss else (None, None)
    L = value_loss(critic(mb["obs"]), mb["returns"], *vclip)

    state.actor_opt.zero_grad(set_to_none=True)
    (-J).backward()
    step(state.actor_opt, state.actor_params, cfg.grad_clip_norm)
    state.critic_opt.zero_grad(set_to_none=True)
    L.backward()
    step(state.critic_opt, state.critic_params, cfg.grad_clip_norm)
    for _ in range(cfg.ppo_critic_steps - 1):  # the control: more critic steps, same advantages
        state.critic_opt.zero_grad(set_to_none=True)
        L = value_loss(critic(mb["obs"]), mb["returns"], *vclip)
        L.backward()
        step(state.critic_opt, state.critic_params, cfg.grad_clip_norm)
    return {"critic_loss": float(L.detach())}
