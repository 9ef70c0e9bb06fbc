"""Lesion statistics: lesion masks and tissue classes brought into GRE space, the lesion table.

Lesion input (``--lesion-dir``, :func:`find_lesion_masks`): a BIDS derivatives folder with a
``sub-<L>[_ses-<S>]_..._label-lesion_mask.nii[.gz]`` or ``..._desc-lesion_dseg.nii[.gz]``
(+ ``dseg.tsv``) per participant (session), in T1w space (no ``space-`` entity, or
``space-T1w``) or in the space of the session's FLAIR / T2w (``space-FLAIR``, ``space-T2w``:
that image of the raw dataset is registered rigidly to the GRE echo average, mutual
information).  Masks travel by nearest neighbour: T1w-space ones through the GRE→T1w
coregistration's inverse.

Tissue context: the subject segmentation of ``--segmentation-dir`` (classes from its label
names, :func:`qsmprep.analysis.lesions.tissue_from_labels`) or, without one, Atropos on the
T1w (:func:`qsmprep.anat.segmentation.atropos_tissue`).
"""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsmprep.errors import InputError
from qsmprep.interfaces.derivatives import DerivativesSink
from qsmprep.interfaces.lesions import LesionMeta, LesionStats, TissueClasses
from qsmprep.interfaces.registration import ApplyTransforms, RegisterToGRE

LESION_INPUTS = ["chi", "r2star", "mask", "average", "lesions", "lesion_lut", "space_image", "segmentation",
                 "seg_lut", "t1w_brain", "t1w_mask", "xfm_t1w2gre", "chi_info", "local_info", "unwrap_info"]
LESION_OUTPUTS = ["lesions_gre", "reference_gre", "lesionstats", "lesionstats_json", "info"]
#: ``space-`` entities of lesion masks that are registered from a raw image of the session
IMAGE_SPACES = ("FLAIR", "T2w")


def find_lesion_masks(lesion_dir, subject, session=None):
    """A participant's (session's) lesion mask in ``lesion_dir``.

    Returns ``{"lesions": path, "lut": dseg.tsv or None, "space": "T1w" | "FLAIR" | "T2w"}``;
    ``None`` when the participant has none (logged by the caller).  Several candidates for one
    session, or a space other than T1w/FLAIR/T2w, are errors that name the files.
    """
    lesion_dir = Path(lesion_dir)
    found = []
    for pattern in (f"sub-{subject}_*label-lesion_mask.nii*", f"sub-{subject}_*desc-lesion_dseg.nii*"):
        for path in sorted(lesion_dir.rglob(pattern)):
            if session is not None and f"_ses-{session}_" not in path.name:
                continue
            if session is None and "_ses-" in path.name:
                continue
            found.append(path)
    if not found:
        return None
    if len(found) > 1:
        raise InputError(f"several lesion masks for sub-{subject}{'' if session is None else f'_ses-{session}'}: "
                         f"{', '.join(p.name for p in found)}; keep one per session", path=lesion_dir)
    path = found[0]
    m = re.search(r"_space-([A-Za-z0-9]+)", path.name)
    space = m.group(1) if m else "T1w"
    if space not in ("T1w", *IMAGE_SPACES):
        raise InputError(f"lesion mask in space-{space}: give it in T1w space (no space entity) or in the space of "
                         f"the session's {' or '.join(IMAGE_SPACES)} (space-FLAIR, space-T2w)", path=path)
    lut = None
    if "_dseg" in path.name:
        stem = path.name.split(".nii")[0]
        folders = []  # from the file's folder up to --lesion-dir, not above it
        for d in path.parents:
            folders.append(d)
            if d == lesion_dir:
                break
        cands = [path.with_name(stem + ".tsv"), *[d / "desc-lesion_dseg.tsv" for d in folders],
                 *[d / "dseg.tsv" for d in folders]]
        lut = next((str(c) for c in cands if c.is_file()), None)
    return {"lesions": str(path), "lut": lut, "space": space}


