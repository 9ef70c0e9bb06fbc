"""Nipype wrappers for dipole inversion and susceptibility referencing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.errors import InputError
from qsmprep.interfaces.base import QSMInputSpec, jsonable, load, load_mask, save_like, voxel_size_of
from qsmprep.qsm.echoes import phase_per_ppm
from qsmprep.qsm.inversion import invert, uses_phase_scale
from qsmprep.qsm.reference import reference_chi
from qsmprep.qsm.unring import unring_as_planned
from qsmprep.qsm.weights import average_echoes


class _InversionInputSpec(QSMInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field (ppm); 4D = one per echo, averaged after")
    mask = File(exists=True, mandatory=True, desc="mask where the local field is valid")
    magnitude = File(exists=True, desc="echo-averaged magnitude (edge weights)")
    noise = File(exists=True, desc="field noise standard deviation (ppm), data weights")
    r2star = File(exists=True, desc="R2* map (1/s), for the automatic CSF mask")
    b0_dir = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True, desc="B0 direction in voxel axes")
    method = traits.Str("tkd", usedefault=True, desc="dipole inversion method")
    params = traits.Dict(desc="method-specific keyword parameters (lambda_, lambda_rule, ...)")
    pad = traits.Int(16, usedefault=True, desc="zero padding (voxels per side)")
    echo_times = traits.List(traits.Float, desc="echo times (s): the nonlinear data terms' phase scale")
    b0 = traits.Float(desc="field strength (T): the nonlinear data terms' phase scale")


class _InversionOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="susceptibility (ppm), not referenced")
    info = traits.Dict(desc="method and parameters actually used (including lambda), for sidecars")


class DipoleInversion(SimpleInterface):
    """Local field to χ (:func:`qsmprep.qsm.inversion.invert`).

    With a 4D local field (the per-echo strategy, RIN protocol) each echo is inverted
    and the χ maps are averaged (:func:`qsmprep.qsm.weights.average_echoes`).
    """

    input_spec = _InversionInputSpec
    output_spec = _InversionOutputSpec

    def _run_interface(self, runtime):
        local, img = load(self.inputs.local_field)
        mask = load_mask(self.inputs.mask)
        opt = {}
        for name in ("magnitude", "noise", "r2star"):
            if isdefined(getattr(self.inputs, name)):
                opt[name] = load(getattr(self.inputs, name))[0]
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        if uses_phase_scale(self.inputs.method, params) and params.get("phase_scale") is None \
                and isdefined(self.inputs.echo_times) and isdefined(self.inputs.b0):
            params["phase_scale"] = phase_per_ppm(self.inputs.echo_times, self.inputs.b0)
        vols = local[..., None] if local.ndim == 3 else local
        chis, info = [], {}
        for e in range(vols.shape[-1]):
            chi, info = invert(
                vols[..., e], mask, voxel_size_of(img), tuple(self.inputs.b0_dir),
                method=self.inputs.method, pad=self.inputs.pad, workers=self.inputs.num_threads,
                **opt, **params,
            )
            chis.append(chi)
        if len(chis) > 1:
            chi = average_echoes(np.stack(chis, axis=-1))
            info = dict(info, EchoStrategy="per-echo inversion, mean of the echoes' chi maps")
        else:
            chi = chis[0]
        self._results["chi"] = save_like(chi * mask, img, "chi.nii", runtime.cwd)
        self._results["info"] = jsonable({"DipoleInversion": self.inputs.method, "DipoleInversionParameters": info})
        return runtime


class _UnringInputSpec(QSMInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility (ppm) from the inversion")
    mask = File(exists=True, mandatory=True, desc="mask of valid χ")
    inversion_info = traits.Dict(mandatory=True, desc="the inversion's sidecar record, passed on")
    sampling = traits.Dict(desc="the GRE sidecar's sampling keys (qsmprep.qsm.sampling.SAMPLING_KEYS)")
    params = traits.Dict(desc="max_voxel_mm, n_shifts, min_window, max_window")


class _UnringOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="susceptibility (ppm), Gibbs ringing removed where the sampling allows")
    info = traits.Dict(desc="the inversion's record and Unringing (axes, why, parameters), for sidecars")


class UnringChi(SimpleInterface):
    """Gibbs-ringing removal of χ by local subvoxel shifts (:func:`qsmprep.qsm.unring.unring`),
    on the axes :func:`qsmprep.qsm.sampling.plan` reads from the acquisition's sidecar and voxel size."""

    input_spec = _UnringInputSpec
    output_spec = _UnringOutputSpec

    def _run_interface(self, runtime):
        chi, img = load(self.inputs.chi)
        mask = load_mask(self.inputs.mask)
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        sampling = dict(self.inputs.sampling) if isdefined(self.inputs.sampling) else {}
        chi, record = unring_as_planned(chi, mask, sampling, voxel_size_of(img), workers=self.inputs.num_threads,
                                        **params)
        self._results["chi"] = save_like(chi * mask, img, "chi_unringed.nii", runtime.cwd)
        self._results["info"] = jsonable(dict(self.inputs.inversion_info, Unringing=record))
        return runtime


class _ReferenceInputSpec(QSMInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask of valid χ")
    r2star = File(exists=True, desc="R2* (1/s), for the automatic CSF reference")
    roi = File(exists=True, desc="user reference ROI mask (method 'roi')")
    method = traits.Str("whole-brain", usedefault=True, desc="reference region")


class _ReferenceOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="referenced susceptibility (ppm)")
    info = traits.Dict(desc="ReferenceRegion and offset, for sidecars")


class ReferenceChi(SimpleInterface):
    """Shift χ so its reference region has mean zero (:func:`qsmprep.qsm.reference.reference_chi`)."""

    input_spec = _ReferenceInputSpec
    output_spec = _ReferenceOutputSpec

    def _run_interface(self, runtime):
        chi, img = load(self.inputs.chi)
        mask = load_mask(self.inputs.mask)
        r2s = load(self.inputs.r2star)[0] if isdefined(self.inputs.r2star) else None
        roi = None
        if isdefined(self.inputs.roi):
            roi_img = nib.load(self.inputs.roi)
            if roi_img.shape[:3] != chi.shape or not np.allclose(roi_img.affine, img.affine, atol=1e-3):
                raise InputError(
                    f"reference ROI mask {self.inputs.roi} is not in the GRE grid (shape {roi_img.shape}, "
                    f"expected {chi.shape} with the GRE affine); resample it to the GRE image first"
                )
            roi = load_mask(self.inputs.roi)
        out, info = reference_chi(
            chi, mask, method=self.inputs.method, roi=roi, r2star=r2s, voxel_size=voxel_size_of(img)
        )
        self._results["chi"] = save_like(out * mask, img, "chi_referenced.nii", runtime.cwd)
        self._results["info"] = jsonable(info)
        return runtime
