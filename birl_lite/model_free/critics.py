"""Critics from samples: ``Q_U`` and the gradient critic ``grad_x Q*`` (chapter 5 of the book).

The sampled hypergradient needs two value functions under the sampling policy ``pi``: the upper
critic ``Q_U`` (the environment reward, no entropy) and the *gradient critic*
``Gq(s, a) ~ grad_x Q*(s, a)``, the value under ``pi`` of the vector reward ``grad_x r_x``
(chapter 5, :eq:`eq-mf-gradient-critic`). :func:`fit_critic` estimates both at once,
column-stacked as ``[Q_U | Gq]``: by every-visit Monte Carlo sums (``method="mc"``, built on
:func:`mc_returns`) or by batch TD(0) (``method="td"``, vector-valued TD replayed over the batch to
its fixed point). Monte Carlo sums are unbiased because the sampler restarts episodes with
probability ``1 - gamma`` (:mod:`birl_lite.model_free.sampling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import kernels
from .._validation import DTYPE, ArrayLike, as_tensor, check_choice, check_positive_int
from .sampling import _TERMINAL, Transitions, _check_policy, _table

__all__ = ["mc_returns", "Critic", "fit_critic"]


_CRITICS = ("mc", "td")


def mc_returns(batch: Transitions, c: np.ndarray, tail: np.ndarray | None = None) -> np.ndarray:
    """Monte Carlo returns ``G_t = sum_{k = t}^{end} c_k (+ tail of the episode)`` for every step.

    With geometric restarts the undiscounted sum to the end of the episode is an unbiased sample
    of the discounted value of ``c`` from ``(s_t, a_t)``.

    Args:
        batch: the transitions.
        c: per-step rewards ``[N]`` or ``[N, m]``.
        tail: per-step value added to every step of the episode that ends at that step
            (``[N]`` / ``[N, m]``, used at the terminal step: ``gamma V_abs(s')``), or ``None``.

    Returns:
        ``G`` with the shape of ``c``.
    """
    c = np.asarray(c, dtype=np.float64)
    N = len(batch)
    if c.shape[0] != N:
        raise ValueError(f"c must have {N} rows (one per transition), got {c.shape[0]}")
    rev = np.cumsum(c[::-1], axis=0)[::-1]  # rev[t] = sum_{k >= t} c_k
    rev_ext = np.concatenate([rev, np.zeros((1,) + c.shape[1:])], axis=0)
    end_idx = np.flatnonzero(batch.end)
    ep = np.cumsum(batch.end) - batch.end  # episode of each step
    e_t = end_idx[ep]
    G = rev - rev_ext[e_t + 1]
    if tail is not None:
        G = G + np.asarray(tail, dtype=np.float64)[e_t]
    return G


@dataclass
class Critic:
    """Tabular estimates of ``Q_U`` and of the gradient critic ``Gq ~ grad_x Q*`` under a policy.

    Attributes:
        Q_U: ``[S, A]`` upper-level action values (env reward, no entropy).
        Gq: ``[S, A, n]`` the gradient critic.
        counts: visits ``[S, A]`` of each pair in the batch (``0``: the entry is not estimated
            from data; MC leaves it at zero, TD at its bootstrapped value).
        method: ``"mc"`` or ``"td"``; n_sweeps: TD sweeps used (0 for MC).
    """

    Q_U: torch.Tensor
    Gq: torch.Tensor
    counts: torch.Tensor
    method: str
    n_sweeps: int = 0


def fit_critic(
    batch: Transitions,
    pi: ArrayLike,
    dr_dx: ArrayLike,
    tau: float,
    r: ArrayLike | None = None,
    *,
    method: str = "td",
    terminal: str = "absorbing",
    tol: float = 1e-10,
    max_sweeps: int | None = None,
) -> Critic:
    """Estimate ``Q_U`` and ``Gq = grad_x Q*`` from a batch sampled with ``pi`` (chapter 5).

    ``grad_x Q*`` is the action value of the *vector* reward ``grad_x r_x`` under ``pi``:
    ``Gq(s, a) = grad_x r(s, a) + gamma E[sum_b pi(b|s') Gq(s', b)]`` (chapter 5,
    :eq:`eq-mf-gradient-critic`). Both critics are estimated the same way, column-stacked as
    ``[Q_U | Gq]``:

    * ``"mc"``: every-visit Monte Carlo, the average over the visits of ``(s, a)`` of the sum of
      ``(r_U, grad_x r)`` from that step to the end of its (geometrically restarted) episode;
    * ``"td"``: batch TD(0), the SARSA targets ``c_t + gamma Q(s'_t, a'_t)`` averaged per pair and
      swept synchronously to the fixed point (the tabular LSTD solution of the batch).

    After ``terminated``: ``Q_U = 0`` and, for ``terminal="absorbing"``, the gradient value of the
    absorbing state, ``sum_a pi_abs(a|s') grad_x r(s', a) / (1 - gamma)`` with
    ``pi_abs = softmax(r(s', .) / tau)`` (needs ``r``, the designed reward ``[S, A]``).

    Args:
        batch: transitions sampled with ``pi``; pi: ``[S, A]``; dr_dx: ``[S, A, n]``.
        tau: temperature; r: designed reward ``[S, A]`` (absorbing terminal values only).
        method: ``"mc"`` or ``"td"``; terminal: ``"absorbing"`` or ``"zero"``.
        tol, max_sweeps: TD stopping rule (sup-norm change ``<= tol * max(1, scale)``;
            ``max_sweeps`` defaults to ``50 / (1 - gamma)``).

    Returns:
        :class:`Critic`.
    """
    S, A, gamma = batch.n_states, batch.n_actions, batch.gamma
    check_choice(method, "method", _CRITICS)
    check_choice(terminal, "terminal", _TERMINAL)
    _check_policy(pi, S, A)
    dr = as_tensor(dr_dx, "dr_dx").detach()
    if dr.ndim != 3 or tuple(dr.shape[:2]) != (S, A):
        raise ValueError(f"dr_dx must have shape [S, A, n] = [{S}, {A}, n], got {tuple(dr.shape)}")
    n = dr.shape[2]
    dr_np = dr.numpy()
    # per-state gradient value of the absorbing state entered at termination
    if terminal == "absorbing" and bool(batch.terminated.any()):
        if r is None:
            raise ValueError(
                "fit_critic needs r (the designed reward [S, A]) for absorbing terminals"
            )
        r_np = _table(r, S, A, "r")
        pabs = kernels.softmax_policy(torch.from_numpy(r_np), tau).numpy()
        dV_abs = np.einsum("sa,san->sn", pabs, dr_np) / (1.0 - gamma)
    else:
        dV_abs = np.zeros((S, n))
    sa = batch.s * A + batch.a
    c = np.concatenate([batch.reward[:, None], dr_np.reshape(S * A, n)[sa]], axis=1)  # [N, 1+n]
    tail_term = np.zeros((len(batch), 1 + n))
    tail_term[:, 1:] = gamma * dV_abs[batch.s_next]
    tail_term *= batch.terminated[:, None]
    cnt = np.bincount(sa, minlength=S * A).astype(np.float64)
    seen = cnt > 0
    n_sweeps = 0
    if method == "mc":
        G = mc_returns(batch, c, tail_term)
        table = np.zeros((S * A, 1 + n))
        np.add.at(table, sa, G)
        table[seen] /= cnt[seen, None]
    else:
        # compress the batch: unique (pair, next pair, terminated) keys with their counts
        s2a2 = batch.s_next * A + batch.a_next
        term = batch.terminated
        keep = ~term
        keys, inv = np.unique(np.stack([sa[keep], s2a2[keep]]), axis=1, return_inverse=True)
        w = np.bincount(inv.reshape(-1), minlength=keys.shape[1]).astype(np.float64)
        w = torch.as_tensor(w / cnt[keys[0]], dtype=DTYPE)
        rows = torch.as_tensor(keys[0], dtype=torch.int64)
        cols = torch.as_tensor(keys[1], dtype=torch.int64)
        base = np.zeros((S * A, 1 + n))
        np.add.at(base, sa, c + tail_term)  # immediate part (and terminal tails) of the target
        base[seen] /= cnt[seen, None]
        base_t = torch.as_tensor(base, dtype=DTYPE)
        table_t = base_t.clone()
        scale = max(1.0, float(base_t.abs().max()) / (1.0 - gamma))
        max_sweeps = (
            int(math.ceil(50.0 / (1.0 - gamma)))
            if max_sweeps is None
            else check_positive_int(max_sweeps, "max_sweeps")
        )
        wcol = w.unsqueeze(1)
        for n_sweeps in range(1, max_sweeps + 1):  # noqa: B007 - n_sweeps reported
            new = base_t.index_add(0, rows, gamma * wcol * table_t[cols])
            change = float((new - table_t).abs().max())
            table_t = new
            if change <= tol * scale:
                break
        table = table_t.numpy()
    table_t = torch.as_tensor(table, dtype=DTYPE).reshape(S, A, 1 + n)
    return Critic(
        Q_U=table_t[..., 0].clone(),
        Gq=table_t[..., 1:].clone(),
        counts=torch.as_tensor(cnt.reshape(S, A), dtype=DTYPE),
        method=method,
        n_sweeps=n_sweeps,
    )
