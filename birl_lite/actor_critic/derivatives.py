"""Hand-derived first and second derivatives of the tanh MLPs of chapters 8-9.

BLPO needs, per minibatch, several gradients of the critic, ``k`` Hessian-vector products of the
follower loss and two vector-Jacobian products of the actor (math.md section 7). On networks
this small (64-64) the cost of autograd is the bookkeeping around each of its ~100 tiny
kernels, not arithmetic, so :func:`~birl_lite.actor_critic.blpo.blpo_update` uses the explicit
formulas below instead: backpropagation written out (:func:`mlp_vjp`) and its directional
derivative, Pearlmutter's R-operator (:func:`mse_hvp`), batched over many vectors at once.
Every function is checked against autograd and :func:`birl_lite.ihvp.make_hvp` in
``tests/test_derivatives.py``.

Notation for a network ``x -> z1 = x W0^T + b0 -> h1 = tanh z1 -> z2 = h1 W1^T + b1 ->
h2 = tanh z2 -> y = h2 W2^T + b2``. Parameter vectors are flat, in the order of
``module.named_parameters()``: ``W0, b0, W1, b1, W2, b2`` (the layout of
:func:`birl_lite.ihvp.make_hvp` for ``dict(module.named_parameters())``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "MLPActivations",
    "MSEHessian",
    "mlp_forward",
    "mlp_jvp",
    "mlp_vjp",
    "mse_hvp",
    "policy_log_prob",
    "policy_vjp",
]


def _layers(net: nn.Sequential) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    return net[0], net[2], net[4]


@dataclass
class MLPActivations:
    """What backpropagation needs from a forward pass: input ``x [n, d]``, hidden activations
    ``h1, h2 [n, H]`` and output ``y [n, out]``."""

    x: torch.Tensor
    h1: torch.Tensor
    h2: torch.Tensor
    y: torch.Tensor


@torch.no_grad()
def mlp_forward(net: nn.Sequential, x: torch.Tensor) -> MLPActivations:
    """Forward pass of a two-hidden-layer tanh MLP (:func:`~.networks.mlp`) keeping the
    activations. ``x [n, d]``; returns :class:`MLPActivations`."""
    l0, l1, l2 = _layers(net)
    h1 = torch.tanh(torch.addmm(l0.bias, x, l0.weight.T))
    h2 = torch.tanh(torch.addmm(l1.bias, h1, l1.weight.T))
    return MLPActivations(x, h1, h2, torch.addmm(l2.bias, h2, l2.weight.T))


@torch.no_grad()
def mlp_vjp(net: nn.Sequential, acts: MLPActivations, dy: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian products ``sum_i dy_i . dy_i/dparams`` by backpropagation.

    Args:
        net: the MLP. acts: its activations on ``x [n, d]`` (:func:`mlp_forward`).
        dy: cotangents of the outputs ``[n, out]``, or ``[B, n, out]`` for ``B`` products at once.

    Returns:
        The flat parameter gradients ``[P]`` (or ``[B, P]``), layout ``W0, b0, W1, b1, W2, b2``.
    """
    _, l1, l2 = _layers(net)
    x, h1, h2 = acts.x, acts.h1, acts.h2
    gW2 = dy.transpose(-1, -2) @ h2
    gb2 = dy.sum(-2)
    d2 = (dy @ l2.weight) * (1.0 - h2 * h2)
    gW1 = d2.transpose(-1, -2) @ h1
    gb1 = d2.sum(-2)
    d1 = (d2 @ l1.weight) * (1.0 - h1 * h1)
    gW0 = d1.transpose(-1, -2) @ x
    gb0 = d1.sum(-2)
    return _flat((gW0, gb0, gW1, gb1, gW2, gb2), dy.dim() - 2)


def _flat(parts: tuple[torch.Tensor, ...], batch_dims: int) -> torch.Tensor:
    lead = parts[0].shape[:batch_dims]
    return torch.cat([p.reshape(*lead, -1) for p in parts], dim=-1)


