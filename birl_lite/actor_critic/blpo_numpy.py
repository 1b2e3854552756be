"""BLPO's minibatch update computed in numpy (``ACConfig.backend = "numpy"``; chapter 9, "Where
the time goes").

The same update as :func:`~birl_lite.actor_critic.blpo.blpo_update` (steps 1-6 of its module
docstring, every option of ``ppo-nested``, ``blpo-cg`` and ``blpo-nystrom``), with the same
formulas as :mod:`~birl_lite.actor_critic.derivatives` (backpropagation, its R-operator, the
Hessian columns, the policy's score function) written against numpy arrays that are views of
the networks' parameters. The small steps that do not repeat per layer stay the torch path's own,
called on zero-copy torch views of the numpy results: the surrogate's partial derivatives, the
Nystrom indices and Woodbury solve, the clipping of the correction, the random control and
the Adam steps (so the optimizers' state remains the torch optimizers'). The gradient-norm
clipping before each Adam step (:func:`clip_grad_norm_numpy`) and the finiteness check run on
the numpy arrays: in torch they are several tiny operations each.

Why a second implementation: on 64-64 networks every operation is tiny, and a numpy operation
costs about a microsecond of overhead where a torch one costs several; the torch path's aten
kernels alone take most of its update (chapter 9, section 9.6). The numpy path gives the same
numbers up to float32 rounding (another BLAS; ``tests/test_blpo_numpy.py`` checks every
function against the torch one and whole updates against :func:`~.blpo.blpo_update`), not bit
for bit, so it is an option: the default (``backend="torch"``) reproduces the committed runs.

``ent_coef > 0`` (an entropy bonus, which the torch path differentiates with autograd) is not
supported here (:class:`~birl_lite.actor_critic.config.ACConfig` refuses it).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..ihvp import ihvp_cg
from ..linear_solve import nystrom_woodbury
from .blpo import (
    BLPODirection,
    _check_direction,
    _nystrom_indices,
    _random_control,
    adam_step_flat,
    clip_correction,
    update_diagnostics,
)
from .config import ACConfig
from .networks import Actor
from .ppo import surrogate_partials

if TYPE_CHECKING:  # training imports this module
    from .training import TrainState

__all__ = [
    "NumpyActivations",
    "NumpyMSEHessian",
    "blpo_direction_numpy",
    "blpo_update_numpy",
    "clip_grad_norm_numpy",
    "numpy_forward",
    "numpy_layers",
    "numpy_policy_log_prob",
    "numpy_policy_vjp",
]


def numpy_layers(net: torch.nn.Sequential) -> list[np.ndarray]:
    """``[W0, b0, W1, b1, W2, b2]`` of a two-hidden-layer MLP (:func:`~.networks.mlp`) as numpy
    views of the parameters' memory (an optimizer's in-place step shows through; rebuilt at
    every update, so a ``.double()`` or a new parameter tensor is always seen)."""
    mods = list(net)
    return [t.detach().numpy() for m in (mods[0], mods[2], mods[4]) for t in (m.weight, m.bias)]


def _split(layers: list[np.ndarray], v: np.ndarray) -> list[np.ndarray]:
    """Flat vectors ``[..., P]`` as the parameter shapes ``[..., *shape]`` (views)."""
    out, offset = [], 0
    lead = v.shape[:-1]
    for p in layers:
        out.append(v[..., offset : offset + p.size].reshape(*lead, *p.shape))
        offset += p.size
    return out


@dataclass
class NumpyActivations:
    """:class:`~.derivatives.MLPActivations` in numpy: input ``x [n, d]``, hidden activations
    ``h1, h2 [n, H]``, output ``y [n, out]``, tanh slopes ``s1, s2 = 1 - h1^2, 1 - h2^2`` and the
    layers ``[W0, b0, W1, b1, W2, b2]``."""

    x: np.ndarray
    h1: np.ndarray
    h2: np.ndarray
    y: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    layers: list[np.ndarray]

    @property
    def dim(self) -> int:
        """Number of parameters ``P``."""
        return sum(p.size for p in self.layers)

    def rows(self, n: int) -> NumpyActivations:
        """The activations of the first ``n`` inputs (views)."""
        return NumpyActivations(
            self.x[:n], self.h1[:n], self.h2[:n], self.y[:n], self.s1[:n], self.s2[:n], self.layers
        )

    def vjp(self, dy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """:func:`~.derivatives.mlp_vjp`: ``dy [n, out]`` or ``[B, n, out]`` -> ``[P]`` or
        ``[B, P]`` (written into ``out`` if given)."""
        _, _, W1, _, W2, _ = self.layers
        lead = dy.shape[:-2]
        if out is None:
            out = np.empty((*lead, self.dim), dtype=dy.dtype)
        gW0, gb0, gW1, gb1, gW2, gb2 = _split(self.layers, out)
        t = (0, 2, 1) if lead else (1, 0)
        np.matmul(dy.transpose(t), self.h2, out=gW2)
        dy.sum(-2, out=gb2)
        d2 = dy @ W2
        d2 *= self.s2
        np.matmul(d2.transpose(t), self.h1, out=gW1)
        d2.sum(-2, out=gb1)
        d1 = d2 @ W1
        d1 *= self.s1
        np.matmul(d1.transpose(t), self.x, out=gW0)
        d1.sum(-2, out=gb0)
        return out

    def tangents(self, V: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Forward-mode tangents ``R{h1}, R{h2}, R{y}`` ``[B, n, .]`` along ``V [B, P]`` and
        the direction split into the parameter shapes (as in :mod:`~.derivatives`)."""
        _, _, W1, _, W2, _ = self.layers
        u = uW0, ub0, uW1, ub1, uW2, ub2 = _split(self.layers, V)
        dh1 = self.x @ uW0.transpose(0, 2, 1)
        dh1 += ub0[:, None, :]
        dh1 *= self.s1
        dh2 = self.h1 @ uW1.transpose(0, 2, 1)
        dh2 += dh1 @ W1.T
        dh2 += ub1[:, None, :]
        dh2 *= self.s2
        dy = self.h2 @ uW2.transpose(0, 2, 1)
        dy += dh2 @ W2.T
        dy += ub2[:, None, :]
        return dh1, dh2, dy, u

    def jvp(self, v: np.ndarray) -> np.ndarray:
        """:func:`~.derivatives.mlp_jvp`: ``v [P]`` or ``[B, P]`` -> ``[n, out]`` or
        ``[B, n, out]``."""
        dy = self.tangents(v[None] if v.ndim == 1 else v)[2]
        return dy[0] if v.ndim == 1 else dy


