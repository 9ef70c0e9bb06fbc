"""Nipype wrappers for lesion statistics (:mod:`qsmprep.analysis.lesions`) and tissue classes."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.analysis.lesions import (
    LESION_COLUMNS, TISSUE_CODES, label_lesions, lesion_parameters, lesion_statistics, medi_edge_weights,
    tissue_from_labels,
)
from qsmprep.analysis.roi import read_lut, write_roistats
from qsmprep.interfaces.base import jsonable, load, load_mask, voxel_size_of


class _TissueInputSpec(BaseInterfaceInputSpec):
    segmentation = File(exists=True, desc="segmentation (T1w space) with its look-up table")
    lut = File(exists=True, desc="look-up table of the segmentation")
    t1w_brain = File(exists=True, desc="skull-stripped T1w (Atropos without a segmentation)")
    t1w_mask = File(exists=True, desc="T1w brain mask (Atropos)")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads (Atropos)")


class _TissueOutputSpec(TraitedSpec):
    tissue = File(exists=True, desc="tissue classes (TISSUE_CODES), T1w space")
    info = traits.Dict(desc="sidecar metadata: the source and the name rules used")


class TissueClasses(SimpleInterface):
    """Tissue classes from a segmentation's label names, or from Atropos on the T1w."""

    input_spec = _TissueInputSpec
    output_spec = _TissueOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        out = os.path.join(runtime.cwd, "tissue.nii.gz")
        if isdefined(inp.segmentation):
            img = nib.load(inp.segmentation)
            labels = np.rint(np.asarray(img.dataobj)).astype(np.int32)
            tissue, rules = tissue_from_labels(labels, read_lut(inp.lut))
            nib.Nifti1Image(tissue.astype(np.int16), img.affine).to_filename(out)
            info = {"TissueSource": "segmentation", "TissueSegmentation": os.path.basename(inp.segmentation),
                    "TissueRules": rules}
        else:
            from qsmprep.anat.segmentation import atropos_tissue

            out, info = atropos_tissue(inp.t1w_brain, inp.t1w_mask, out, num_threads=inp.num_threads)
        info["TissueCodes"] = dict(TISSUE_CODES)
        self._results.update({"tissue": out, "info": info})
        return runtime


class _LesionStatsInputSpec(BaseInterfaceInputSpec):
    chi = File(exists=True, mandatory=True, desc="χ map (ppm)")
    r2star = File(exists=True, desc="R2* map (1/s)")
    mask = File(exists=True, desc="where χ is valid (the QSM mask)")
    lesions = File(exists=True, mandatory=True, desc="lesion mask or dseg on the grid of chi")
    lesion_lut = File(exists=True, desc="look-up table of a lesion dseg")
    tissue = File(exists=True, mandatory=True, desc="tissue classes on the grid of chi")
    to_t1w = File(exists=True, desc="ITK affine from-T1w_to-GRE (maps GRE points to T1w points), for centroids")
    magnitude = File(exists=True, desc="the magnitude the inversion used (MEDI's edge mask, for edge_coverage)")
    params = traits.Dict(desc="keyword arguments of label_lesions / lesion_statistics")
    meta = traits.Dict(desc="more sidecar metadata (sources, transforms, tissue source)")


class _LesionStatsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="per-lesion table")
    out_json = File(exists=True, desc="its sidecar")
    lesions_gre = File(exists=True, desc="numbered lesions (lesion_id) on the GRE grid")
    reference_gre = File(exists=True, desc="each lesion's reference voxels, labelled with its lesion_id")
    info = traits.Dict(desc="the sidecar as a dictionary")


class LesionStats(SimpleInterface):
    """Per-lesion relative χ and R2*, class and rim (:func:`qsmprep.analysis.lesions.lesion_statistics`)."""

    input_spec = _LesionStatsInputSpec
    output_spec = _LesionStatsOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.analysis.lesions import split_params

        inp = self.inputs
        chi, chi_img = load(inp.chi)
        les_img = nib.load(inp.lesions)
        les = np.asarray(les_img.dataobj)
        tissue = np.rint(np.asarray(nib.load(inp.tissue).dataobj)).astype(np.int16)
        if les.shape[:3] != chi.shape or tissue.shape[:3] != chi.shape:
            raise ValueError(f"lesions {les.shape}, tissue {tissue.shape} and chi {chi.shape} are not on one grid")
        vs = voxel_size_of(chi_img)
        label_kw, stats_kw = split_params(dict(inp.params) if isdefined(inp.params) else {})
        lesions, sources, n_small = label_lesions(les.reshape(chi.shape), vs, **label_kw)
        to_t1w = None
        if isdefined(inp.to_t1w):
            from qsmprep.anat.transforms import read_affine

            to_t1w = read_affine(inp.to_t1w)
        reference = np.zeros(chi.shape, np.int32)
        mask = load_mask(inp.mask) if isdefined(inp.mask) else None
        edge_weights = medi_edge_weights(dict(inp.meta).get("ChiMap", {}) if isdefined(inp.meta) else {},
                                         load(inp.magnitude)[0] if isdefined(inp.magnitude) else None, mask, vs)
        rows, params = lesion_statistics(
            chi, lesions, tissue, vs, chi_img.affine, r2star=load(inp.r2star)[0] if isdefined(inp.r2star) else None,
            mask=mask, to_t1w=to_t1w, source_labels=sources, edge_weights=edge_weights, reference_out=reference,
            **stats_kw)
        names = read_lut(inp.lesion_lut) if isdefined(inp.lesion_lut) else {}
        for row in rows:
            row["input_name"] = names.get(row["input_label"], ("lesion", ""))[0]
            rel = row["chi_relative"]
            row["chi_sign"] = "" if not np.isfinite(rel) else ("paramagnetic" if rel > 0 else "diamagnetic")
        out_tsv = os.path.join(runtime.cwd, "lesionstats.tsv")
        columns = ("lesion_id", "input_label", "input_name", *LESION_COLUMNS[2:], "chi_sign")
        write_roistats([{c: r[c] for c in columns} for r in rows] if rows else [], out_tsv, columns=columns)
        lesions_gre = os.path.join(runtime.cwd, "lesions_gre.nii.gz")
        nib.Nifti1Image(lesions.astype(np.int16), chi_img.affine).to_filename(lesions_gre)
        reference_gre = os.path.join(runtime.cwd, "lesion_reference_gre.nii.gz")
        nib.Nifti1Image(reference.astype(np.int16), chi_img.affine).to_filename(reference_gre)
        params["MinDiameterMM"] = float(label_kw.get("min_diameter_mm", lesion_parameters()["min_diameter_mm"]))
        info = {
            "LesionParameters": params, "LesionCount": int(lesions.max(initial=0)),
            "LesionsDroppedSmall": int(n_small),
            "Connectivity": "26 (face, edge and corner neighbours), per label of the lesion input",
            "Maps": {"chi": "Chimap (ppm)", **({"r2star": "R2starmap (1/s)"} if isdefined(inp.r2star) else {})},
            "Columns": _COLUMN_DOCS,
        }
        if isdefined(inp.meta):
            info.update(inp.meta)
        out_json = os.path.join(runtime.cwd, "lesionstats.json")
        with open(out_json, "w") as fh:
            json.dump(jsonable(info), fh, indent=2, sort_keys=True)
        self._results.update({"out_tsv": out_tsv, "out_json": out_json, "lesions_gre": lesions_gre,
                              "reference_gre": reference_gre, "info": jsonable(info)})
        return runtime


