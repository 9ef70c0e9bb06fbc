"""Nipype's MultiProc plugin whose worker processes die with the main process.

Nipype's ``MultiProcPlugin`` runs nodes in a :class:`concurrent.futures.ProcessPoolExecutor`.
When the main process is killed with SIGKILL (``kill -9``, the OOM killer, a scheduler
ending a job) nothing tells its workers: each keeps the pool's pipes open itself, so they
block for ever (idle) or run their node to the end and then block, orphaned under PID 1.

:class:`OrphanSafeMultiProcPlugin` builds the same pool with an initializer that also asks
Linux to SIGKILL the worker when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and
closes the race where the parent died between ``fork`` and that call (the worker then sees
a different ``getppid()`` than the parent's pid recorded before the pool started, and exits).
On other systems the initializer logs one debug line and workers behave as in Nipype.

Which thread creates the workers matters: PDEATHSIG fires when the *thread* that forked the
worker ends, not only the process.  In Python 3.11's ``ProcessPoolExecutor`` workers are
created by ``submit()`` (all ``max_workers`` at the first submit with the default ``fork``
start method; on demand with ``spawn``/``forkserver``), i.e. in Nipype's scheduling loop,
which runs in the thread that called ``workflow.run`` — the main thread for ``qsmprep``.  The
executor's manager thread spawns replacements only when ``max_tasks_per_child`` is set,
which Nipype does not do.  The plugin warns (debug) if it is built outside the main thread.
With ``mp_context="forkserver"`` the parent of a worker is the fork server (which itself exits
when the main process dies); the pid race check is then skipped.

Among the steps ready to run it submits those on the critical path first (the nodes that the
workflow builders mark with :func:`qsmprep.workflows.prioritise`; Nipype's own order otherwise).

The plugin also tells a ``status_callback`` that has ``defer`` and ``flush`` (our
:class:`~qsmprep.cli.progress.ProgressReporter`) to queue its lines and flushes them after
every submission pass, so a progress line counts the steps started in the same pass.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer

from qsmprep.workflows import PRIORITY_ATTR

LOGGER = logging.getLogger("nipype.workflow")
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2


def set_parent_death_signal(sig=signal.SIGKILL):
    """``prctl(PR_SET_PDEATHSIG, sig)`` for this process; ``False`` where unavailable."""
    if not sys.platform.startswith("linux"):
        LOGGER.debug("parent-death signal not available on %s; workers may outlive a killed run", sys.platform)
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ret = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError) as exc:
        LOGGER.debug("prctl unavailable (%s); workers may outlive a killed run", exc)
        return False
    if ret != 0:
        LOGGER.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def worker_initializer(cwd, parent_pid=None):
    """Pool initializer: Nipype's (chdir, environment), then die with the parent."""
    process_initializer(cwd)
    set_parent_death_signal(signal.SIGKILL)
    # the parent may have died after fork() and before prctl(): then no signal will come
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


class OrphanSafeMultiProcPlugin(MultiProcPlugin):
    """``MultiProcPlugin`` whose workers are SIGKILLed when the main process dies.

    Pass an instance to ``workflow.run(plugin=...)`` (Nipype takes the instance's
    ``plugin_args``).  Options are those of Nipype's MultiProc (``n_procs``, ``memory_gb``,
    ``mp_context``, ``status_callback``, ...).
    """

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        # Nipype's pool has started no process yet (that happens at the first submit): replace
        # it by one with our initializer
        self.pool.shutdown(wait=False)
        if threading.current_thread() is not threading.main_thread():
            LOGGER.debug("MultiProc started outside the main thread: its workers die when this thread ends")
        mp_context = mp.get_context(self.plugin_args.get("mp_context"))
        method = mp_context.get_start_method()
        parent_pid = os.getpid() if method in ("fork", "spawn") else None
        self.pool = ProcessPoolExecutor(
            max_workers=self.processors,
            initializer=worker_initializer,
            initargs=(self._cwd, parent_pid),
            mp_context=mp_context,
        )
        if callable(getattr(self._status_callback, "flush", None)) and hasattr(self._status_callback, "defer"):
            self._status_callback.defer = True

    def _sort_jobs(self, jobids, scheduler="tsort"):
        """Ready steps in Nipype's order, the critical path's first (``qsmprep.workflows.prioritise``).

        A stable sort on the node attribute :data:`qsmprep.workflows.PRIORITY_ATTR` (higher
        first, 0 for unmarked nodes), so steps of equal priority keep Nipype's order.
        """
        jobids = super()._sort_jobs(jobids, scheduler=scheduler)
        return sorted(jobids, key=lambda j: -getattr(self.procs[j], PRIORITY_ATTR, 0))

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        # Nipype's loop: collect finished tasks ("end"), then this pass submits the steps that
        # became ready ("start"); lines queued during both are written with the new count
        try:
            super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
        finally:
            flush = getattr(self._status_callback, "flush", None)
            if callable(flush):
                flush()
