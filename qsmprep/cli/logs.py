"""Logging of the ``qsmprep`` command: levels for ``-q``/``-v``, one line per record, no tracebacks."""

from __future__ import annotations

import logging
import sys

#: One line per record (Nipype's own format puts the message on a second, indented line).
_LOG_FORMAT = "%(asctime)s,%(msecs)03d %(name)s %(levelname)s: %(message)s"
_LOG_DATEFMT = "%y%m%d-%H:%M:%S"


def _levels(verbosity):
    """(Nipype workflow, interface/utils, progress) levels for ``-q`` (-1), default (0), -v, -vv."""
    if verbosity < 0:
        return logging.ERROR, logging.ERROR, logging.ERROR
    if verbosity == 0:  # progress lines, warnings and errors; no Nipype INFO chatter
        return logging.WARNING, logging.WARNING, logging.INFO
    if verbosity == 1:
        return logging.INFO, logging.INFO, logging.INFO
    return logging.DEBUG, logging.DEBUG, logging.DEBUG


class _CrashTracebackFilter(logging.Filter):
    """Keep Nipype's "Saving crash info to <file>" line, drop the traceback it appends.

    Nipype (plugins/tools.py ``report_crash``) logs every failed node's traceback at ERROR;
    the crash file holds it, and a traceback on the terminal for a bad input is what the CLI
    promises not to print.  Installed at the default verbosity and ``-q`` (``-v`` keeps it).
    """

    def filter(self, record):
        if isinstance(record.msg, str) and record.msg.startswith("Saving crash info to %s\n") and record.args:
            record.msg, record.args = "Saving crash info to %s", tuple(record.args)[:1]
        return True


_CRASH_FILTER = _CrashTracebackFilter()


def _setup_logging(verbosity):
    from nipype import config as ncfg
    from nipype import logging as nlogging

    from qsmprep.cli.progress import PROGRESS_LOGGER

    workflow, other, progress = _levels(verbosity)
    ncfg.update_config({"logging": {"workflow_level": logging.getLevelName(workflow),
                                    "interface_level": logging.getLevelName(other),
                                    "utils_level": logging.getLevelName(other)}})
    nlogging.update_logging(ncfg)
    # qsmprep's own lines (progress, the start line, report paths) have their own level, so
    # the default shows them while Nipype's INFO messages on nipype.workflow stay hidden
    PROGRESS_LOGGER.setLevel(progress)
    workflow_logger = logging.getLogger("nipype.workflow")
    if verbosity <= 0:
        workflow_logger.addFilter(_CRASH_FILTER)  # (a set: adding twice keeps one)
    else:
        workflow_logger.removeFilter(_CRASH_FILTER)
    # the log goes to the current stderr (stdout is for the run's result): Nipype's own
    # handler writes to the stdout of import time, and a handler left on a replaced or closed
    # stream (an earlier in-process call, e.g. under a test runner) would lose every line
    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils", ""):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:  # not FileHandler (a subclass)
                handler.stream = sys.stderr  # (setStream would flush a closed stream)
            if name == "nipype" and isinstance(handler, logging.StreamHandler):
                handler.setFormatter(logging.Formatter(_LOG_FORMAT, _LOG_DATEFMT))
