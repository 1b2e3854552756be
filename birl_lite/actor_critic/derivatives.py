"""Hand-derived first and second derivatives of the tanh MLPs of chapters 8-9.

BLPO needs, per minibatch, several gradients of the critic, ``k`` Hessian-vector products of the
follower loss and two vector-Jacobian products of the actor (chapter 8, equations
(eq-ac-hypergradient) and (eq-ac-mixed)). On networks
this small (64-64) the cost of autograd is the bookkeeping around each of its ~100 tiny
kernels, not arithmetic, so :func:`~birl_lite.actor_critic.blpo.blpo_update` uses the explicit
formulas below instead: backpropagation written out (:func:`mlp_vjp`) and its directional
derivative, Pearlmutter's R-operator (:class:`MSEHessian`), batched over many vectors at once.
Every function is checked against autograd and :func:`birl_lite.ihvp.make_hvp` in
``tests/test_derivatives.py``.

Notation for a network ``x -> z1 = x W0^T + b0 -> h1 = tanh z1 -> z2 = h1 W1^T + b1 ->
h2 = tanh z2 -> y = h2 W2^T + b2``. Parameter vectors are flat, in the order of
``module.named_parameters()``: ``W0, b0, W1, b1, W2, b2`` (the layout of
:func:`birl_lite.ihvp.make_hvp` for ``dict(module.named_parameters())``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from .networks import Actor

__all__ = [
    "LayerParams",
    "MLPActivations",
    "MSEHessian",
    "mlp_forward",
    "mlp_jvp",
    "mlp_vjp",
    "mse_grad",
    "policy_log_prob",
    "policy_vjp",
]


class LayerParams(NamedTuple):
    """The weight ``[out, in]`` and bias ``[out]`` of one linear layer of the network, detached
    from autograd: views of the parameters' memory, so an optimizer's in-place step shows
    through (the ``layers`` of :class:`MLPActivations` are three of them). Arithmetic on a
    parameter goes through autograd's dispatch layer even under ``torch.no_grad()``; on the
    detached views it does not, which makes the critic's forward pass and gradient about a
    quarter faster, with the same numbers bit for bit."""

    weight: torch.Tensor
    bias: torch.Tensor


def _layers(net: torch.nn.Sequential) -> tuple[LayerParams, LayerParams, LayerParams]:
    mods = list(net)
    return tuple(
        LayerParams(m.weight.detach(), m.bias.detach()) for m in (mods[0], mods[2], mods[4])
    )


def _tanh(z: torch.Tensor) -> torch.Tensor:
    """``tanh`` in place. On CPU through numpy, which is ~10x faster than ``torch.tanh`` on
    these sizes (measured: 2 us vs 21 us for 128 x 64 floats) and agrees to rounding."""
    if z.device.type == "cpu" and z.is_contiguous() and not z.requires_grad:
        zn = z.numpy()
        np.tanh(zn, out=zn)
        return z
    return torch.tanh_(z)


@dataclass
class MLPActivations:
    """What backpropagation needs from a forward pass: input ``x [n, d]``, hidden activations
    ``h1, h2 [n, H]``, output ``y [n, out]`` and the weights and biases of the three linear layers
    (detached: ``LayerParams``); and, once :meth:`slopes` has computed them, the tanh slopes
    ``s1, s2 = 1 - h1^2, 1 - h2^2``."""

    x: torch.Tensor
    h1: torch.Tensor
    h2: torch.Tensor
    y: torch.Tensor
    layers: tuple[LayerParams, LayerParams, LayerParams]
    s1: torch.Tensor | None = field(default=None, repr=False)
    s2: torch.Tensor | None = field(default=None, repr=False)

    def slopes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - h1^2, 1 - h2^2)``, computed once and kept (every backward pass, R-operator
        and Jacobian-vector product on these activations needs them)."""
        if self.s1 is None or self.s2 is None:
            with torch.no_grad():
                self.s1, self.s2 = 1.0 - self.h1 * self.h1, 1.0 - self.h2 * self.h2
        return self.s1, self.s2

    def rows(self, n: int) -> MLPActivations:
        """The activations of the first ``n`` inputs (views, the slopes too if computed)."""
        s1 = None if self.s1 is None else self.s1[:n]
        s2 = None if self.s2 is None else self.s2[:n]
        return MLPActivations(self.x[:n], self.h1[:n], self.h2[:n], self.y[:n], self.layers, s1, s2)


