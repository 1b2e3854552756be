"""SoBiRL: model-free bilevel RL through the gymnasium API [YGY] (chapter 5 of the book).

Everything here sees the environment only through ``env.reset()`` / ``env.step(a)`` of a
:class:`gymnasium.Env` with ``Discrete`` observation and action spaces: the transition tensor ``P``
is never read. The algorithm knows what it designs itself: the parameterized reward ``r_x(s, a)``
(``reward_fn``) and its Jacobian ``grad_x r_x``; the environment's own reward is the upper-level
reward ``r_U`` (chapter 5, :eq:`eq-mf-objective`). One module per step of chapter 5:

* :mod:`birl_lite.model_free.sampling`: the environment interface, :class:`~birl_lite.model_free.sampling.Transitions` and the sampler whose restarts at rate ``1 - gamma`` make visits the discounted visitation (:eq:`eq-mf-visits`); the episode-end conventions (``terminal``).
* :mod:`birl_lite.model_free.soft_q`: the lower level from samples, soft Q-learning (:eq:`eq-mf-soft-q`) and fitted soft Q-iteration.
* :mod:`birl_lite.model_free.critics`: Monte Carlo returns and the critics ``Q_U`` and ``grad_x Q*`` (:eq:`eq-mf-gradient-critic`), by Monte Carlo or batch TD.
* :mod:`birl_lite.model_free.estimators`: the sampled hypergradient (:eq:`eq-mf-h1`, :eq:`eq-mf-estimator`), full or truncated.
* :mod:`birl_lite.model_free.problem`: :class:`~birl_lite.model_free.problem.ModelFreeProblem`, a bilevel problem seen through an environment.
* :mod:`birl_lite.model_free.algorithm`: :func:`~birl_lite.model_free.algorithm.sobirl`, the outer loop, with its config, history and result.

Every public name is re-exported here: ``from birl_lite.model_free import sobirl`` works.
"""

from .algorithm import SoBiRLConfig, SoBiRLHistory, SoBiRLResult, sobirl
from .critics import Critic, fit_critic, mc_returns
from .estimators import SampledHypergradient, hypergradient_from_batch, sampled_hypergradient
from .problem import ModelFreeProblem, model_free_problem
from .sampling import Transitions, discrete_spaces, sample_transitions
from .soft_q import (
    SoftQResult,
    StepSize,
    fitted_soft_q_iteration,
    soft_q_learning,
    soft_q_update,
)

__all__ = [
    "discrete_spaces",
    "Transitions",
    "sample_transitions",
    "StepSize",
    "SoftQResult",
    "soft_q_learning",
    "soft_q_update",
    "fitted_soft_q_iteration",
    "mc_returns",
    "Critic",
    "fit_critic",
    "SampledHypergradient",
    "hypergradient_from_batch",
    "sampled_hypergradient",
    "ModelFreeProblem",
    "model_free_problem",
    "SoBiRLConfig",
    "SoBiRLHistory",
    "SoBiRLResult",
    "sobirl",
]
