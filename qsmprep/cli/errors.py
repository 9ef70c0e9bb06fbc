"""How the ``qsmprep`` command reports failures: the error kinds, OSError and crash-file lines.

:func:`qsmprep.cli.run.main` turns them into one line on stderr and an exit status; the
messages of InputErrors and full-disk / permission errors raised inside Nipype nodes are read
back from the nodes' crash files, and an internal error's traceback is written to a crash file.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

from qsmprep import __version__


class ProcessingError(RuntimeError):
    """A node failed for a reason that is not an input problem (see the crash reports)."""


class EnvironmentProblem(RuntimeError):
    """A node failed because of the machine (full disk, permissions); exit 2 like an OSError."""


#: Where an internal error's traceback is written (set as soon as the output/work folders
#: are known and checked); the temporary folder otherwise.
_CRASH_DIRS: list = []


def _one_line(text, limit=400):
    """A message for one stderr line: the last line of a multi-line text (a traceback's
    exception line), whitespace collapsed, at most ``limit`` characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    text = " ".join((lines[-1] if len(lines) > 1 else " ".join(lines)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _input_errors_from_crashes(crash_dirs):
    """InputError messages found in Nipype crash files (raised inside nodes)."""
    found = []
    for folder in crash_dirs:
        for crash in sorted(Path(folder).glob("crash-*.txt")):
            for line in crash.read_text(errors="replace").splitlines():
                if "InputError:" in line:
                    msg = line.split("InputError:", 1)[1].strip()
                    if msg and msg not in found:
                        found.append(msg)
    return found


#: errno values that mean the machine, not qsmprep or the data: full disk, quota, permissions.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
_ERRNO_LINE = re.compile(r"\b(?:OSError|PermissionError|IOError): \[Errno (\d+)\] (.+)$")


def _environment_errors_from_crashes(crash_dirs):
    """Full-disk / permission errors (``OSError: [Errno 28] ...``) found in Nipype crash files."""
    found = []
    for folder in crash_dirs:
        for crash in sorted(Path(folder).glob("crash-*.txt")):
            for line in crash.read_text(errors="replace").splitlines():
                match = _ERRNO_LINE.search(line.strip())
                if match and int(match.group(1)) in _ENVIRONMENT_ERRNOS:
                    msg = _describe_errno(int(match.group(1)), match.group(2))
                    if msg not in found:
                        found.append(msg)
    return found


def _describe_errno(code, text):
    """``<path>: <strerror>`` from ``<strerror>: '<path>'`` as Python prints an OSError."""
    strerror, _, where = text.partition(": ")
    where = where.strip().strip("'\"")
    return f"{where}: {strerror}" if where else strerror


def describe_oserror(exc):
    """One line for an OSError: the path(s) and the system's reason."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or _one_line(exc)
    if not paths:
        return reason
    hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{' -> '.join(paths)}: {reason}{hint}"


def _write_crash(exc):
    """Save the traceback of an internal error; the file's path (``None`` if nowhere writable)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = f"qsmprep {__version__}, {datetime.now(timezone.utc).isoformat()}, argv {sys.argv!r}\n\n{text}"
    name = f"qsmprep-crash-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.txt"
    for folder in [*_CRASH_DIRS, Path(tempfile.gettempdir())]:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None
