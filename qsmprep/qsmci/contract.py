"""The QSM-CI stage contract's artifacts: reading them (validated) and writing outputs.

QSM-CI (https://github.com/QSMxT/QSM-CI, ``CONTRACT.md`` and ``stages.yml``; the ``qsm-ci``
package's :mod:`qsm_ci.stages` mirrors them) runs one stage of a QSM pipeline in a container
that reads the artifacts the stage consumes from ``/input`` and writes what it produces to
``/output``:

* ``phase.nii.gz``: radians, 4D ``x, y, z, echo`` (3D for one echo); ``magnitude.nii.gz``:
  the same shape, arbitrary units; ``mask.nii.gz``: binary, 3D;
* ``params.json``: ``TE`` (s, one per echo), ``B0`` (T), ``B0_dir`` (unit vector in image,
  i.e. voxel-axis, coordinates), ``voxel_size`` (mm);
* ``totalfield`` / ``localfield`` / ``chimap.nii.gz``: ppm, 3D, on the mask's grid;
* ``config.json`` (optional): a flat object of parameter overrides.

Everything here refuses what does not fit the contract with an :class:`InputError` that
names the file and what is wrong; nothing is guessed.  Where the contract and the image
headers disagree (voxel size, B0 direction against the affine) the contract's value is used,
as the benchmark's own tools do, and the disagreement is recorded in the output's sidecar.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmprep.errors import InputError

#: Stage (or span) -> consumed and produced artifacts, as in QSM-CI's ``stages.yml`` (the
#: stages qsmprep implements; ``tests/test_qsmci.py`` checks them against ``qsm_ci.stages``).
STAGES = {
    "field-mapping": {"consumes": ("phase", "magnitude", "mask", "params"), "produces": ("totalfield",)},
    "bfr": {"consumes": ("totalfield", "mask", "params"), "produces": ("localfield",)},
    "dipole": {"consumes": ("localfield", "mask", "params"), "produces": ("chimap",)},
    "bfr+dipole": {"consumes": ("totalfield", "mask", "params", "magnitude"), "produces": ("chimap",)},
    "end-to-end": {"consumes": ("phase", "magnitude", "mask", "params"), "produces": ("chimap",)},
}
#: Consumed artifacts a stage runs without (QSM-CI's ``is_optional``: the magnitude, where it
#: is not the only image input).  Without it MEDI's edge mask and the magnitude data weights
#: are off; the sidecar says so.
OPTIONAL = {"magnitude"}
#: Artifacts outside a stage's contract that qsmprep reads when the runner mounts them (a
#: submission's ``optional_inputs:``): the dipole stage's magnitude (MEDI's edge mask, the
#: data weights, MEDI+0's R2*).
EXTRAS = {"dipole": ("magnitude",)}
ARTIFACT_FILE = {"phase": "phase.nii.gz", "magnitude": "magnitude.nii.gz", "mask": "mask.nii.gz",
                 "params": "params.json", "totalfield": "totalfield.nii.gz", "localfield": "localfield.nii.gz",
                 "chimap": "chimap.nii.gz"}
#: Angle (degrees) between ``B0_dir`` and the direction the affine implies above which the
#: sidecar carries a warning.
B0_DIR_WARN_DEG = 1.0


def _find(input_dir, artifact):
    """The artifact's file, ``.nii.gz`` or ``.nii`` (QSM-CI writes the former)."""
    path = Path(input_dir) / ARTIFACT_FILE[artifact]
    if path.is_file():
        return path
    plain = path.with_name(path.name.removesuffix(".gz"))
    return plain if plain.is_file() else None


def _positive_list(value, name, path, length=None):
    if not isinstance(value, (list, tuple)) or not value or (length is not None and len(value) != length):
        want = f"{length} numbers" if length else "a non-empty list of numbers"
        raise InputError(f"{name} must be {want}, got {value!r}", path=path)
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numbers, got {value!r}", path=path) from None
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError(f"{name} must be positive and finite, got {value!r}", path=path)
    return out


