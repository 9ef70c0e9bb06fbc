"""Compare two qsmprep derivatives folders file by file (a refactoring must not change outputs).

    python benchmarks/compare_runs.py BEFORE/derivatives/qsmprep AFTER/derivatives/qsmprep

A file counts as the same when its bytes are, or, for NIfTI, when its data array and affine
are (gzip headers may differ).  Everything else is listed; expect only the files that carry
paths or the run's id (``dataset_description.json``, the HTML reports, ``log/<run>/``).
Exit status 1 when any NIfTI's data differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def compare(before, after):
    """``(same, different, only_before, only_after)``; ``different`` as (path, what, max |Δ|)."""
    before, after = Path(before), Path(after)
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    same, different = 0, []
    for rel in sorted(files_a & files_b):
        pa, pb = before / rel, after / rel
        if pa.read_bytes() == pb.read_bytes():
            same += 1
            continue
        if rel.name.endswith((".nii", ".nii.gz")):
            ia, ib = nib.load(pa), nib.load(pb)
            da, db = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
            if da.shape == db.shape and np.array_equal(da, db) and np.array_equal(ia.affine, ib.affine):
                same += 1
                continue
            delta = float(np.abs(da.astype(float) - db.astype(float)).max()) if da.shape == db.shape else None
            different.append((str(rel), "nifti", delta))
        else:
            different.append((str(rel), "bytes", None))
    return same, different, sorted(map(str, files_a - files_b)), sorted(map(str, files_b - files_a))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    opts = parser.parse_args(argv)
    same, different, only_a, only_b = compare(opts.before, opts.after)
    print(f"identical: {same}; different: {len(different)}; only before: {len(only_a)}; only after: {len(only_b)}")
    for path, what, delta in different:
        print(f"  {path}: {what}" + (f", max |difference| {delta:g}" if delta is not None else ""))
    for label, paths in (("only before", only_a), ("only after", only_b)):
        for path in paths:
            print(f"  {label}: {path}")
    return 1 if any(what == "nifti" for _, what, _ in different) else 0


if __name__ == "__main__":
    sys.exit(main())
