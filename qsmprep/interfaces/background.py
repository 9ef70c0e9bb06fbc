"""Nipype wrapper for background field removal."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.interfaces.base import QSMInputSpec, jsonable, load, load_mask, save_like, voxel_size_of
from qsmprep.qsm.background import remove_background
from qsmprep.qsm.weights import weights_from_noise


class _BackgroundInputSpec(QSMInputSpec):
    field = File(exists=True, mandatory=True, desc="total field (ppm), 3D, or 4D with one field per echo")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    noise = File(exists=True, desc="field noise standard deviation (ppm), for data weights")
    b0_dir = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True, desc="B0 direction in voxel axes")
    method = traits.Str("vsharp", usedefault=True, desc="background removal method")
    params = traits.Dict(desc="method-specific keyword parameters")


class _BackgroundOutputSpec(TraitedSpec):
    local_field = File(exists=True, desc="local field (ppm), same dimensionality as the input")
    mask = File(exists=True, desc="eroded mask where the local field is valid")
    info = traits.Dict(desc="method and parameters, for sidecars")


class BackgroundRemoval(SimpleInterface):
    """Total field to local field (:func:`qsmprep.qsm.background.remove_background`).

    A 4D input (per-echo fields) is processed echo by echo; the returned mask is the
    intersection of the echoes' valid masks.
    """

    input_spec = _BackgroundInputSpec
    output_spec = _BackgroundOutputSpec

    def _run_interface(self, runtime):
        field, img = load(self.inputs.field)
        mask = load_mask(self.inputs.mask)
        weights = None
        if isdefined(self.inputs.noise):
            weights = weights_from_noise(load(self.inputs.noise)[0], mask)
        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        vols = field[..., None] if field.ndim == 3 else field
        locals_, masks, info = [], [], {}
        for e in range(vols.shape[-1]):
            local, valid, info = remove_background(
                vols[..., e], mask, voxel_size_of(img), method=self.inputs.method,
                b0_dir=tuple(self.inputs.b0_dir), weights=weights, workers=self.inputs.num_threads,
                **params,
            )
            locals_.append(local)
            masks.append(valid)
        valid = np.logical_and.reduce(masks)
        local = np.stack(locals_, axis=-1) * valid[..., None]
        if field.ndim == 3:
            local = local[..., 0]
        self._results["local_field"] = save_like(local, img, "local_field.nii", runtime.cwd)
        self._results["mask"] = save_like(valid, img, "local_mask.nii", runtime.cwd)
        self._results["info"] = jsonable(
            {"BackgroundRemoval": self.inputs.method, "BackgroundRemovalParameters": info}
        )
        return runtime
