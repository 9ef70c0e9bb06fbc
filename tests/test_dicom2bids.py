"""``qsmprep dicom2bids``: scanner-like DICOMs of the demo phantom, converted by dcm2niix, named by
qsmprep, processed by ``participant``: the same χ as the demo's own BIDS data."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import dicomgen
from bidsutils import demo_with_tkd_preset
from qsmprep.cli.run import main
from qsmprep.demo import render_t1w


def _participant(bids, out, preset, *extra):
    return main([str(bids), str(out), "participant", "-w", str(out) + "-work", "--no-coreg", "--nprocs", "2",
                 "--config", str(preset), *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """χ of the demo's own BIDS dataset (same phantom, same signal), TKD."""
    root = tmp_path_factory.mktemp("d2b_ref")
    info, preset = demo_with_tkd_preset(root)
    assert _participant(info["bids_dir"], root / "out", preset) == 0
    return nib.load(root / "out/sub-01/anat/sub-01_Chimap.nii.gz").get_fdata(), preset


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


VARIANTS = {  # name: (vendor, one series per echo, parts written, unit the participant run records)
    "siemens-per-echo-series": ("siemens", True, ("mag", "phase"), "int12"),
    "siemens-one-series": ("siemens", False, ("mag", "phase"), "int12"),
    "ge-real-imag": ("ge", False, ("real", "imag"), "radians (from real/imag)"),
    "philips-scaled-phase": ("philips", False, ("mag", "phase"), "radians"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_dicoms_give_the_demo_chi(tmp_path, small_phantom, small_gre, reference, variant):
    vendor, per_echo, parts, unit = VARIANTS[variant]
    ph, (signal, _) = small_phantom, small_gre
    dicom = tmp_path / "dicom"
    study = "1.2.826.0.1.3680043.8.498.1042"
    dicomgen.write_gre(dicom / "nested" / "deeper", ph, signal, vendor, per_echo_series=per_echo, study_uid=study)
    dicomgen.write_t1w(dicom, render_t1w("small"), study_uid=study)
    before = _tree(dicom)
    bids = tmp_path / "bids"
    keep = variant == "siemens-one-series"  # one variant keeps the identity and exports DICOM
    assert main(["dicom2bids", str(dicom), str(bids), "--participant-label", "sub-01",
                 *(["--keep-identity"] if keep else [])]) == 0
    assert _tree(dicom) == before  # the DICOM folder is never written
    anat = bids / "sub-01" / "anat"
    expected = {f"sub-01_echo-{e}_part-{p}_MEGRE.nii.gz" for e in range(1, 5) for p in parts} | {"sub-01_T1w.nii.gz"}
    assert {p.name for p in anat.glob("*.nii.gz")} == expected
    meta = json.loads((anat / f"sub-01_echo-2_part-{parts[1]}_MEGRE.json").read_text())
    assert meta["EchoTime"] == pytest.approx(ph.tes[1]) and meta["MagneticFieldStrength"] == 3.0
    assert meta["EchoNumber"] == 2 and meta["Manufacturer"]
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["GeneratedBy"][1]["Name"] == "dcm2niix"
    assert not (bids / "sourcedata").exists()
    identity = {"PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
                "AcquisitionDateTime"}
    # anonymised unless asked (dcm2niix's -ba y): no patient or study tag in any sidecar
    assert identity <= set(meta) if keep else not identity & set(meta)
    chi_ref, preset = reference
    assert _participant(bids, tmp_path / "out", preset, *(["--dicom-export"] if keep else [])) == 0
    chi = nib.load(tmp_path / "out/sub-01/anat/sub-01_Chimap.nii.gz").get_fdata()
    both = (chi != 0) & (chi_ref != 0)
    assert both.sum() > 0.99 * (chi_ref != 0).sum()
    assert np.corrcoef(chi[both], chi_ref[both])[0, 1] > 0.99
    side = json.loads((tmp_path / "out/sub-01/anat/sub-01_Chimap.json").read_text())
    assert side["PhaseUnits"] == unit
    assert not identity & set(side)  # identity never reaches the derivatives' sidecars
    if keep:  # the exported maps join the source patient and study (a PACS files them together)
        import pydicom

        for folder in (tmp_path / "out/sub-01/dicom").iterdir():
            ds = pydicom.dcmread(next(folder.glob("*.dcm")))
            assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID) == ("PHANTOM01", "PHANTOM01", study)
            assert (ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber) == ("19700101", "F", "ACC0042")
            assert (ds.StudyDate, ds.StudyTime, ds.PatientIdentityRemoved) == ("20260315", "101530", "NO")


def test_unusable_series_are_listed_not_guessed(tmp_path, small_phantom, small_gre, capsys):
    ph, (signal, _) = small_phantom, small_gre
    dicom = tmp_path / "dicom"
    dicomgen.write_gre(dicom / "gre", ph, signal, "siemens", per_echo_series=False)
    # a second GRE protocol with magnitude only, a localiser and a scanner-derived image
    extra = dicom / "other"
    dicomgen.write_gre(extra / "mag_only", ph, signal, "siemens", per_echo_series=False)
    for folder in (extra / "mag_only").glob("siemens_pha_*"):
        shutil.rmtree(folder)
    import pydicom

    for f in (extra / "mag_only").rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.ProtocolName = ds.SeriesDescription = "gre_magnitude_only"
        ds.save_as(f, enforce_file_format=True)
    from qsmprep.dicom import write_series

    write_series(np.abs(signal[..., 0]), ph.affine, extra / "loc", series_description="localizer", units="ppm",
                 series_number=1, patient_id="P", extra={"ProtocolName": "AAHead_Scout", "EchoTime": 3.0,
                                                         "ScanningSequence": "GR",
                                                         "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]})
    write_series(np.abs(signal[..., 0]), ph.affine, extra / "swi", series_description="SWI_mIP", units="ppm",
                 series_number=99, patient_id="P", extra={"ProtocolName": "swi", "EchoTime": 20.0,
                                                          "ScanningSequence": "GR",
                                                          "ImageType": ["DERIVED", "PRIMARY", "MNIP"]})
    bids = tmp_path / "bids"
    assert main(["dicom2bids", str(dicom), str(bids), "--participant-label", "02", "--session-label", "1"]) == 0
    out = capsys.readouterr().out
    assert "magnitude + phase or real + imaginary" in out and "localiser" in out and "derived image" in out
    written = {p.name for p in (bids / "sub-02" / "ses-1" / "anat").glob("*.nii.gz")}
    assert written == {f"sub-02_ses-1_echo-{e}_part-{p}_MEGRE.nii.gz" for e in range(1, 5) for p in ("mag", "phase")}
    # a second conversion into the same participant/session would replace files: refused
    assert main(["dicom2bids", str(dicom), str(bids), "--participant-label", "02", "--session-label", "1"]) == 2
    assert "would replace existing files" in capsys.readouterr().err


def test_a_gre_named_like_a_t1w_is_still_the_gre(tmp_path, small_phantom, small_gre):
    """The name rule for T1w does not take the magnitudes of a GRE protocol that has phase images."""
    import pydicom

    ph, (signal, _) = small_phantom, small_gre
    dicom = tmp_path / "dicom"
    dicomgen.write_gre(dicom, ph, signal, "siemens", per_echo_series=False)
    for f in dicom.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.ProtocolName = ds.SeriesDescription = "t1_gre_qsm"
        ds.save_as(f, enforce_file_format=True)
    bids = tmp_path / "bids"
    assert main(["dicom2bids", str(dicom), str(bids), "--participant-label", "01"]) == 0
    written = {p.name for p in (bids / "sub-01" / "anat").glob("*.nii.gz")}
    assert written == {f"sub-01_echo-{e}_part-{p}_MEGRE.nii.gz" for e in range(1, 5) for p in ("mag", "phase")}


def test_bad_folders_are_refused(tmp_path, capsys):
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "notes.txt").write_text("not a DICOM")
    assert main(["dicom2bids", str(tmp_path / "missing"), str(tmp_path / "b"), "--participant-label", "01"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dicom2bids", str(dicom), str(dicom / "bids"), "--participant-label", "01"]) == 2
    assert "outside the DICOM folder" in capsys.readouterr().err
    assert main(["dicom2bids", str(dicom), str(tmp_path / "b"), "--participant-label", "01"]) == 2
    assert "no DICOM series" in capsys.readouterr().err
    assert main(["dicom2bids", str(dicom), str(tmp_path / "b"), "--participant-label", "0_1"]) == 2
    assert "letters and digits" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert _tree(dicom) == [("notes.txt", (dicom / "notes.txt").stat().st_mtime_ns, 11)]
