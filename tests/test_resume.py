"""Resumable and safe runs: SIGKILL mid-inversion then re-run; two concurrent runs into one folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import qsmprep

pytestmark = pytest.mark.e2e
SRC = str(Path(qsmprep.__file__).resolve().parents[1])


def _qsmprep(args, **kw):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "qsmprep.cli.run", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    from qsmprep.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("resume")
    write_demo_dataset(root, size="small", n_subjects=2)
    return root / "bids"


def _results(work):
    """``{node folder: result-file mtime}`` of every finished node."""
    return {p.parent.relative_to(work).as_posix(): p.stat().st_mtime_ns for p in Path(work).rglob("result_*.pklz")}


def _all_niftis_load(out):
    for path in Path(out).rglob("*.nii*"):
        data = np.asanyarray(nib.load(path).dataobj)  # a truncated gzip stream raises here
        assert data.size > 0, path


def test_killed_run_resumes_without_recomputing(bids, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = [bids, out, "participant", "--participant-label", "01", "--no-coreg", "-w", work, "--nprocs", "1"]
    proc = _qsmprep(args)
    inv_dir = work / "qsmprep_wf" / "single_subject_01_wf" / "gre_sub01_wf" / "inversion"
    deadline = time.monotonic() + 300
    while not (inv_dir / "_inputs.pklz").exists() and not (inv_dir / "_node.pklz").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "inversion never started"
        time.sleep(0.05)
    time.sleep(0.5)  # inside MEDI (several seconds on the small demo)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _results(work)
    assert not list(inv_dir.glob("result_*.pklz")), "the kill came after the inversion had finished"
    finished = {k for k in before if k.endswith(("/load", "/unwrap", "/fit_field", "/background"))}
    assert len(finished) == 4, sorted(before)
    assert not (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()
    _all_niftis_load(out)  # nothing truncated under a final name
    for p in out.rglob("*"):
        assert not (p.is_file() and p.name.endswith((".nii.gz", ".json", ".tsv")) and p.stat().st_size == 0), p

    rerun = _qsmprep(args)
    log, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, log[-3000:]
    after = _results(work)
    recomputed = sorted(k for k, t in before.items() if after.get(k) != t)
    assert recomputed == [], f"finished nodes recomputed after the kill: {recomputed}"
    assert list(inv_dir.glob("result_*.pklz"))
    chi = np.asarray(nib.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").dataobj)
    assert np.isfinite(chi).all() and np.count_nonzero(chi) > 1000
    _all_niftis_load(out)


def test_two_concurrent_runs_into_one_output_folder(bids, tmp_path):
    out = tmp_path / "out"
    runs = [_qsmprep([bids, out, "participant", "--participant-label", sub, "--no-coreg", "-w", tmp_path / "work",
                      "--nprocs", "1"]) for sub in ("01", "02")]
    logs = [r.communicate(timeout=900)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [log[-2000:] for log in logs]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    for sub in ("01", "02"):
        anat = out / f"sub-{sub}" / "anat"
        names = sorted(p.name for p in anat.iterdir())
        assert all(n.startswith(f"sub-{sub}_") for n in names)
        for suffix in ("Chimap", "R2starmap", "desc-brain_mask", "desc-localfield_fieldmap"):
            img = nib.load(anat / f"sub-{sub}_{suffix}.nii.gz")
            assert np.isfinite(np.asarray(img.dataobj)).all()
            side = json.loads((anat / f"sub-{sub}_{suffix}.json").read_text())
            assert all(src.startswith(f"bids:raw:sub-{sub}/") for src in side["Sources"])
        assert (out / f"sub-{sub}.html").is_file()
        assert len(list((out / f"sub-{sub}" / "log").glob("*/qsmprep.json"))) == 1
    assert not list(out.rglob(".*.tmp"))
    _all_niftis_load(out)