def check_lesion_input(found, rec, options=None):
    """Refuse, before processing, a lesion mask that is not on the grid of the image of its space
    (the session's T1w, or its FLAIR/T2w) and options that cannot work on this acquisition's
    voxels; both would otherwise give a silently misplaced or failed lesion table."""
    import nibabel as nib
    import numpy as np

    from qsmprep.analysis.lesions import check_options

    reference = rec.t1w if found["space"] == "T1w" else found["space_image"]
    img, ref = nib.load(found["lesions"]), nib.load(reference)
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise InputError(f"{rec.prefix}: the lesion mask (shape {img.shape[:3]}) is not on the grid of "
                         f"{Path(reference).name} (shape {ref.shape[:3]}), the image of its space ({found['space']}); "
                         "give it in that image's grid, or name its space with space-FLAIR / space-T2w",
                         path=found["lesions"])
    try:
        check_options(options or {}, voxel_size=rec.voxel_size or None)
    except ValueError as exc:
        raise InputError(f"{rec.prefix} (voxels {tuple(rec.voxel_size)} mm): {exc}; set --lesion-options",
                         path=found["lesions"]) from None


def find_space_image(bids_dir, rec, space):
    """The raw FLAIR / T2w of ``rec``'s session that a ``space-<space>`` lesion mask was drawn on."""
    folder = Path(bids_dir) / f"sub-{rec.subject}"
    if rec.session is not None:
        folder = folder / f"ses-{rec.session}"
    stem = f"sub-{rec.subject}" + ("" if rec.session is None else f"_ses-{rec.session}")
    found = sorted((folder / "anat").glob(f"{stem}*_{space}.nii*"))
    if len(found) != 1:
        raise InputError(f"{rec.prefix}: the lesion mask is in space-{space}, but the session has "
                         f"{len(found) or 'no'} {space} image(s) ({', '.join(p.name for p in found) or stem + '_' + space + '.nii.gz'})",
                         path=folder / "anat")
    return str(found[0])


