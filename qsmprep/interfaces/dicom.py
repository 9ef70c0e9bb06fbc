"""Nipype wrapper for the DICOM export of the parametric maps (``--dicom-export``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.dicom.export import write_series

#: map -> (BIDS suffix, units, SeriesNumber, SeriesDescription)
MAPS = {
    "chi": ("Chimap", "ppm", 1001, "qsmprep QSM chi (ppm)"),
    "r2star": ("R2starmap", "1/s", 1002, "qsmprep R2* (1/s)"),
    "t2star": ("T2starmap", "s", 1003, "qsmprep T2* (s)"),
}


class _DicomExportInputSpec(BaseInterfaceInputSpec):
    chi = File(exists=True, mandatory=True, desc="referenced χ (ppm)")
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")
    mask = File(exists=True, desc="brain mask (display window)")
    out_dir = traits.Str(mandatory=True, desc="derivatives root")
    entities = traits.Dict(mandatory=True, desc="subject / session / acquisition / run")
    reference = traits.Str("", usedefault=True, desc="χ's reference region, for the series description")
    identity = traits.Dict(desc="the source DICOMs' patient and study tags (GreRecord.identity); "
                                "without them the patient and study are named from the entities")


class _DicomExportOutputSpec(TraitedSpec):
    series = traits.List(traits.Str, desc="the series folders written")


class DicomExport(SimpleInterface):
    """χ, R2*, T2* as DICOM series under ``sub-<L>[/ses-<S>]/dicom/<suffix>[_acq-<A>][_run-<R>]/``
    (:func:`qsmprep.dicom.export.write_series`); the maps of an acquisition share a study and a
    frame of reference whose UIDs derive from its BIDS entities (stable across re-runs), or the
    source scan's patient and study when the dataset kept them (``dicom2bids --keep-identity``)."""

    input_spec = _DicomExportInputSpec
    output_spec = _DicomExportOutputSpec

    def _run_interface(self, runtime):
        from pydicom.uid import generate_uid

        ent = dict(self.inputs.entities)
        sub, ses = ent.get("subject"), ent.get("session")
        root = Path(self.inputs.out_dir) / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "dicom"
        tail = "".join(f"_{key}-{ent[name]}" for key, name in (("acq", "acquisition"), ("run", "run"))
                       if ent.get(name))
        study = generate_uid(entropy_srcs=["qsmprep-study", str(sub), str(ses or "")])
        frame = generate_uid(entropy_srcs=["qsmprep-frame", *(f"{k}={v}" for k, v in sorted(ent.items()))])
        identity = dict(self.inputs.identity) if isdefined(self.inputs.identity) else {}
        mask = None
        if isdefined(self.inputs.mask):
            mask = np.asarray(nib.load(self.inputs.mask).dataobj) > 0
        series = []
        for name, (suffix, units, number, description) in MAPS.items():
            path = getattr(self.inputs, name)
            if not isdefined(path):
                continue
            img = nib.load(path)
            if name == "chi" and self.inputs.reference:
                description = f"{description}, ref {self.inputs.reference}"
            out = root / f"{suffix}{tail}"
            write_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, out, series_description=description,
                         units=units, series_number=number, patient_id=f"sub-{sub}", study_uid=study,
                         frame_of_reference_uid=frame, study_description=f"qsmprep sub-{sub}" + (f" ses-{ses}" if ses else ""),
                         mask=mask, identity=identity)
            series.append(str(out))
        self._results["series"] = series
        return runtime