def _json_object(path, what):
    """The JSON object in ``path`` (an :class:`InputError` naming it otherwise)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read it as JSON: {exc}", path=path) from None
    if not isinstance(raw, dict):
        raise InputError(f"must hold a JSON object of {what}", path=path)
    return raw


def read_params(input_dir):
    """``params.json`` validated: ``{"TE": [s], "B0": T, "B0_dir": unit 3-vector, "voxel_size": [mm]}``."""
    path = Path(input_dir) / ARTIFACT_FILE["params"]
    if not path.is_file():
        raise InputError("missing: every QSM-CI stage consumes params.json (TE, B0, B0_dir, voxel_size)", path=path)
    raw = _json_object(path, "acquisition parameters")
    missing = [k for k in ("TE", "B0", "B0_dir", "voxel_size") if k not in raw]
    if missing:
        raise InputError(f"lacks {', '.join(missing)} (the contract's TE, B0, B0_dir, voxel_size)", path=path)
    tes = raw["TE"] if isinstance(raw["TE"], (list, tuple)) else [raw["TE"]]
    tes = _positive_list(tes, "TE (seconds)", path)
    if any(t > 1.0 for t in tes):
        raise InputError(f"TE must be in seconds; {tes} looks like milliseconds", path=path)
    b0 = _positive_list([raw["B0"]], "B0 (tesla)", path)[0]
    voxel = _positive_list(raw["voxel_size"], "voxel_size (mm)", path, 3)
    try:
        b0_dir = np.asarray(raw["B0_dir"], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        b0_dir = np.zeros(0)
    if b0_dir.size != 3 or not np.all(np.isfinite(b0_dir)) or np.linalg.norm(b0_dir) < 1e-6:
        raise InputError(f"B0_dir must be a non-zero 3-vector, got {raw['B0_dir']!r}", path=path)
    return {"TE": tes, "B0": b0, "B0_dir": (b0_dir / np.linalg.norm(b0_dir)).tolist(), "voxel_size": voxel}


def read_overrides(input_dir):
    """QSM-CI's optional ``config.json`` (flat parameter overrides), or ``{}``."""
    path = Path(input_dir) / "config.json"
    return _json_object(path, "parameter overrides") if path.is_file() else {}


def _load(path, what):
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any unreadable image is the input's fault
        raise InputError(f"cannot read the {what} image: {exc}", path=path) from None
    return data, img


