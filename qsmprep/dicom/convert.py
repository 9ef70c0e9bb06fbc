"""DICOM to BIDS for qsmprep (``qsmprep dicom2bids``): dcm2niix converts, qsmprep names.

dcm2niix (Li, Morgan, Ashburner, Smith & Rorden, "The first step for neuroimaging data
analysis: DICOM to NIfTI conversion", J Neurosci Methods 2016;264:47-56; the ``dcm2niix``
PyPI package, run as a subprocess) turns every series of the DICOM folder, at any nesting,
into NIfTI + JSON sidecars, one file per echo and image part.  This module only decides what
each converted series is, from the sidecar fields dcm2niix reports (``ImageType`` with the
part it appends, ``EchoTime``, ``ScanningSequence``, ``SequenceVariant``, ``InversionTime``,
``ProtocolName``/``SeriesDescription``), and names it in BIDS:

* **GRE** (gradient echo without inversion, not derived): grouped into acquisitions by
  protocol and grid; each acquisition needs magnitude + phase or real + imaginary at the
  same echo times, else it is listed as unusable.  Written as
  ``sub-<L>[_ses-<S>][_acq-<A>]_echo-<n>_part-<mag|phase|real|imag>_MEGRE`` (one echo:
  ``..._part-<..>_T2starw``), echoes numbered by echo time.
* **T1w** (an MPRAGE-like inversion-recovery gradient echo with TI 0.3-1.5 s, or a magnitude
  protocol named t1/mprage/mp2rage/spgr/bravo/tfe) and **FLAIR** (TI ≥ 1.5 s with TE ≥ 60 ms,
  or named flair).  A name alone never makes a T1w of a protocol that also has phase or
  real/imaginary images: that protocol is a GRE (e.g. one named ``t1_gre_qsm``).
* Anything else (derived images, localisers, ambiguous or incomplete series) is **listed
  with the reason and not written**: nothing is guessed.

The sidecars keep every field dcm2niix wrote (EchoTime in s, MagneticFieldStrength,
Manufacturer, ...), and a phase gets the ``Units`` BIDS requires (``rad`` when its values are
radians for certain, else ``arbitrary``).  The DICOM folder is never written (dcm2niix writes into a temporary
folder outside it), existing files in the BIDS folder are never replaced, and a
``dataset_description.json`` is added when the BIDS folder has none.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from qsmprep.errors import InputError

BIDS_VERSION = "1.9.0"
_T1_NAMES = re.compile(r"t1|mprage|mp2rage|spgr|bravo|tfe|mpr\b", re.I)
_FLAIR_NAMES = re.compile(r"flair", re.I)
_LOCALISER = re.compile(r"localizer|localiser|scout|survey|aahead|calibration", re.I)


def find_dcm2niix():
    """The dcm2niix executable: on PATH, else the one the ``dcm2niix`` PyPI package ships."""
    exe = shutil.which("dcm2niix")
    if exe:
        return exe
    try:
        import dcm2niix

        return str(dcm2niix.bin)
    except (ImportError, AttributeError):
        raise InputError("dcm2niix is not installed (pip install dcm2niix)") from None


def _tokens(meta):
    value = meta.get("ImageType") or []
    value = value if isinstance(value, list) else str(value).split("\\")
    return [str(v).upper() for v in value]


def _name(meta):
    return " ".join(str(meta.get(k) or "") for k in ("ProtocolName", "SeriesDescription"))


def _anatomy_by_sequence(meta):
    """T1w / FLAIR from the sequence alone (inversion recovery and its timing), or None."""
    seq = str(meta.get("ScanningSequence") or "").upper()
    ti, te = meta.get("InversionTime"), meta.get("EchoTime")
    if ti is not None and ti >= 1.5 and te is not None and te >= 0.06:
        return "FLAIR"
    if "IR" in seq and ti is not None and 0.3 <= ti <= 1.5 and (te or 1) < 0.01:
        return "T1w"
    return None


def _gre_part(meta):
    """``(part, reason)`` of a gradient echo without inversion (``part`` None: not one)."""
    tokens = _tokens(meta)
    seq = str(meta.get("ScanningSequence") or "").upper()
    if meta.get("EchoTime") is None:
        return None, "no EchoTime in the sidecar"
    if "GR" not in seq or "IR" in seq:
        return None, f"not a gradient echo without inversion (ScanningSequence {seq or 'missing'})"
    for part, marks in (("real", ("REAL",)), ("imag", ("IMAGINARY",)), ("phase", ("PHASE", "P")),
                        ("mag", ("MAGNITUDE", "M"))):
        if any(m in tokens for m in marks):
            return part, f"gradient echo, ImageType {'/'.join(tokens)}"
    return None, f"a gradient echo whose ImageType {'/'.join(tokens) or '(missing)'} names no image part"


def classify(meta):
    """What a converted series is, on its own: ``(kind, part, reason)``.

    ``kind``: ``"gre"`` (``part`` one of mag/phase/real/imag), ``"T1w"``, ``"FLAIR"`` or
    None (not used; ``reason`` says why).  A T1w / FLAIR found by its protocol name alone may
    still be the magnitude of a GRE: :func:`plan` decides that from the other series.
    """
    tokens = _tokens(meta)
    name = _name(meta)
    if "DERIVED" in tokens:
        return None, None, "a derived image (e.g. the scanner's SWI, mIP or maps)"
    if _LOCALISER.search(name):
        return None, None, "a localiser / calibration series"
    by_sequence = _anatomy_by_sequence(meta)
    if by_sequence == "FLAIR":
        return "FLAIR", None, "TI ≥ 1.5 s with TE ≥ 60 ms"
    if by_sequence == "T1w":
        return "T1w", None, "an inversion-recovery gradient echo with TI 0.3-1.5 s"
    part, reason = _gre_part(meta)
    if part not in ("phase", "real", "imag"):  # a T1w / FLAIR is a magnitude image
        if _FLAIR_NAMES.search(name):
            return "FLAIR", None, "named FLAIR"
        if _T1_NAMES.search(name):
            return "T1w", None, "named like a T1w"
    return ("gre", part, reason) if part else (None, None, reason)


def _grid_key(path):
    import nibabel as nib

    img = nib.load(str(path))
    return tuple(img.shape[:3]), tuple(np.round(img.affine, 2).ravel().tolist())


def _label(text):
    return re.sub(r"[^A-Za-z0-9]", "", text) or "gre"


def _phase_units(nii):
    """BIDS ``Units`` of a converted phase (required for part-phase): ``rad`` only when the values
    are a wrapped phase in radians for certain (:func:`qsmprep.qsm.phase.detect_phase_units`,
    no rescaling), else ``arbitrary`` (scanner integers, scaled exports)."""
    import nibabel as nib

    from qsmprep.qsm.phase import PhaseUnitsError, detect_phase_units

    try:
        units, _ = detect_phase_units(np.asarray(nib.load(str(nii)).dataobj, dtype=np.float32), allow_rescale=False)
    except (PhaseUnitsError, ValueError):
        return "arbitrary"
    return "rad" if units == "radians" else "arbitrary"


def plan(converted):
    """BIDS names for converted ``(nii, meta)`` pairs: ``(targets, listed)``.

    ``targets``: ``[(nii, json meta, name without extension)]``; ``listed``: ``[(nii, reason)]``
    for every series not written.
    """
    listed, gre, anat = [], defaultdict(lambda: defaultdict(list)), defaultdict(list)
    # (protocol, grid): the acquisition a series belongs to
    kinds = [(nii, meta, (str(meta.get("ProtocolName") or meta.get("SeriesDescription") or ""), _grid_key(nii)),
              *classify(meta)) for nii, meta in converted]
    # a protocol with phase (or real/imaginary) images is a GRE: its magnitudes are too, even where
    # its name looks like a T1w / FLAIR (e.g. "t1_gre_qsm"), unless the sequence itself is one
    gre_keys = {key for _, _, key, kind, part, _ in kinds if kind == "gre" and part != "mag"}
    for nii, meta, key, kind, part, reason in kinds:
        if kind in ("T1w", "FLAIR") and _anatomy_by_sequence(meta) is None and key in gre_keys:
            part, reason = _gre_part(meta)
            kind = "gre" if part == "mag" else kind
        if kind is None:
            listed.append((nii, reason))
        elif kind == "gre":
            gre[key][part].append((float(meta["EchoTime"]), nii, meta))
        else:
            anat[kind].append((int(meta.get("SeriesNumber") or 0), nii, meta))
    acquisitions = []
    for key, parts in sorted(gre.items(), key=lambda kv: min(int(m.get("SeriesNumber") or 0)
                                                               for items in kv[1].values() for _, _, m in items)):
        pairs = [p for p in (("mag", "phase"), ("real", "imag")) if all(q in parts for q in p)]
        problem = None
        for items in parts.values():
            tes = [round(t, 6) for t, _, _ in items]
            if len(set(tes)) != len(tes):
                problem = f"echo times repeat within one part ({sorted(tes)}): several runs of protocol {key[0]!r}"
        if not pairs and problem is None:
            problem = f"only {', '.join(sorted(parts))}: a GRE needs magnitude + phase or real + imaginary"
        if problem is None:
            sets = {part: sorted(round(t, 6) for t, _, _ in parts[part]) for pair in pairs for part in pair}
            if len({tuple(v) for v in sets.values()}) != 1:
                problem = f"the image parts have different echo times ({sets})"
        if problem:
            listed += [(nii, problem) for items in parts.values() for _, nii, _ in items]
            continue
        used = [part for pair in pairs for part in pair]
        for part in set(parts) - set(used):  # e.g. a magnitude beside real/imag: written too
            used.append(part)
        acquisitions.append((key[0], {part: sorted(parts[part], key=lambda x: x[0]) for part in used}))
    targets = []
    protocols = [p for p, _ in acquisitions]
    for i, (protocol, parts) in enumerate(acquisitions):
        acq = ""
        if len(acquisitions) > 1:
            acq = f"_acq-{_label(protocol)}" + (f"{i + 1}" if protocols.count(protocol) > 1 else "")
        for part, items in parts.items():
            n = len(items)
            for e, (_, nii, meta) in enumerate(items, start=1):
                entities = f"{acq}_echo-{e}" if n > 1 else acq
                suffix = "MEGRE" if n > 1 else "T2starw"
                targets.append((nii, dict(meta, EchoNumber=e) if n > 1 else meta, f"{entities}_part-{part}_{suffix}"))
    for kind, items in anat.items():
        items.sort(key=lambda x: x[0])
        for r, (_, nii, meta) in enumerate(items, start=1):
            targets.append((nii, meta, (f"_run-{r}" if len(items) > 1 else "") + f"_{kind}"))
    return targets, listed


def dicom2bids(dicom_dir, bids_dir, participant, session=None, *, keep_identity=False, dcm2niix=None, log=print):
    """Convert ``dicom_dir`` into participant ``participant`` (session ``session``) of ``bids_dir``.

    The sidecars are anonymised (dcm2niix's default, ``-ba y``): a BIDS dataset is made to be
    shared.  ``keep_identity`` keeps the patient and study tags dcm2niix then writes
    (``PatientName``, ``PatientID``, ``StudyInstanceUID``, ...; ``-ba n``), so that
    ``participant --dicom-export`` files the maps under the source patient and study in a PACS.

    Returns ``{"written": [paths], "listed": [(converted file name, reason)], "seconds": s}``.
    """
    import time

    from qsmprep import __version__

    t0 = time.perf_counter()
    dicom_dir, bids_dir = Path(dicom_dir).absolute(), Path(bids_dir).absolute()
    if not dicom_dir.is_dir():
        raise InputError("DICOM folder does not exist", path=dicom_dir)
    if bids_dir == dicom_dir or dicom_dir in bids_dir.parents or bids_dir in dicom_dir.parents:
        raise InputError("the BIDS folder must be outside the DICOM folder (the DICOM folder is never written)",
                         path=bids_dir)
    for name, value in (("participant label", participant), ("session label", session)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9]+", str(value)):
            raise InputError(f"the {name} must be letters and digits only (BIDS), got {value!r}")
    exe = dcm2niix or find_dcm2niix()
    prefix = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    out = bids_dir / f"sub-{participant}" / (f"ses-{session}" if session else "") / "anat"
    with tempfile.TemporaryDirectory(prefix="qsmprep-dicom2bids-") as tmp:
        anonymise = "n" if keep_identity else "y"
        res = subprocess.run([exe, "-b", "y", "-ba", anonymise, "-z", "y", "-i", "n", "-f", "s%3s_%p", "-o", tmp,
                              str(dicom_dir)], capture_output=True, text=True)
        converted = []
        for js in sorted(Path(tmp).glob("*.json")):
            nii = js.with_suffix(".nii.gz")
            if nii.is_file():
                converted.append((nii, json.loads(js.read_text())))
        if not converted:
            tail = (res.stdout + res.stderr).strip().splitlines()[-3:]
            raise InputError(f"dcm2niix found no DICOM series it could convert (exit {res.returncode}: "
                             f"{' / '.join(tail) or 'no output'})", path=dicom_dir)
        targets, listed = plan(converted)
        if not any(name.endswith(("MEGRE", "T2starw")) for _, _, name in targets):
            reasons = "; ".join(f"{p.name}: {r}" for p, r in listed[:6])
            raise InputError(f"no usable GRE acquisition (magnitude + phase or real + imaginary) among the "
                             f"{len(converted)} converted series ({reasons})", path=dicom_dir)
        paths = [(nii, meta, out / f"{prefix}{name}.nii.gz") for nii, meta, name in targets]
        existing = [str(p) for _, _, p in paths if p.exists() or p.with_name(p.name[:-7] + ".json").exists()]
        if existing:
            raise InputError(f"would replace existing files ({', '.join(existing[:3])}"
                             f"{' ...' if len(existing) > 3 else ''}); choose another participant/session "
                             "label or remove them", path=bids_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for nii, meta, dest in paths:
            if "_part-phase_" in dest.name and "Units" not in meta:
                meta = dict(meta, Units=_phase_units(nii))
            shutil.copyfile(nii, dest)
            dest.with_name(dest.name[:-7] + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            written.append(dest)
        version = (res.stdout.splitlines() or [""])[0].strip()
    description = bids_dir / "dataset_description.json"
    if not description.exists():
        description.write_text(json.dumps({
            "Name": bids_dir.name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
            "GeneratedBy": [{"Name": "qsmprep dicom2bids", "Version": __version__},
                            {"Name": "dcm2niix", "Version": version}],
        }, indent=2) + "\n")
    for dest in written:
        log(f"  wrote {dest.relative_to(bids_dir)}")
    for nii, reason in listed:
        log(f"  not converted: {nii.name[:-7]}: {reason}")
    if keep_identity:
        log("  the sidecars keep the patient and study tags of the DICOMs (--keep-identity): "
            "do not share this dataset as it is")
    return {"written": written, "listed": [(p.name, r) for p, r in listed],
            "seconds": round(time.perf_counter() - t0, 2)}
