"""Top-level workflows: the whole run, and one participant."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import nibabel as nib
from nipype.pipeline import engine as pe

from qsmprep import __version__
from qsmprep.qsm.kernels import b0_direction
from qsmprep.workflows.gre import _stage, init_gre_wf
from qsmprep.workflows.outputs import (
    CHISEP_INFO_FIELDS, CHISEP_OUTPUTS, INFO_FIELDS, OUTPUTS, init_gre_derivatives_wf,
)

WORKFLOW_NAME = "qsmprep_wf"
LOGGER = logging.getLogger("nipype.workflow")


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
    user_masks = find_user_masks(records, mask=getattr(ex, "mask", None), derivatives=getattr(ex, "derivatives", None))
    r2_maps = find_r2_maps(records, getattr(ex, "r2_dir", None))
    for subject, recs in sorted(by_subject.items()):
        sub_wf = init_single_subject_wf(
            records=recs, bids_dir=ex.bids_dir, output_dir=ex.output_dir, stages=wf_cfg.stages,
            echo_strategy=wf_cfg.echo_strategy, pad_voxels=wf_cfg.pad_voxels,
            omp_nthreads=omp_nthreads, anat=getattr(config, "anat", None),
            user_masks=user_masks, dicom_export=getattr(ex, "dicom_export", False), r2_maps=r2_maps,
            name=f"single_subject_{subject}_wf",
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


def find_user_masks(records, *, mask=None, derivatives=None):
    """``{record prefix: (mask file, source)}`` from ``--mask`` or ``--derivatives``.

    ``--mask FILE`` is for exactly one acquisition (refused when several are selected:
    one mask cannot fit several grids).  ``--derivatives DIR`` is searched for
    ``<prefix>_desc-brain_mask.nii[.gz]`` under ``sub-<L>[/ses-<S>]/anat/`` (our own output
    names, so an earlier qsmprep run's masks, edited or not, can be given back); an
    acquisition without one gets the computed mask, and that is logged.
    """
    from qsmprep.bids import derivative_path
    from qsmprep.errors import InputError

    out = {}
    if mask and derivatives:
        raise InputError("give either --mask (one acquisition) or --derivatives (masks per acquisition), not both")
    if mask:
        if len(records) != 1:
            raise InputError(
                f"--mask is for one acquisition but {len(records)} are selected "
                f"({', '.join(r.prefix for r in records)}); select one with --participant-label/--session-label, "
                "or give per-acquisition masks with --derivatives", path=mask)
        out[records[0].prefix] = (str(mask), "--mask")
    elif derivatives:
        for rec in records:
            found = [p for ext in (".nii.gz", ".nii")
                     if (p := derivative_path(derivatives, rec.entities, "mask", desc="brain", extension=ext)).is_file()]
            if found:
                out[rec.prefix] = (str(found[0]), f"--derivatives {derivatives}")
            else:
                LOGGER.warning("%s: no %s in --derivatives %s; computing the mask", rec.prefix,
                               derivative_path("", rec.entities, "mask", desc="brain").as_posix(), derivatives)
    for rec in records:
        if rec.prefix in out:
            _check_mask_grid(out[rec.prefix][0], rec)
    return out


def find_r2_maps(records, r2_dir):
    """``{record prefix: R2 (or T2) map}`` from ``--r2-dir`` for χ-separation.

    Searched under ``sub-<L>[/ses-<S>]/anat/``: ``<prefix>_R2map`` (the GRE's own entities),
    then ``sub-<L>[_ses-<S>]_R2map``, then the same with ``_T2map``; ``.nii.gz`` or ``.nii``.
    With ``--r2-dir`` every acquisition must have one: a participant silently processed
    GRE-only beside others with measured R2 would not be comparable, so a missing map is
    an error that names the paths looked for.
    """
    from qsmprep.bids import derivative_path
    from qsmprep.errors import InputError

    if not r2_dir:
        return {}
    out = {}
    for rec in records:
        session_only = {k: v for k, v in rec.entities.items() if k in ("subject", "session")}
        tried = [derivative_path(r2_dir, ents, suffix, extension=ext)
                 for suffix in ("R2map", "T2map") for ents in (rec.entities, session_only)
                 for ext in (".nii.gz", ".nii")]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise InputError(f"{rec.prefix}: no R2 map in --r2-dir (looked for "
                             f"{', '.join(sorted({p.name for p in tried}))} under "
                             f"{tried[0].parent}); give one for every acquisition, or drop --r2-dir for "
                             "the GRE-only approximation", path=r2_dir)
        out[rec.prefix] = str(found)
    return out


def _check_mask_grid(path, rec):
    """A user mask must be in the acquisition's grid (shape and affine): checked before processing."""
    import numpy as np

    from qsmprep.bids import _load_header
    from qsmprep.errors import InputError

    img = _load_header(path)
    ref = _load_header((rec.magnitude or rec.real)[0])
    shape = tuple(img.shape[:3]) if len(img.shape) == 3 or img.shape[3:] == (1,) else tuple(img.shape)
    if shape != tuple(rec.shape) or not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise InputError(f"the mask's grid (shape {tuple(img.shape)}) differs from that of {rec.prefix} (shape "
                         f"{tuple(rec.shape)}, affine of {ref.get_filename()}): give a mask in the GRE "
                         "acquisition's grid", path=path)


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
                           pad_voxels=16, omp_nthreads=1, anat=None, user_masks=None, dicom_export=False,
                           r2_maps=None, name="single_subject_wf"):
    """All acquisitions of one participant: a GRE workflow and its derivatives each.

    Parameters
    ----------
    records : list of :class:`qsmprep.bids.GreRecord`
        The participant's validated GRE acquisitions.
    bids_dir, output_dir : str
        Input dataset (read only) and derivatives root.
    stages, echo_strategy, pad_voxels, omp_nthreads
        Passed to :func:`qsmprep.workflows.gre.init_gre_wf`.
    anat : :class:`qsmprep.config.AnatSettings`, optional
        Registration and ROI options; applied to acquisitions that have a T1w
        (:func:`init_anat_wiring`).
    user_masks : dict, optional
        ``{prefix: (mask file, source)}`` from :func:`find_user_masks`.
    dicom_export : bool
        Also write χ, R2* and T2* as DICOM series (:class:`qsmprep.interfaces.dicom.DicomExport`).
    r2_maps : dict, optional
        ``{prefix: R2 or T2 map}`` from :func:`find_r2_maps` for χ-separation.

    Every acquisition also gets its QC metrics (:class:`qsmprep.interfaces.qc.QCMetrics`,
    ``..._desc-qc_metrics.json``), with the registration check when it was registered.
    """
    user_masks = user_masks or {}
    r2_maps = r2_maps or {}
    has_chisep = _stage(stages, "chi_separation")[0] == "chisep" if "chi_separation" in stages else False
    workflow = pe.Workflow(name=name)
    anat_resources = _resolve_anat(anat, records, bids_dir)
    for rec in records:
        affine = nib.load(rec.magnitude[0] if rec.magnitude else rec.real[0]).affine
        label = rec.prefix.replace("-", "").replace("_", "")
        sources = [_bids_uri(p, bids_dir) for p in rec.source_files]
        user_mask, user_mask_source = user_masks.get(rec.prefix, (None, None))
        gre_wf = init_gre_wf(
            echo_times=rec.echo_times, b0=rec.b0, stages=stages, echo_strategy=echo_strategy,
            pad_voxels=pad_voxels, shape=rec.shape, omp_nthreads=omp_nthreads, user_mask=user_mask,
            user_mask_source=user_mask_source, r2_map=r2_maps.get(rec.prefix), sampling=rec.sampling,
            name=f"gre_{label}_wf",
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
        if any(volume for _, volume in rec.echo_volumes):  # 4D multi-echo input: which volume is which echo
            common_meta["EchoSources"] = [
                {"Echo": i + 1, "EchoTime": te, "Source": _bids_uri(path, bids_dir), "Volume": volume}
                for i, (te, (path, volume)) in enumerate(zip(rec.echo_times, rec.echo_volumes))]
        ds_wf = init_gre_derivatives_wf(
            output_dir=output_dir, entities=rec.entities,
            sources=sources, common_meta=common_meta,
            has_r2star=rec.n_echoes > 1, has_chisep=has_chisep, name=f"ds_{label}_wf",
        )
        fields = [o[0] for o in OUTPUTS + (CHISEP_OUTPUTS if has_chisep else ())
                  if rec.n_echoes > 1 or o[0] not in ("r2star", "t2star")]
        fields += list(INFO_FIELDS) + (list(CHISEP_INFO_FIELDS) if has_chisep else [])
        workflow.connect([
            (gre_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields
                             if rec.n_echoes > 1 or f != "r2star_info"]),
        ])
        if dicom_export:
            from qsmprep.interfaces.dicom import DicomExport

            dicom = pe.Node(DicomExport(out_dir=str(output_dir), entities=dict(rec.entities),
                                        identity=dict(rec.identity), reference=_stage(stages, "reference")[0]),
                            name=f"dicom_{label}")
            maps = ["chi", "mask_filled"] + (["r2star", "t2star"] if rec.n_echoes > 1 else [])
            workflow.connect([(gre_wf, dicom, [(f"outputnode.{m}", "mask" if m == "mask_filled" else m)
                                               for m in maps])])
        qc_node = _connect_qc(workflow, gre_wf, rec, output_dir=output_dir,
                              unwrapping=common_meta["QSMPipeline"]["unwrapping"]["method"],
                              sources=sources, label=label)
        if anat is not None and anat.coreg:
            if rec.t1w:
                coreg = init_anat_wiring(workflow, gre_wf, rec, anat=anat, resources=anat_resources, output_dir=output_dir,
                                 sources=sources, t1w_uri=_bids_uri(rec.t1w, bids_dir),
                                 common_meta=common_meta, omp_nthreads=omp_nthreads, label=label,
                                 has_chisep=has_chisep)
                workflow.connect([(coreg, qc_node, [("outputnode.t1w_preproc", "t1w"),
                                                    ("outputnode.gre_in_t1w", "gre_in_t1w"),
                                                    ("outputnode.t1w_mask", "t1w_mask")])])
            else:
                LOGGER.info("%s: no T1w for this participant/session; no registration or ROI tables", rec.prefix)
    return workflow


def _connect_qc(workflow, gre_wf, rec, *, output_dir, sources, label, unwrapping=""):
    """QC metrics of one acquisition and their ``desc-qc_metrics.json`` derivative; returns the node."""
    from qsmprep.interfaces.derivatives import DerivativesSink
    from qsmprep.interfaces.qc import QCMetrics

    n_vox = int(rec.shape[0]) * int(rec.shape[1]) * int(rec.shape[2]) if rec.shape else 1
    qc_node = pe.Node(QCMetrics(label=rec.prefix, echo_times=list(rec.echo_times), b0=float(rec.b0),
                                unwrapping=unwrapping),
                      name=f"qc_{label}", mem_gb=max(0.25, round(4 * n_vox * (3 * rec.n_echoes + 8) / 1024**3, 2)))
    sink = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(rec.entities), suffix="metrics",
                                   desc="qc", extension=".json", sources=list(sources)),
                   name=f"ds_qc_{label}", run_without_submitting=True)
    fields = [("phase_info", "phase_info"), ("mask_info", "mask_info"), ("mask", "mask"),
              ("mask_filled", "mask_filled"), ("local_mask", "local_mask"), ("magnitude4d", "magnitude"),
              ("unwrapped", "unwrapped"), ("total_field", "field"), ("field_offset", "offset"), ("chi", "chi"),
              ("chi_info", "chi_info")]
    workflow.connect([
        (gre_wf, qc_node, [(f"outputnode.{a}", b) for a, b in fields]),
        (qc_node, sink, [("out_report", "in_file")]),
    ])
    return qc_node