def _unflat(net: nn.Sequential, v: torch.Tensor) -> list[torch.Tensor]:
    """Split flat vectors ``[..., P]`` into the parameter shapes ``[..., *shape]``."""
    out, offset = [], 0
    lead = v.shape[:-1]
    for lay in _layers(net):
        for p in (lay.weight, lay.bias):
            n = p.numel()
            out.append(v[..., offset : offset + n].reshape(*lead, *p.shape))
            offset += n
    return out


def _tangents(net: nn.Sequential, acts: MLPActivations, V: torch.Tensor):
    _, l1, l2 = _layers(net)
    uW0, ub0, uW1, ub1, uW2, ub2 = _unflat(net, V)
    x, h1, h2 = acts.x, acts.h1, acts.h2
    dh1 = (1.0 - h1 * h1) * (x @ uW0.transpose(-1, -2) + ub0.unsqueeze(-2))
    dz2 = dh1 @ l1.weight.T + h1 @ uW1.transpose(-1, -2) + ub1.unsqueeze(-2)
    dh2 = (1.0 - h2 * h2) * dz2
    dy = dh2 @ l2.weight.T + h2 @ uW2.transpose(-1, -2) + ub2.unsqueeze(-2)
    return dh1, dh2, dy


@torch.no_grad()
def mlp_jvp(net: nn.Sequential, acts: MLPActivations, v: torch.Tensor) -> torch.Tensor:
    """Jacobian-vector products ``dy/dparams . v`` (forward mode), ``v [P]`` or ``[B, P]``
    (flat); returns the output tangents ``[n, out]`` or ``[B, n, out]``."""
    return _tangents(net, acts, v)[2]


@torch.no_grad()
def mse_hvp(
    net: nn.Sequential, acts: MLPActivations, targets: torch.Tensor, V: torch.Tensor
) -> torch.Tensor:
    """Hessian-vector products of ``L(w) = mean_i (y_i(w) - targets_i)^2`` (one output unit).

    Pearlmutter's R-operator applied to :func:`mlp_vjp` with ``dy = 2 (y - targets) / n``: the
    directional derivative along ``v`` of every quantity of the forward and backward pass,
    written out. Exact (the full Hessian, not Gauss-Newton).

    Args:
        net: the MLP (output width 1). acts: activations on ``x [n, d]``.
        targets: ``[n]``. V: directions ``[P]`` or ``[B, P]`` (flat, layout of :func:`mlp_vjp`).

    Returns:
        ``H v`` with the shape of ``V``.
    """
    single = V.dim() == 1
    V = V.unsqueeze(0) if single else V
    _, l1, l2 = _layers(net)
    x, h1, h2, y = acts.x, acts.h1, acts.h2, acts.y
    n = x.shape[0]
    _, _, uW1, _, uW2, _ = _unflat(net, V)  # [B, ...]
    s1, s2 = 1.0 - h1 * h1, 1.0 - h2 * h2
    dh1, dh2, dy = _tangents(net, acts, V)  # forward tangents R{h1}, R{h2}, R{y}: [B, n, .]
    # backward quantities and their R-derivatives
    e = (2.0 / n) * (y - targets.reshape(n, 1))  # [n, 1]
    de = (2.0 / n) * dy  # [B, n, 1]
    gW2 = de.transpose(-1, -2) @ h2 + e.T @ dh2
    gb2 = de.sum(-2)
    back2 = e @ l2.weight  # [n, H]
    d2 = back2 * s2
    dd2 = (de @ l2.weight + e @ uW2) * s2 - 2.0 * back2 * h2 * dh2
    gW1 = dd2.transpose(-1, -2) @ h1 + d2.T @ dh1
    gb1 = dd2.sum(-2)
    back1 = d2 @ l1.weight
    dd1 = (dd2 @ l1.weight + d2 @ uW1) * s1 - 2.0 * back1 * h1 * dh1
    gW0 = dd1.transpose(-1, -2) @ x
    gb0 = dd1.sum(-2)
    out = _flat((gW0, gb0, gW1, gb1, gW2, gb2), 1)
    return out[0] if single else out