def numpy_forward(layers: list[np.ndarray], x: np.ndarray) -> NumpyActivations:
    """The forward pass of :func:`~.derivatives.mlp_forward` in numpy: ``layers`` from
    :func:`numpy_layers`, ``x [n, d]``; returns :class:`NumpyActivations`."""
    W0, b0, W1, b1, W2, b2 = layers
    h1 = x @ W0.T
    h1 += b0
    np.tanh(h1, out=h1)
    h2 = h1 @ W1.T
    h2 += b1
    np.tanh(h2, out=h2)
    y = h2 @ W2.T
    y += b2
    return NumpyActivations(x, h1, h2, y, 1.0 - h1 * h1, 1.0 - h2 * h2, layers)


class NumpyMSEHessian:
    """:class:`~.derivatives.MSEHessian` in numpy: the Hessian of
    ``L(w) = mean_i (y_i(w) - targets_i)^2`` at the activations ``acts`` (``targets [n]``), as
    :meth:`hvp_batch` and :meth:`columns` (same formulas, same numbers up to rounding)."""

    def __init__(self, acts: NumpyActivations, targets: np.ndarray) -> None:
        a = self.acts = acts
        _, _, W1, _, W2, _ = a.layers
        self.dim = a.dim
        n = a.y.shape[0]
        self.e = (2.0 / n) * (a.y - targets.reshape(n, 1))  # dL/dy [n, 1]
        back2 = self.e @ W2
        self.d2 = back2 * a.s2
        self.c2 = -2.0 * back2 * a.h2
        self.c1 = -2.0 * (self.d2 @ W1) * a.h1

    def hvp_batch(self, V: np.ndarray) -> np.ndarray:
        """``H v`` for each row of ``V [B, P]``; returns ``[B, P]``."""
        a = self.acts
        _, _, W1, _, W2, _ = a.layers
        n = a.h1.shape[0]
        dh1, dh2, dy, (_, _, uW1, _, uW2, _) = a.tangents(V)
        de = dy * (2.0 / n)
        gW2 = self.e.T @ dh2 + de.transpose(0, 2, 1) @ a.h2
        gb2 = de.sum(1)
        dd2 = (de * W2 + self.e * uW2) * a.s2 + self.c2 * dh2
        gW1 = self.d2.T @ dh1 + dd2.transpose(0, 2, 1) @ a.h1
        gb1 = dd2.sum(1)
        dd1 = (dd2 @ W1 + self.d2 @ uW1) * a.s1 + self.c1 * dh1
        gW0 = dd1.transpose(0, 2, 1) @ a.x
        gb0 = dd1.sum(1)
        B = V.shape[0]
        return np.concatenate([g.reshape(B, -1) for g in (gW0, gb0, gW1, gb1, gW2, gb2)], 1)

    def columns(self, K: list[int]) -> np.ndarray:
        """The columns ``H[:, K]`` ``[P, k]``, written out for unit vectors as
        :meth:`~.derivatives.MSEHessian.columns` (see there)."""
        a = self.acts
        _, _, W1, _, W2, _ = a.layers
        (n, H), d = a.h1.shape, a.x.shape[1]
        k, w2, dt = len(K), W2[0], a.x.dtype
        sizes = [H * d, H, H * H, H, H, 1]
        starts = [sum(sizes[:i]) for i in range(6)]
        beta, gamma, delta = np.zeros((k, n), dt), np.zeros((k, H), dt), np.zeros((k, n), dt)
        alphas: dict[int, np.ndarray] = {}
        layer0, weight1, weight2 = [], [], []
        for c, j in enumerate(K):
            kind = bisect.bisect_right(starts, j) - 1
            r = j - starts[kind]
            if kind <= 1:  # W0[a, b] or b0[a]
                unit = r // d if kind == 0 else r
                alphas[c] = beta[c] = a.s1[:, unit] * (a.x[:, r % d] if kind == 0 else 1.0)
                gamma[c] = W1[:, unit]
                layer0.append((c, unit))
            elif kind <= 3:  # W1[a, b] or b1[a]
                unit = r // H if kind == 2 else r
                beta[c] = a.h1[:, r % H] if kind == 2 else 1.0
                gamma[c, unit] = 1.0
                if kind == 2:
                    weight1.append((c, unit, r % H))
            else:  # W2[0, b] or b2
                delta[c] = a.h2[:, r] if kind == 4 else 1.0
                if kind == 4:
                    weight2.append((c, r))
        dh2 = beta[:, :, None] * gamma[:, None, :] * a.s2  # [k, n, H]
        de = (2.0 / n) * (beta * (gamma * w2 @ a.s2.T) + delta)  # [k, n]
        gW2 = de @ a.h2 + ((beta * self.e[:, 0]) @ a.s2) * gamma  # [k, H]
        gb2 = de.sum(1)
        dd2 = de[:, :, None] * (w2 * a.s2)
        dd2 += self.c2 * dh2
        for c, b in weight2:  # e R{W2} s2
            dd2[c, :, b] += self.e[:, 0] * a.s2[:, b]
        gW1 = dd2.transpose(0, 2, 1) @ a.h1
        for c, unit in layer0:  # d2^T R{h1}
            gW1[c, :, unit] += self.d2.T @ alphas[c]
        gb1 = dd2.sum(1)
        dd1 = dd2 @ W1
        for c, unit, b in weight1:  # d2 R{W1}
            dd1[c, :, b] += self.d2[:, unit]
        dd1 *= a.s1
        for c, unit in layer0:  # c1 R{h1}
            dd1[c, :, unit] += self.c1[:, unit] * alphas[c]
        gW0 = dd1.transpose(0, 2, 1) @ a.x
        gb0 = dd1.sum(1)
        parts = (gW0, gb0, gW1, gb1, gW2, gb2[:, None])
        return np.concatenate([g.reshape(k, -1) for g in parts], 1).T