def _resolve_anat(anat, records, bids_dir=None):
    """Template and atlas files (resolved now, so a missing template stops the run before it
    starts, with the prefetch command), each session's segmentation and lesion mask."""
    out = {"template_files": None, "atlases": [], "segmentations": {}, "lesions": {}}
    if anat is None or not anat.coreg or not any(r.t1w for r in records):
        return out
    from qsmprep.templates import get_atlas, get_template

    if anat.template:
        out["template_files"] = get_template(anat.template, atlases=tuple(anat.atlases))
        out["atlases"] = [(spec, get_atlas(anat.template, spec)) for spec in anat.atlases]
    if anat.segmentation_dir:
        from qsmprep.workflows.roi import find_segmentation

        for rec in records:
            if rec.t1w:
                out["segmentations"][(rec.subject, rec.session)] = find_segmentation(
                    anat.segmentation_dir, rec.subject, rec.session)
    if getattr(anat, "lesion_dir", None):
        from qsmprep.workflows.lesions import check_lesion_input, find_lesion_masks, find_space_image

        for rec in records:
            if not rec.t1w:
                continue
            found = find_lesion_masks(anat.lesion_dir, rec.subject, rec.session)
            if found is None:
                LOGGER.info("%s: no lesion mask in --lesion-dir %s; no lesion table", rec.prefix, anat.lesion_dir)
                continue
            if found["space"] != "T1w":
                found["space_image"] = find_space_image(bids_dir, rec, found["space"])
            check_lesion_input(found, rec, getattr(anat, "lesion_options", {}))
            out["lesions"][(rec.subject, rec.session)] = found
    return out


