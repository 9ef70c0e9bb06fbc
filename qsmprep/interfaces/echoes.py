"""Nipype wrappers for echo combination, R2*/T2* and echo averaging."""

from __future__ import annotations

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.interfaces.base import QSMInputSpec, jsonable, load, load_mask, save_like
from qsmprep.qsm.echoes import echo_average, fit_field, r2star_map, t2star_from_r2star


class _FitFieldInputSpec(QSMInputSpec):
    unwrapped = File(exists=True, mandatory=True, desc="4D unwrapped phase (radians)")
    phase = File(exists=True, desc="4D wrapped phase (radians), for the complex fit")
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude (weights)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    b0 = traits.Float(mandatory=True, desc="field strength (T)")
    mask = File(exists=True, desc="optional mask")
    method = traits.Str("linear", usedefault=True, desc="echo combination method")
    params = traits.Dict(desc="method-specific keyword parameters")


class _FitFieldOutputSpec(TraitedSpec):
    field = File(exists=True, desc="total field (ppm)")
    noise = File(exists=True, desc="field noise standard deviation (ppm)")
    uncertainty = File(exists=True, desc="field standard error with each voxel's model misfit (ppm): the data weights")
    offset = File(exists=True, desc="fitted phase offset (radians)")
    echo_fields = File(desc="4D per-echo field (ppm), method 'per-echo' only")
    info = traits.Dict(desc="method and parameters, for sidecars")


class FitField(SimpleInterface):
    """Combine echoes into a field map in ppm (:func:`qsmprep.qsm.echoes.fit_field`)."""

    input_spec = _FitFieldInputSpec
    output_spec = _FitFieldOutputSpec

    def _run_interface(self, runtime):
        unwrapped, img = load(self.inputs.unwrapped)
        mag, _ = load(self.inputs.magnitude)
        phase = load(self.inputs.phase)[0] if isdefined(self.inputs.phase) else None
        mask = load_mask(self.inputs.mask) if isdefined(self.inputs.mask) else None
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        out = fit_field(
            unwrapped, mag, self.inputs.echo_times, self.inputs.b0, method=self.inputs.method,
            phase_wrapped=phase, mask=mask, **params,
        )
        for key, name in (("field", "field.nii"), ("noise", "field_noise.nii"), ("offset", "offset.nii"),
                          ("uncertainty", "field_uncertainty.nii")):
            self._results[key] = save_like(out[key], img, name, runtime.cwd)
        if "echo_fields" in out:
            self._results["echo_fields"] = save_like(out["echo_fields"], img, "echo_fields.nii", runtime.cwd)
        self._results["info"] = jsonable(
            {"EchoCombination": self.inputs.method, "EchoCombinationParameters": params,
             "EchoTime": list(self.inputs.echo_times), "MagneticFieldStrength": self.inputs.b0,
             "FieldDataWeights": "1 / (noise std x sqrt(max(1, the voxel's reduced complex-fit residual / the "
                                 "noise variance))): voxels whose phase does not follow the fit weigh less "
                                 "(qsmprep.qsm.echoes.field_misfit)",
             "FieldMisfitReferenceVoxels": out["misfit_reference_voxels"]}
        )
        return runtime


class _R2StarInputSpec(QSMInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    mask = File(exists=True, desc="optional mask")
    method = traits.Str("loglinear", usedefault=True, desc="R2* fitting method")
    params = traits.Dict(desc="method-specific keyword parameters")


class _R2StarOutputSpec(TraitedSpec):
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")
    reliable = File(exists=True, desc="mask of voxels where the fit is reliable")
    info = traits.Dict(desc="method and parameters, for sidecars")


class R2Star(SimpleInterface):
    """Fit R2* and derive T2* (:func:`qsmprep.qsm.echoes.r2star_map`)."""

    input_spec = _R2StarInputSpec
    output_spec = _R2StarOutputSpec

    def _run_interface(self, runtime):
        mag, img = load(self.inputs.magnitude)
        mask = load_mask(self.inputs.mask) if isdefined(self.inputs.mask) else None
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        r2s, reliable = r2star_map(mag, self.inputs.echo_times, method=self.inputs.method, mask=mask, **params)
        self._results["r2star"] = save_like(r2s, img, "r2star.nii", runtime.cwd)
        self._results["t2star"] = save_like(t2star_from_r2star(r2s), img, "t2star.nii", runtime.cwd)
        self._results["reliable"] = save_like(reliable, img, "r2star_reliable.nii", runtime.cwd)
        self._results["info"] = jsonable(
            {"R2starMethod": self.inputs.method, "R2starParameters": params,
             "EchoTime": list(self.inputs.echo_times)}
        )
        return runtime


class _EchoAverageInputSpec(QSMInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude")
    method = traits.Str("rss", usedefault=True, desc="'rss' (root-sum-of-squares) or 'mean'")


class _EchoAverageOutputSpec(TraitedSpec):
    average = File(exists=True, desc="echo-averaged (T2*-weighted) magnitude")


class EchoAverage(SimpleInterface):
    """Average the magnitude over echoes (:func:`qsmprep.qsm.echoes.echo_average`)."""

    input_spec = _EchoAverageInputSpec
    output_spec = _EchoAverageOutputSpec

    def _run_interface(self, runtime):
        mag, img = load(self.inputs.magnitude)
        avg = echo_average(mag, method=self.inputs.method)
        self._results["average"] = save_like(avg, img, "echo_average.nii", runtime.cwd)
        return runtime


class _DenoiseMagnitudeInputSpec(QSMInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude")
    params = traits.Dict(desc="keyword parameters of qsmprep.qsm.denoise.denoise_magnitude")


class _DenoiseMagnitudeOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc="denoised 4D magnitude")
    info = traits.Dict(desc="method, parameters and estimated noise, for sidecars")


class DenoiseMagnitude(SimpleInterface):
    """MP-PCA of the multi-echo magnitude (:func:`qsmprep.qsm.denoise.denoise_magnitude`)."""

    input_spec = _DenoiseMagnitudeInputSpec
    output_spec = _DenoiseMagnitudeOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.denoise import denoise_magnitude

        mag, img = load(self.inputs.magnitude)
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        denoised, info = denoise_magnitude(mag, **params)
        self._results["magnitude"] = save_like(denoised, img, "magnitude_denoised.nii", runtime.cwd)
        self._results["info"] = jsonable({"MagnitudeDenoising": "mppca", "MagnitudeDenoisingParameters": params,
                                          "MagnitudeNoiseSigmaMedian": info["noise_sigma_median"],
                                          "PhaseDenoising": "none"})
        return runtime
