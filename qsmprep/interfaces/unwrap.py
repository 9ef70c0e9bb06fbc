"""Nipype wrappers for phase-offset removal and phase unwrapping."""

from __future__ import annotations

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.interfaces.base import QSMInputSpec, load, load_mask, save_like, voxel_size_of
from qsmprep.qsm.phase import remove_phase_offset
from qsmprep.qsm.unwrap import unwrap_echoes


class _PhaseOffsetInputSpec(QSMInputSpec):
    phase = File(exists=True, mandatory=True, desc="4D wrapped phase (radians)")
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    method = traits.Str("mcpc3ds", usedefault=True, desc="phase-offset removal method")
    mask = File(exists=True, desc="optional mask restricting the estimate")


class _PhaseOffsetOutputSpec(TraitedSpec):
    phase = File(exists=True, desc="4D phase with the receive phase offset removed (radians)")
    offset = File(exists=True, desc="3D phase offset that was removed (radians)")


class RemovePhaseOffset(SimpleInterface):
    """Remove the echo-independent (receive-coil) phase offset from every echo."""

    input_spec = _PhaseOffsetInputSpec
    output_spec = _PhaseOffsetOutputSpec

    def _run_interface(self, runtime):
        phase, img = load(self.inputs.phase)
        mag, _ = load(self.inputs.magnitude)
        mask = load_mask(self.inputs.mask) if isdefined(self.inputs.mask) else None
        corrected, offset = remove_phase_offset(
            phase, mag, self.inputs.echo_times, method=self.inputs.method,
            voxel_size=voxel_size_of(img), mask=mask,
        )
        self._results["phase"] = save_like(corrected, img, "phase_nooffset.nii", runtime.cwd)
        self._results["offset"] = save_like(offset, img, "phase_offset.nii", runtime.cwd)
        return runtime


class _UnwrapInputSpec(QSMInputSpec):
    phase = File(exists=True, mandatory=True, desc="4D wrapped phase (radians)")
    magnitude = File(exists=True, desc="4D magnitude (quality-guided methods use it)")
    echo_times = traits.List(traits.Float, desc="echo times (s), for temporal unwrapping")
    mask = File(exists=True, desc="optional mask")
    method = traits.Str(mandatory=True,
                        desc="unwrapping method (its default: config.DEFAULT_METHODS)")
    params = traits.Dict(desc="method-specific keyword parameters")


class _UnwrapOutputSpec(TraitedSpec):
    unwrapped = File(exists=True, desc="4D unwrapped phase (radians)")
    quality = File(desc="3D phase-quality map in [0, 1] where the method makes one")
    info = traits.Dict(desc="method and parameters, for sidecars")


class UnwrapPhase(SimpleInterface):
    """Unwrap every echo with the configured method (:func:`qsmprep.qsm.unwrap.unwrap_echoes`)."""

    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        phase, img = load(self.inputs.phase)
        mag = load(self.inputs.magnitude)[0] if isdefined(self.inputs.magnitude) else None
        mask = load_mask(self.inputs.mask) if isdefined(self.inputs.mask) else None
        tes = self.inputs.echo_times if isdefined(self.inputs.echo_times) else None
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        unwrapped, quality = unwrap_echoes(
            phase, method=self.inputs.method, voxel_size=voxel_size_of(img), mag=mag, tes=tes,
            mask=mask, workers=self.inputs.num_threads, **params,
        )
        self._results["unwrapped"] = save_like(unwrapped, img, "phase_unwrapped.nii", runtime.cwd)
        if quality is not None:
            self._results["quality"] = save_like(quality, img, "phase_quality.nii", runtime.cwd)
        self._results["info"] = {"UnwrappingMethod": self.inputs.method, "UnwrappingParameters": params}
        return runtime
