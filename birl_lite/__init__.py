"""birl_lite: bilevel reinforcement learning from first principles.

The package behind the birl-book Jupyter Book. Every tabular tensor is ``torch.float64``
(:data:`birl_lite.DTYPE`), whatever torch's default dtype; inputs (annotated
:class:`birl_lite.ArrayLike`) are converted on entry.

Modules mirror the chapters:

* :mod:`birl_lite.kernels`: the tabular core every algorithm calls (soft backup, policy kernel,
  evaluation, visitation, adjoint), with dense and sparse transitions.
* :mod:`birl_lite.linear_solve`: one interface ``solve(A, b, method=...)`` for every linear system
  (direct, sparse LU, CG, Neumann, GMRES, BiCGSTAB, Nystrom).
* :mod:`birl_lite.mdp`: :class:`TabularMDP` (dense or sparse), builders, gymnasium toy-text ->
  tabular.
* :mod:`birl_lite.envs`: :class:`TabularEnv`, a gymnasium env sampling a tabular model.
* :mod:`birl_lite.soft`: the soft Bellman operator, soft value / policy iteration, policy evaluation.
* :mod:`birl_lite.first_order`: the first-order hypergradient (H1, H2);
  :mod:`birl_lite.reference_methods`: the unrolled, finite-difference and AID references.
* :mod:`birl_lite.problems`, :mod:`birl_lite.model_based`: bilevel problems and M-SoBiRL.
* :mod:`birl_lite.model_free`, :mod:`birl_lite.preference`: SoBiRL from samples, preference learning.
* :mod:`birl_lite.ihvp`: inverse-Hessian-vector products (CG, Neumann, Nystrom), implicit differentiation.
* :mod:`birl_lite.actor_critic`, :mod:`birl_lite.experiments`: PPO and BLPO on gymnasium tasks, the
  exact tabular check, and the resumable experiment command.
* :mod:`birl_lite.exercises`: checkers for the book's coding exercises.
"""

from ._validation import DTYPE, ArrayLike
from .envs import TabularEnv
from .first_order import hypergradient, hyperobjective, return_hypergradient
from .mdp import (
    FOUR_ROOMS_LAYOUT,
    TabularMDP,
    TabularTask,
    four_rooms,
    from_gymnasium,
    gridworld,
    random_layout,
    random_mdp,
    random_reward,
)
from .model_based import MSoBiRLConfig, m_sobirl
from .model_free import SoBiRLConfig, sampled_hypergradient, sobirl, soft_q_learning
from .problems import BilevelProblem, reward_design_problem, synthetic_problem
from .reference_methods import (
    aid_hypergradient,
    finite_difference_hypergradient,
    logit_hessian,
    logit_objective,
    unrolled_hypergradient,
)
from .soft import (
    ConvergenceWarning,
    SoftVIResult,
    bellman,
    entropy,
    evaluate_policy,
    expected_return,
    greedy_policy,
    q_values,
    reward_under,
    soft_bellman,
    soft_policy_iteration,
    soft_return,
    soft_value_iteration,
    softmax_policy,
    state_visitation,
    transition_under,
    value_iteration,
)

__version__ = "0.1.0"

__all__ = [
    "DTYPE",
    "ArrayLike",
    "FOUR_ROOMS_LAYOUT",
    "BilevelProblem",
    "ConvergenceWarning",
    "MSoBiRLConfig",
    "SoBiRLConfig",
    "SoftVIResult",
    "TabularEnv",
    "TabularMDP",
    "TabularTask",
    "aid_hypergradient",
    "finite_difference_hypergradient",
    "hypergradient",
    "hyperobjective",
    "logit_hessian",
    "logit_objective",
    "m_sobirl",
    "return_hypergradient",
    "unrolled_hypergradient",
    "bellman",
    "entropy",
    "evaluate_policy",
    "expected_return",
    "four_rooms",
    "from_gymnasium",
    "greedy_policy",
    "gridworld",
    "q_values",
    "random_layout",
    "random_mdp",
    "random_reward",
    "reward_design_problem",
    "reward_under",
    "sampled_hypergradient",
    "sobirl",
    "soft_bellman",
    "soft_policy_iteration",
    "soft_q_learning",
    "soft_return",
    "soft_value_iteration",
    "softmax_policy",
    "state_visitation",
    "synthetic_problem",
    "transition_under",
    "value_iteration",
]
