"""Tiny synthetic BIDS datasets for input-validation tests (fast; no physics)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def write_image(path, data, affine=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data), np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine).to_filename(path)
    return path


def write_json(path, data):
    Path(path).write_text(json.dumps(data))
    return path


def make_tiny_bids(root, *, subjects=("01",), n_echoes=3, shape=(12, 12, 10), parts=("mag", "phase"),
                   b0=3.0, te0=0.005, dte=0.005, t1w=True, seed=0):
    """Write a minimal valid multi-echo GRE BIDS dataset and return its root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    for sub in subjects:
        anat = root / f"sub-{sub}" / "anat"
        for e in range(1, n_echoes + 1):
            for part in parts:
                stem = anat / f"sub-{sub}_echo-{e}_part-{part}_MEGRE"
                if part == "mag":
                    data = (1000 * np.exp(-0.02 * e) * (1 + 0.01 * rng.standard_normal(shape))).astype(np.uint16)
                elif part == "phase":
                    data = rng.integers(0, 4096, size=shape).astype(np.uint16)
                else:
                    data = rng.standard_normal(shape).astype(np.float32)
                write_image(stem.with_suffix(".nii.gz"), data)
                meta = {"EchoTime": round(te0 + (e - 1) * dte, 6), "EchoNumber": e}
                if part == "phase":  # BIDS requires Units for part-phase (scanner integers here)
                    meta["Units"] = "arbitrary"
                if b0 is not None:
                    meta["MagneticFieldStrength"] = b0
                write_json(stem.with_suffix(".json"), meta)
        if t1w:
            write_image(anat / f"sub-{sub}_T1w.nii.gz", rng.random(shape).astype(np.float32))
            write_json(anat / f"sub-{sub}_T1w.json", {"MagneticFieldStrength": b0 or 3.0})
    return root


def gre_file(root, sub="01", echo=1, part="mag", ext=".nii.gz"):
    return Path(root) / f"sub-{sub}" / "anat" / f"sub-{sub}_echo-{echo}_part-{part}_MEGRE{ext}"


def demo_with_tkd_preset(root):
    """The small 1-subject demo dataset under ``root`` and a TKD preset beside it:
    ``(write_demo_dataset's info, preset path)``, for tests that need a fast participant run."""
    from qsmprep.demo import write_demo_dataset

    info = write_demo_dataset(root, size="small", n_subjects=1)
    preset = Path(root) / "tkd.json"
    preset.write_text(json.dumps({"workflow": {"inversion": "tkd"}}))
    return info, preset


def validator_errors(path):
    """The BIDS validator's (bids-validator-deno, a dependency) error issues for ``path``."""
    import subprocess

    from qsmprep.validator import find_validator

    res = subprocess.run([find_validator(), str(path), "--json"], capture_output=True, text=True, timeout=600)
    return [i for i in json.loads(res.stdout)["issues"]["issues"] if i["severity"] == "error"]


def check_bidsignore(deriv, tmp, *, expect_needed):
    """The derivatives at ``deriv`` pass the validator, and the ``.bidsignore`` lines for the
    outputs BIDS has no rule for (``BIDSIGNORE_NONSTANDARD``) hide only what the validator
    rejects: without them every error is on one of those names, and each of ``expect_needed``
    (patterns of that tuple) has at least one.  ``tmp``: a folder for the copy without them."""
    import fnmatch
    import shutil

    from qsmprep.cli.run import BIDSIGNORE, BIDSIGNORE_NONSTANDARD

    assert validator_errors(deriv) == []
    copy = Path(tmp) / "bidsignore-check"
    shutil.copytree(deriv, copy, ignore=shutil.ignore_patterns("figures", "log", "dicom", "group", "*.html"))
    (copy / ".bidsignore").write_text("".join(f"{line}\n" for line in BIDSIGNORE))
    hits = {pattern: 0 for pattern in BIDSIGNORE_NONSTANDARD}
    for issue in validator_errors(copy):
        name = issue["location"].rsplit("/", 1)[-1]
        matched = [p for p in BIDSIGNORE_NONSTANDARD if fnmatch.fnmatch(name, p)]
        assert matched, issue  # an error on an output that BIDS does describe: a naming bug, not hidden
        for p in matched:
            hits[p] += 1
    assert [p for p in expect_needed if not hits[p]] == []
