"""ROI statistics: labels (atlas, subject segmentation or given) brought into GRE space, ROI tables.

Label sources and the transforms that bring them onto the GRE grid (nearest neighbour):

* ``atlas`` — a TemplateFlow atlas (:func:`qsmprep.templates.get_atlas`) in template space:
  ``[from-<Template>_to-T1w, from-T1w_to-GRE]`` (inverse template and coregistration transforms);
* ``segmentation`` — a subject segmentation in T1w space (``--segmentation-dir``, found by
  :func:`find_segmentation`): ``[from-T1w_to-GRE]``;
* ``labels`` — a label map already aligned with the GRE data in world coordinates (e.g. the
  demo's ground-truth ``dseg``): identity, resampled through the image affines only.
"""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces.utility import Function, IdentityInterface
from nipype.pipeline import engine as pe

from qsmprep.errors import InputError
from qsmprep.interfaces.derivatives import DerivativesSink
from qsmprep.interfaces.registration import ApplyTransforms
from qsmprep.interfaces.roi import LateralizeAtlas, ROIStats

SOURCES = ("atlas", "segmentation", "labels")
ROI_INPUTS = ["chi", "r2star", "mask", "labels", "lut", "xfm_t1w2gre", "xfm_tpl2t1w", "chi_info", "chi_para",
              "chi_dia"]
ROI_OUTPUTS = ["labels_gre", "roistats", "roistats_json", "info"]
#: FreeSurfer aseg + Desikan-Killiany aparc look-up table shipped with qsmprep
FREESURFER_LUT = str(Path(__file__).resolve().parent.parent / "data" / "freesurfer_dseg.tsv")


def atlas_label(spec):
    """BIDS-safe ``desc`` label of a label source: ``"HOSPA:th25"`` → ``"HOSPAth25"``."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(spec))
    if not label:
        raise ValueError(f"cannot make a desc label from {spec!r}")
    return label


def find_segmentation(seg_dir, subject, session=None, *, desc=None):
    """Find a subject's T1w-space segmentation and its look-up table in a derivatives folder.

    Looks for ``sub-<L>[_ses-<S>]_..._dseg.nii[.gz]`` without a ``space-`` entity (or with
    ``space-T1w``) under ``seg_dir`` (sMRIPrep/fMRIPrep ``desc-aseg``/``desc-aparcaseg``,
    FastSurfer or converted FreeSurfer outputs), preferring ``desc``.  The look-up table is
    the matching ``*_dseg.tsv`` next to it, or a dataset-level ``desc-<d>_dseg.tsv`` /
    ``dseg.tsv``; FreeSurfer aseg/aparc labels fall back to the bundled FreeSurfer table.

    Returns
    -------
    (str, str)
        Paths of the segmentation and of its look-up table.
    """
    seg_dir = Path(seg_dir)
    if not seg_dir.is_dir():
        raise InputError("segmentation folder does not exist", path=seg_dir)
    pattern = f"sub-{subject}_*dseg.nii*"
    found = []
    for path in sorted(seg_dir.rglob(pattern)):
        name = path.name
        if session is not None and "_ses-" in name and f"_ses-{session}_" not in name:
            continue
        if "_space-" in name and "_space-T1w_" not in name:
            continue
        found.append(path)
    if desc is not None:
        found = [p for p in found if f"_desc-{desc}_" in p.name]
    if not found:
        raise InputError(
            f"no T1w-space segmentation sub-{subject}{'' if session is None else f'_ses-{session}'}_*dseg.nii.gz"
            + (f" with desc-{desc}" if desc else "") + " found", path=seg_dir,
        )
    # prefer aparc+aseg (cortical parcels and nuclei), then aseg, then anything
    rank = {"aparcaseg": 0, "aparcaseg+": 0, "aseg": 1}
    found.sort(key=lambda p: (rank.get(_entity(p.name, "desc") or "", 2), len(p.name), p.name))
    seg = found[0]
    stem = seg.name.split(".nii")[0]
    candidates = [seg.with_name(stem + ".tsv")]
    d = _entity(seg.name, "desc")
    for folder in [seg.parent, *seg.parents]:
        if d:
            candidates.append(folder / f"desc-{d}_dseg.tsv")
        candidates.append(folder / "dseg.tsv")
        if folder == seg_dir:
            break
    for cand in candidates:
        if cand.is_file():
            return str(seg), str(cand)
    return str(seg), FREESURFER_LUT


def _entity(name, key):
    m = re.search(rf"_{key}-([A-Za-z0-9+]+)", name)
    return m.group(1) if m else None


def _transform_list(source, xfm_t1w2gre=None, xfm_tpl2t1w=None):
    """antsApplyTransforms list bringing labels of ``source`` onto the GRE grid."""
    if source == "atlas":
        return [xfm_tpl2t1w, xfm_t1w2gre]
    if source == "segmentation":
        return [xfm_t1w2gre]
    return []


def _roi_meta(chi_info=None, transforms=None, atlas="", source=""):
    """Sidecar fields: the label source, the transforms and χ's reference region."""
    from pathlib import Path as _P

    info = {"LabelSource": source, "Atlas": atlas,
            "Transforms": [_P(t).name for t in (transforms or []) if t],
            "LabelInterpolation": "nearest neighbour"}
    if chi_info:
        for key in ("ReferenceRegion", "ReferenceOffset"):
            if key in chi_info:
                info[key] = chi_info[key]
    return info


