"""BIDS input: find GRE acquisitions with pybids, validate them, and name derivatives.

Input contract (BIDS 1.9):

* multi-echo GRE as ``sub-<L>[_ses-<S>][_acq-<A>][_run-<R>]_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz]``
  (or ``part-real`` / ``part-imag``), one echo per file; single-echo GRE as ``..._part-<..>_T2starw``;
* sidecars give ``EchoTime`` (s) for every echo and ``MagneticFieldStrength`` (T);
* a ``T1w`` per subject (or session) is optional.

Every problem with the user's data raises :class:`qsmprep.errors.InputError` naming the
file and what is wrong.  Nothing here writes inside the BIDS directory (pybids runs
without a database file).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.dicom.export import source_identity
from qsmprep.errors import InputError
from qsmprep.qsm.sampling import SAMPLING_KEYS

LOGGER = logging.getLogger("nipype.workflow")

GRE_SUFFIXES = ("MEGRE", "T2starw")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
PARTS = ("mag", "phase", "real", "imag")
#: EchoTime values above this (in seconds) are taken to be milliseconds by mistake.
MAX_ECHO_TIME_S = 0.5


@dataclass
class GreRecord:
    """One GRE acquisition (subject, session, acq, run) ready for processing."""

    subject: str
    session: str | None
    acquisition: str | None
    run: str | None
    suffix: str
    echo_times: list
    b0: float
    magnitude: list = field(default_factory=list)
    phase: list = field(default_factory=list)
    real: list = field(default_factory=list)
    imag: list = field(default_factory=list)
    t1w: str | None = None
    shape: tuple = ()
    voxel_size: tuple = ()
    b0_source: str = "MagneticFieldStrength"
    #: (file of the first part, volume index) per echo: volume 0 of one file per echo, or the
    #: volumes of one 4D multi-echo file (sidecar ``EchoTime`` a list)
    echo_volumes: list = field(default_factory=list)
    #: the source DICOMs' patient and study tags from the first echo's sidecar
    #: (:func:`qsmprep.dicom.export.source_identity`; empty for anonymised data), for ``--dicom-export``
    identity: dict = field(default_factory=dict)
    #: how the first echo was sampled (its sidecar's :data:`qsmprep.qsm.sampling.SAMPLING_KEYS`
    #: that are present), for the ``unringing`` stage
    sampling: dict = field(default_factory=dict)

    @property
    def entities(self):
        """BIDS entities identifying the acquisition, in filename order."""
        ents = {"subject": self.subject}
        for key in ("session", "acquisition", "run"):
            if getattr(self, key) is not None:
                ents[key] = getattr(self, key)
        return ents

    @property
    def prefix(self):
        """Filename prefix, e.g. ``sub-01_ses-1_acq-qsm_run-1``."""
        return build_prefix(self.entities)

    @property
    def n_echoes(self):
        return len(self.echo_times)

    @property
    def is_complex(self):
        return not self.phase and bool(self.real)

    @property
    def source_files(self):
        return [*self.magnitude, *self.phase, *self.real, *self.imag]


_ENTITY_KEYS = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"), ("run", "run"))


def build_prefix(entities):
    """``sub-<L>[_ses-<S>][_acq-<A>][_run-<R>]`` from an entity dictionary."""
    return "_".join(f"{short}-{entities[key]}" for key, short in _ENTITY_KEYS if entities.get(key) is not None)


def derivative_path(out_dir, entities, suffix, *, desc=None, space=None, extension=".nii.gz", datatype="anat"):
    """Path of a derivative under ``out_dir`` following the names in DESIGN.md.

    >>> derivative_path("/o", {"subject": "01", "run": "2"}, "Chimap", space="T1w").as_posix()
    '/o/sub-01/anat/sub-01_run-2_space-T1w_Chimap.nii.gz'
    >>> derivative_path("/o", {"subject": "01", "session": "a"}, "mask", desc="brain").name
    'sub-01_ses-a_desc-brain_mask.nii.gz'
    """
    parts = [build_prefix(entities)]
    if space:
        parts.append(f"space-{space}")
    if desc:
        parts.append(f"desc-{desc}")
    parts.append(suffix)
    folder = Path(out_dir) / f"sub-{entities['subject']}"
    if entities.get("session") is not None:
        folder = folder / f"ses-{entities['session']}"
    return folder / datatype / ("_".join(parts) + extension)


def strip_prefix(labels, prefix):
    """Remove a leading ``sub-`` / ``ses-`` from user-given labels."""
    if not labels:
        return None
    return [lab[len(prefix):] if lab.startswith(prefix) else lab for lab in labels]


def _layout(bids_dir, validate):
    from bids.layout import BIDSLayout

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError("not a BIDS dataset (dataset_description.json is missing)", path=bids_dir)
    try:
        return BIDSLayout(str(bids_dir), validate=validate)
    except Exception as exc:  # noqa: BLE001 - pybids raises many types for broken datasets
        raise InputError(f"pybids cannot index the dataset: {exc}", path=bids_dir) from exc


def _one_echo_time(te, bidsfile):
    try:
        te = float(te)
    except (TypeError, ValueError) as exc:
        raise InputError(f"EchoTime {te!r} is not a number", path=bidsfile) from exc
    if not np.isfinite(te) or te <= 0:
        raise InputError(f"EchoTime {te} must be a positive number of seconds", path=bidsfile)
    if te > MAX_ECHO_TIME_S:
        raise InputError(
            f"EchoTime {te} looks like milliseconds; BIDS requires seconds (e.g. {te / 1000:g})",
            path=bidsfile,
        )
    return te


def _echo_times(bidsfile, metadata):
    """The file's echo time(s) in seconds: a list of one, or of every echo of a 4D file."""
    te = metadata.get("EchoTime")
    if te is None:
        raise InputError("EchoTime is missing from the JSON sidecar", path=bidsfile)
    if isinstance(te, (list, tuple)):
        if not te:
            raise InputError("EchoTime is an empty list", path=bidsfile)
        return [_one_echo_time(t, bidsfile) for t in te]
    return [_one_echo_time(te, bidsfile)]