def read_inputs(input_dir, stage):
    """The artifacts ``stage`` consumes from ``input_dir``, validated against each other.

    Returns a dict with the arrays (``phase`` in radians re-wrapped to [-π, π), 4D;
    ``magnitude`` 4D or None; ``mask`` bool; ``totalfield``/``localfield`` ppm), ``params``
    (:func:`read_params`), ``image`` (the mask's NIfTI: the outputs' grid) and ``notes``
    (disagreements between the contract and the headers, for the sidecar).
    """
    from qsmprep.qsm import kernels
    from qsmprep.qsm.phase import scale_phase

    if stage not in STAGES:
        raise InputError(f"unknown QSM-CI stage {stage!r}; qsmprep implements {', '.join(STAGES)}")
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError("input folder does not exist", path=input_dir)
    consumes = STAGES[stage]["consumes"]
    params = read_params(input_dir)
    out = {"params": params, "notes": []}
    mask_path = _find(input_dir, "mask")
    if mask_path is None:
        raise InputError(f"missing: the {stage} stage consumes {', '.join(consumes)}",
                         path=input_dir / ARTIFACT_FILE["mask"])
    mask, img = _load(mask_path, "mask")
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise InputError(f"the mask must be 3D, got shape {mask.shape}", path=mask_path)
    if not np.all(np.isfinite(mask)):
        raise InputError("the mask has non-finite values", path=mask_path)
    mask = mask > 0.5
    if not mask.any():
        raise InputError("the mask is empty", path=mask_path)
    out["mask"], out["image"] = mask, img
    header_vs = [float(z) for z in img.header.get_zooms()[:3]]
    if not np.allclose(header_vs, params["voxel_size"], rtol=1e-2):
        out["notes"].append(f"params.json voxel_size {params['voxel_size']} differs from the mask header's "
                            f"{header_vs}; the contract's value was used")
    implied = np.asarray(kernels.b0_direction(img.affine), dtype=np.float64)
    angle = math.degrees(math.acos(min(1.0, abs(float(np.dot(implied, params["B0_dir"]))))))
    if angle > B0_DIR_WARN_DEG:
        out["notes"].append(f"params.json B0_dir {params['B0_dir']} is {angle:.1f} degrees from the direction the "
                            f"mask's affine implies for a scanner-z field ({implied.round(4).tolist()}); the "
                            "contract's B0_dir was used")
    for artifact in consumes + EXTRAS.get(stage, ()):
        if artifact in ("mask", "params"):
            continue
        path = _find(input_dir, artifact)
        if path is None:
            if artifact in OPTIONAL or artifact in EXTRAS.get(stage, ()):
                out[artifact] = None
                out["notes"].append(f"no {ARTIFACT_FILE[artifact]}: run without magnitude (uniform data "
                                    "weights, no magnitude edge mask)")
                continue
            raise InputError(f"missing: the {stage} stage consumes {', '.join(consumes)}",
                             path=input_dir / ARTIFACT_FILE[artifact])
        data, _ = _load(path, artifact)
        if artifact in ("phase", "magnitude"):
            data = data[..., None] if data.ndim == 3 else data
            if data.ndim != 4 or data.shape[:3] != mask.shape:
                raise InputError(f"shape {data.shape} does not fit the mask's grid {mask.shape} (x, y, z[, echo])",
                                 path=path)
            if data.shape[3] != len(params["TE"]):
                raise InputError(f"{data.shape[3]} echo(es) but params.json lists {len(params['TE'])} TE(s)",
                                 path=path)
        elif data.shape[:3] != mask.shape or (data.ndim == 4 and data.shape[3] != 1) or data.ndim > 4:
            raise InputError(f"shape {data.shape} is not the mask's 3D grid {mask.shape}", path=path)
        else:
            data = data.reshape(mask.shape)
        if not np.all(np.isfinite(data[mask])):
            raise InputError("has non-finite values (NaN/inf) inside the mask", path=path)
        data = np.where(np.isfinite(data), data, 0).astype(np.float32)
        if artifact == "phase":
            try:
                data = scale_phase(data, units="radians")
            except ValueError as exc:
                raise InputError(f"the contract's phase is in radians: {exc}", path=path) from None
        out[artifact] = data
    return out


def write_output(output_dir, artifact, data, image, sidecar):
    """Write a produced artifact (float32, the mask's grid) and its JSON sidecar; returns the path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_data_shape(np.shape(data))
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan
    path = output_dir / ARTIFACT_FILE[artifact]
    nib.Nifti1Image(np.asarray(data, dtype=np.float32), image.affine, header).to_filename(path)
    (output_dir / ARTIFACT_FILE[artifact].replace(".nii.gz", ".json")).write_text(
        json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def write_inputs(input_dir, *, affine, mask, te, b0, b0_dir, voxel_size, phase=None, magnitude=None,
                 totalfield=None, localfield=None):
    """Write arrays as a stage's contract inputs (``phase`` rad, fields ppm, float32 NIfTI).

    For converting data to the contract (tests, benchmarks); returns ``input_dir``.
    """
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine).to_filename(input_dir / ARTIFACT_FILE["mask"])
    for name, data in (("phase", phase), ("magnitude", magnitude), ("totalfield", totalfield),
                       ("localfield", localfield)):
        if data is not None:
            nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine).to_filename(input_dir / ARTIFACT_FILE[name])
    params = {"TE": [float(t) for t in np.ravel(te)], "B0": float(b0), "B0_dir": [float(v) for v in b0_dir],
              "voxel_size": [float(v) for v in voxel_size]}
    (input_dir / ARTIFACT_FILE["params"]).write_text(json.dumps(params, indent=2) + "\n")
    return input_dir
