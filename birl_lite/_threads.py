"""numpy's BLAS thread count, limited for a block of code (one ``threadpoolctl`` controller for the
package; building one inspects every loaded library, so it is built once)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

_CONTROLLER: ThreadpoolController | None = None


def blas_threads(limit: int) -> AbstractContextManager:
    """A context manager that limits the BLAS libraries numpy uses to ``limit`` threads and
    restores the previous counts on exit."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=int(limit), user_api="blas")