def init_roi_wf(*, atlas, source="atlas", erode_voxels=0, lateralize=False, has_r2star=True, has_chisep=False,
                omp_nthreads=1, output_dir=None, entities=None, sources=None, common_meta=None, name=None):
    """Bring a label image into GRE space and write its ROI table.

    Parameters
    ----------
    atlas : str
        Name of the label source (``HOSPA:th25``, ``aseg``, ``truth``, ...): the ``desc`` of
        the outputs is its alphanumeric part.
    source : {"atlas", "segmentation", "labels"}
        Where the labels live (template space, T1w space, GRE-aligned), see module notes.
    erode_voxels : int
        Erode labels by this many voxels before the statistics (partial-voxel guard).
    lateralize : bool
        Split bilateral labels into left/right at template x = 0 (atlas source only).
    has_r2star : bool
        Also tabulate R2*.
    has_chisep : bool
        Also tabulate χ-separation's χ⁺ and χ⁻ (inputs ``chi_para``, ``chi_dia``).
    output_dir, entities, sources, common_meta : optional
        Write ``desc-<atlas>_dseg.nii.gz`` (labels in GRE space), ``desc-<atlas>_roistats.tsv``
        and its JSON sidecar as derivatives.

    Inputs
    ------
    chi, r2star, mask : GRE-space maps (``gre_wf.outputnode``; mask = ``mask``, the QSM mask);
    labels, lut : label image and its look-up table; xfm_t1w2gre : coregistration inverse
    (``coreg_wf.outputnode.xfm_t1w2gre``); xfm_tpl2t1w : template → T1w transform
    (``anat_wf.outputnode.xfm_tpl2t1w``); chi_info : χ sidecar (``ReferenceRegion``).

    Outputs
    -------
    labels_gre, roistats (TSV), roistats_json, info
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if int(erode_voxels) != erode_voxels or erode_voxels < 0:
        raise ValueError(f"erode_voxels must be a non-negative integer, got {erode_voxels}")
    if lateralize and source != "atlas":
        raise ValueError("lateralize applies to template-space atlases only (source='atlas')")
    desc = atlas_label(atlas)
    workflow = pe.Workflow(name=name or f"roi_{desc}_wf")
    inputnode = pe.Node(IdentityInterface(fields=ROI_INPUTS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=ROI_OUTPUTS), name="outputnode")

    xfms = pe.Node(Function(input_names=["source", "xfm_t1w2gre", "xfm_tpl2t1w"], output_names=["transforms"],
                            function=_transform_list), name="transform_list", run_without_submitting=True)
    xfms.inputs.source = source
    to_gre = pe.Node(ApplyTransforms(interpolation="nearestNeighbor", dtype="int16", out_name="labels_gre.nii.gz",
                                     num_threads=omp_nthreads), name="labels_to_gre", mem_gb=1.0)
    stats = pe.Node(ROIStats(erode_voxels=int(erode_voxels), atlas=str(atlas)), name="roistats", mem_gb=1.0)
    meta = pe.Node(Function(input_names=["chi_info", "transforms", "atlas", "source"], output_names=["info"],
                            function=_roi_meta), name="roi_meta", run_without_submitting=True)
    meta.inputs.atlas, meta.inputs.source = str(atlas), source
    if source == "atlas":
        workflow.connect([(inputnode, xfms, [("xfm_t1w2gre", "xfm_t1w2gre"), ("xfm_tpl2t1w", "xfm_tpl2t1w")])])
    elif source == "segmentation":
        workflow.connect([(inputnode, xfms, [("xfm_t1w2gre", "xfm_t1w2gre")])])
    if lateralize:
        lat = pe.Node(LateralizeAtlas(), name="lateralize", mem_gb=1.0)
        workflow.connect([
            (inputnode, lat, [("labels", "labels"), ("lut", "lut")]),
            (lat, to_gre, [("labels", "in_file")]),
            (lat, stats, [("lut", "lut")]),
        ])
    else:
        workflow.connect([(inputnode, to_gre, [("labels", "in_file")]), (inputnode, stats, [("lut", "lut")])])
    workflow.connect([
        (inputnode, to_gre, [("chi", "reference")]),
        (xfms, to_gre, [("transforms", "transforms")]),
        (xfms, meta, [("transforms", "transforms")]),
        (inputnode, meta, [("chi_info", "chi_info")]),
        (to_gre, stats, [("out_file", "labels")]),
        (inputnode, stats, [("chi", "chi"), ("mask", "mask")]),
        (meta, stats, [("info", "meta")]),
        (to_gre, outputnode, [("out_file", "labels_gre")]),
        (stats, outputnode, [("out_tsv", "roistats"), ("out_json", "roistats_json"), ("info", "info")]),
    ])
    if has_r2star:
        workflow.connect([(inputnode, stats, [("r2star", "r2star")])])
    if has_chisep:
        workflow.connect([(inputnode, stats, [("chi_para", "chi_para"), ("chi_dia", "chi_dia")])])

    if output_dir is not None:
        if entities is None:
            raise ValueError("entities are needed to name the derivatives")
        base = dict(common_meta or {})
        srcs = list(sources or [])
        ds_labels = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix="dseg",
                                            desc=desc, meta=dict(base, Atlas=str(atlas)), sources=srcs),
                            name="ds_labels", run_without_submitting=True)
        ds_table = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix="roistats",
                                           desc=desc, extension=".tsv", sources=srcs),
                           name="ds_roistats", run_without_submitting=True)
        ds_json = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix="roistats",
                                          desc=desc, extension=".json", sources=srcs),
                          name="ds_roistats_json", run_without_submitting=True)
        workflow.connect([
            (outputnode, ds_labels, [("labels_gre", "in_file"), ("info", "meta_extra")]),
            (outputnode, ds_table, [("roistats", "in_file")]),
            (outputnode, ds_json, [("roistats_json", "in_file")]),
        ])
    return workflow
