"""TabularMDP validation and the MDP builders."""

import numpy as np
import pytest
import torch

import birl_lite as bl


def _P(S=3, A=2, seed=0):
    return bl.random_mdp(S, A, seed).P


# ---------------------------------------------------------------- valid construction


def test_tabular_mdp_stores_float64_and_uniform_rho():
    mdp = bl.TabularMDP(_P().float(), 0.9)
    assert mdp.P.dtype == torch.float64
    assert mdp.n_states == 3 and mdp.n_actions == 2
    assert torch.allclose(mdp.rho, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(mdp.P.sum(-1), torch.ones(3, 2, dtype=torch.float64), atol=1e-15)


def test_tabular_mdp_accepts_numpy_and_lists():
    P = np.asarray(_P())
    mdp = bl.TabularMDP(P.tolist(), 0.0, rho=[1.0, 0.0, 0.0])
    assert mdp.gamma == 0.0 and float(mdp.rho[0]) == 1.0


def test_expect_next_matches_einsum():
    mdp = bl.random_mdp(4, 3, 1)
    V = torch.randn(4, dtype=torch.float64)
    W = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(mdp.expect_next(V), torch.einsum("sat,t->sa", mdp.P, V))
    assert torch.allclose(mdp.expect_next(W), torch.einsum("sat,tn->san", mdp.P, W))


# ---------------------------------------------------------------- invalid input, one test each


def test_rejects_P_with_wrong_ndim():
    with pytest.raises(ValueError, match=r"P must have shape \[S, A, S\]"):
        bl.TabularMDP(torch.ones(3, 3) / 3, 0.9)


def test_rejects_P_with_mismatched_states():
    with pytest.raises(ValueError, match="same S first and last"):
        bl.TabularMDP(torch.ones(3, 2, 4) / 4, 0.9)


def test_rejects_negative_P():
    P = _P().clone()
    P[0, 0, 0] = -0.1
    P[0, 0, 1] += 0.1
    with pytest.raises(ValueError, match="non-negative"):
        bl.TabularMDP(P, 0.9)


def test_rejects_non_stochastic_P():
    P = _P().clone()
    P[1, 1] *= 1.5
    with pytest.raises(ValueError, match=r"P\[1, 1, :\] sums to"):
        bl.TabularMDP(P, 0.9)


def test_rejects_non_finite_P():
    P = _P().clone()
    P[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="P must be finite"):
        bl.TabularMDP(P, 0.9)


def test_rejects_non_numeric_P():
    with pytest.raises(TypeError, match="P must be an array of numbers"):
        bl.TabularMDP("not an array", 0.9)


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5])
def test_rejects_gamma_outside_unit_interval(gamma):
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\)"):
        bl.TabularMDP(_P(), gamma)


def test_rejects_non_numeric_gamma():
    with pytest.raises(TypeError, match="gamma must be a real number"):
        bl.TabularMDP(_P(), "0.9")


def test_rejects_rho_with_wrong_shape():
    with pytest.raises(ValueError, match=r"rho must have shape \(3,\)"):
        bl.TabularMDP(_P(), 0.9, rho=[0.5, 0.5])


def test_rejects_negative_rho():
    with pytest.raises(ValueError, match="rho must be non-negative"):
        bl.TabularMDP(_P(), 0.9, rho=[1.5, -0.5, 0.0])


def test_rejects_rho_not_summing_to_one():
    with pytest.raises(ValueError, match="rho must sum to 1"):
        bl.TabularMDP(_P(), 0.9, rho=[0.5, 0.2, 0.2])


# ---------------------------------------------------------------- random MDPs


def test_random_mdp_is_deterministic_in_seed():
    a, b, c = bl.random_mdp(6, 3, 7), bl.random_mdp(6, 3, 7), bl.random_mdp(6, 3, 8)
    assert torch.equal(a.P, b.P)
    assert not torch.equal(a.P, c.P)


def test_random_mdp_sparse_supports_have_requested_sizes():
    mdp = bl.random_mdp(10, 5, 3, support=(1, 9))
    sizes = (mdp.P > 0).sum(-1)
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= 9
    assert len(torch.unique(sizes)) > 3  # sizes actually vary
    exact = bl.random_mdp(10, 5, 3, support=2)
    assert torch.all((exact.P > 0).sum(-1) == 2)


def test_random_mdp_rejects_bad_support():
    with pytest.raises(ValueError, match="support sizes"):
        bl.random_mdp(4, 2, 0, support=(3, 9))


