"""Top-level workflows: the whole run, and one participant."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import nibabel as nib
from nipype.pipeline import engine as pe

from qsmprep import __version__
from qsmprep.qsm.kernels import b0_direction
from qsmprep.workflows.gre import init_gre_wf
from qsmprep.workflows.outputs import INFO_FIELDS, OUTPUTS, init_gre_derivatives_wf

WORKFLOW_NAME = "qsmprep_wf"


def init_qsmprep_wf(config, records):
    """Build the run's workflow from a resolved :class:`qsmprep.config.Config`.

    This is the only builder that reads the configuration; it passes explicit
    arguments to the stage builders.  One sub-workflow per participant, so that
    MultiProc (or a cluster plugin) runs participants in parallel.
    """
    ex, wf_cfg = config.execution, config.workflow
    workflow = pe.Workflow(name=WORKFLOW_NAME)
    by_subject = defaultdict(list)
    for rec in records:
        by_subject[rec.subject].append(rec)
    # share the processes between participants that can run at the same time
    omp_nthreads = max(1, int(ex.nprocs) // max(1, min(len(by_subject), int(ex.nprocs))))
    for subject, recs in sorted(by_subject.items()):
        sub_wf = init_single_subject_wf(
            records=recs, bids_dir=ex.bids_dir, output_dir=ex.output_dir, stages=wf_cfg.stages,
            echo_strategy=wf_cfg.echo_strategy, pad_voxels=wf_cfg.pad_voxels,
            omp_nthreads=omp_nthreads, name=f"single_subject_{subject}_wf",
        )
        if ex.run_uuid:
            # crash reports of a participant go to out/sub-<L>/log/<run_uuid>/ (node configs win
            # over workflow configs in Nipype, so set them on every node)
            crash_dir = str(Path(ex.output_dir) / f"sub-{subject}" / "log" / ex.run_uuid)
            for node_name in sub_wf.list_node_names():
                node = sub_wf.get_node(node_name)
                node.config = node.config or {}
                node.config.setdefault("execution", {}).update(
                    {"crashdump_dir": crash_dir, "crashfile_format": "txt"}
                )
        workflow.add_nodes([sub_wf])
    return workflow


def _bids_uri(path, bids_dir):
    try:
        rel = Path(path).resolve().relative_to(Path(bids_dir).resolve())
    except ValueError:
        return os.fspath(path)
    return f"bids:raw:{rel.as_posix()}"


def _stage_summary(stages):
    return {
        name: {"method": (s.method if hasattr(s, "method") else s["method"]),
               "params": dict(s.params if hasattr(s, "params") else s.get("params", {}))}
        for name, s in stages.items()
    }


def init_single_subject_wf(*, records, bids_dir, output_dir, stages, echo_strategy="combined",
                           pad_voxels=16, omp_nthreads=1, name="single_subject_wf"):
    """All acquisitions of one participant: a GRE workflow and its derivatives each.

    Parameters
    ----------
    records : list of :class:`qsmprep.bids.GreRecord`
        The participant's validated GRE acquisitions.
    bids_dir, output_dir : str
        Input dataset (read only) and derivatives root.
    stages, echo_strategy, pad_voxels, omp_nthreads
        Passed to :func:`qsmprep.workflows.gre.init_gre_wf`.
    """
    workflow = pe.Workflow(name=name)
    for rec in records:
        affine = nib.load(rec.magnitude[0] if rec.magnitude else rec.real[0]).affine
        label = rec.prefix.replace("-", "").replace("_", "")
        gre_wf = init_gre_wf(
            echo_times=rec.echo_times, b0=rec.b0, stages=stages, echo_strategy=echo_strategy,
            pad_voxels=pad_voxels, shape=rec.shape, omp_nthreads=omp_nthreads, name=f"gre_{label}_wf",
        )
        for part in ("magnitude", "phase", "real", "imag"):
            files = getattr(rec, part)
            if files:
                setattr(gre_wf.inputs.inputnode, part, list(files))
        common_meta = {
            "EchoTime": list(rec.echo_times),
            "MagneticFieldStrength": rec.b0,
            "MagneticFieldStrengthSource": rec.b0_source,
            "B0Direction": [round(float(v), 6) for v in b0_direction(affine)],
            "B0DirectionDescription": "unit B0 vector in voxel axes (i, j, k), from the image affine",
            "EchoStrategy": echo_strategy,
            "QSMPipeline": _stage_summary(stages),
            "GeneratedBy": {"Name": "qsmprep", "Version": __version__},
        }
        ds_wf = init_gre_derivatives_wf(
            output_dir=output_dir, entities=rec.entities,
            sources=[_bids_uri(p, bids_dir) for p in rec.source_files], common_meta=common_meta,
            has_r2star=rec.n_echoes > 1, name=f"ds_{label}_wf",
        )
        fields = [o[0] for o in OUTPUTS if rec.n_echoes > 1 or o[0] not in ("r2star", "t2star")]
        workflow.connect([
            (gre_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields + list(INFO_FIELDS)
                             if rec.n_echoes > 1 or f != "r2star_info"]),
        ])
    return workflow
