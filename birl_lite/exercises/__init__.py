"""Checkers for the coding exercises of the book, one module per chapter.

Each checker runs the reader's function against the reference implementation of ``birl_lite``
on random cases, prints ``PASS`` or ``FAIL`` with the first mismatch, and returns a bool.
"""

from .ch01 import check_logit_hessian, check_soft_bellman
from .ch02 import check_hyperobjective, check_potential_shaping
from .ch03 import check_adjoint, check_h1, check_lower_level_share
from .ch04 import check_adjoint_step, check_myopic_direction
from .ch05 import check_mc_returns, check_sampled_hypergradient, check_truncation_gap
from .ch06 import check_bradley_terry_loss, check_policy_term, check_truncated_term
from .ch07 import check_woodbury
from .ch08 import check_causal_sums
from .ch09 import check_blpo_direction, check_curve_auc, check_gae
from .ch10 import check_padded_bt_loss, check_truncated_surrogate

__all__ = [
    "check_adjoint",
    "check_adjoint_step",
    "check_blpo_direction",
    "check_bradley_terry_loss",
    "check_causal_sums",
    "check_curve_auc",
    "check_gae",
    "check_h1",
    "check_hyperobjective",
    "check_logit_hessian",
    "check_lower_level_share",
    "check_mc_returns",
    "check_myopic_direction",
    "check_padded_bt_loss",
    "check_policy_term",
    "check_potential_shaping",
    "check_sampled_hypergradient",
    "check_soft_bellman",
    "check_truncated_surrogate",
    "check_truncated_term",
    "check_truncation_gap",
    "check_woodbury",
]
