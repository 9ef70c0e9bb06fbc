"""Load the echoes of one GRE acquisition into 4D magnitude and phase (radians)."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import (
    File, InputMultiObject, SimpleInterface, TraitedSpec, isdefined, traits,
)

from qsmprep.errors import InputError
from qsmprep.interfaces.base import QSMInputSpec, load, save_like
from qsmprep.qsm import kernels
from qsmprep.qsm.phase import complex_to_polar, detect_phase_units, scale_phase


class _LoadGREInputSpec(QSMInputSpec):
    magnitude = InputMultiObject(File(exists=True), desc="magnitude per echo (part-mag)")
    phase = InputMultiObject(File(exists=True), desc="phase per echo (part-phase)")
    real = InputMultiObject(File(exists=True), desc="real part per echo (part-real)")
    imag = InputMultiObject(File(exists=True), desc="imaginary part per echo (part-imag)")
    phase_units = traits.Str("auto", usedefault=True, desc="phase units, or 'auto' to detect from the range")


class _LoadGREOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc="4D magnitude (x, y, z, echo)")
    phase = File(exists=True, desc="4D wrapped phase in radians [-pi, pi)")
    phase_units = traits.Str(desc="the phase units detected or used")
    b0_dir = traits.List(traits.Float, desc="unit B0 vector in voxel axes, from the affine")
    voxel_size = traits.List(traits.Float, desc="voxel size (mm)")


def _read_checked(path):
    data, img = load(path, dtype=np.float64)
    if data.ndim == 4:
        data = data[..., 0]
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{bad} voxels are NaN or infinite", path=path)
    return data, img


class LoadGRE(SimpleInterface):
    """Read per-echo files, check them, scale the phase to radians, stack echoes as 4D."""

    input_spec = _LoadGREInputSpec
    output_spec = _LoadGREOutputSpec

    def _run_interface(self, runtime):
        complex_input = not isdefined(self.inputs.phase) or not self.inputs.phase
        if complex_input:
            reals = [_read_checked(p) for p in self.inputs.real]
            imags = [_read_checked(p) for p in self.inputs.imag]
            ref = reals[0][1]
            mags, phases = zip(*(complex_to_polar(r[0], i[0]) for r, i in zip(reals, imags)))
            units = "radians (from real/imag)"
        else:
            mag_data = [_read_checked(p) for p in self.inputs.magnitude]
            ref = mag_data[0][1]
            for (m, _), path in zip(mag_data, self.inputs.magnitude):
                if np.any(m < 0):
                    raise InputError("magnitude has negative values (is this a phase image?)", path=path)
            mags = [m for m, _ in mag_data]
            raw = [_read_checked(p)[0] for p in self.inputs.phase]
            stacked = np.stack(raw, axis=-1)
            try:
                units = self.inputs.phase_units
                if units == "auto":
                    units = detect_phase_units(stacked)
                phases = [scale_phase(p, units=units) for p in raw]
            except ValueError as exc:
                raise InputError(f"cannot scale phase to radians: {exc}", path=self.inputs.phase[0]) from exc
        mag4d = np.stack(mags, axis=-1).astype(np.float32)
        phase4d = np.stack(phases, axis=-1).astype(np.float32)
        self._results["magnitude"] = save_like(mag4d, ref, "magnitude.nii", runtime.cwd)
        self._results["phase"] = save_like(phase4d, ref, "phase.nii", runtime.cwd)
        self._results["phase_units"] = units
        self._results["b0_dir"] = [float(v) for v in kernels.b0_direction(ref.affine)]
        self._results["voxel_size"] = list(kernels.voxel_sizes(ref.affine))
        return runtime
