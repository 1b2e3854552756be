"""Separate actor and critic networks: two tanh hidden layers each (64-64 by default).

The actor is a softmax (Categorical) policy for ``Discrete`` actions and a diagonal Gaussian with
a state-independent log standard deviation for ``Box`` actions. Weights use CleanRL's orthogonal
initialization (gain sqrt(2) in the hidden layers, 0.01 for the policy head, 1 for the value head),
drawn from a seeded generator. Networks are float32 (small RL networks; the tabular code of the
book is float64).

During a rollout the actor is evaluated once per vector step on a handful of observations; there a
numpy forward pass (:meth:`Actor.act_numpy`) on *views* of the torch weights is several times
cheaper than a torch call, and gives the same numbers to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["Actor", "Critic", "mlp"]


def mlp(
    in_dim: int, out_dim: int, hidden: int, out_gain: float, gen: torch.Generator
) -> nn.Sequential:
    """``in_dim -> hidden -> hidden -> out_dim`` with tanh activations, orthogonal init."""
    net = nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, out_dim),
    )
    gains = (math.sqrt(2.0), math.sqrt(2.0), out_gain)
    with torch.no_grad():
        for layer, gain in zip((net[0], net[2], net[4]), gains, strict=True):
            w = torch.empty_like(layer.weight)
            # orthogonal init from a seeded generator (torch.nn.init.orthogonal_ has no generator)
            flat = torch.randn(max(w.shape), min(w.shape), generator=gen)
            q, r = torch.linalg.qr(flat)
            q = q * torch.sign(torch.diagonal(r))
            q = q if w.shape[0] >= w.shape[1] else q.T
            layer.weight.copy_(gain * q[: w.shape[0], : w.shape[1]])
            layer.bias.zero_()
    return net


class Critic(nn.Module):
    """State-value network ``V_w(s)``: ``[..., obs_dim] -> [...]``."""

    def __init__(self, obs_dim: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, 1.0, gen)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Values ``V_w(obs)``, shape ``obs.shape[:-1]``."""
        return self.net(obs).squeeze(-1)


class Actor(nn.Module):
    """Policy ``pi_theta(a|s)``: Categorical over ``n_actions`` or diagonal Gaussian in ``R^act_dim``.

    Args:
        obs_dim: observation size.
        act_dim: number of actions (discrete) or action dimension (continuous).
        discrete: Categorical if True, Gaussian if False.
        hidden: hidden width.
        gen: generator for the initial weights.
        log_std_init: initial log standard deviation (Gaussian only).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        discrete: bool,
        hidden: int,
        gen: torch.Generator,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.discrete = discrete
        self.act_dim = act_dim
        self.net = mlp(obs_dim, act_dim, hidden, 0.01, gen)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        self._np: list[np.ndarray] | None = None

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log pi_theta(a|s)`` for a batch: ``obs [..., obs_dim]``, ``actions [...]`` (int64,
        discrete) or ``[..., act_dim]`` (continuous); returns ``[...]``."""
        return self.log_prob_of_output(self.net(obs), actions)

    def log_prob_of_output(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log pi(a|s)`` from the network's output ``out = net(s)`` (logits, or the Gaussian
        mean): the part of :meth:`log_prob` after the network."""
        if self.discrete:
            logp = torch.log_softmax(out, dim=-1)
            return logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        z = (actions - out) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        """Entropy of ``pi_theta(.|s)`` per observation, ``[...]``."""
        out = self.net(obs)
        if self.discrete:
            logp = torch.log_softmax(out, dim=-1)
            return -(logp.exp() * logp).sum(-1)
        ent = 0.5 + 0.5 * math.log(2 * math.pi) + self.log_std.sum()
        return ent.expand(out.shape[:-1])

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 (torch's signature)
        # .double(), .float(), .to(...) replace the parameter tensors: drop the numpy views
        self._np = None
        return super()._apply(fn, *args, **kwargs)

    def act_numpy(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sample actions for a batch ``obs [n, obs_dim]`` (float32) with a numpy forward pass.

        Discrete: Gumbel-max sampling ``argmax(logits + Gumbel)``; continuous:
        ``mean + std * N(0, 1)`` (unclipped; the rollout clips what it sends to the env).
        Uses views of the current weights (no copy), so it always sees the latest parameters; the
        views are rebuilt after a dtype or device change (``.double()``, ``.to(...)``).
        """
        if self._np is None:
            layers = (self.net[0], self.net[2], self.net[4])
            self._np = [t.detach().numpy() for lay in layers for t in (lay.weight, lay.bias)]
            if not self.discrete:
                self._np.append(self.log_std.detach().numpy())
        w0, b0, w1, b1, w2, b2 = self._np[:6]
        h = np.tanh(obs @ w0.T + b0)
        h = np.tanh(h @ w1.T + b1)
        out = h @ w2.T + b2
        if self.discrete:
            return np.argmax(out + rng.gumbel(size=out.shape).astype(np.float32), axis=-1)
        std = np.exp(self._np[6])
        return (out + std * rng.standard_normal(size=out.shape).astype(np.float32)).astype(
            np.float32
        )
