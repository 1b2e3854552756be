"""Exercise checkers accept the reference and reject wrong implementations."""

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