def numpy_policy_log_prob(
    actor: Actor, out: np.ndarray, actions: np.ndarray
) -> tuple[np.ndarray, object]:
    """:func:`~.derivatives.policy_log_prob` in numpy: ``log pi(a|s)`` ``[n]`` from the network's
    output ``out [n, .]`` (logits or Gaussian mean) and ``actions`` (``[n]`` integers or
    ``[n, act_dim]``), and what :func:`numpy_policy_vjp` needs (the softmax, or ``z`` and the
    standard deviation)."""
    if actor.discrete:
        z = out - out.max(1, keepdims=True)
        ez = np.exp(z)
        se = ez.sum(1, keepdims=True)
        rows = np.arange(out.shape[0])
        return (z - np.log(se))[rows, actions], ez / se
    log_std = actor.log_std.detach().numpy()
    std = np.exp(log_std)
    z = (actions - out) / std
    logp = (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return logp, (z, std)


def numpy_policy_vjp(
    actor: Actor, acts: NumpyActivations, actions: np.ndarray, aux: object, dlogp: np.ndarray
) -> np.ndarray:
    """:func:`~.derivatives.policy_vjp` in numpy: ``sum_i dlogp_i grad_theta log pi(a_i|s_i)``
    for ``dlogp [B, n]``, returned as ``[B, P]`` (``log_std`` first for a Gaussian actor);
    ``acts``: the actor network's activations, ``aux`` from :func:`numpy_policy_log_prob`."""
    if actor.discrete:
        g = -aux  # onehot(a) - softmax
        g[np.arange(g.shape[0]), actions] += 1.0
        return acts.vjp(dlogp[:, :, None] * g)
    z, std = aux
    g_net = acts.vjp(dlogp[:, :, None] * (z / std))
    g_log_std = (dlogp[:, :, None] * (z * z - 1.0)).sum(1)
    return np.concatenate([g_log_std, g_net], 1)


def blpo_direction_numpy(
    state: TrainState, mb: dict[str, torch.Tensor], cfg: ACConfig
) -> BLPODirection:
    """:func:`~birl_lite.actor_critic.blpo.blpo_direction` (steps 2-5 of the BLPO update, for
    ``cfg.algo``, every option) computed in numpy. Same arguments (without the ablation
    overrides); returns a :class:`~birl_lite.actor_critic.blpo.BLPODirection` whose tensors are
    views of numpy arrays."""
    if cfg.ent_coef > 0:
        raise ValueError("the numpy backend does not support ent_coef > 0 (use backend='torch')")
    actor = state.actor
    N = {k: v.numpy() for k, v in mb.items()}
    T, m = N["rewards"].shape
    n = T * m
    obs = N["obs"].reshape(n, -1)
    returns = N["returns"].reshape(n)
    actions = N["actions"].reshape(n, *N["actions"].shape[2:])

    # 2. leader objective: clipped surrogate with GAE from the current critic
    Lc = numpy_layers(state.critic.net)
    crit = numpy_forward(Lc, np.concatenate([obs, N["next_obs"].reshape(n, -1)]))
    values = crit.y.reshape(2, T, m)
    notterm = 1.0 - N["terminated"]
    delta = N["rewards"] + cfg.gamma * notterm * values[1] - values[0]
    adv = np.einsum("etu,ue->te", N["gae_matrix"], delta)
    if "gae_tail" in N:  # minibatch="chunks": the advantage beyond the chunk, a constant
        adv = adv + N["gae_tail"]
    adv_scale = 1.0
    if cfg.norm_adv:  # the statistics are constants (ppo.normalize)
        std = float(adv.std(ddof=1))
        adv_scale = 1.0 / (std + 1e-8)
        adv = (adv - adv.mean()) / (std + 1e-8)
    pol = numpy_forward(numpy_layers(actor.net), obs)
    logp, aux = numpy_policy_log_prob(actor, pol.y, actions)
    ratio = np.exp(logp - N["old_logp"].reshape(n))
    dJ_dratio, dJ_dadv = (
        t.numpy()
        for t in surrogate_partials(
            torch.from_numpy(ratio), torch.from_numpy(adv.reshape(n)), cfg.clip_coef
        )
    )
    cotangents = [dJ_dratio * ratio]

    solver = {"blpo-nystrom": "nystrom", "blpo-cg": "cg"}.get(cfg.algo, "none")
    if solver != "none":
        # g_w = grad_w J through A(w)
        d_delta = np.einsum("etu,te->ue", N["gae_matrix"], (dJ_dadv * adv_scale).reshape(T, m))
        dV = np.concatenate([-d_delta, cfg.gamma * notterm * d_delta]).reshape(2 * n, 1)
        g_w = crit.vjp(dV)

        # 3. iHVP u ~ (H + nu I)^{-1} g_w
        hessian = NumpyMSEHessian(crit.rows(n), returns)
        if solver == "nystrom":
            K = _nystrom_indices(state, cfg, hessian.dim, cfg.nystrom_rank).tolist()
            C = torch.from_numpy(hessian.columns(K))
            try:
                u, _ = nystrom_woodbury(C, C[K, :], torch.from_numpy(g_w), cfg.nystrom_damping)
            except torch.linalg.LinAlgError as err:  # eigh fails on NaN
                raise FloatingPointError(
                    "the BLPO direction is not finite: the critic's Hessian columns contain NaN "
                    "or inf"
                ) from err
            u, n_hvp = u.numpy(), cfg.nystrom_rank
        else:
            res = ihvp_cg(
                lambda v: torch.from_numpy(hessian.hvp_batch(v.numpy()[None])[0]),
                torch.from_numpy(g_w),
                max_iter=cfg.cg_iters,
                damping=cfg.cg_damping,
                tol=1e-10,
            )
            u, n_hvp = res.u.numpy(), res.n_hvp

        # 4. the mixed term by the score function
        if cfg.mixed_term == "book":
            dv = hessian.acts.jvp(u).reshape(T, m)
            q = 2.0 * (values[0] - N["returns"]) * dv
            causal = np.einsum("etu,ue->te", N["causal_matrix"], q).reshape(n)
            cotangents.append(ratio * causal / n)
        else:
            dvv = crit.jvp(u).reshape(2, T, m)
            d_delta = cfg.gamma * notterm * dvv[1] - dvv[0]
            dA = np.einsum("etu,ue->te", N["gae_matrix"], d_delta) * adv_scale
            q = 2.0 * (dA * (values[0] - N["returns"]) + adv * dvv[0])
            cotangents.append(ratio * q.reshape(n))

    # 5. from here on torch views of the numpy results: the torch path's own steps
    grads = torch.from_numpy(numpy_policy_vjp(actor, pol, actions, aux, np.stack(cotangents)))
    g_theta = grads[0]
    if solver == "none":
        _check_direction(g_theta.numpy())
        return BLPODirection(g_theta, None, None, None, None, 1.0, g_theta, 0)
    c_raw = grads[1]
    c, scale = clip_correction(c_raw, g_theta, cfg.correction_bound)
    if cfg.correction_control == "random":  # the control: a random direction of the same norm
        c = _random_control(state, cfg, c)
    direction = torch.from_numpy(g_theta.numpy() - c.numpy())
    _check_direction(direction.numpy())
    g_w, u = torch.from_numpy(g_w), torch.from_numpy(u)
    return BLPODirection(g_theta, g_w, u, c_raw, c, scale, direction, n_hvp)


def blpo_update_numpy(
    state: TrainState, mb: dict[str, torch.Tensor], cfg: ACConfig
) -> dict[str, float]:
    """:func:`~birl_lite.actor_critic.blpo.blpo_update` computed in numpy (module docstring):
    one minibatch update of ``ppo-nested``, ``blpo-cg`` or ``blpo-nystrom``. Same arguments,
    same diagnostics (:func:`~birl_lite.actor_critic.blpo.update_diagnostics`), the same numbers
    up to float32 rounding."""
    # 1. nesting: K critic steps towards the best response (Adam steps by the torch kernel)
    obs = mb["obs"].numpy().reshape(-1, mb["obs"].shape[-1])
    returns = mb["returns"].numpy().reshape(-1, 1)
    Lc = numpy_layers(state.critic.net)
    g = None
    for _ in range(cfg.critic_steps):
        a = numpy_forward(Lc, obs)
        g = a.vjp((2.0 / obs.shape[0]) * (a.y - returns), g)
        g_step = clip_grad_norm_numpy(g, cfg.grad_clip_norm)
        adam_step_flat(state.critic_opt, state.critic_params, torch.from_numpy(g_step), None)
    # 2.-5. the hypergradient (or the plain policy gradient for ppo-nested)
    d = blpo_direction_numpy(state, mb, cfg)
    # 6. ascent on the leader objective
    step = clip_grad_norm_numpy(-d.direction.numpy(), cfg.grad_clip_norm)
    adam_step_flat(state.actor_opt, state.actor_params, torch.from_numpy(step), None)
    return update_diagnostics(d)


def clip_grad_norm_numpy(flat: np.ndarray, max_norm: float | None) -> np.ndarray:
    """The gradient clipping of :func:`~birl_lite.actor_critic.blpo.adam_step_flat` in numpy:
    ``flat * min(1, max_norm / (||flat|| + 1e-6))`` (``max_norm=None``: ``flat`` unchanged),
    the norm accumulated in float64. One BLAS call where the torch path takes five torch
    operations (on the critic's 4,545 parameters, measured: an Adam step with the torch clipping
    199 us, without it 112 us). ``flat [P]``; returns ``[P]``, a new array when scaled.
    The formula is the torch path's, evaluated in numpy; it stays a second copy because changing
    :func:`~birl_lite.actor_critic.blpo.adam_step_flat`'s rounding would change the committed
    torch runs."""
    if max_norm is None:
        return flat
    f64 = flat.astype(np.float64)
    return flat * min(1.0, max_norm / (math.sqrt(float(f64 @ f64)) + 1e-6))
