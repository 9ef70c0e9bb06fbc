"""Checks before a run: folder layout, writable output/work folders, undamaged input files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qsmprep.errors import InputError


def _is_within(path, parent):
    try:
        Path(path).resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False


def check_paths(bids_dir, output_dir, work_dir):
    """Refuse layouts that would write into the input dataset."""
    bids_dir, output_dir, work_dir = (Path(p).absolute() for p in (bids_dir, output_dir, work_dir))
    if output_dir.resolve() == bids_dir.resolve():
        raise InputError("output_dir must not be the BIDS dataset itself", path=output_dir)
    if _is_within(output_dir, bids_dir) and not _is_within(output_dir, bids_dir / "derivatives"):
        raise InputError("output_dir inside the BIDS dataset must be under its derivatives/ folder",
                         path=output_dir)
    if _is_within(work_dir, bids_dir):
        raise InputError("the work directory must not be inside the BIDS dataset", path=work_dir)
    if _is_within(bids_dir, output_dir) or _is_within(bids_dir, work_dir):
        raise InputError("the BIDS dataset must not be inside the output or work directory", path=bids_dir)


def check_writable(path, what):
    """Create ``path`` (a folder) if needed and prove it writable with a probe file.

    Raises InputError naming the folder: a file in its place or in place of a parent, a
    parent that cannot be created, or a folder where no file can be created (permissions,
    read-only file system, full disk).  Root ignores permission bits, so as root only the
    "file in the way" and read-only-mount cases can fail.

    Returns the folders it created (outermost first), for :func:`_remove_empty`.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"the {what} is a file, not a folder", path=path)
    created = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise InputError(f"cannot create the {what}: {exc.strerror or exc}{where}", path=path) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".qsmprep-write-test-")
    except OSError as exc:
        raise InputError(f"the {what} is not writable ({exc.strerror or exc})", path=path) from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot remove files in the {what} ({exc.strerror or exc})", path=path) from None
    return created


def _remove_empty(folders):
    """Remove the folders :func:`check_writable` created, innermost first, where still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def check_inputs(records):
    """Refuse damaged input NIfTI files (all GRE echoes and T1w images) before processing."""
    from qsmprep.integrity import check_files

    paths = [p for r in records for p in (*r.source_files, r.t1w)]
    check_files(paths, full=True)