class MSEHessian:
    """The Hessian of the follower loss ``mean_i (V_w(s_i) - G_i)^2`` at the critic's current
    weights, as an operator for :mod:`birl_lite.ihvp` solvers: ``H(v)`` for a flat ``v [P]``
    and the batched ``H.matmat(X)`` for ``X [P, B]`` (one pass for all ``B`` columns, which
    :func:`~birl_lite.ihvp.ihvp_nystrom` uses for its ``k`` columns).

    Args:
        net: the critic's MLP. obs: ``[n, d]``. targets: ``[n]``.
    """

    def __init__(self, net: nn.Sequential, obs: torch.Tensor, targets: torch.Tensor) -> None:
        self.net = net
        self.acts = mlp_forward(net, obs)
        self.targets = targets.reshape(-1)
        self.dim = sum(p.numel() for p in net.parameters())
        self.n_hvp = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n_hvp += 1
        return mse_hvp(self.net, self.acts, self.targets, v)

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.n_hvp += X.shape[1]
        return mse_hvp(self.net, self.acts, self.targets, X.T).T

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector as a dict keyed like ``net.named_parameters()``."""
        names = [name for name, _ in self.net.named_parameters()]
        return dict(zip(names, _unflat(self.net, v), strict=True))


@torch.no_grad()
def policy_log_prob(actor, acts: MLPActivations, actions: torch.Tensor) -> torch.Tensor:
    """``log pi_theta(a_i|s_i)`` ``[n]`` from the actor network's activations on ``s [n, d]``
    (the same numbers as :meth:`~.networks.Actor.log_prob`). ``actions``: ``[n]`` int64
    (Categorical) or ``[n, act_dim]`` (Gaussian)."""
    out = acts.y
    if actor.discrete:
        return torch.log_softmax(out, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    z = (actions - out) * torch.exp(-actor.log_std)
    return (-0.5 * z.square() - actor.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@torch.no_grad()
def policy_vjp(
    actor, acts: MLPActivations, actions: torch.Tensor, dlogp: torch.Tensor
) -> torch.Tensor:
    """``sum_i dlogp_i grad_theta log pi_theta(a_i|s_i)`` for ``B`` cotangents at once.

    Categorical: ``d log pi(a|s) / d logits = onehot(a) - softmax(logits)``. Gaussian with mean
    ``mu`` and state-independent ``log_std``: ``d / d mu = z / std`` and ``d / d log_std =
    z^2 - 1`` with ``z = (a - mu) / std``.

    Args:
        actor: an :class:`~.networks.Actor`. acts: its network's activations on ``s [n, d]``.
        actions: as in :func:`policy_log_prob`. dlogp: ``[B, n]``.

    Returns:
        ``[B, P]`` flat gradients in the order of ``actor.named_parameters()`` (``log_std``
        first for a Gaussian actor, then ``W0, b0, W1, b1, W2, b2``).
    """
    out = acts.y
    if actor.discrete:
        p = torch.softmax(out, dim=-1)
        onehot = torch.zeros_like(p).scatter_(-1, actions.unsqueeze(-1), 1.0)
        return mlp_vjp(actor.net, acts, dlogp.unsqueeze(-1) * (onehot - p))
    std = torch.exp(actor.log_std)
    z = (actions - out) / std
    g_net = mlp_vjp(actor.net, acts, dlogp.unsqueeze(-1) * (z / std))
    g_log_std = (dlogp.unsqueeze(-1) * (z.square() - 1.0)).sum(-2)
    return torch.cat([g_log_std, g_net], dim=-1)
