"""Nipype wrapper for brain masking."""

from __future__ import annotations

import logging

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.errors import InputError
from qsmprep.interfaces.base import QSMInputSpec, jsonable, load, save_like, voxel_size_of
from qsmprep.qsm.kernels import b0_direction
from qsmprep.qsm.masking import brain_mask

LOGGER = logging.getLogger("nipype.workflow")


class _BrainMaskInputSpec(QSMInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="echo-averaged magnitude (3D)")
    quality = File(exists=True, desc="phase-quality map in [0, 1] (high = good)")
    noise = File(exists=True, desc="field noise standard deviation map (ppm)")
    method = traits.Str("threshold", usedefault=True, desc="masking method")
    user_mask = File(exists=True, desc="a brain mask given by the user (NIfTI in the GRE grid), used instead")
    user_mask_source = traits.Str(desc="where the user mask came from (for sidecars), e.g. '--mask'")
    params = traits.Dict(desc="method-specific keyword parameters (refine, erode_mm, f, g, ...)")


class _BrainMaskOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="tight brain mask for background removal and inversion")
    mask_filled = File(exists=True, desc="filled brain mask for reporting")
    brain = File(exists=True, desc="echo-averaged magnitude inside the filled mask (for registration)")
    info = traits.Dict(desc="method and parameters, for sidecars")


class BrainMask(SimpleInterface):
    """Brain mask from the echo-averaged magnitude (:func:`qsmprep.qsm.masking.brain_mask`)."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        mag, img = load(self.inputs.magnitude)
        quality = load(self.inputs.quality)[0] if isdefined(self.inputs.quality) else None
        noise = load(self.inputs.noise)[0] if isdefined(self.inputs.noise) else None
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        if self.inputs.method == "bet" and "vertical" not in params:
            # BET's g varies the threshold from the feet to the top of the head: "up" is the
            # world superior axis (RAS +z) expressed in voxel axes, from the affine
            params["vertical"] = [float(v) for v in b0_direction(img.affine)]
        user = None
        if isdefined(self.inputs.user_mask):
            user, user_img = load(self.inputs.user_mask)
            if user.ndim == 4 and user.shape[3] == 1:
                user = user[..., 0]
            if user.shape != mag.shape or not np.allclose(user_img.affine, img.affine, atol=1e-3):
                raise InputError(
                    f"the mask's grid (shape {user.shape}) differs from the GRE data's (shape {mag.shape}, "
                    "affine): give a mask in the GRE acquisition's grid", path=self.inputs.user_mask)
            if not np.any(user > 0):
                raise InputError("the mask is empty", path=self.inputs.user_mask)
        tight, filled, info = brain_mask(
            mag, voxel_size_of(img), method=self.inputs.method, quality=quality, noise=noise, user_mask=user,
            **params
        )
        if user is not None:
            source = self.inputs.user_mask_source if isdefined(self.inputs.user_mask_source) else "user"
            info["user_mask"] = {"file": str(self.inputs.user_mask), "source": source}
        if info.get("fallback"):
            LOGGER.warning("%s: %s", self.inputs.magnitude, info["fallback"])
        self._results["mask"] = save_like(tight, img, "brain_mask.nii", runtime.cwd)
        self._results["mask_filled"] = save_like(filled, img, "brain_mask_filled.nii", runtime.cwd)
        self._results["brain"] = save_like(mag * filled, img, "brain_magnitude.nii", runtime.cwd)
        self._results["info"] = jsonable({"MaskingMethod": self.inputs.method, "MaskingParameters": info})
        return runtime
