"""Temporary alias while imports move to :mod:`birl_lite.first_order` and
:mod:`birl_lite.reference_methods` (removed in the same change)."""

from .first_order import *  # noqa: F403
from .first_order import _call_reward, _call_upper, _check_x, _forward  # noqa: F401
from .reference_methods import *  # noqa: F403
