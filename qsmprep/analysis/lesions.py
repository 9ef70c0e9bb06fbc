"""Lesion statistics: relative susceptibility against adjacent normal-appearing tissue, rims.

The measurement is the one of the MS QSM studies that report lesion χ relative to
normal-appearing tissue of the same class (e.g. Wisnieff et al., *Magn Reson Med*
2015;74:564-570, for white-matter lesions with MEDI; the 7 T cortical-lesion protocol of this
project's issue 20: a "donut" of normal-appearing tissue with a small gap, within about 5 mm,
vessels removed, lesions of at least 2 mm):

* **Lesions** are the connected components (26-connectivity) of each label of a lesion mask
  or lesion ``dseg``, kept when their volume-equivalent sphere has a diameter of at least
  ``min_diameter_mm`` (the study's "lesions ≥ 2 mm").
* **Class**: the fraction of a lesion's voxels in cortex decides — above ``cortical_min``
  (0.75) *cortical*, from ``mixed_min`` (0.25) to ``cortical_min`` *mixed*, below
  ``mixed_min`` *wm* when at least half of the lesion lies in white matter, else *other*
  (e.g. deep grey nuclei).  Lesion voxels that the segmentation calls neither tissue (a
  segmentation that labels lesions themselves) take the class of the nearest classified
  voxel; the count is reported (``n_tissue_filled``).  A mixed lesion is measured as two
  portions, its WM and its cortical part, each against its own tissue.
* **Reference** of a lesion (portion) of class *c*: the voxels of tissue *c* whose centre is
  more than ``gap_mm`` and at most ``outer_mm`` from the nearest voxel of the lesion
  (Euclidean distance in mm); voxels within ``gap_mm`` of any other lesion, voxels outside
  the QSM mask and vessels are excluded.  Vessels (documented rule): reference voxels whose χ
  exceeds the median χ of the candidate reference by more than ``vessel_chi_ppm`` (veins are
  0.3-0.5 ppm above tissue at 3 T; 0.1 ppm keeps a vein at one third partial volume out and
  no tissue of the brain's normal range in).  Fewer than ``min_reference_voxels`` left: the
  lesion is reported with reason ``no-reference`` and no relative values.
* **Relative χ / R2***: lesion mean − reference mean.
* **Rim**: the lesion's outer shell (voxels within ``rim_mm`` of the lesion's edge, i.e. at
  most that far from the nearest non-lesion voxel) against its core (the rest).
  ``rim_minus_core`` = mean χ(shell) − mean χ(core).  ``rim_candidate`` is set when
  ``rim_minus_core ≥ rim_threshold_ppm`` *and* the shell's mean χ is above the reference's:
  a paramagnetic rim is brighter than both the lesion's core and the normal-appearing tissue
  around it (partial volume with brighter surroundings, e.g. a cortical lesion's rim next to
  cortex, raises the first and not the second).  Paramagnetic rims are read visually in the
  literature, without a consensus number; the default threshold, 0.01 ppm, is this
  project's choice (about the smallest contrast that the 1 mm demo's noise lets a 4 mm
  lesion's 1-voxel shell show, and under the 0.02-0.05 ppm of the demo's rim), recorded in
  the sidecar and a parameter.
* **MEDI's prior** (when χ came from MEDI or MEDI+0): MEDI's L1 term lets χ change freely
  only across magnitude edges (its edge mask), so a lesion whose boundary the magnitude does
  not show is smoothed into its surroundings and reads closer to them.  ``edge_coverage`` is
  the fraction of the lesion's boundary that the inversion's edge mask treats as an edge;
  below ``edge_coverage_min`` (0.8, this project's choice between the two phantom families'
  measured ranges, README) the row's ``chi_caution`` says ``magnitude-edge-prior``.

Pure numpy/scipy; each lesion is processed in its bounding box grown by ``outer_mm``, so the
cost grows with the lesion count, not the image size.
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy import ndimage

#: tissue codes of :func:`tissue_from_labels` (0 = outside / unclassified)
TISSUE_CODES = {"csf": 1, "cortex": 2, "wm": 3, "deep_gm": 4, "vessel": 5, "other": 6}
CLASSES = ("wm", "cortical", "mixed", "other")
#: tissue label-name rules (regular expressions on the lower-case name, first match wins);
#: FreeSurfer aseg/aparc, FastSurfer, sMRIPrep dseg (GM/WM/CSF) and plain names
_TISSUE_RULES = (
    ("vessel", r"vessel|vein|sinus|artery|^blood$"),
    ("wm", r"white|^wm$|(^|[-_ ])wm([-_ ]|$)|wm-hypointens|corpus.?callosum|^cc[_ ]|optic.?chiasm|brain.?stem"),
    ("csf", r"csf|ventric|choroid|^3rd|^4th|^5th"),
    ("cortex", r"cortex|cortical|^ctx|grey.?matter|gray.?matter|^gm$|(^|[-_ ])gm([-_ ]|$)"),
    ("deep_gm", r"thalam|caudate|putamen|pallid|accumbens|hippocamp|amygdal|ventraldc|ventral.?dc|nigra|"
                r"red.?nucleus|subthalam|claustrum|dentate|basal.?gangl|nucleus"),
)


def tissue_from_labels(labels, lut):
    """Tissue classes (int8, :data:`TISSUE_CODES`) of a segmentation, from its label names.

    Parameters
    ----------
    labels : ndarray of int
        Segmentation.
    lut : dict
        ``{label: (name, hemisphere)}`` (:func:`qsmprep.analysis.roi.read_lut`).

    Labels whose names match no rule (lesions, "WM-hypointensities" aside, "unknown") are 0:
    unclassified, filled per lesion by :func:`lesion_statistics`.  Returns ``(tissue, rules)``
    with ``rules = {label name: class}`` for the sidecar.
    """
    lut_codes = np.zeros(int(labels.max(initial=0)) + 1, np.int8)
    rules = {}
    for lab, (name, _hemi) in sorted(lut.items()):
        low = str(name).lower().strip()
        cls = next((c for c, pat in _TISSUE_RULES if re.search(pat, low)), None)
        if cls == "cortex" and re.search(r"non-?wm|hypointens", low):
            cls = None
        rules[str(name)] = cls or "unclassified"
        if cls and 0 < lab < lut_codes.size:
            lut_codes[lab] = TISSUE_CODES[cls]
    lab = np.clip(np.asarray(labels, np.int64), 0, lut_codes.size - 1)
    return lut_codes[lab], rules


def label_lesions(lesion_map, voxel_size, *, min_diameter_mm=2.0):
    """Connected lesions (26-connectivity) of each nonzero label of ``lesion_map``.

    Returns ``(lesions, source_labels, n_small)``: an int32 image numbering the kept lesions
    1..N (in scan order), the input label of each lesion (list, index i for lesion i + 1) and
    the number of components dropped for a volume-equivalent diameter below ``min_diameter_mm``.
    """
    lesion_map = np.rint(np.asarray(lesion_map)).astype(np.int64)
    voxel_volume = float(np.prod(voxel_size))
    min_voxels = (math.pi / 6.0) * float(min_diameter_mm) ** 3 / voxel_volume
    out = np.zeros(lesion_map.shape, np.int32)
    sources, n_small, count = [], 0, 0
    structure = np.ones((3, 3, 3), bool)
    for value in np.unique(lesion_map[lesion_map > 0]):
        comps, n = ndimage.label(lesion_map == value, structure=structure)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        for c in range(1, n + 1):
            if sizes[c] < min_voxels:
                n_small += 1
                continue
            count += 1
            out[comps == c] = count
            sources.append(int(value))
    return out, sources, n_small


def classify(cortex_fraction, wm_fraction, *, cortical_min=0.75, mixed_min=0.25):
    """Lesion class from its fractions in cortex and in white matter (see module notes)."""
    if not 0.0 <= mixed_min <= cortical_min <= 1.0:
        raise ValueError(f"need 0 <= mixed_min <= cortical_min <= 1, got {mixed_min}, {cortical_min}")
    if cortex_fraction > cortical_min:
        return "cortical"
    if cortex_fraction >= mixed_min:
        return "mixed"
    return "wm" if wm_fraction >= 0.5 else "other"


def _stats(values):
    if values.size == 0:
        return math.nan, math.nan, math.nan
    v = values.astype(np.float64)
    return float(v.mean()), float(np.median(v)), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _fill_unclassified(tissue, lesion, brain):
    """Tissue in the box with unclassified brain voxels given their nearest classified class."""
    unknown = (tissue == 0) & brain
    if not unknown.any() or not (tissue > 0).any():
        return tissue, int((unknown & lesion).sum())
    idx = ndimage.distance_transform_edt(tissue == 0, return_distances=False, return_indices=True)
    filled = tissue.copy()
    filled[unknown] = tissue[tuple(i[unknown] for i in idx)]
    return filled, int((unknown & lesion).sum())


def lesion_statistics(chi, lesions, tissue, voxel_size, affine, *, r2star=None, mask=None, to_t1w=None,
                      source_labels=None, gap_mm=None, outer_mm=5.0, min_reference_voxels=10,
                      cortical_min=0.75, mixed_min=0.25, vessel_chi_ppm=0.1, rim_mm=None,
                      rim_threshold_ppm=0.01, edge_weights=None, edge_coverage_min=0.8, reference_out=None):
    """Per-lesion (per-portion) χ and R2* against normal-appearing tissue (see module notes).

    Parameters
    ----------
    chi : ndarray (x, y, z)
        χ (ppm).
    lesions : ndarray of int
        Lesions numbered 1..N (:func:`label_lesions`), in the grid of ``chi``.
    tissue : ndarray of int
        Tissue classes (:data:`TISSUE_CODES`) in the same grid.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    affine : ndarray (4, 4)
        Voxel → world (mm) of the grid, for the centroids.
    r2star : ndarray, optional
        R2* (1/s): its columns are NaN without it.
    mask : ndarray of bool, optional
        Where χ is valid (the QSM mask): lesion and reference voxels outside are excluded.
    to_t1w : ndarray (4, 4), optional
        World map from this grid to T1w world coordinates, for ``centroid_t1w``.
    source_labels : list of int, optional
        The input label of each lesion (from :func:`label_lesions`).
    gap_mm : float, optional
        Gap between lesion and reference; default one voxel (the largest voxel edge).
    outer_mm : float
        Outer distance of the reference.
    min_reference_voxels : int
        Fewer reference voxels: reason ``no-reference``.
    cortical_min, mixed_min : float
        Cortical-fraction thresholds of :func:`classify`.
    vessel_chi_ppm : float
        Vessel rule: χ above the candidate reference's median by more than this.
    rim_mm : float, optional
        Depth of the rim shell; default one voxel (the largest voxel edge).
    rim_threshold_ppm : float
        ``rim_candidate`` threshold of ``rim_minus_core``.
    edge_weights : ndarray (3, x, y, z), optional
        MEDI's gradient weights of the inversion that made ``chi``
        (:func:`qsmprep.qsm.inversion.medi.edge_mask`: 0 at a magnitude edge).  Gives
        ``edge_coverage``, the fraction of the lesion's boundary (the forward differences
        that cross it) that MEDI treats as an edge, where its TV prior lets χ jump.
    edge_coverage_min : float
        Below this coverage ``chi_caution`` is ``magnitude-edge-prior``: MEDI smooths χ across
        a boundary the magnitude does not show, which shrinks the lesion's relative χ (the MNI
        phantom family's lesions, coverage 3-60 %, kept 57 % of their contrast; the demo's,
        98-100 %, all of it; README).
    reference_out : ndarray of int, optional
        Same shape as ``lesions``; filled in place with each lesion's id on the reference voxels
        it used (both portions of a mixed lesion), for the report's overlays and the
        ``desc-lesionreference_dseg`` output.  Where two lesions' references overlap the voxel
        keeps the lower id.

    Returns
    -------
    (list of dict, dict)
        One row per lesion, or per portion of a mixed lesion (columns in
        :data:`LESION_COLUMNS`), and the parameters used (for the sidecar).
    """
    vs = np.asarray(voxel_size, float)
    edge = float(vs.max())
    gap, rim = check_options({"gap_mm": gap_mm, "outer_mm": outer_mm, "rim_mm": rim_mm, "cortical_min": cortical_min,
                              "mixed_min": mixed_min}, voxel_size=vs)
    lesions = np.asarray(lesions)
    tissue = np.asarray(tissue)
    valid = np.ones(lesions.shape, bool) if mask is None else np.asarray(mask, bool)
    valid = valid & np.isfinite(chi)
    brain = valid | (lesions > 0)
    n = int(lesions.max(initial=0))
    margin = np.ceil((float(outer_mm) + edge) / vs).astype(int)
    objects = ndimage.find_objects(lesions.astype(np.int32), max_label=n)
    rows = []
    for lid in range(1, n + 1):
        sl = objects[lid - 1]
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - m), min(dim, s.stop + m)) for s, m, dim in zip(sl, margin, lesions.shape))
        lab = lesions[box]
        les = lab == lid
        t_box, n_filled = _fill_unclassified(tissue[box], les, brain[box])
        v_box, c_box = valid[box], chi[box]
        r_box = None if r2star is None else r2star[box]
        others = (lab > 0) & ~les
        near_other = ndimage.distance_transform_edt(~others, sampling=vs) <= gap if others.any() else others
        n_les = int(les.sum())
        cortex_frac = float((t_box[les] == TISSUE_CODES["cortex"]).mean())
        wm_frac = float((t_box[les] == TISSUE_CODES["wm"]).mean())
        cls = classify(cortex_frac, wm_frac, cortical_min=cortical_min, mixed_min=mixed_min)
        portions = [("whole", les)]
        if cls == "mixed":
            portions = [("wm", les & (t_box != TISSUE_CODES["cortex"])), ("cortical", les & (t_box == TISSUE_CODES["cortex"]))]
        idx = np.argwhere(les) + [s.start for s in box]
        centroid_vox = idx.mean(axis=0)
        gre_mm = (np.asarray(affine, float) @ np.r_[centroid_vox, 1.0])[:3]
        t1w_mm = (np.asarray(to_t1w, float) @ np.r_[gre_mm, 1.0])[:3] if to_t1w is not None else np.full(3, np.nan)
        coverage = math.nan
        if edge_weights is not None:
            n_cross = n_edge = 0
            for ax in range(3):
                cross = les ^ np.roll(les, -1, axis=ax)   # the box has a margin: no wrap-around
                n_cross += int(cross.sum())
                n_edge += int((cross & (np.asarray(edge_weights[ax])[box] == 0)).sum())
            coverage = n_edge / n_cross if n_cross else math.nan
        caution = "magnitude-edge-prior" if np.isfinite(coverage) and coverage < float(edge_coverage_min) else ""
        depth = ndimage.distance_transform_edt(les, sampling=vs)
        shell, core = les & (depth <= rim + 1e-6) & v_box, les & (depth > rim + 1e-6) & v_box
        for portion, part in portions:
            ref_class = {"whole": {"cortical": "cortex", "wm": "wm"}.get(cls), "wm": "wm", "cortical": "cortex"}[portion]
            if ref_class is None:  # 'other': the tissue most of the lesion lies in
                codes = t_box[les][t_box[les] > 0]
                ref_code = int(np.bincount(codes).argmax()) if codes.size else 0
                ref_class = next((k for k, v in TISSUE_CODES.items() if v == ref_code), "none")
            dist = ndimage.distance_transform_edt(~part, sampling=vs)
            cand = ((dist > gap + 1e-6) & (dist <= float(outer_mm) + 1e-6) & v_box & ~(lab > 0) & ~near_other
                    & (t_box == TISSUE_CODES.get(ref_class, -1)))
            n_cand = int(cand.sum())
            vessel = np.zeros_like(cand)
            if n_cand:
                med = float(np.median(c_box[cand]))
                vessel = cand & (c_box > med + float(vessel_chi_ppm))
            ref = cand & ~vessel
            if reference_out is not None:
                r_out = reference_out[box]
                r_out[ref & (r_out == 0)] = lid
            used = part & v_box
            chi_l, chi_l_med, chi_l_sd = _stats(c_box[used])
            chi_r, chi_r_med, chi_r_sd = _stats(c_box[ref])
            r2_l, r2_l_med, r2_l_sd = _stats(r_box[used]) if r_box is not None else (math.nan,) * 3
            r2_r, r2_r_med, r2_r_sd = _stats(r_box[ref]) if r_box is not None else (math.nan,) * 3
            ok = int(ref.sum()) >= int(min_reference_voxels) and used.any()
            s_mean, c_mean = _stats(c_box[shell])[0], _stats(c_box[core])[0]
            rim_minus_core = s_mean - c_mean
            rim_flag = bool(ok and np.isfinite(rim_minus_core) and rim_minus_core >= rim_threshold_ppm
                            and s_mean > chi_r)
            reason = "" if ok else ("no-reference" if used.any() else "outside-mask")
            rows.append({
                "lesion_id": lid, "input_label": (source_labels[lid - 1] if source_labels else 1),
                "portion": portion, "class": cls, "reference_tissue": ref_class,
                "centroid_gre_x": gre_mm[0], "centroid_gre_y": gre_mm[1], "centroid_gre_z": gre_mm[2],
                "centroid_t1w_x": t1w_mm[0], "centroid_t1w_y": t1w_mm[1], "centroid_t1w_z": t1w_mm[2],
                "volume_mm3": n_les * float(np.prod(vs)), "portion_volume_mm3": int(part.sum()) * float(np.prod(vs)),
                "cortex_fraction": cortex_frac, "wm_fraction": wm_frac,
                "chi_mean": chi_l, "chi_median": chi_l_med, "chi_std": chi_l_sd,
                "chi_ref_mean": chi_r if ok else math.nan, "chi_ref_median": chi_r_med if ok else math.nan,
                "chi_ref_std": chi_r_sd if ok else math.nan, "chi_relative": chi_l - chi_r if ok else math.nan,
                "r2star_mean": r2_l, "r2star_median": r2_l_med, "r2star_std": r2_l_sd,
                "r2star_ref_mean": r2_r if ok else math.nan, "r2star_ref_median": r2_r_med if ok else math.nan,
                "r2star_ref_std": r2_r_sd if ok else math.nan, "r2star_relative": r2_l - r2_r if ok else math.nan,
                "rim_chi_mean": s_mean, "core_chi_mean": c_mean, "rim_minus_core": rim_minus_core,
                "rim_candidate": rim_flag,
                "n_voxels": int(used.sum()), "n_excluded": int(part.sum() - used.sum()),
                "n_reference": int(ref.sum()), "n_reference_vessel": int(vessel.sum()),
                "n_rim": int(shell.sum()), "n_core": int(core.sum()), "n_tissue_filled": n_filled,
                "reason": reason, "edge_coverage": coverage, "chi_caution": caution,
            })
    params = {"GapMM": gap, "OuterMM": float(outer_mm), "MinReferenceVoxels": int(min_reference_voxels),
              "CorticalMin": float(cortical_min), "MixedMin": float(mixed_min),
              "VesselChiPPM": float(vessel_chi_ppm), "RimMM": rim, "RimThresholdPPM": float(rim_threshold_ppm),
              "EdgeCoverageMin": float(edge_coverage_min), "EdgeCoverage": edge_weights is not None}
    return rows, params


def medi_edge_weights(chi_map, magnitude, mask, voxel_size):
    """The edge weights that made χ when ``chi_map`` (the χ sidecar's ``DipoleInversion`` and
    ``DipoleInversionParameters``) names MEDI or MEDI+0 — :func:`qsmprep.qsm.inversion.medi.edge_mask`
    of the inversion's magnitude and mask with its ``edge_fraction`` — else None (the other
    inversions have no magnitude prior: ``edge_coverage`` is then NaN)."""
    if (chi_map or {}).get("DipoleInversion") not in ("medi", "medi+0") or magnitude is None or mask is None:
        return None
    from qsmprep.qsm.inversion.medi import edge_mask

    fraction = chi_map.get("DipoleInversionParameters", {}).get("edge_fraction")
    kw = {} if fraction is None else {"edge_fraction": float(fraction)}
    return edge_mask(magnitude, mask, voxel_size, **kw)


def lesion_parameters():
    """``{name: default}`` of the keyword options of :func:`label_lesions` and
    :func:`lesion_statistics` that a user may set (``--lesion-options``): the signatures are
    their one source."""
    import inspect

    out = {}
    internal = ("r2star", "mask", "to_t1w", "source_labels", "edge_weights", "reference_out")
    for func, skip in ((label_lesions, ()), (lesion_statistics, internal)):
        for name, p in inspect.signature(func).parameters.items():
            if p.kind is p.KEYWORD_ONLY and name not in skip:
                out[name] = p.default
    return out


def check_options(params, voxel_size=None):
    """Refuse lesion options that cannot work together (``params`` over the signatures' defaults).

    With ``voxel_size`` the one-voxel defaults of ``gap_mm`` and ``rim_mm`` are resolved (the
    largest voxel edge) and checked too: 5 mm slices leave no reference within the default 5 mm.
    Returns ``(gap_mm, rim_mm)`` as resolved (``None`` where they depend on an unknown voxel
    size).  Raises ValueError naming the options.
    """
    p = {**lesion_parameters(), **params}
    edge = float(np.max(voxel_size)) if voxel_size is not None else None
    gap = p["gap_mm"] if p["gap_mm"] is not None else edge
    rim = p["rim_mm"] if p["rim_mm"] is not None else edge
    if gap is not None and not 0.0 <= float(gap) < float(p["outer_mm"]):
        what = "gap_mm" if p["gap_mm"] is not None else f"gap_mm (default: one voxel, {gap:g} mm here)"
        raise ValueError(f"{what} must be smaller than outer_mm ({p['outer_mm']:g})")
    if not 0.0 <= p["mixed_min"] <= p["cortical_min"] <= 1.0:
        raise ValueError(f"need 0 <= mixed_min <= cortical_min <= 1, got {p['mixed_min']}, {p['cortical_min']}")
    if rim is not None and float(rim) <= 0:
        raise ValueError(f"rim_mm must be positive, got {rim}")
    return (None if gap is None else float(gap)), (None if rim is None else float(rim))


def split_params(params):
    """``(label_lesions kwargs, lesion_statistics kwargs)`` of user options; unknown names are refused."""
    known = lesion_parameters()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown lesion option(s) {unknown}; known: {sorted(known)}")
    label = {k: v for k, v in params.items() if k == "min_diameter_mm"}
    return label, {k: v for k, v in params.items() if k != "min_diameter_mm"}


LESION_COLUMNS = (
    "lesion_id", "input_label", "portion", "class", "reference_tissue", "centroid_gre_x", "centroid_gre_y",
    "centroid_gre_z", "centroid_t1w_x", "centroid_t1w_y", "centroid_t1w_z", "volume_mm3", "portion_volume_mm3",
    "cortex_fraction", "wm_fraction", "chi_mean", "chi_median", "chi_std", "chi_ref_mean", "chi_ref_median",
    "chi_ref_std", "chi_relative", "r2star_mean", "r2star_median", "r2star_std", "r2star_ref_mean",
    "r2star_ref_median", "r2star_ref_std", "r2star_relative", "rim_chi_mean", "core_chi_mean", "rim_minus_core",
    "rim_candidate", "n_voxels", "n_excluded", "n_reference", "n_reference_vessel", "n_rim", "n_core",
    "n_tissue_filled", "reason", "edge_coverage", "chi_caution",
)