def init_anat_wiring(workflow, gre_wf, rec, *, anat, resources, output_dir, sources, common_meta, omp_nthreads,
                     label, has_chisep=False, t1w_uri=None):
    """Connect GRE → T1w coregistration, the optional template registration and the ROI tables.

    Returns the coregistration workflow (its outputs feed the QC registration check).

    * :func:`qsmprep.workflows.coreg.init_coreg_wf`: the echo-averaged magnitude to the
      T1w (rigid + affine, mutual information); χ, R2* and the mask in ``space-T1w``;
    * :func:`qsmprep.workflows.anat.init_template_wf` when ``anat.template`` is set: T1w →
      template SyN, ``space-<template>_Chimap`` (done per acquisition);
    * :func:`qsmprep.workflows.roi.init_roi_wf` per atlas (template space → T1w → GRE,
      bilateral labels split at the template midline) and for the subject segmentation (T1w
      → GRE); statistics inside the mask where χ is valid (``local_mask``).
    """
    from qsmprep.workflows.anat import init_template_wf
    from qsmprep.workflows.coreg import init_coreg_wf
    from qsmprep.workflows.roi import _entity, atlas_label, init_roi_wf

    has_r2 = rec.n_echoes > 1
    derivs = {"output_dir": output_dir, "entities": rec.entities, "sources": sources, "common_meta": common_meta}
    coreg = init_coreg_wf(has_r2star=has_r2, sloppy=anat.sloppy, omp_nthreads=omp_nthreads,
                          t1w_uri=t1w_uri, name=f"coreg_{label}_wf", **derivs)
    coreg.inputs.inputnode.t1w = rec.t1w
    maps = [("average", "average"), ("mask_filled", "mask"), ("chi", "chi"), ("chi_info", "chi_info")] + ([("r2star", "r2star")] if has_r2 else [])
    workflow.connect([(gre_wf, coreg, [(f"outputnode.{a}", f"inputnode.{b}") for a, b in maps])])

    tpl_wf = None
    if anat.template:
        tpl_wf = init_template_wf(template=anat.template, template_files=resources["template_files"],
                                  sloppy=anat.sloppy, omp_nthreads=omp_nthreads, name=f"template_{label}_wf", **derivs)
        workflow.connect([
            (coreg, tpl_wf, [("outputnode.t1w_brain", "inputnode.t1w_brain"),
                             ("outputnode.t1w_mask", "inputnode.t1w_mask"),
                             ("outputnode.xfm_gre2t1w", "inputnode.xfm_gre2t1w")]),
            (gre_wf, tpl_wf, [("outputnode.chi", "inputnode.chi"), ("outputnode.chi_info", "inputnode.chi_info")]),
        ])

    roi_sources = [(spec, "atlas", files["dseg"], files["lut"]) for spec, files in resources["atlases"]]
    seg = resources["segmentations"].get((rec.subject, rec.session))
    if seg:
        roi_sources.append((_entity(seg[0].split("/")[-1], "desc") or "segmentation", "segmentation", *seg))
    for spec, source, labels, lut in roi_sources:
        roi = init_roi_wf(atlas=spec, source=source, erode_voxels=anat.roi_erode, lateralize=source == "atlas",
                          has_r2star=has_r2, has_chisep=has_chisep, omp_nthreads=omp_nthreads,
                          name=f"roi_{atlas_label(spec)}_{label}_wf", **derivs)
        roi.inputs.inputnode.labels, roi.inputs.inputnode.lut = labels, lut
        fields = [("chi", "chi"), ("local_mask", "mask"), ("chi_info", "chi_info")]
        fields += [("r2star", "r2star")] if has_r2 else []
        fields += [("chi_para", "chi_para"), ("chi_dia", "chi_dia")] if has_chisep else []
        workflow.connect([
            (gre_wf, roi, [(f"outputnode.{a}", f"inputnode.{b}") for a, b in fields]),
            (coreg, roi, [("outputnode.xfm_t1w2gre", "inputnode.xfm_t1w2gre")]),
        ])
        if source == "atlas":
            workflow.connect([(tpl_wf, roi, [("outputnode.xfm_tpl2t1w", "inputnode.xfm_tpl2t1w")])])
    lesions = resources.get("lesions", {}).get((rec.subject, rec.session))
    if lesions:
        from qsmprep.workflows.lesions import init_lesion_wf

        les_wf = init_lesion_wf(space=lesions["space"], tissue_source="segmentation" if seg else "atropos",
                                has_r2star=has_r2, params=getattr(anat, "lesion_options", {}),
                                omp_nthreads=omp_nthreads, name=f"lesion_{label}_wf", **derivs)
        les_wf.inputs.inputnode.lesions = lesions["lesions"]
        if lesions["lut"]:
            les_wf.inputs.inputnode.lesion_lut = lesions["lut"]
        if lesions.get("space_image"):
            les_wf.inputs.inputnode.space_image = lesions["space_image"]
        if seg:
            les_wf.inputs.inputnode.segmentation, les_wf.inputs.inputnode.seg_lut = seg
        fields = [("chi", "chi"), ("local_mask", "mask"), ("average", "average"), ("chi_info", "chi_info"),
                  ("local_info", "local_info"), ("unwrap_info", "unwrap_info")]
        fields += [("r2star", "r2star")] if has_r2 else []
        workflow.connect([
            (gre_wf, les_wf, [(f"outputnode.{a}", f"inputnode.{b}") for a, b in fields]),
            (coreg, les_wf, [("outputnode.xfm_t1w2gre", "inputnode.xfm_t1w2gre"),
                             ("outputnode.t1w_brain", "inputnode.t1w_brain"),
                             ("outputnode.t1w_mask", "inputnode.t1w_mask")]),
        ])
    return coreg
