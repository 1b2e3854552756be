"""Exercise checkers accept the reference and reject wrong implementations."""

import numpy as np
import torch

from birl_lite.exercises import check_soft_bellman


def reference(P, r, V, gamma, tau):
    Q = r + gamma * torch.einsum("sat,t->sa", P, V)
    return tau * torch.logsumexp(Q / tau, dim=-1)


def naive_overflowing(P, r, V, gamma, tau):
    Q = r + gamma * torch.einsum("sat,t->sa", P, V)
    return tau * torch.log(torch.exp(Q / tau).sum(-1))  # overflows for tau = 1e-3


def forgets_gamma(P, r, V, gamma, tau):
    return reference(P, r, V, 1.0, tau)


def test_checker_accepts_reference(capsys):
    assert check_soft_bellman(reference)
    assert "PASS" in capsys.readouterr().out


def test_checker_rejects_overflowing_implementation(capsys):
    assert not check_soft_bellman(naive_overflowing)
    assert "non-finite" in capsys.readouterr().out


def test_checker_rejects_wrong_formula(capsys):
    assert not check_soft_bellman(forgets_gamma)
    assert "FAIL on case 0" in capsys.readouterr().out


def test_checker_reports_exceptions(capsys):
    def broken(P, r, V, gamma, tau):
        raise RuntimeError("boom")

    assert not check_soft_bellman(broken)
    assert "raised RuntimeError: boom" in capsys.readouterr().out


def test_checker_accepts_numpy_views_with_negative_strides(capsys):
    from birl_lite.exercises import check_mc_returns

    def mc_returns_reversed_view(c, end):
        out = np.zeros_like(c)
        acc = np.zeros(c.shape[1])
        for t in range(len(c) - 1, -1, -1):
            acc = c[t] + (0.0 if end[t] else 1.0) * acc
            out[t] = acc
        return out[::-1].copy()[::-1]  # same values, as a view with negative strides

    assert check_mc_returns(mc_returns_reversed_view)
    assert "PASS" in capsys.readouterr().out


def test_logit_hessian_checker(capsys):
    """Exercise 1.5: the closed-form logit Hessian at the optimum, unnormalized visitation."""
    import birl_lite as bl
    from birl_lite.exercises import check_logit_hessian

    def closed_form(P, rho, gamma, pi, tau, normalize=False, sign=1.0):
        d = bl.state_visitation(bl.TabularMDP(P, gamma=gamma, rho=rho), pi, normalize=normalize)
        blocks = [d[s] * (torch.diag(p) - torch.outer(p, p)) for s, p in enumerate(pi)]
        return -sign * tau * torch.block_diag(*blocks)

    assert check_logit_hessian(closed_form)
    out = capsys.readouterr().out
    assert "PASS" in out and "in 20/20 cases" in out
    assert not check_logit_hessian(lambda *a: closed_form(*a, normalize=True))
    assert "FAIL on case 0" in capsys.readouterr().out
    assert not check_logit_hessian(lambda *a: closed_form(*a, sign=-1.0))
    assert "FAIL on case 0" in capsys.readouterr().out


def test_lower_level_share_checker(capsys):
    """Exercise 3.6: the share of the hypergradient that flows through the policy."""
    from birl_lite.exercises import check_lower_level_share
    from birl_lite.first_order import hypergradient, upper_gradients

    def share(mdp, reward_fn, upper_fn, x, tau, form="H2"):
        h = hypergradient(mdp, reward_fn, upper_fn, x, tau, form=form)
        _, df_dx, _ = upper_gradients(upper_fn, x, h.pi)
        return (h.grad - df_dx).norm() / h.grad.norm()

    def ratio_of_norms(mdp, reward_fn, upper_fn, x, tau):
        h = hypergradient(mdp, reward_fn, upper_fn, x, tau)
        _, df_dx, _ = upper_gradients(upper_fn, x, h.pi)
        return (h.grad.norm() - df_dx.norm()).abs() / h.grad.norm()

    assert check_lower_level_share(share)
    assert check_lower_level_share(lambda *a: float(share(*a, form="H1")))
    assert "PASS" in capsys.readouterr().out
    assert not check_lower_level_share(ratio_of_norms)
    assert "FAIL on case 0" in capsys.readouterr().out


def test_potential_shaping_checker_accepts_reference_and_rejects_missing_gamma(capsys):
    from birl_lite.exercises import check_potential_shaping

    def shaping(mdp, Phi):
        return mdp.gamma * mdp.expect_next(Phi) - Phi[:, None]

    assert check_potential_shaping(shaping)
    out = capsys.readouterr().out
    assert "PASS" in out and "by more than 1e-6 in 20/20" in out
    assert not check_potential_shaping(lambda mdp, Phi: mdp.expect_next(Phi) - Phi[:, None])
    assert "FAIL on case 0" in capsys.readouterr().out


def test_padded_bt_loss_checker_accepts_masked_sums_and_rejects_counting_padding(capsys):
    from birl_lite.exercises import check_padded_bt_loss

    softplus = torch.nn.functional.softplus

    def bt(z, y):
        return y * softplus(-z) + (1 - y) * softplus(z)

    def masked(r1, r2, real1, real2, y):
        return bt(torch.where(real1, r1, 0.0).sum(1) - torch.where(real2, r2, 0.0).sum(1), y)

    assert check_padded_bt_loss(masked)
    assert "PASS" in capsys.readouterr().out
    assert not check_padded_bt_loss(lambda r1, r2, real1, real2, y: bt(r1.sum(1) - r2.sum(1), y))
    assert "FAIL on case 1" in capsys.readouterr().out


def test_truncated_surrogate_checker_needs_the_stop_gradient(capsys):
    from birl_lite.exercises import check_truncated_surrogate

    def surrogate(net, obs, act, probs, losses, coef, detach=True):
        m, T, d = obs.shape
        r = net(obs.reshape(m * T, d))
        c = r.gather(1, act.reshape(-1, 1))[:, 0] - (probs.reshape(m * T, -1) * r).sum(1)
        weights = losses.detach() if detach else losses
        return coef * (weights * c.reshape(m, T).sum(1)).mean()

    assert check_truncated_surrogate(surrogate)
    assert "PASS" in capsys.readouterr().out
    assert not check_truncated_surrogate(lambda *a: surrogate(*a, detach=False))
    assert "FAIL on case 0" in capsys.readouterr().out
    assert not check_truncated_surrogate(lambda *a: surrogate(*a).detach())  # no gradient at all
    assert "FAIL on case 0" in capsys.readouterr().out
