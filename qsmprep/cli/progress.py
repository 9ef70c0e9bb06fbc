"""Per-participant progress lines for long runs (Nipype ``status_callback``).

One plain log line per finished (or failed) step, e.g.
``progress sub-01: 14/52 steps done, 2 running, 0:01:23 elapsed`` — no carriage-return
spinners, so the lines read the same on a terminal, in a file and in a SLURM log.

The lines go to their own logger, ``nipype.workflow.progress`` (:data:`PROGRESS_LOGGER`), so
that they show at the default verbosity while Nipype's own INFO chatter on
``nipype.workflow`` does not (the CLI sets the two levels separately); being a child of
``nipype.workflow`` they still reach Nipype's handler and any handler on that logger.

What Nipype reports (``status_callback(node, status)``, nipype 1.11):

* MultiProc: ``start`` only for nodes submitted to a worker process; nodes that
  ``run_without_submitting`` (our DerivativesSinks, merges) run in the main process and
  report only ``end``; cached nodes report only ``end``; a failed submitted node reports
  ``exception``; a failed ``run_without_submitting`` node reports ``exception`` *and then*
  ``end``; a MapNode whose subnodes cannot be counted reports ``exception`` only.
* Linear, and the batch plugins (SLURM): ``start`` before every node, cached or not, then
  ``end`` or ``exception`` (run-without-submitting failures: ``exception`` then ``end``).

So "running" counts the nodes that reported ``start`` and have not finished; an ``end``
without a ``start`` is a step done without running in a worker, and the second report of
a node (``end`` after ``exception``) is ignored.

Order matters too: each scheduler pass first collects the finished tasks (their ``end``)
and only then submits the steps that became ready (their ``start``), so a line written at
``end`` says "0 running" between any two steps of a chain although the next one starts a
millisecond later.  With ``defer = True`` the reporter queues its lines and writes them at
:meth:`ProgressReporter.flush`, which :class:`qsmprep.cli.multiproc.OrphanSafeMultiProcPlugin`
calls after every submission pass (and ``run_participant`` once at the end), so the count
includes the steps just started.  Without it (Linear, SLURM) lines are written at once.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta

#: Logger of the progress lines (level set by the CLI independently of ``nipype.workflow``).
PROGRESS_LOGGER = logging.getLogger("nipype.workflow.progress")
LOGGER = PROGRESS_LOGGER
_SUBJECT_RE = re.compile(r"single_subject_([^.]+)_wf")


def _node_name(node):
    hierarchy = getattr(node, "_hierarchy", None)
    return f"{hierarchy}.{node.name}" if hierarchy else str(getattr(node, "fullname", node))


def subject_of(node):
    match = _SUBJECT_RE.search(_node_name(node))
    return match.group(1) if match else None


def count_steps(workflow):
    """Steps per participant that Nipype will execute, ``{}`` if Nipype cannot tell.

    The same expansion as ``Workflow.run``: the flat graph, identity (input/output) nodes
    removed, iterables expanded.
    """
    from copy import deepcopy

    from nipype.pipeline.engine.utils import generate_expanded_graph

    try:
        flat = workflow._create_flat_graph()  # noqa: SLF001 - the graph Nipype will execute
        execgraph = generate_expanded_graph(deepcopy(flat))
    except Exception:  # noqa: BLE001 - progress must never break a run
        return {}
    totals = {}
    for node in execgraph.nodes():
        sub = subject_of(node)
        if sub is not None:
            totals[sub] = totals.get(sub, 0) + 1
    return totals


class ProgressReporter:
    """``status_callback`` for Nipype plugins: logs ``done/total`` per participant."""

    def __init__(self, totals=None, clock=time.monotonic, logger=None, defer=False):
        self.totals = dict(totals or {})
        self.clock = clock
        self.logger = PROGRESS_LOGGER if logger is None else logger
        #: queue lines until :meth:`flush` (set by a plugin that calls flush after each pass)
        self.defer = defer
        self._queued = []
        self.started = {}
        self.done = {}
        self.failed = {}
        self.running = {}  # participant -> names of the nodes started and not finished
        self._finished = set()

    def __call__(self, node, status):
        sub = subject_of(node)
        if sub is None:
            return
        now = self.clock()
        self.started.setdefault(sub, now)
        key = _node_name(node)
        running = self.running.setdefault(sub, set())
        if status == "start":
            running.add(key)
            self._finished.discard(key)  # (a node run again in the same graph, e.g. a retry)
            return
        if key in self._finished:  # "end" after "exception" of the same run_without_submitting node
            return
        self._finished.add(key)
        running.discard(key)
        if status == "exception":
            self.failed[sub] = self.failed.get(sub, 0) + 1
        else:
            self.done[sub] = self.done.get(sub, 0) + 1
        if self.defer:
            self._queued.append((sub, self.done.get(sub, 0), self.failed.get(sub, 0), now))
        else:
            self.logger.info("%s", self.line(sub, now))

    def flush(self):
        """Write the queued lines, each with its own counts and the running count of now."""
        queued, self._queued = self._queued, []
        for sub, done, failed, now in queued:
            self.logger.info("%s", self._format(sub, done, failed, self.n_running(sub), now))

    def n_running(self, sub):
        return len(self.running.get(sub, ()))

    def line(self, sub, now=None):
        now = self.clock() if now is None else now
        return self._format(sub, self.done.get(sub, 0), self.failed.get(sub, 0), self.n_running(sub), now)

    def _format(self, sub, done, failed, running, now):
        total = max(self.totals.get(sub, 0), done + failed + running)
        elapsed = timedelta(seconds=int(now - self.started.get(sub, now)))
        text = f"progress sub-{sub}: {done}/{total} steps done, {running} running"
        if failed:
            text += f", {failed} failed"
        return f"{text}, {elapsed} elapsed"
