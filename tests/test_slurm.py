"""SLURM for real: a single-node cluster on localhost runs two demo participants both ways —
Nipype's SLURM plugin (one job per step, resources from each node's estimates) and the
recommended array job (`qsmprep slurm-script --submit`, one participant per task).
Skipped, with the reason, only where the local cluster cannot start (no slurm-wlm/munge,
not root); `.ci/run` installs Debian's slurm-wlm and munge."""

import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

from qsmprep.cli.run import main
from slurmcluster import ClusterUnavailable, LocalSlurm

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
    except ClusterUnavailable as exc:
        pytest.skip(f"no local SLURM cluster: {exc}")
    old = {k: os.environ.get(k) for k in slurm.env}
    os.environ.update(slurm.env)
    yield slurm
    slurm.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    from qsmprep.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("slurmdemo")
    write_demo_dataset(root, size="small", n_subjects=2)
    return root / "bids"


def _check_outputs(out):
    for sub in ("01", "02"):
        chi = nib.load(out / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii.gz")
        data = np.asarray(chi.dataobj)
        assert np.isfinite(data).all() and np.count_nonzero(data) > 1000
        assert (out / f"sub-{sub}.html").is_file()
    json.loads((out / "dataset_description.json").read_text())


def test_slurm_plugin_one_job_per_step(cluster, bids, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    rc = main([str(bids), str(out), "participant", "--no-coreg", "-w", str(work), "--plugin", "SLURM",
               "--plugin-args", '{"poll_sleep_duration": 1, "sbatch_args": "--comment=qsmprep-test"}'])
    assert rc == 0
    _check_outputs(out)
    jobs = [j for j in cluster.jobs() if j.get("Comment") == "qsmprep-test"]
    assert all(j["JobState"] == "COMPLETED" for j in jobs), {j["JobName"]: j["JobState"] for j in jobs}
    # every computing step of both participants was its own job (Nipype runs bookkeeping
    # nodes such as Merge on the submitting process)
    names = {j["JobName"] for j in jobs}
    for sub in ("01", "02"):
        for step in ("load", "unwrap", "fit_field", "r2star", "brain_mask", "background", "inversion", "reference"):
            assert f"{step}.gre_sub{sub}_wf.single_subject_{sub}_wf.qsmprep_wf.root" in names, (step, sub)
    # memory requested from each node's mem_gb estimate (small demo: the 0.25 GB floor + overhead),
    # not SLURM's default of the whole node
    from qsmprep.cli.slurm import node_sbatch_args

    expected = int(re.search(r"--mem=(\d+)M", node_sbatch_args(type("N", (), {"mem_gb": 0.25, "n_procs": 1}))).group(1))
    mem = {j["JobName"]: int(re.match(r"(\d+)M", j["MinMemoryNode"]).group(1)) for j in jobs}
    assert set(mem.values()) == {expected}, mem


def test_slurmgraph_submits_everything_then_waits(cluster, bids, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    rc = main([str(bids), str(out), "participant", "--no-coreg", "-w", str(work), "--plugin", "SLURMGraph",
               "--plugin-args", "sbatch_args: --comment=qsmprep-graph"])
    assert rc == 0  # returned only after the jobs left the queue: the outputs are there
    _check_outputs(out)
    jobs = [j for j in cluster.jobs() if j.get("Comment") == "qsmprep-graph"]
    assert len(jobs) > 20 and all(j["JobState"] == "COMPLETED" for j in jobs)
    submitted = (work / "qsmprep_wf" / "batch" / "submit_jobs.sh").read_text()
    assert submitted.count("--dependency=afterok:") >= len(jobs) - 2  # all but the two loads wait for others
    mem = {int(re.match(r"(\d+)M", j["MinMemoryNode"]).group(1)) for j in jobs}
    assert all(256 <= m < 2048 for m in mem), mem  # each step's own estimate, not the whole node


def test_slurm_array_job_one_participant_per_task(cluster, bids, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    rc = main(["slurm-script", str(bids), str(out), "-w", str(work), "--nprocs", "1", "--mem-gb", "3",
               "--time", "00:30:00", "--submit", "--", "--no-coreg"])
    printed = capsys.readouterr().out
    assert rc == 0 and "submitted array job" in printed
    job = re.search(r"array job (\d+)", printed).group(1)
    cluster.wait_idle(timeout=1200)
    tasks = [j for j in cluster.jobs() if j.get("ArrayJobId") == job]
    assert len(tasks) == 2 and all(t["JobState"] == "COMPLETED" for t in tasks), tasks
    logs = sorted((out / "logs" / "slurm").glob(f"qsmprep_{job}_*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "qsmprep finished 1 acquisition(s)" in text and "progress sub-0" in text and "\r" not in text
    assert sorted(p.name for p in work.iterdir()) == ["sub-01", "sub-02"]
    _check_outputs(out)


def test_slurm_script_printed(bids, capsys):
    rc = main(["slurm-script", str(bids), "/tmp/qsmprep-out", "--participant-label", "sub-02", "--partition",
               "short", "--max-parallel", "10", "--", "--template", "none"])
    script = capsys.readouterr().out
    assert rc == 0 and script.startswith("#!/bin/bash")
    assert "#SBATCH --array=0-0%10" in script and "#SBATCH --partition=short" in script
    assert "LABELS=(02)" in script and "--template none" in script and "participant" in script