@torch.no_grad()
def mlp_forward(net: torch.nn.Sequential, x: torch.Tensor) -> MLPActivations:
    """Forward pass of a two-hidden-layer tanh MLP (:func:`~.networks.mlp`) keeping the
    activations. ``x [n, d]``; returns :class:`MLPActivations`."""
    layers = l0, l1, l2 = _layers(net)
    h1 = _tanh(torch.addmm(l0.bias, x, l0.weight.T))
    h2 = _tanh(torch.addmm(l1.bias, h1, l1.weight.T))
    return MLPActivations(x, h1, h2, torch.addmm(l2.bias, h2, l2.weight.T), layers)


@torch.no_grad()
def mlp_vjp(
    acts: MLPActivations, dy: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Vector-Jacobian products ``sum_i dy_i . dy_i/dparams`` by backpropagation.

    Args:
        acts: the network's activations on ``x [n, d]`` (:func:`mlp_forward`).
        dy: cotangents of the outputs ``[n, out]``, or ``[B, n, out]`` for ``B`` products at once.
        out: optional flat buffer ``[P]`` (contiguous, dtype of ``dy``) to write the gradient
            into, for ``dy [n, out]`` only (a reused buffer saves an allocation).

    Returns:
        The flat parameter gradients ``[P]`` (or ``[B, P]``), layout ``W0, b0, W1, b1, W2, b2``.
        For a single product every block is written into its slice of the flat result by the
        same matrix products and sums (``out=`` views), instead of concatenated afterwards.
    """
    _, l1, l2 = acts.layers
    x, h1, h2 = acts.x, acts.h1, acts.h2
    s1, s2 = acts.slopes()
    if dy.dim() == 2:
        if out is None:
            out = torch.empty(_numel(acts.layers), dtype=dy.dtype, device=dy.device)
        gW0, gb0, gW1, gb1, gW2, gb2 = _unflat(acts.layers, out)
        torch.mm(dy.T, h2, out=gW2)
        torch.sum(dy, 0, out=gb2)
        d2 = (dy @ l2.weight).mul_(s2)
        torch.mm(d2.T, h1, out=gW1)
        torch.sum(d2, 0, out=gb1)
        d1 = (d2 @ l1.weight).mul_(s1)
        torch.mm(d1.T, x, out=gW0)
        torch.sum(d1, 0, out=gb0)
        return out
    if out is not None:
        raise ValueError("out is only supported for a single product (dy of shape [n, out])")
    gW2 = dy.transpose(-1, -2) @ h2
    gb2 = dy.sum(-2)
    d2 = (dy @ l2.weight).mul_(s2)
    gW1 = d2.transpose(-1, -2) @ h1
    gb1 = d2.sum(-2)
    d1 = (d2 @ l1.weight).mul_(s1)
    gW0 = d1.transpose(-1, -2) @ x
    gb0 = d1.sum(-2)
    return _flat((gW0, gb0, gW1, gb1, gW2, gb2), dy.dim() - 2)


def _numel(layers) -> int:
    return sum(p.numel() for lay in layers for p in (lay.weight, lay.bias))


def _flat(parts: tuple[torch.Tensor, ...], batch_dims: int) -> torch.Tensor:
    lead = parts[0].shape[:batch_dims]
    return torch.cat([p.reshape(*lead, -1) for p in parts], dim=-1)


def _unflat(layers, v: torch.Tensor) -> list[torch.Tensor]:
    """Split flat vectors ``[..., P]`` into the parameter shapes ``[..., *shape]``."""
    out, offset = [], 0
    lead = v.shape[:-1]
    for lay in layers:
        for p in (lay.weight, lay.bias):
            n = p.numel()
            out.append(v[..., offset : offset + n].view(*lead, *p.shape))
            offset += n
    return out


def _tangents(acts: MLPActivations, s1: torch.Tensor, s2: torch.Tensor, V: torch.Tensor):
    """Forward-mode tangents ``R{h1}, R{h2}, R{y}`` ``[B, n, .]`` along ``V [B, P]``, and the
    direction split into the parameter shapes. ``s1, s2 = 1 - h1^2, 1 - h2^2``."""
    _, l1, l2 = acts.layers
    u = uW0, ub0, uW1, ub1, uW2, ub2 = _unflat(acts.layers, V)
    B, (n, H) = V.shape[0], acts.h1.shape
    dh1 = torch.baddbmm(ub0.unsqueeze(1), acts.x.expand(B, -1, -1), uW0.transpose(1, 2))
    dh1.mul_(s1)
    dh2 = torch.baddbmm(ub1.unsqueeze(1), acts.h1.expand(B, -1, -1), uW1.transpose(1, 2))
    dh2.view(B * n, H).addmm_(dh1.view(B * n, H), l1.weight.T)
    dh2.mul_(s2)
    dy = torch.baddbmm(ub2.unsqueeze(1), acts.h2.expand(B, -1, -1), uW2.transpose(1, 2))
    dy.view(B * n, -1).addmm_(dh2.view(B * n, H), l2.weight.T)
    return dh1, dh2, dy, u


@torch.no_grad()
def mlp_jvp(acts: MLPActivations, v: torch.Tensor) -> torch.Tensor:
    """Jacobian-vector products ``dy/dparams . v`` (forward mode), ``v [P]`` or ``[B, P]``
    (flat); returns the output tangents ``[n, out]`` or ``[B, n, out]``."""
    single = v.dim() == 1
    V = v.unsqueeze(0) if single else v
    dy = _tangents(acts, *acts.slopes(), V)[2]
    return dy[0] if single else dy


def _mse_cotangent(y: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``dL/dy = 2 (y - targets) / n`` for ``L = mean_i (y_i - targets_i)^2``, ``[n, 1]``."""
    n = y.shape[0]
    return (2.0 / n) * (y - targets.reshape(n, 1))


@torch.no_grad()
def mse_grad(
    acts: MLPActivations, targets: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The flat gradient ``[P]`` of ``L(w) = mean_i (y_i(w) - targets_i)^2`` (one output unit)
    at the activations ``acts`` of :func:`mlp_forward` (the follower loss of BLPO); ``out``: an
    optional buffer ``[P]`` to write it into (see :func:`mlp_vjp`)."""
    return mlp_vjp(acts, _mse_cotangent(acts.y, targets), out)


class MSEHessian:
    """The Hessian of ``L(w) = mean_i (y_i(w) - targets_i)^2`` for a one-output MLP (the
    follower loss of BLPO, ``y = V_w``), as an operator for the :mod:`birl_lite.ihvp` solvers:
    ``H(v)`` for a flat ``v [P]`` and the batched ``H.matmat(X)`` for ``X [P, B]`` (one pass for
    all ``B`` columns, which :func:`~birl_lite.ihvp.ihvp_nystrom` uses for its ``m`` columns).

    ``H v`` is Pearlmutter's R-operator applied to :func:`mlp_vjp` with the cotangent
    ``e = 2 (y - targets) / n``: the directional derivative along ``v`` of every quantity of
    the forward and the backward pass, written out. It is the exact Hessian (Gauss-Newton
    term and residual term), never formed.

    Args:
        net: the MLP (output width 1). obs: ``[n, d]``. targets: ``[n]``.
        acts: optional activations of ``net`` on ``obs`` already computed.
    """

    def __init__(
        self,
        net: torch.nn.Sequential,
        obs: torch.Tensor,
        targets: torch.Tensor,
        acts: MLPActivations | None = None,
    ) -> None:
        with torch.no_grad():
            self.acts = a = mlp_forward(net, obs) if acts is None else acts
            _, l1, l2 = a.layers
            self._net = net
            self.dim = _numel(a.layers)
            self.dtype = a.x.dtype
            self.n_hvp = 0
            # everything that does not depend on the direction
            self.s1, self.s2 = a.slopes()
            self.e = _mse_cotangent(a.y, targets)  # dL/dy, [n, 1]
            back2 = self.e @ l2.weight  # [n, H]
            self.d2 = back2 * self.s2  # dL/dz2
            self.c2 = -2.0 * back2 * a.h2  # d(d2)/d(h2) factor: R{s2} = -2 h2 R{h2}
            back1 = self.d2 @ l1.weight
            self.c1 = -2.0 * back1 * a.h1

    @torch.no_grad()
    def hvp_batch(self, V: torch.Tensor) -> torch.Tensor:
        """``H v`` for each row of ``V [B, P]``; returns ``[B, P]``."""
        a = self.acts
        _, l1, l2 = a.layers
        B, (n, H) = V.shape[0], a.h1.shape
        dh1, dh2, dy, (_, _, uW1, _, uW2, _) = _tangents(a, self.s1, self.s2, V)
        de = dy.mul_(2.0 / n)  # R{e}, [B, n, 1]
        gW2 = torch.baddbmm(self.e.T @ dh2, de.transpose(1, 2), a.h2.expand(B, -1, -1))
        gb2 = de.sum(1)
        # R{d2} = (R{e} W2 + e R{W2}) s2 + c2 R{h2}
        dd2 = (de * l2.weight + self.e * uW2).mul_(self.s2).addcmul_(self.c2, dh2)
        gW1 = torch.baddbmm(self.d2.T @ dh1, dd2.transpose(1, 2), a.h1.expand(B, -1, -1))
        gb1 = dd2.sum(1)
        # R{d1} = (R{d2} W1 + d2 R{W1}) s1 + c1 R{h1}
        dd1 = torch.baddbmm(
            (dd2.view(B * n, H) @ l1.weight).view(B, n, H), self.d2.expand(B, -1, -1), uW1
        )
        dd1.mul_(self.s1).addcmul_(self.c1, dh1)
        gW0 = dd1.transpose(1, 2) @ a.x
        gb0 = dd1.sum(1)
        return _flat((gW0, gb0, gW1, gb1, gW2, gb2), 1)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``v [P]``."""
        self.n_hvp += 1
        return self.hvp_batch(v.unsqueeze(0))[0]

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``H X`` for ``X [P, B]``, all columns in one pass."""
        self.n_hvp += X.shape[1]
        return self.hvp_batch(X.T.contiguous()).T

    @torch.no_grad()
    def columns(self, K: torch.Tensor) -> torch.Tensor:
        """The columns ``H[:, K]`` ``[P, k]`` (``k`` distinct flat indices), as Nystrom needs.

        ``H e_j`` is :meth:`hvp_batch` along a unit vector, which moves one weight only; this
        method writes the tangents of that case out instead of multiplying by mostly-zero
        matrices. A weight of layer 0 (input ``b``, unit ``a``) moves ``h1`` in column ``a``
        only: ``R{h1} = alpha e_a^T`` with ``alpha = s1[:, a] x[:, b]`` (``x[:, b] := 1`` for a
        bias). Every unit vector gives ``R{z2} = beta gamma^T`` (rank one): ``beta = alpha,
        gamma = W1[:, a]`` for layer 0; ``beta = h1[:, b], gamma = e_a`` for ``W1[a, b]``
        (``beta = 1`` for ``b1[a]``); zero for the last layer, which moves ``y`` directly by
        ``delta = h2[:, b]`` (``1`` for ``b2``). The backward pass then costs two dense matrix
        products per column instead of six. Same numbers as ``matmat(E_K)`` (tested).
        """
        a = self.acts
        _, l1, l2 = a.layers
        (n, H), d = a.h1.shape, a.x.shape[1]
        K = K.tolist()
        k = len(K)
        self.n_hvp += k
        W1, w2 = l1.weight, l2.weight[0]
        sizes = [H * d, H, H * H, H, H, 1]
        starts = [sum(sizes[:i]) for i in range(6)]
        # the columns of alpha (layer 0 only), beta and delta and the rows of gamma, stacked
        # once below (the same numbers as writing them one by one into zero matrices)
        zeros_n, ones_n, zeros_h, eye = a.x.new_zeros(n), a.x.new_ones(n), None, None
        alphas: dict[int, torch.Tensor] = {}  # R{h1} = alpha e_a^T (layer-0 columns)
        betas, gammas, deltas = [], [], []  # R{z2} = beta gamma^T; delta: direct move of y
        layer0, weight1, weight2 = [], [], []  # (column, unit a, input b) for the fix-ups
        for c, j in enumerate(K):
            kind = bisect.bisect_right(starts, j) - 1
            r = j - starts[kind]
            if kind <= 1:  # W0[a, b] or b0[a]
                unit = r // d if kind == 0 else r
                alphas[c] = self.s1[:, unit] * (a.x[:, r % d] if kind == 0 else 1.0)
                betas.append(alphas[c])
                gammas.append(W1[:, unit])
                deltas.append(zeros_n)
                layer0.append((c, unit))
            elif kind <= 3:  # W1[a, b] or b1[a]
                unit = r // H if kind == 2 else r
                betas.append(a.h1[:, r % H] if kind == 2 else ones_n)
                if eye is None:
                    eye = torch.eye(H, dtype=a.x.dtype, device=a.x.device)
                gammas.append(eye[unit])
                deltas.append(zeros_n)
                if kind == 2:
                    weight1.append((c, unit, r % H))
            else:  # W2[0, b] or b2
                if zeros_h is None:
                    zeros_h = a.x.new_zeros(H)
                betas.append(zeros_n)
                gammas.append(zeros_h)
                deltas.append(a.h2[:, r] if kind == 4 else ones_n)
                if kind == 4:
                    weight2.append((c, r))
        beta, gamma, delta = torch.stack(betas, 1), torch.stack(gammas), torch.stack(deltas, 1)
        # forward: R{h2} = s2 * (beta gamma^T),  R{y} = R{h2} W2^T + delta
        # (beta.T made contiguous: the broadcast products below are then contiguous [k, n, H],
        # not [n, k, H] strided as the transposed view would give them, several times faster)
        dh2 = beta.T.contiguous().unsqueeze(2) * gamma.unsqueeze(1) * self.s2  # [k, n, H]
        dy = beta * (self.s2 @ (gamma * w2).T) + delta  # [n, k]
        de = (2.0 / n) * dy
        # backward and its R-derivative (as hvp_batch, with the zero terms left out)
        gW2 = de.T @ a.h2 + ((self.e * beta).T @ self.s2) * gamma  # [k, H]
        gb2 = de.sum(0)
        dd2 = (de.T.contiguous().unsqueeze(2) * (w2 * self.s2)).addcmul_(self.c2, dh2)  # [k, n, H]
        for c, b in weight2:  # e R{W2} s2: column b of R{d2}
            dd2[c, :, b].add_(self.e[:, 0] * self.s2[:, b])
        gW1 = dd2.transpose(1, 2) @ a.h1  # [k, H, H]
        for c, unit in layer0:  # d2^T R{h1}: column a of R{gW1}
            gW1[c, :, unit].add_(self.d2.T @ alphas[c])
        gb1 = dd2.sum(1)
        dd1 = (dd2.reshape(k * n, H) @ W1).view(k, n, H)
        for c, unit, b in weight1:  # d2 R{W1}: column b gets d2[:, a]
            dd1[c, :, b].add_(self.d2[:, unit])
        dd1.mul_(self.s1)
        for c, unit in layer0:  # c1 R{h1}: column a
            dd1[c, :, unit].add_(self.c1[:, unit] * alphas[c])
        gW0 = (a.x.T @ dd1).transpose(1, 2)  # [k, H, d]
        gb0 = dd1.sum(1)
        return _flat((gW0, gb0, gW1, gb1, gW2.unsqueeze(1), gb2.unsqueeze(1)), 1).T

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector as a dict keyed like ``net.named_parameters()``."""
        return dict(zip(self.names, _unflat(self.acts.layers, v), strict=True))

    @property
    def names(self) -> list[str]:
        """The parameter names, in the order of ``net.named_parameters()``."""
        return [name for name, _ in self._net.named_parameters()]


@torch.no_grad()
def policy_log_prob(actor: Actor, acts: MLPActivations, actions: torch.Tensor) -> torch.Tensor:
    """``log pi_theta(a_i|s_i)`` ``[n]`` from the actor network's activations on ``s [n, d]``
    (the same numbers as :meth:`~.networks.Actor.log_prob`). ``actions``: ``[n]`` int64
    (Categorical) or ``[n, act_dim]`` (Gaussian)."""
    return actor.log_prob_of_output(acts.y, actions)


@torch.no_grad()
def policy_vjp(
    actor: Actor, acts: MLPActivations, actions: torch.Tensor, dlogp: torch.Tensor
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
        return mlp_vjp(acts, dlogp.unsqueeze(-1) * (onehot - p))
    std = torch.exp(actor.log_std)
    z = (actions - out) / std
    g_net = mlp_vjp(acts, dlogp.unsqueeze(-1) * (z / std))
    g_log_std = (dlogp.unsqueeze(-1) * (z.square() - 1.0)).sum(-2)
    return torch.cat([g_log_std, g_net], dim=-1)