_COLUMN_DOCS = {
    "lesion_id": "connected component number, the value in the desc-lesions_dseg image",
    "input_label": "the lesion input's label value", "input_name": "its name in the lesion dseg.tsv",
    "portion": "whole, or wm / cortical for the two portions of a mixed lesion",
    "class": "wm, cortical (> CorticalMin in cortex), mixed (MixedMin-CorticalMin) or other",
    "reference_tissue": "tissue of the reference shell",
    "centroid_gre_*": "lesion centroid, GRE world coordinates (mm, RAS)",
    "centroid_t1w_*": "the same point in T1w world coordinates (mm, RAS), through the coregistration",
    "volume_mm3": "whole lesion", "portion_volume_mm3": "this portion",
    "chi_relative": "chi_mean - chi_ref_mean (ppm): lesion against normal-appearing tissue",
    "r2star_relative": "r2star_mean - r2star_ref_mean (1/s)",
    "rim_minus_core": "mean chi of the lesion's outer RimMM shell minus its core (ppm), whole lesion",
    "rim_candidate": "rim_minus_core >= RimThresholdPPM and rim chi above the reference",
    "n_reference_vessel": "reference candidates removed as vessels (chi > median + VesselChiPPM)",
    "n_tissue_filled": "lesion voxels without a tissue class, given the nearest voxel's class",
    "reason": "why relative values are missing: no-reference (< MinReferenceVoxels), outside-mask",
    "edge_coverage": "fraction of the lesion's boundary at magnitude edges of MEDI's edge mask (n/a: not MEDI)",
    "chi_caution": "magnitude-edge-prior: edge_coverage < EdgeCoverageMin, MEDI's prior may shrink chi_relative",
    "chi_sign": "sign of chi_relative: paramagnetic (e.g. haemorrhage) or diamagnetic (e.g. calcification)",
}


#: the χ sidecar's fields copied into the lesion table's (the reference cancels in relative χ)
CHI_PROVENANCE = ("DipoleInversion", "DipoleInversionParameters", "BackgroundRemoval", "UnwrappingMethod",
                  "ReferenceRegion")


class _LesionMetaInputSpec(BaseInterfaceInputSpec):
    tissue = traits.Dict(desc="TissueClasses info")
    registration = traits.Dict(desc="RegisterToGRE info (FLAIR / T2w masks)")
    space = traits.Str(desc="space of the lesion input")
    chi_info = traits.Dict(desc="the inversion's sidecar fields (method, parameters, reference)")
    local_info = traits.Dict(desc="background removal's sidecar fields")
    unwrap_info = traits.Dict(desc="unwrapping's sidecar fields")


class _LesionMetaOutputSpec(TraitedSpec):
    meta = traits.Dict()


class LesionMeta(SimpleInterface):
    """The lesion table's provenance: tissue source, lesion space and its registration."""

    input_spec = _LesionMetaInputSpec
    output_spec = _LesionMetaOutputSpec

    def _run_interface(self, runtime):
        meta = {"LesionSpace": self.inputs.space,
                "LesionTransform": ("T1w -> GRE: inverse of the GRE->T1w coregistration, nearest neighbour"
                                    if self.inputs.space == "T1w" else
                                    f"{self.inputs.space} -> GRE: rigid registration, nearest neighbour")}
        if isdefined(self.inputs.tissue):
            meta.update(self.inputs.tissue)
        if isdefined(self.inputs.registration):
            meta["LesionRegistration"] = self.inputs.registration
        # which χ the relative values come from: the inversion's prior shapes lesion contrast
        # (MEDI's magnitude-edge prior smooths lesions the magnitude does not show; README)
        merged = {}
        for info in (self.inputs.unwrap_info, self.inputs.local_info, self.inputs.chi_info):
            if isdefined(info):
                merged.update(info)
        if merged:
            meta["ChiMap"] = {k: merged[k] for k in CHI_PROVENANCE if k in merged}
        self._results["meta"] = meta
        return runtime
