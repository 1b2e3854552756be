"""Checkers for the coding exercises of the book, one module per chapter.

Each checker runs the reader's function against the reference implementation of ``birl_lite``
on random cases, prints ``PASS`` or ``FAIL`` with the first mismatch, and returns a bool.
"""

from .ch01 import check_soft_bellman
from .ch07 import check_woodbury

__all__ = ["check_soft_bellman", "check_woodbury"]
