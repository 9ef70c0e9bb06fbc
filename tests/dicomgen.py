"""Scanner-like DICOM series of the demo phantom, for the dicom2bids tests (pydicom).

Three vendors' ways of storing a multi-echo GRE (and a T1w), as dcm2niix sees them:

* ``siemens``: magnitude and integer phase (0..4095) in separate series (ImageType ``M``/``P``),
  one series per echo or all echoes in one series (``EchoNumbers``);
* ``ge``: real and imaginary images (GE's private image-type tag (0043,102F) 2 / 3);
* ``philips``: magnitude and a phase stored as integers with a rescale slope/intercept that
  give radians (ImageType ``P``).
"""

from __future__ import annotations

import numpy as np

from qsmprep.dicom.export import write_series

_COMMON = {"MagneticFieldStrength": 3.0, "RepetitionTime": 35.0, "FlipAngle": 15.0,
           "ScanningSequence": "GR", "SequenceVariant": "SP", "MRAcquisitionType": "3D"}
#: the patient and study tags a scanner writes (what ``dicom2bids --keep-identity`` keeps)
IDENTITY = {"PatientBirthDate": "19700101", "PatientSex": "F", "AccessionNumber": "ACC0042",
            "AcquisitionDate": "20260315", "AcquisitionTime": "101530"}


def _tags(ph, vendor, e, image_type, protocol, extra=None):
    tags = dict(_COMMON, **IDENTITY, Manufacturer=vendor, ImageType=image_type, ProtocolName=protocol,
                EchoTime=float(ph.tes[e]) * 1000.0, EchoNumbers=e + 1, EchoTrainLength=len(ph.tes))
    tags.update(extra or {})
    return tags


def write_gre(root, ph, signal, vendor, *, per_echo_series=True, patient="PHANTOM01", study_uid=None):
    """Write the GRE series of ``vendor`` under ``root``; returns the folders written."""
    from pydicom.uid import generate_uid

    study_uid = study_uid or generate_uid()
    frame = generate_uid()
    mag = np.abs(signal)
    mag = mag / mag.max() * 4000.0
    phase = np.angle(signal)
    kw = dict(patient_id=patient, study_uid=study_uid, frame_of_reference_uid=frame, study_description="qsm study")
    folders = []
    if vendor == "siemens":
        parts = [("mag", ["ORIGINAL", "PRIMARY", "M", "ND"], mag, (1.0, 0.0)),
                 ("pha", ["ORIGINAL", "PRIMARY", "P", "ND"],
                  (np.rint((phase + np.pi) / (2 * np.pi) * 4096) % 4096), (1.0, 0.0))]
        name, extra = "SIEMENS", {}
    elif vendor == "philips":
        step = 2 * np.pi / 4096
        parts = [("mag", ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], mag, (1.0, 0.0)),
                 ("pha", ["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"],
                  np.rint((phase + np.pi) / step) * step - np.pi, (step, -np.pi))]
        name, extra = "Philips", {}
    elif vendor == "ge":
        re, im = signal.real, signal.imag
        scale = 4000.0 / np.abs(signal).max()
        parts = [("real", ["ORIGINAL", "PRIMARY", "OTHER"], re * scale, (1.0, 0.0)),
                 ("imag", ["ORIGINAL", "PRIMARY", "OTHER"], im * scale, (1.0, 0.0))]
        name, extra = "GE MEDICAL SYSTEMS", {}
    else:
        raise ValueError(vendor)
    number = 10
    for part, image_type, data, scaling in parts:
        series_uid = None if per_echo_series else generate_uid()
        for e in range(len(ph.tes)):
            if per_echo_series:
                number += 1
            folder = root / f"{vendor}_{part}_e{e + 1}"
            tags = _tags(ph, name, e, image_type, "gre_qsm_3d", extra)
            ge_type = {"real": 2, "imag": 3}.get(part)
            files = write_series(np.rint(data[..., e]) if scaling == (1.0, 0.0) else data[..., e], ph.affine, folder,
                                 series_description=f"gre_qsm_3d_{part}", units=part, series_number=number,
                                 series_uid=series_uid, scaling=scaling, extra=tags, **kw)
            if ge_type is not None:
                _add_ge_image_type(files, ge_type)
            folders.append(folder)
        if not per_echo_series:
            number += 1
    return folders


def _add_ge_image_type(files, value):
    """GE's private image type (0043,102F): 0 magnitude, 1 phase, 2 real, 3 imaginary."""
    import pydicom

    for f in files:
        ds = pydicom.dcmread(f)
        block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        block.add_new(0x2F, "SS", value)
        ds.save_as(f, enforce_file_format=True)


def write_t1w(root, img, *, patient="PHANTOM01", study_uid=None):
    """A T1w series (MPRAGE-like) from a NIfTI image."""
    data = np.asarray(img.dataobj, dtype=np.float64)
    data = np.rint(data / max(data.max(), 1e-9) * 4000.0)
    tags = dict(_COMMON, **IDENTITY, Manufacturer="SIEMENS", ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
                ProtocolName="t1_mprage_sag", EchoTime=2.3, RepetitionTime=2300.0, InversionTime=900.0,
                FlipAngle=8.0, ScanningSequence="GR\\IR", SequenceVariant="SK\\SP\\MP")
    write_series(data, img.affine, root / "t1w", series_description="t1_mprage_sag", units="t1w",
                 series_number=2, scaling=(1.0, 0.0), extra=tags, patient_id=patient, study_uid=study_uid,
                 study_description="qsm study")
    return root / "t1w"
