"""DICOM export (``--dicom-export``): values and geometry read back with pydicom and dcm2niix."""

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from qsmprep.cli.run import main
from qsmprep.demo import make_phantom, write_demo_dataset
from qsmprep.dicom import write_series
from qsmprep.dicom.export import geometry


def _read_series(folder):
    """(volume in real-world units (i, j, k), datasets) from a series written one file per slice."""
    ds = sorted((pydicom.dcmread(p) for p in Path(folder).glob("*.dcm")), key=lambda d: int(d.InstanceNumber))
    vol = np.stack([d.pixel_array.T.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
                    for d in ds], axis=-1)
    return vol, ds


def _dcm2niix(folder, out):
    exe = shutil.which("dcm2niix")
    assert exe, "dcm2niix (the PyPI package in the test extra) is not on PATH"
    out.mkdir()
    subprocess.run([exe, "-z", "y", "-f", "map", "-o", str(out), str(folder)], check=True, capture_output=True)
    (nii,) = out.glob("map*.nii.gz")
    return nib.load(nii)


def _same_grid_and_values(img, data, affine, tol):
    """dcm2niix may order and flip the axes its own way: compare in the closest canonical (RAS) order."""
    a = nib.as_closest_canonical(img)
    b = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), affine))
    assert a.shape == b.shape
    assert np.abs(a.affine - b.affine).max() < 0.01  # mm
    assert np.abs(a.get_fdata() - b.get_fdata()).max() <= tol


@pytest.fixture(scope="module")
def oblique():
    ph = make_phantom("small", oblique_deg=15.0)
    m = ph.brain_mask
    chi = np.where(m, ph.chi - ph.chi[m].mean(), 0).astype(np.float32)
    return ph, chi


def test_series_reads_back_in_ppm_with_the_oblique_geometry(oblique, tmp_path):
    ph, chi = oblique
    files = write_series(chi, ph.affine, tmp_path / "Chimap", series_description="chi", units="ppm",
                         series_number=1001, patient_id="sub-01", mask=ph.brain_mask)
    assert len(files) == chi.shape[2] and all(f.is_file() for f in files)
    vol, ds = _read_series(tmp_path / "Chimap")
    slope = float(ds[0].RescaleSlope)
    assert slope < 1e-4  # a 32000-step range over the map's peak
    assert np.abs(vol - chi).max() <= slope / 2 + 1e-9
    assert len({d.SeriesInstanceUID for d in ds}) == 1 and len({d.SOPInstanceUID for d in ds}) == len(ds)
    assert ds[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds[0].Modality == "MR"
    assert "PatientIdentityRemoved" not in ds[0]  # no identity given: the writer claims nothing
    unit = ds[0].RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("[ppm]", "UCUM")
    # the window covers the brain's 1st-99th percentiles
    vals = chi[ph.brain_mask & (chi != 0)]
    lo, hi = np.percentile(vals, [1, 99])
    centre, width = float(ds[0].WindowCenter), float(ds[0].WindowWidth)
    assert centre - width / 2 == pytest.approx(lo, abs=1e-6) and centre + width / 2 == pytest.approx(hi, abs=1e-6)
    # DICOM LPS geometry of every slice is the NIfTI affine's
    iop, position, spacing, _ = geometry(ph.affine)
    lps = np.diag([-1, -1, 1]) @ ph.affine[:3, :3]
    for k, d in enumerate(ds):
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], iop, atol=1e-6)
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                   np.diag([-1, -1, 1]) @ ph.affine[:3, 3] + k * lps[:, 2], atol=1e-4)
    np.testing.assert_allclose([float(v) for v in ds[0].PixelSpacing], ph.voxel_size[:2][::-1], atol=1e-6)
    assert ds[0].Rows == chi.shape[1] and ds[0].Columns == chi.shape[0]
    _same_grid_and_values(_dcm2niix(tmp_path / "Chimap", tmp_path / "nii"), chi, ph.affine, slope / 2 + 1e-6)


def test_a_rewrite_replaces_the_series_and_keeps_no_partial_folder(oblique, tmp_path):
    ph, chi = oblique
    kw = dict(series_description="chi", units="ppm", series_number=1, patient_id="sub-01")
    write_series(chi, ph.affine, tmp_path / "Chimap", **kw)
    first = {d.SeriesInstanceUID for d in _read_series(tmp_path / "Chimap")[1]}
    write_series(chi[:, :, :10], ph.affine, tmp_path / "Chimap", **kw)
    vol, ds = _read_series(tmp_path / "Chimap")
    assert vol.shape[2] == 10 and {d.SeriesInstanceUID for d in ds} != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Chimap"]
    with pytest.raises(ValueError, match="units"):
        write_series(chi, ph.affine, tmp_path / "x", **{**kw, "units": "Hz"})


def test_participant_dicom_export(tmp_path):
    """χ, R2*, T2* series of a participant: the derivatives' values within half a rescale step, one
    study and frame of reference per acquisition, the patient from the BIDS subject."""
    info = write_demo_dataset(tmp_path, size="small", n_subjects=1)
    preset = tmp_path / "tkd.json"
    preset.write_text(json.dumps({"workflow": {"inversion": "tkd"}}))
    out = tmp_path / "out"
    assert main([info["bids_dir"], str(out), "participant", "-w", str(tmp_path / "work"), "--no-coreg",
                 "--nprocs", "2", "--config", str(preset), "--dicom-export"]) == 0
    anat, dicom = out / "sub-01" / "anat", out / "sub-01" / "dicom"
    assert sorted(p.name for p in dicom.iterdir()) == ["Chimap", "R2starmap", "T2starmap"]
    studies, frames = set(), set()
    for suffix in ("Chimap", "R2starmap", "T2starmap"):
        img = nib.load(anat / f"sub-01_{suffix}.nii.gz")
        data = img.get_fdata()
        vol, ds = _read_series(dicom / suffix)
        slope = float(ds[0].RescaleSlope)
        assert np.abs(vol - data).max() <= slope / 2 + 1e-6, suffix
        assert ds[0].PatientID == "sub-01" and ds[0].PatientIdentityRemoved == "YES"  # no source identity
        studies |= {d.StudyInstanceUID for d in ds}
        frames |= {d.FrameOfReferenceUID for d in ds}
        if suffix == "Chimap":
            assert "whole-brain" in ds[0].SeriesDescription
            _same_grid_and_values(_dcm2niix(dicom / suffix, tmp_path / "nii"), data, img.affine, slope / 2 + 1e-6)
    assert len(studies) == 1 and len(frames) == 1


def test_source_identity_needs_the_patient_and_writes_dicom_dates():
    from qsmprep.dicom.export import source_identity

    assert source_identity({"StudyInstanceUID": "1.2.3", "PatientBirthDate": "1970-01-01"}) == {}  # anonymised
    tags = source_identity({"PatientID": "P1", "PatientBirthDate": "1970-01-01", "PatientSex": "M",
                            "AcquisitionDateTime": "2026-03-15T10:15:30.250000", "EchoTime": 0.004})
    assert tags == {"PatientID": "P1", "PatientBirthDate": "19700101", "PatientSex": "M",
                    "StudyDate": "20260315", "StudyTime": "101530"}
    # a value that is no DICOM date is left out, not written malformed; a study date of its own wins
    tags = source_identity({"PatientID": "P1", "PatientBirthDate": "unknown", "StudyDate": "20250101",
                            "AcquisitionDateTime": "2026-03-15T10:15:30"})
    assert tags == {"PatientID": "P1", "StudyDate": "20250101"}
