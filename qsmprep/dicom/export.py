"""Parametric maps as DICOM MR image series (pydicom), for PACS.

One file per slice (MR Image Storage, explicit VR little endian), signed 16-bit pixels with
``RescaleSlope``/``RescaleIntercept`` chosen so that the stored integers read back in the
map's own units (ppm, 1/s, s) to within half a rescale step; the units are also in the
``RealWorldValueMappingSequence`` (UCUM).  Geometry comes from the NIfTI affine: NIfTI's
RAS+ world is DICOM's LPS with x and y negated; the NIfTI ``i`` axis runs along a DICOM row
(increasing column index), ``j`` down the columns, ``k`` across slices, so
``ImageOrientationPatient`` holds the directions of ``i`` and ``j``, ``ImagePositionPatient``
the centre of voxel ``(0, 0, k)``, and ``PixelSpacing`` the ``j`` and ``i`` spacings (row
spacing first).  Oblique grids keep their orientation exactly.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

#: MR Image Storage.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Largest stored magnitude: a margin below int16's 32767 for the rounding of the slope.
STORED_MAX = 32000
#: UCUM codes of the maps' units.
UCUM = {"ppm": ("ppm", "[ppm]"), "1/s": ("per second", "/s"), "s": ("second", "s")}
_LPS = np.diag([-1.0, -1.0, 1.0])
#: The source scan's patient and study tags that an export copies into its series, so that a
#: PACS files the maps with the scan they came from.  dcm2niix writes them into the BIDS sidecars
#: only when it does not anonymise (``qsmprep dicom2bids --keep-identity``).
IDENTITY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientWeight",
                 "StudyInstanceUID", "StudyID", "AccessionNumber", "StudyDate", "StudyTime", "StudyDescription")


def source_identity(meta):
    """The source DICOMs' patient and study tags (:data:`IDENTITY_TAGS`) found in a BIDS sidecar.

    Empty when the sidecar has no ``PatientID`` (an anonymised conversion): a study UID or a
    birth date without the patient they belong to is not copied.  Dates and times come back in
    DICOM's form (dcm2niix writes ``1970-01-01``; DICOM's DA is ``19700101``, TM ``hhmmss``) and
    one that does not parse is left out rather than written malformed.  ``StudyDate``/
    ``StudyTime`` come from ``AcquisitionDateTime`` (``YYYY-MM-DDThh:mm:ss``) when the sidecar
    has no study date of its own, so that the maps' study carries the day of the scan.
    """
    meta = meta or {}
    if not str(meta.get("PatientID") or "").strip():
        return {}
    tags = {key: meta[key] for key in IDENTITY_TAGS if meta.get(key) not in (None, "")}
    acquired = str(meta.get("AcquisitionDateTime") or "")
    if "StudyDate" not in tags and "T" in acquired:
        tags["StudyDate"], tags["StudyTime"] = acquired.split("T", 1)
    for key, digits in (("PatientBirthDate", 8), ("StudyDate", 8), ("StudyTime", 6)):
        if key in tags:
            value = str(tags[key]).replace("-", "").replace(":", "").split(".")[0]
            if len(value) >= digits and value[:digits].isdigit():
                tags[key] = value[:digits]
            else:
                del tags[key]
    return tags


def rescale(data):
    """``(slope, intercept)`` so that ``round(data / slope)`` fits int16 (intercept 0).

    The slope is written with 6 significant digits (DICOM's DS) and the data stored with that
    very value, so a reader gets ``stored · slope`` back within ``slope / 2`` of the map.
    """
    finite = np.asarray(data, dtype=np.float64)[np.isfinite(data)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    slope = float(f"{peak / STORED_MAX:.6g}") if peak > 0 else 1.0
    return slope, 0.0


def window(data, mask=None):
    """``(centre, width)`` for display: the 1st-99th percentile range of the non-zero voxels."""
    values = np.asarray(data, dtype=np.float64)
    sel = np.isfinite(values) & (values != 0) & (True if mask is None else np.asarray(mask, bool))
    if not sel.any():
        return 0.0, 1.0
    lo, hi = np.percentile(values[sel], [1, 99])
    width = max(float(hi - lo), 1e-6)
    return float((hi + lo) / 2), width


def geometry(affine):
    """``(ImageOrientationPatient, position(k), PixelSpacing, slice spacing)`` from a NIfTI affine."""
    affine = np.asarray(affine, dtype=np.float64)
    lps = _LPS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    row, col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    origin = _LPS @ affine[:3, 3]

    def position(k):
        return origin + k * lps[:, 2]

    return [*row.tolist(), *col.tolist()], position, [float(spacing[1]), float(spacing[0])], float(spacing[2])


def _ds(value):
    """A float as a DICOM decimal string (≤ 16 characters)."""
    for digits in (10, 8, 6):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4e}"


def write_series(data, affine, out_dir, *, series_description, units, series_number, patient_id,
                 patient_name=None, study_uid=None, frame_of_reference_uid=None, study_description="qsmprep",
                 mask=None, extra=None, series_uid=None, scaling=None, identity=None):
    """Write a 3D map as one DICOM series (one file per slice) into ``out_dir``; returns the files.

    ``units``: ``"ppm"``, ``"1/s"`` or ``"s"``.  ``study_uid`` and ``frame_of_reference_uid``
    tie the maps of one acquisition together (new ones when not given); the series and each
    instance get new UIDs.  ``extra``: further top-level tags (keyword -> value).  The series
    is written into a temporary folder beside ``out_dir`` and renamed into place, so an
    interrupted export never leaves a partial series under its final name; an existing
    series there is replaced.  ``identity``: the source scan's patient and study tags
    (:func:`source_identity`), written over ``patient_id``/``patient_name``/``study_uid``
    (``PatientIdentityRemoved`` ``NO``); an empty one says that the caller named the patient
    instead (``YES``, with a ``DeidentificationMethod``); ``None`` writes neither tag.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from qsmprep import __version__
    from qsmprep.interfaces.derivatives import current_umask

    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"a DICOM series is written from a 3D map, got shape {data.shape}")
    if units not in UCUM and scaling is None:
        raise ValueError(f"units must be one of {', '.join(UCUM)}, got {units!r}")
    data = np.where(np.isfinite(data), data, 0.0)
    slope, intercept = rescale(data) if scaling is None else (float(scaling[0]), float(scaling[1]))
    stored = np.round((data - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"scaling {slope, intercept} does not fit the values in int16")
    stored = stored.astype(np.int16)
    centre, width = window(data, mask)
    iop, position, pixel_spacing, slice_spacing = geometry(affine)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid = study_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the series follows the user's umask
    unit_name, unit_code = UCUM.get(units, (units, units))
    files = []
    try:
        for k in range(data.shape[2]):
            ds = Dataset()
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.Modality = "MR"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.PatientName = patient_name or patient_id
            ds.PatientID = patient_id
            ds.StudyDescription = study_description
            ds.SeriesDescription = series_description
            ds.SeriesNumber = int(series_number)
            ds.InstanceNumber = k + 1
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.SoftwareVersions = f"qsmprep {__version__}"
            ds.ImageOrientationPatient = [_ds(v) for v in iop]
            pos = position(k)
            ds.ImagePositionPatient = [_ds(v) for v in pos]
            ds.SliceLocation = _ds(float(np.dot(pos, np.cross(iop[:3], iop[3:]))))
            ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
            ds.SliceThickness = ds.SpacingBetweenSlices = _ds(slice_spacing)
            ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), units.upper()[:16]
            ds.WindowCenter, ds.WindowWidth = _ds(centre), _ds(width)
            rwv = Dataset()
            rwv.RealWorldValueSlope, rwv.RealWorldValueIntercept = slope, intercept
            rwv.RealWorldValueFirstValueMapped, rwv.RealWorldValueLastValueMapped = -32768, 32767
            rwv.LUTLabel, rwv.LUTExplanation = units[:16], series_description[:64]
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = unit_code, "UCUM", unit_name
            rwv.MeasurementUnitsCodeSequence = [code]
            ds.RealWorldValueMappingSequence = [rwv]
            if identity:
                for key, value in identity.items():
                    setattr(ds, key, value)
                ds.PatientIdentityRemoved = "NO"
            elif identity is not None:
                ds.PatientIdentityRemoved = "YES"
                ds.DeidentificationMethod = "qsmprep: patient and study named from the BIDS entities"
            for key, value in (extra or {}).items():
                setattr(ds, key, value)
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_IMAGE_STORAGE, ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            name = f"{k + 1:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            files.append(out_dir / name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files

