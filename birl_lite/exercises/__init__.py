"""Checkers for the coding exercises of the book, one module per chapter.

Each checker runs the reader's function against the reference implementation of ``birl_lite``
on random cases, prints ``PASS`` or ``FAIL`` with the first mismatch, and returns a bool.
"""

from .ch01 import check_soft_bellman
from .ch02 import check_hyperobjective
from .ch03 import check_adjoint, check_h1
from .ch04 import check_adjoint_step
from .ch07 import check_woodbury

__all__ = [
    "check_adjoint",
    "check_adjoint_step",
    "check_h1",
    "check_hyperobjective",
    "check_soft_bellman",
    "check_woodbury",
]
