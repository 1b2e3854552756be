"""The claims of chapter 2 that its figures and printed checks rest on: hypergradient descent on a
two-parameter problem reaches a stationary point of phi while a descent that ignores the lower level
does not; the four-rooms agent reaches the goal slowly, and lingers under the hand-made shaping; the
preference-learning hypergradient has a policy term that finite differences confirm."""

import torch

import birl_lite as bl
from birl_lite.first_order import hypergradient, upper_gradients
from birl_lite.preference import hypergradient_split, preference_problem
from birl_lite.problems import reward_design_problem
from birl_lite.reference_methods import finite_difference_hypergradient

D = torch.float64


def test_hypergradient_descent_reaches_a_stationary_point_and_the_control_does_not():
    mdp = bl.random_mdp(4, 3, seed=0, gamma=0.9)
    features = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0), dtype=D)

    def reward_fn(x):
        return torch.tanh(features @ x)

    def upper_fn(x, pi):
        return 0.5 * x @ x - pi[:, 0].sum()

    ends = {}
    for ignore in (False, True):
        x = torch.tensor([2.0, -2.0], dtype=D)
        values = []
        for _ in range(40):
            res = hypergradient(mdp, reward_fn, upper_fn, x, 0.5)
            values.append(float(res.phi))
            step = upper_gradients(upper_fn, x, res.pi)[1] if ignore else res.grad
            x = x - 0.2 * step
        ends[ignore] = hypergradient(mdp, reward_fn, upper_fn, x, 0.5)
        if not ignore:
            assert all(b <= a + 1e-12 for a, b in zip(values[:-1], values[1:], strict=True))
    assert float(ends[False].grad.norm()) < 1e-6
    assert float(ends[True].grad.norm()) > 0.1
    assert float(ends[False].phi) < float(ends[True].phi) - 0.1


def _arrival(task, pi, goal, horizon):
    P_pi = bl.transition_under(task.mdp, pi)
    mass = task.mdp.rho.clone()
    for _ in range(horizon):
        mass = mass @ P_pi
    return float(mass[goal])


def test_four_rooms_agent_reaches_the_goal_slowly_and_lingers_under_the_hand_shaping():
    design = reward_design_problem(tau=0.1, ridge=1e-3)
    task = design.info["task"]
    goal = int(torch.nonzero(task.terminal)[0])
    pi0 = design.lower(design.x0).pi
    assert _arrival(task, pi0, goal, 500) > 0.9
    assert _arrival(task, pi0, goal, 100) < 0.5
    # the chapter's hand-made shaping: a bonus growing as the BFS distance to the goal shrinks
    S = task.mdp.n_states
    moves = (task.mdp.P > 0).any(dim=1)
    dist = torch.full((S,), float("inf"), dtype=D)
    dist[goal], frontier, level = 0.0, [goal], 0
    while frontier:
        level += 1
        frontier = [s for s in range(S) if dist[s] == float("inf") and moves[s, frontier].any()]
        dist[frontier] = float(level)
    x_hand = 0.02 * (dist.max() - dist)[design.info["states"]]
    assert _arrival(task, design.lower(x_hand).pi, goal, 500) < 0.5


def test_preference_hypergradient_has_a_policy_term():
    p = preference_problem(seed=0)
    split = hypergradient_split(p, p.x0)
    fd = finite_difference_hypergradient(p.mdp, p.reward_fn, p.upper_fn, p.x0, p.tau).grad
    rel = lambda g: float((g - fd).norm() / fd.norm())  # noqa: E731
    assert rel(split.full) < 1e-6
    assert rel(split.direct) > 0.1  # the data-held-fixed gradient misses the policy term
    # the data distribution moves with x
    other = hypergradient_split(p, p.r_true)
    assert 0.5 * float((split.visitation - other.visitation).abs().sum()) > 0.5