# ---------------------------------------------------------------- grid worlds


def test_gridworld_deterministic_moves_walls_and_goal():
    task = bl.gridworld(["S.#", "..G"], gamma=0.9)
    mdp, r = task
    assert mdp.n_states == 5 and mdp.n_actions == 4
    s_start = task.cells.index((0, 0))
    s_right = task.cells.index((0, 1))
    s_goal = task.cells.index((1, 2))
    # right from the start moves right; up from the start bumps into the border and stays
    assert float(mdp.P[s_start, 2, s_right]) == 1.0
    assert float(mdp.P[s_start, 3, s_start]) == 1.0
    # right from (0, 1) hits the wall and stays
    assert float(mdp.P[s_right, 2, s_right]) == 1.0
    # entering the goal pays 1, the goal is absorbing with zero reward
    s_before = task.cells.index((1, 1))
    assert float(r[s_before, 2]) == 1.0
    assert torch.all(mdp.P[s_goal, :, s_goal] == 1.0) and torch.all(r[s_goal] == 0.0)
    assert bool(task.terminal[s_goal]) and float(mdp.rho[s_start]) == 1.0


def test_gridworld_slip_splits_probability():
    task = bl.gridworld(["...", ".S.", "..."], slip=0.2)
    s = task.cells.index((1, 1))
    row = task.mdp.P[s, 2]  # right
    assert float(row[task.cells.index((1, 2))]) == pytest.approx(0.8)
    assert float(row[task.cells.index((0, 1))]) == pytest.approx(0.1)
    assert float(row[task.cells.index((2, 1))]) == pytest.approx(0.1)


def test_four_rooms_geometry_and_grid_helper():
    task = bl.four_rooms()
    assert task.shape == (13, 13) and task.mdp.n_states == 104
    grid = task.grid(torch.arange(104, dtype=torch.float64))
    assert np.isnan(grid[0, 0]) and grid[1, 1] == 0.0


def test_gridworld_rejects_unknown_characters():
    with pytest.raises(ValueError, match="unknown characters"):
        bl.gridworld(["S.x", "..G"])


# ---------------------------------------------------------------- gymnasium toy-text models


def test_from_gymnasium_frozenlake_deterministic_optimal_value():
    task = bl.from_gymnasium("FrozenLake-v1", is_slippery=False, gamma=0.9)
    assert task.mdp.n_states == 16 and task.shape == (4, 4)
    assert task.terminal.nonzero().flatten().tolist() == [5, 7, 11, 12, 15]
    assert float(task.mdp.rho[0]) == 1.0
    # The shortest path needs 6 moves, the reward 1 comes with the 6th: V*(start) = 0.9^5.
    V = bl.value_iteration(task.mdp, task.r, tol=1e-14).V
    assert float(V[0]) == pytest.approx(0.9**5, abs=1e-12)


def test_from_gymnasium_slippery_frozenlake_rewards():
    task = bl.from_gymnasium("FrozenLake-v1")
    # from state 14, "right" (2) reaches the goal with probability 1/3
    assert float(task.r[14, 2]) == pytest.approx(1 / 3)


def test_from_gymnasium_cliffwalking():
    task = bl.from_gymnasium("CliffWalking-v1")
    assert task.mdp.n_states == 48 and task.shape == (4, 12)
    assert float(task.r[36, 1]) == -100.0  # start -> right falls off the cliff
    assert float(task.mdp.P[36, 1, 36]) == 1.0  # and returns to start
    assert bool(task.terminal[47]) and torch.all(task.r[47] == 0.0)


def test_from_gymnasium_taxi_appends_absorbing_state():
    task = bl.from_gymnasium("Taxi-v4")
    assert task.mdp.n_states == 501 and task.mdp.n_actions == 6
    assert bool(task.terminal[500]) and torch.all(task.mdp.P[500, :, 500] == 1.0)
    assert float(task.mdp.rho[500]) == 0.0


def test_from_gymnasium_rejects_unknown_id():
    with pytest.raises(ValueError, match="unknown or unavailable gymnasium id 'NoSuchEnv-v0'"):
        bl.from_gymnasium("NoSuchEnv-v0")


def test_from_gymnasium_rejects_continuous_env():
    with pytest.raises(ValueError, match="has no tabular model"):
        bl.from_gymnasium("CartPole-v1")