def _load_header(path):
    """nibabel image (header only) of ``path``, or an InputError naming the file."""
    from qsmprep.integrity import check_nifti

    check_nifti(path, full=False)
    try:
        return nib.load(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise InputError(f"cannot read the NIfTI header: {exc}", path=path) from exc


def _check_geometry(files, n_volumes=None):
    """All echoes/parts must share shape and affine; return (shape, voxel size).

    ``n_volumes``: path -> number of echoes the file holds (4D multi-echo files); every
    other file must be 3D (one echo per file).
    """
    n_volumes = n_volumes or {}
    ref_path = files[0]
    ref = _load_header(ref_path)
    ref_shape = ref.shape[:3]
    for path in files:
        img = _load_header(path)
        shape = img.shape
        want = n_volumes.get(path, 1)
        if want > 1:
            if len(shape) != 4 or shape[3] != want:
                raise InputError(
                    f"the sidecar lists {want} echo times (EchoTime), so a 4D image with {want} volumes "
                    f"is expected, got shape {shape}", path=path)
            shape = shape[:3]
        elif len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise InputError(
                f"expected a 3D image (one echo per file), got shape {shape}; a 4D multi-echo file needs "
                "EchoTime as a list with one value per volume in its sidecar", path=path)
        if shape != ref_shape:
            raise InputError(f"shape {shape} differs from {ref_shape} of {ref_path}", path=path)
        if not np.allclose(img.affine, ref.affine, atol=1e-4):
            raise InputError(f"affine differs from that of {ref_path}", path=path)
    zooms = tuple(float(z) for z in ref.header.get_zooms()[:3])
    return tuple(int(s) for s in ref_shape), zooms


def _assemble(key, files_by_part, layout, b0_override):
    sub, ses, acq, run, suffix = key
    parts = {p: sorted(v, key=lambda f: f[0]) for p, v in files_by_part.items()}
    if "phase" in parts and "mag" not in parts:
        raise InputError(
            "phase without magnitude: no matching part-mag file", path=parts["phase"][0][1].path
        )
    if "mag" in parts and "phase" not in parts and not {"real", "imag"} <= set(parts):
        raise InputError(
            "magnitude without phase: QSM needs the phase (part-phase) or part-real/part-imag",
            path=parts["mag"][0][1].path,
        )
    if ("real" in parts) != ("imag" in parts):
        have = "real" if "real" in parts else "imag"
        raise InputError(f"part-{have} without its partner part", path=parts[have][0][1].path)
    use = ("mag", "phase") if "phase" in parts else ("real", "imag")

    counts = {p: len(parts[p]) for p in use}
    if len(set(counts.values())) != 1:
        raise InputError(
            "echo count mismatch between parts: "
            + ", ".join(f"{n} part-{p} files" for p, n in counts.items()),
            path=parts[use[0]][0][1].path,
        )
    for p in use:
        echoes = [e for e, _ in parts[p]]
        if len(set(echoes)) != len(echoes):
            raise InputError(f"duplicate echo numbers {echoes} for part-{p}", path=parts[p][0][1].path)
    echoes_a = [e for e, _ in parts[use[0]]]
    echoes_b = [e for e, _ in parts[use[1]]]
    if echoes_a != echoes_b:
        raise InputError(
            f"echo numbers differ between part-{use[0]} {echoes_a} and part-{use[1]} {echoes_b}",
            path=parts[use[1]][0][1].path,
        )

    echo_times, b0_values, n_volumes, echo_files, identity, sampling = [], set(), {}, [], None, None
    for (_, fa), (_, fb) in zip(parts[use[0]], parts[use[1]]):
        meta_a, meta_b = fa.get_metadata(), fb.get_metadata()
        if identity is None:
            identity = source_identity(meta_a)
            sampling = {k: meta_a[k] for k in SAMPLING_KEYS if meta_a.get(k) is not None}
        tes_a, tes_b = _echo_times(fa.path, meta_a), _echo_times(fb.path, meta_b)
        if (len(tes_a) > 1 or len(tes_b) > 1) and len(parts[use[0]]) > 1:  # a 4D file holds every echo
            f, tes = (fa, tes_a) if len(tes_a) > 1 else (fb, tes_b)
            raise InputError(
                f"EchoTime lists {len(tes)} echo times (a 4D multi-echo file) but the acquisition has "
                f"{len(parts[use[0]])} files per part; use one 4D file per part or one echo per file", path=f.path)
        if len(tes_a) != len(tes_b) or not np.allclose(tes_a, tes_b, rtol=1e-4, atol=1e-7):
            shown = (tes_a[0], tes_b[0]) if len(tes_a) == len(tes_b) == 1 else (tes_a, tes_b)
            raise InputError(f"EchoTime {shown[1]} differs from {shown[0]} in {fa.path}", path=fb.path)
        for f, tes in ((fa, tes_a), (fb, tes_b)):
            n_volumes[f.path] = len(tes)
        for volume, te in enumerate(tes_a):
            echo_times.append(te)
            echo_files.append((fa.path, volume))
        for f, meta in ((fa, meta_a), (fb, meta_b)):
            if meta.get("MagneticFieldStrength") is not None:
                b0_values.add((float(meta["MagneticFieldStrength"]), f.path))
    for i in range(len(echo_times)):
        for j in range(i):
            if np.isclose(echo_times[i], echo_times[j], rtol=1e-6, atol=1e-9):
                raise InputError(
                    f"duplicate EchoTime {echo_times[i]} s (also in {echo_files[j][0]})",
                    path=echo_files[i][0],
                )
    if any(np.diff(echo_times) <= 0):
        raise InputError(
            f"EchoTime does not increase with the echo number: {echo_times}", path=parts[use[0]][0][1].path
        )

    strengths = {v for v, _ in b0_values}
    if len(strengths) > 1:
        raise InputError(
            f"MagneticFieldStrength differs between echoes: {sorted(strengths)}",
            path=sorted(p for _, p in b0_values)[0],
        )
    b0_source = "MagneticFieldStrength"
    if b0_override is not None:
        if strengths and not np.isclose(strengths.pop(), b0_override):
            LOGGER.warning("--b0 %s T overrides MagneticFieldStrength in the sidecars", b0_override)
        b0, b0_source = float(b0_override), "--b0"
    elif strengths:
        b0 = strengths.pop()
    else:
        raise InputError(
            "MagneticFieldStrength is missing from the JSON sidecar (give the field strength with --b0)",
            path=parts[use[0]][0][1].path,
        )
    if not 0.05 <= b0 <= 20:
        raise InputError(f"MagneticFieldStrength {b0} T is outside 0.05-20 T", path=parts[use[0]][0][1].path)

    paths = {p: [f.path for _, f in parts[p]] for p in use}
    shape, zooms = _check_geometry(paths[use[0]] + paths[use[1]], n_volumes)
    record = GreRecord(
        subject=sub, session=ses, acquisition=acq, run=run, suffix=suffix,
        echo_times=echo_times, b0=b0, shape=shape, voxel_size=zooms, b0_source=b0_source,
        echo_volumes=echo_files, identity=identity or {}, sampling=sampling or {},
    )
    for p in use:
        setattr(record, "magnitude" if p == "mag" else p, paths[p])
    record.t1w = _find_t1w(layout, sub, ses)
    return record


def _find_t1w(layout, subject, session):
    query = {"subject": subject, "suffix": "T1w", "extension": list(NIFTI_EXTENSIONS), "return_type": "filename"}
    found = layout.get(session=session, **query) if session is not None else layout.get(**query)
    if not found and session is not None:
        found = [f for f in layout.get(**query) if "_ses-" not in Path(f).name]
    found = sorted(found)
    if len(found) > 1:
        LOGGER.warning("sub-%s: %d T1w images found, using %s", subject, len(found), found[0])
    return found[0] if found else None


def collect_gre(bids_dir, *, participant_label=None, session_label=None, validate=True, b0=None):
    """Find and validate all GRE acquisitions of the requested participants.

    Parameters
    ----------
    bids_dir : path-like
        Root of the BIDS dataset (read only).
    participant_label, session_label : list of str, optional
        Labels with or without the ``sub-`` / ``ses-`` prefix; all when omitted.
    validate : bool
        Let pybids validate file names (``--skip-bids-validation`` turns it off).
    b0 : float, optional
        Field strength (T) overriding / replacing ``MagneticFieldStrength``.

    Returns
    -------
    list of GreRecord
        Sorted by subject, session, acquisition and run.
    """
    layout = _layout(bids_dir, validate)
    subjects = layout.get_subjects()
    if not subjects:
        raise InputError("the dataset has no participants (no sub-<label> folder with data)", path=bids_dir)
    wanted = strip_prefix(participant_label, "sub-") or subjects
    missing = [s for s in wanted if s not in subjects]
    if missing:
        raise InputError(
            f"participant(s) {missing} not found; the dataset has {sorted(subjects)}", path=bids_dir
        )
    sessions = strip_prefix(session_label, "ses-")

    records = []
    for sub in wanted:
        query = {"subject": sub, "suffix": list(GRE_SUFFIXES), "extension": list(NIFTI_EXTENSIONS)}
        if sessions:
            query["session"] = sessions
        files = layout.get(**query)
        files += _unindexed_gre(layout, bids_dir, sub, sessions, {f.path for f in files})
        if not files:
            raise InputError(
                f"no GRE data found for participant {sub} (expected *_part-mag|phase_MEGRE.nii[.gz] "
                f"or *_T2starw.nii[.gz] under sub-{sub}/[ses-*/]anat/)",
                path=Path(bids_dir) / f"sub-{sub}",
            )
        groups = defaultdict(lambda: defaultdict(list))
        for f in files:
            ents = f.get_entities()
            part = ents.get("part")
            if part not in PARTS:
                raise InputError(
                    f"GRE file without a part-mag|phase|real|imag entity (part={part!r})", path=f.path
                )
            key = (
                sub,
                _str_or_none(ents.get("session")),
                _str_or_none(ents.get("acquisition")),
                _str_or_none(ents.get("run")),
                ents["suffix"],
            )
            groups[key][part].append((int(ents.get("echo", 1)), f))
        for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            records.append(_assemble(key, groups[key], layout, b0))
    return records


class _UnindexedFile:
    """A GRE file pybids' validator left out (e.g. a 4D ``..._part-mag_MEGRE`` without ``echo-``).

    Several converters write all echoes into one 4D file with ``EchoTime`` a list; BIDS
    wants ``echo-<n>`` on MEGRE files, so the validating index drops it and the data would
    vanish silently.  Entities come from pybids' filename parser, metadata from the JSON
    sidecar of the same name (no inheritance from higher levels).
    """

    def __init__(self, layout, path):
        self.path = str(path)
        self._entities = layout.parse_file_entities(self.path)
        self._sidecar = Path(self.path.rsplit(".nii", 1)[0] + ".json")

    def get_entities(self):
        return dict(self._entities)

    def get_metadata(self):
        if not self._sidecar.is_file():
            return {}
        import json

        try:
            return json.loads(self._sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the JSON sidecar: {exc}", path=self._sidecar) from exc


def _unindexed_gre(layout, bids_dir, subject, sessions, indexed):
    """GRE files of ``subject`` on disk that the (validating) index does not hold."""
    base = Path(bids_dir) / f"sub-{subject}"
    found = []
    for pattern in ("anat/*", "ses-*/anat/*"):
        for path in sorted(base.glob(pattern)):
            name = path.name
            if not name.endswith(NIFTI_EXTENSIONS) or str(path) in indexed:
                continue
            if not any(name.rsplit(".nii", 1)[0].endswith(f"_{suffix}") for suffix in GRE_SUFFIXES):
                continue
            f = _UnindexedFile(layout, path)
            if sessions and str(f.get_entities().get("session")) not in sessions:
                continue
            LOGGER.warning("%s is not indexed by the BIDS validator (e.g. a 4D multi-echo file without "
                           "echo-<n>); reading it with its own JSON sidecar", path)
            found.append(f)
    return found


def _str_or_none(value):
    return None if value is None else str(value)
