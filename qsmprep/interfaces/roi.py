"""Nipype wrappers for ROI tables (:mod:`qsmprep.analysis.roi`) and label look-up tables."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits,
)

from qsmprep.analysis.roi import lateralize, read_lut, roi_statistics, write_roistats
from qsmprep.interfaces.base import jsonable, load, load_mask, voxel_size_of


class _ROIStatsInputSpec(BaseInterfaceInputSpec):
    labels = File(exists=True, mandatory=True, desc="label image in the grid of the maps")
    lut = File(exists=True, desc="look-up table (dseg.tsv, FreeSurfer LUT or JSON)")
    chi = File(exists=True, mandatory=True, desc="χ map (ppm)")
    r2star = File(exists=True, desc="R2* map (1/s)")
    chi_para = File(exists=True, desc="χ-separation's paramagnetic χ⁺ (ppm)")
    chi_dia = File(exists=True, desc="χ-separation's diamagnetic χ⁻ (ppm)")
    mask = File(exists=True, desc="QSM mask: label voxels outside it are excluded and counted")
    erode_voxels = traits.Int(0, usedefault=True, desc="erode each label by this many voxels first")
    atlas = traits.Str("labels", usedefault=True, desc="name of the label source, for the sidecar")
    meta = traits.Dict(desc="more sidecar metadata (transforms, reference region, ...)")


class _ROIStatsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="ROI table")
    out_json = File(exists=True, desc="sidecar describing the table")
    info = traits.Dict(desc="the sidecar as a dictionary")


class ROIStats(SimpleInterface):
    """Per-label χ (and R2*) statistics (:func:`qsmprep.analysis.roi.roi_statistics`)."""

    input_spec = _ROIStatsInputSpec
    output_spec = _ROIStatsOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        labels_img = nib.load(inp.labels)
        labels = np.rint(np.asarray(labels_img.dataobj)).astype(np.int32)
        chi, chi_img = load(inp.chi)
        if chi.shape != labels.shape:
            raise ValueError(f"labels {labels.shape} and chi {chi.shape} are not in the same grid")
        maps = {"chi": chi}
        units = {"chi": "ppm"}
        described = {"chi": "Chimap (ppm)"}
        for name, desc, unit in (("r2star", "R2starmap (1/s)", "1/s"),
                                 ("chi_para", "desc-paramagnetic_Chimap (ppm, chi-separation)", "ppm"),
                                 ("chi_dia", "desc-diamagnetic_Chimap (ppm, chi-separation)", "ppm")):
            if isdefined(getattr(inp, name)):
                maps[name] = load(getattr(inp, name))[0]
                units[name], described[name] = unit, desc
        mask = load_mask(inp.mask) if isdefined(inp.mask) else None
        lut = read_lut(inp.lut) if isdefined(inp.lut) else None
        rows = roi_statistics(maps, labels, voxel_size=voxel_size_of(chi_img), lut=lut, mask=mask,
                              erode_voxels=inp.erode_voxels, units=units)
        out_tsv = os.path.join(runtime.cwd, "roistats.tsv")
        write_roistats(rows, out_tsv)
        info = {
            "Atlas": inp.atlas,
            "Maps": described,
            "ErodeVoxels": int(inp.erode_voxels),
            "MaskExclusion": "label voxels outside the QSM mask or with non-finite values are excluded "
            "and counted in n_excluded",
            "PartialVoxels": "labels resampled by nearest neighbour (label at the voxel centre); with "
            "ErodeVoxels > 0 each label is eroded (6-connectivity) first, labels that would vanish are "
            "kept un-eroded (eroded = 0)",
            "Columns": {
                "n_voxels": "voxels used", "n_excluded": "label voxels not used (outside the mask)",
                "volume_mm3": "n_voxels x voxel volume", "std": "sample standard deviation (ddof 1)",
                "iqr": "75th - 25th percentile", "mass": "mean x volume_mm3 (ppm mm3 for chi)",
                "roi": "canonical seed ROI name, empty if the label is not one of the seeds",
            },
        }
        if isdefined(inp.meta):
            info.update(inp.meta)
        out_json = os.path.join(runtime.cwd, "roistats.json")
        with open(out_json, "w") as fh:
            json.dump(jsonable(info), fh, indent=2, sort_keys=True)
        self._results.update({"out_tsv": out_tsv, "out_json": out_json, "info": jsonable(info)})
        return runtime


class _LateralizeInputSpec(BaseInterfaceInputSpec):
    labels = File(exists=True, mandatory=True, desc="atlas labels in template space (x = 0 at the midline)")
    lut = File(exists=True, mandatory=True, desc="look-up table")
    offset = traits.Int(1000, usedefault=True, desc="added to right-hemisphere copies of bilateral labels")


class _LateralizeOutputSpec(TraitedSpec):
    labels = File(exists=True, desc="lateralised labels")
    lut = File(exists=True, desc="lateralised look-up table (dseg.tsv with a hemisphere column)")


class LateralizeAtlas(SimpleInterface):
    """Split bilateral atlas labels into left and right (:func:`qsmprep.analysis.roi.lateralize`)."""

    input_spec = _LateralizeInputSpec
    output_spec = _LateralizeOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.labels)
        data = np.rint(np.asarray(img.dataobj)).astype(np.int32)
        out, lut = lateralize(data, img.affine, read_lut(self.inputs.lut), offset=self.inputs.offset)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.int16)
        hdr["scl_slope"], hdr["scl_inter"] = np.nan, np.nan
        labels = os.path.join(runtime.cwd, "labels_lateralized.nii.gz")
        nib.Nifti1Image(out.astype(np.int16), img.affine, hdr).to_filename(labels)
        tsv = os.path.join(runtime.cwd, "labels_lateralized_dseg.tsv")
        lines = ["index\tname\themisphere"] + [f"{k}\t{n}\t{h or 'n/a'}" for k, (n, h) in sorted(lut.items())]
        with open(tsv, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self._results.update({"labels": labels, "lut": tsv})
        return runtime
