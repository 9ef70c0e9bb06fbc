"""Per-participant progress lines for long runs (Nipype ``status_callback``).

One plain log line per finished (or failed) step, e.g.
``progress sub-01: 14/52 steps done, 2 running, 0:01:23 elapsed`` — no carriage-return
spinners, so the lines read the same on a terminal, in a file and in a SLURM log.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta

LOGGER = logging.getLogger("nipype.workflow")
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

    def __init__(self, totals=None, clock=time.monotonic, logger=LOGGER):
        self.totals = dict(totals or {})
        self.clock = clock
        self.logger = logger
        self.started = {}
        self.done = {}
        self.failed = {}
        self.running = {}

    def __call__(self, node, status):
        sub = subject_of(node)
        if sub is None:
            return
        now = self.clock()
        self.started.setdefault(sub, now)
        if status == "start":
            self.running[sub] = self.running.get(sub, 0) + 1
            return
        self.running[sub] = max(0, self.running.get(sub, 0) - 1)
        if status == "exception":
            self.failed[sub] = self.failed.get(sub, 0) + 1
        else:
            self.done[sub] = self.done.get(sub, 0) + 1
        self.logger.info("%s", self.line(sub, now))

    def line(self, sub, now=None):
        now = self.clock() if now is None else now
        done, failed = self.done.get(sub, 0), self.failed.get(sub, 0)
        total = max(self.totals.get(sub, 0), done + failed + self.running.get(sub, 0))
        elapsed = timedelta(seconds=int(now - self.started.get(sub, now)))
        text = f"progress sub-{sub}: {done}/{total} steps done, {self.running.get(sub, 0)} running"
        if failed:
            text += f", {failed} failed"
        return f"{text}, {elapsed} elapsed"