def init_lesion_wf(*, space="T1w", tissue_source="segmentation", has_r2star=True, params=None, omp_nthreads=1,
                   output_dir=None, entities=None, sources=None, common_meta=None, name="lesion_wf"):
    """Bring lesion masks and tissue classes into GRE space and write the lesion table.

    Parameters
    ----------
    space : {"T1w", "FLAIR", "T2w"}
        Space of the lesion masks (see module notes).
    tissue_source : {"segmentation", "atropos"}
        Tissue classes from the subject segmentation (inputs ``segmentation``, ``seg_lut``) or
        from Atropos on the T1w (``t1w_brain``, ``t1w_mask``).
    has_r2star : bool
        Also tabulate R2*.
    params : dict, optional
        Options of :func:`qsmprep.analysis.lesions.label_lesions` / ``lesion_statistics``.
    output_dir, entities, sources, common_meta : optional
        Write ``desc-lesions_dseg.nii.gz`` (numbered lesions, GRE space),
        ``desc-lesionreference_dseg.nii.gz`` (each lesion's reference voxels, its id),
        ``desc-lesions_lesionstats.tsv`` and its JSON sidecar.
    """
    if space not in ("T1w", *IMAGE_SPACES):
        raise ValueError(f"space must be T1w, FLAIR or T2w, got {space!r}")
    if tissue_source not in ("segmentation", "atropos"):
        raise ValueError(f"tissue_source must be 'segmentation' or 'atropos', got {tissue_source!r}")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=LESION_INPUTS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=LESION_OUTPUTS), name="outputnode")
    tissue = pe.Node(TissueClasses(num_threads=omp_nthreads), name="tissue", mem_gb=1.0)
    tissue_to_gre = pe.Node(ApplyTransforms(interpolation="nearestNeighbor", dtype="int16", out_name="tissue_gre.nii.gz",
                                            num_threads=omp_nthreads), name="tissue_to_gre", mem_gb=1.0)
    lesions_to_gre = pe.Node(ApplyTransforms(interpolation="nearestNeighbor", dtype="int16",
                                             out_name="lesions_gre.nii.gz", num_threads=omp_nthreads),
                             name="lesions_to_gre", mem_gb=1.0)
    stats = pe.Node(LesionStats(params=dict(params or {})), name="lesionstats", mem_gb=2.0)
    if tissue_source == "segmentation":
        workflow.connect([(inputnode, tissue, [("segmentation", "segmentation"), ("seg_lut", "lut")])])
    else:
        workflow.connect([(inputnode, tissue, [("t1w_brain", "t1w_brain"), ("t1w_mask", "t1w_mask")])])
    meta = pe.Node(LesionMeta(), name="lesion_meta", run_without_submitting=True)
    meta.inputs.space = space
    if space == "T1w":
        workflow.connect([(inputnode, lesions_to_gre, [("xfm_t1w2gre", "transforms")])])
    else:
        reg = pe.Node(RegisterToGRE(num_threads=omp_nthreads), name=f"{space.lower()}_to_gre", mem_gb=1.5)
        workflow.connect([
            (inputnode, reg, [("space_image", "in_file"), ("average", "reference")]),
            (reg, lesions_to_gre, [("transforms", "transforms")]),
            (reg, meta, [("info", "registration")]),
        ])
    workflow.connect([
        (inputnode, tissue_to_gre, [("chi", "reference"), ("xfm_t1w2gre", "transforms")]),
        (tissue, tissue_to_gre, [("tissue", "in_file")]),
        (inputnode, lesions_to_gre, [("lesions", "in_file"), ("chi", "reference")]),
        (lesions_to_gre, stats, [("out_file", "lesions")]),
        (tissue_to_gre, stats, [("out_file", "tissue")]),
        (tissue, meta, [("info", "tissue")]),
        (inputnode, meta, [("chi_info", "chi_info"), ("local_info", "local_info"), ("unwrap_info", "unwrap_info")]),
        (meta, stats, [("meta", "meta")]),
        (inputnode, stats, [("chi", "chi"), ("mask", "mask"), ("lesion_lut", "lesion_lut"),
                            ("xfm_t1w2gre", "to_t1w"), ("average", "magnitude")]),
        (stats, outputnode, [("lesions_gre", "lesions_gre"), ("reference_gre", "reference_gre"),
                             ("out_tsv", "lesionstats"),
                             ("out_json", "lesionstats_json"), ("info", "info")]),
    ])
    if has_r2star:
        workflow.connect([(inputnode, stats, [("r2star", "r2star")])])
    if output_dir is not None:
        if entities is None:
            raise ValueError("entities are needed to name the derivatives")
        srcs = list(sources or [])
        sinks = [
            ("ds_lesions", "dseg", ".nii.gz", "lesions_gre", dict(common_meta or {}, Description="numbered lesions "
             "(lesion_id of desc-lesions_lesionstats.tsv) on the GRE grid"), "lesions"),
            ("ds_lesionreference", "dseg", ".nii.gz", "reference_gre", dict(
                common_meta or {}, Description="each lesion's reference region (normal-appearing tissue of its "
                "class, vessels and other lesions removed), labelled with its lesion_id; where references overlap, "
                "the lower id"), "lesionreference"),
            ("ds_lesionstats", "lesionstats", ".tsv", "lesionstats", None, "lesions"),
            ("ds_lesionstats_json", "lesionstats", ".json", "lesionstats_json", None, "lesions"),
        ]
        for node_name, suffix, ext, field, node_meta, desc in sinks:
            kwargs = {"meta": node_meta} if node_meta else {}
            sink = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(entities), suffix=suffix,
                                           desc=desc, extension=ext, sources=srcs, **kwargs),
                           name=node_name, run_without_submitting=True)
            workflow.connect([(outputnode, sink, [(field, "in_file")])])
    return workflow
