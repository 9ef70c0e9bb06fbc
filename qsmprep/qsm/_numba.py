"""numba's threading layer and thread count for qsmprep's compiled loops (private).

Nipype's MultiProc forks its workers.  Numba's "omp" layer (GNU OpenMP, its choice when tbb
is absent) kills a forked child that runs parallel code after its parent did ("fork() called
from a process already using GNU OpenMP, this is unsafe"): a notebook or test that ran a
compiled stage and then a workflow lost every such node.  A fork-safe layer (tbb where
installed, else numba's workqueue) has no such state; a layer the user chose
(``NUMBA_THREADING_LAYER``) is kept.  Import numba through this module.
"""

from __future__ import annotations

import contextlib

try:  # numba is a hard dependency of qsmprep; the fallback keeps modules importable
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = njit = prange = None

if numba is not None and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "forksafe"


@contextlib.contextmanager
def num_threads(workers):
    """Context for numba's thread count (``workers``, capped at numba's; restored afterwards)."""
    if numba is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(workers), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)
