"""Load the echoes of one GRE acquisition into 4D magnitude and phase (radians)."""

from __future__ import annotations

import logging

import numpy as np
from nipype.interfaces.base import (
    File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined, traits,
)

from qsmprep.errors import InputError
from qsmprep.interfaces.base import QSMInputSpec, save_like
from qsmprep.qsm import kernels
from qsmprep.qsm.phase import PHASE_UNITS, PhaseUnitsError, complex_to_polar, detect_phase_units, scale_phase

LOGGER = logging.getLogger("nipype.workflow")


class _LoadGREInputSpec(QSMInputSpec):
    magnitude = InputMultiObject(File(exists=True), desc="magnitude per echo (part-mag), or one 4D file")
    phase = InputMultiObject(File(exists=True), desc="phase per echo (part-phase), or one 4D file")
    real = InputMultiObject(File(exists=True), desc="real part per echo (part-real), or one 4D file")
    imag = InputMultiObject(File(exists=True), desc="imaginary part per echo (part-imag), or one 4D file")
    phase_units = traits.Enum(*PHASE_UNITS, usedefault=True,
                              desc="phase units, or 'auto' to decide from the values (detect_phase_units)")


class _LoadGREOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc="4D magnitude (x, y, z, echo)")
    phase = File(exists=True, desc="4D wrapped phase in radians [-pi, pi)")
    phase_units = traits.Str(desc="the phase units detected or used")
    phase_info = traits.Dict(desc="PhaseUnits, PhaseUnitsSource, PhaseRawRange, ... for every sidecar")
    b0_dir = traits.List(traits.Float, desc="unit B0 vector in voxel axes, from the affine")
    voxel_size = traits.List(traits.Float, desc="voxel size (mm)")


def read_echoes(path):
    """The 3D echo volumes of one file (a 4D file gives one volume per echo), checked.

    Values keep the file's own type (integers stay integers, so the unit rule sees them as
    stored and nothing is converted twice); a header scaling makes them floating point.
    """
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 3:
        vols = [data]
    elif data.ndim == 4:
        vols = [data[..., i] for i in range(data.shape[3])]
    else:
        raise InputError(f"expected a 3D or 4D image, got shape {data.shape}", path=path)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{bad} voxels are NaN or infinite", path=path)
    return vols, img


def _read_all(paths):
    vols, ref = [], None
    for path in paths:
        v, img = read_echoes(path)
        vols += [(x, path) for x in v]
        ref = img if ref is None else ref
    return vols, ref


class LoadGRE(SimpleInterface):
    """Read per-echo (or 4D) files, check them, scale the phase to radians, stack echoes as 4D.

    The phase units: ``phase_units`` if given, else :func:`qsmprep.qsm.phase.detect_phase_units`
    on all echoes together (one scanner encoding per acquisition); ``rescale`` maps the
    acquisition's value range over all echoes onto [-π, π).  What was used, why, and the
    raw range go to ``phase_info`` (every sidecar, QC, report and CITATION).
    """

    input_spec = _LoadGREInputSpec
    output_spec = _LoadGREOutputSpec

    def _run_interface(self, runtime):
        complex_input = not isdefined(self.inputs.phase) or not self.inputs.phase
        if complex_input:
            reals, ref = _read_all(self.inputs.real)
            imags, _ = _read_all(self.inputs.imag)
            if len(reals) != len(imags):
                raise InputError(f"{len(reals)} real echoes but {len(imags)} imaginary echoes",
                                 path=self.inputs.imag[0])
            mags, phases = zip(*(complex_to_polar(r, i) for (r, _), (i, _) in zip(reals, imags)))
            units = "radians (from real/imag)"
            info = {"PhaseUnits": units, "PhaseUnitsSource": "complex input (real/imag): no unit needed",
                    "PhaseRawRange": None}
        else:
            mag_data, ref = _read_all(self.inputs.magnitude)
            for m, path in mag_data:
                if np.any(m < 0):
                    raise InputError("magnitude has negative values (is this a phase image?)", path=path)
            mags = [m.astype(np.float32) for m, _ in mag_data]
            raw, _ = _read_all(self.inputs.phase)
            stacked = np.stack([r for r, _ in raw], axis=-1)
            lo, hi = float(stacked.min()), float(stacked.max())
            first = self.inputs.phase[0]
            units = self.inputs.phase_units
            try:
                if units == "auto":
                    units, reason = detect_phase_units(stacked)
                    source = f"auto-detected: {reason}"
                else:
                    source = "set by the user (--phase-units or the preset's phase_units)"
                phases = [scale_phase(p, units=units, value_range=(lo, hi)) for p, _ in raw]
            except PhaseUnitsError as exc:
                raise InputError(f"cannot tell the phase units: {exc}", path=first) from exc
            except ValueError as exc:
                raise InputError(f"cannot scale phase to radians as {units}: {exc}", path=first) from exc
            del stacked
            info = {"PhaseUnits": units, "PhaseUnitsSource": source, "PhaseRawRange": [lo, hi]}
            if units == "rescale":
                info["PhaseRescaleRange"] = [lo, hi]
                LOGGER.warning(
                    "%s: phase values %.6g..%.6g fit no known unit; they look like a linearly scaled "
                    "wrapped phase and are mapped linearly onto [-pi, pi) ('rescale'). Check the "
                    "scanner's export, or pass --phase-units to state the units.", first, lo, hi)
        if len(mags) != len(phases):
            raise InputError(f"{len(mags)} magnitude echoes but {len(phases)} phase echoes",
                             path=(self.inputs.phase or self.inputs.imag)[0])
        mag4d = np.stack(mags, axis=-1).astype(np.float32, copy=False)
        phase4d = np.stack(phases, axis=-1).astype(np.float32, copy=False)
        self._results["magnitude"] = save_like(mag4d, ref, "magnitude.nii", runtime.cwd)
        self._results["phase"] = save_like(phase4d, ref, "phase.nii", runtime.cwd)
        self._results["phase_units"] = units
        self._results["phase_info"] = info
        self._results["b0_dir"] = [float(v) for v in kernels.b0_direction(ref.affine)]
        self._results["voxel_size"] = list(kernels.voxel_sizes(ref.affine))
        return runtime
