"""qsmprep's methods behind QSM-CI's stage contract (:mod:`qsmprep.qsmci.contract`).

Each stage runs the same pure functions, with the same defaults, as ``qsmprep participant``
(its :class:`qsmprep.config.Config`, so a stage accepts the same presets), on the contract's
artifacts instead of a BIDS dataset:

* ``field-mapping`` (``--method``: an unwrapping method): unwrap every echo, combine the
  echoes (the preset's ``combination``, default linear with intercept) into the total field;
* ``bfr`` (a background removal method): total field to local field, zero where the method's
  valid mask ends (the sidecar gives its size);
* ``dipole`` (an inversion method): local field to χ, referenced as the preset says (default
  the whole-brain mean; ``medi+0``: the ventricles' CSF, which needs a multi-echo magnitude);
* ``bfr+dipole`` and ``end-to-end`` (an inversion method): the spans, background removal
  and, for ``end-to-end``, unwrapping and the fit from the preset.

What the contract gives replaces what the pipeline would compute: the mask is used as it is
(no brain extraction, no phase-quality refinement), B0_dir and the voxel size come from
``params.json``.  Without a noise map (``dipole``, ``bfr+dipole``) the data weights are the
echo-averaged magnitude where it is given, else uniform, as :func:`qsmprep.qsm.inversion.invert`
records.  Parameter overrides: QSM-CI's ``config.json`` first, then ``--params``; both are
the options of the stage's ``--method``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from qsmprep.config import Config, load_preset
from qsmprep.errors import InputError
from qsmprep.interfaces.base import jsonable
from qsmprep.qsmci.contract import STAGES, read_inputs, read_overrides, write_output

LOG = logging.getLogger("qsmprep.qsmci")

#: The pipeline stage whose method ``--method`` names, per QSM-CI stage.
PRIMARY = {"field-mapping": "unwrapping", "bfr": "background", "dipole": "inversion", "bfr+dipole": "inversion",
           "end-to-end": "inversion"}


def resolve(stage, method=None, params=None, preset=None, overrides=None):
    """The pipeline stages' ``(method, params)`` for a QSM-CI stage, validated by :class:`Config`.

    ``preset``: a path or a dict in the format of ``participant --config``; ``method`` and
    ``params`` (``overrides`` from ``config.json`` under them) set the primary stage.
    """
    if stage not in STAGES:
        raise InputError(f"unknown QSM-CI stage {stage!r}; qsmprep implements {', '.join(STAGES)}")
    cfg = Config()
    if preset is not None:
        data = load_preset(preset) if not isinstance(preset, dict) else preset
        cfg.update_workflow(data, source=str(preset) if not isinstance(preset, dict) else "preset")
    primary = PRIMARY[stage]
    entry = {"method": method or cfg.workflow.stages[primary].method}
    extra = {**(overrides or {}), **(params or {})}
    if extra:
        entry["params"] = extra
    cfg.update_workflow({"workflow": {primary: entry}}, source="--method/--params")
    return {name: (s.method, dict(s.params)) for name, s in cfg.workflow.stages.items()}, cfg.workflow.pad_voxels


def _average(magnitude):
    from qsmprep.qsm.echoes import echo_average

    return None if magnitude is None else echo_average(magnitude, method="rss")


def field_mapping(phase, magnitude, mask, tes, b0, voxel_size, stages, workers=None):
    """Total field (ppm) from the wrapped multi-echo phase; returns (field, noise, uncertainty, quality, info).

    ``noise`` is the fit's noise std (what the mask's refinement reads), ``uncertainty`` the same
    with each voxel's misfit (:func:`qsmprep.qsm.echoes.field_misfit`; the data weights)."""
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.unwrap import unwrap_echoes

    mag = np.ones_like(phase) if magnitude is None else magnitude
    unwrap_method, unwrap_params = stages["unwrapping"]
    comb_method, comb_params = stages["combination"]
    if comb_method == "per-echo":
        raise InputError("combination 'per-echo' makes one field per echo; the field-mapping stage produces one "
                         "total field (use 'linear' or 'nonlinear')")
    if len(tes) == 1:  # one echo: field = phase / (2π γ̄ B0 TE), no intercept to fit
        comb_params["intercept"] = False
    unwrapped, quality = unwrap_echoes(phase, method=unwrap_method, voxel_size=voxel_size, mag=mag, tes=tes,
                                 workers=workers, **unwrap_params)
    fit = fit_field(unwrapped, mag, tes, b0, method=comb_method, phase_wrapped=phase, mask=mask, **comb_params)
    info = {"PhaseUnwrapping": unwrap_method, "PhaseUnwrappingParameters": unwrap_params,
            "EchoCombination": comb_method, "EchoCombinationParameters": comb_params,
            "FieldMisfitReferenceVoxels": fit["misfit_reference_voxels"]}
    return fit["field"] * mask, fit["noise"], fit["uncertainty"], quality, info


def refine(mask, magnitude, quality, noise, voxel_size, stages):
    """The pipeline's tight mask inside the contract's: its masking stage with the given mask as
    the user's (:func:`qsmprep.qsm.masking.brain_mask`: phase-quality refinement and erosion as
    configured); returns (tight mask, info)."""
    from qsmprep.qsm.masking import brain_mask

    method, params = stages["masking"]
    opts = {k: v for k, v in params.items() if k in ("refine", "erode_mm")}
    tight, _, info = brain_mask(_average(magnitude) if magnitude is not None else mask.astype(np.float32),
                                voxel_size, method=method, quality=quality, noise=noise, user_mask=mask, **opts)
    return tight & mask, {"BrainMask": info, "TightMaskFraction": float(tight.sum() / mask.sum())}


def background(field, mask, voxel_size, b0_dir, stages, noise=None, workers=None):
    """Local field (ppm) and its valid mask; returns (local, valid, info)."""
    from qsmprep.qsm.background import remove_background
    from qsmprep.qsm.weights import weights_from_noise

    method, params = stages["background"]
    weights = None if noise is None else weights_from_noise(noise, mask)
    local, valid, info = remove_background(field, mask, voxel_size, method=method, b0_dir=b0_dir,
                                           weights=weights, workers=workers, **params)
    info = {"BackgroundRemoval": method, "BackgroundRemovalParameters": info,
            "LocalFieldMaskFraction": float(valid.sum() / mask.sum())}
    return local * valid, valid, info


def dipole(local, valid, voxel_size, b0_dir, stages, magnitude=None, tes=None, noise=None, pad=16, workers=None,
           phase_scale=None):
    """Referenced χ (ppm) from the local field; returns (χ, info).

    ``phase_scale``: the nonlinear data terms' phase per ppm; given only where the contract's
    TE are real (``end-to-end``: QSM-CI writes a placeholder TE for the field-domain stages,
    where ``nltv`` then needs ``phase_scale`` in ``--params``).
    """
    from qsmprep.qsm.echoes import r2star_map
    from qsmprep.qsm.inversion import invert, uses_phase_scale
    from qsmprep.qsm.reference import reference_chi
    from qsmprep.qsm.unring import unring_as_planned

    method, params = stages["inversion"]
    ref_method, ref_params = stages["reference"]
    needs_r2star = method == "medi+0" or ref_method == "csf"
    r2star = None
    if needs_r2star:
        if magnitude is None or magnitude.shape[-1] < 2:
            raise InputError(f"{'inversion medi+0' if method == 'medi+0' else 'reference csf'} finds the ventricles' "
                             "CSF from R2*, which needs a multi-echo magnitude.nii.gz (and its TEs); this input has "
                             "none")
        r2star, _ = r2star_map(magnitude, tes, mask=valid)
    if ref_method == "roi":
        raise InputError("reference 'roi' needs a mask in the contract's grid; QSM-CI stages take 'whole-brain', "
                         "'csf' or 'none'")
    if phase_scale is not None and uses_phase_scale(method, params):
        params.setdefault("phase_scale", phase_scale)
    try:
        chi, info = invert(local, valid, voxel_size, b0_dir, method=method, magnitude=_average(magnitude),
                           noise=noise, r2star=r2star, pad=pad, workers=workers, **params)
    except ValueError as exc:
        raise InputError(f"inversion {method}: {exc}") from None
    extra = {}
    unring_method, unring_params = stages.get("unringing", ("none", {}))
    if unring_method != "none":  # the contract says nothing of the sampling: 3D assumed, as the sidecar says
        chi, extra["Unringing"] = unring_as_planned(chi, valid, {}, voxel_size, workers=workers, **unring_params)
    if method == "medi+0":  # already zero in the CSF (MEDI+0's own reference)
        ref = {"ReferenceRegion": "csf (MEDI+0)"}
    else:
        chi, ref = reference_chi(chi, valid, method=ref_method, r2star=r2star, voxel_size=voxel_size)
    return chi * valid, {"DipoleInversion": method, "DipoleInversionParameters": info, **extra, **ref}


def run_stage(stage, input_dir, output_dir, *, method=None, params=None, preset=None, workers=None):
    """Run one QSM-CI stage from ``input_dir`` into ``output_dir``; returns the output's path.

    Writes the produced artifact (``totalfield``, ``localfield`` or ``chimap.nii.gz``) on
    the mask's grid, and beside it a JSON sidecar with every method and parameter used, the
    reference of χ, the contract's acquisition parameters and any note on the inputs.
    """
    from qsmprep import __version__

    t0 = time.perf_counter()
    overrides = read_overrides(input_dir)
    stages, pad = resolve(stage, method, params, preset, overrides)
    data = read_inputs(input_dir, stage)
    acq = data["params"]
    mask, vs, b0_dir, tes = data["mask"], acq["voxel_size"], acq["B0_dir"], acq["TE"]
    info = {}
    noise = weights_sd = None
    if stage in ("field-mapping", "end-to-end"):
        field, noise, weights_sd, quality, fit_info = field_mapping(data["phase"], data["magnitude"], mask, tes,
                                                                    acq["B0"], vs, stages, workers)
        info.update(fit_info)
        if stage == "end-to-end":
            mask, mask_info = refine(mask, data["magnitude"], quality, noise, vs, stages)
            info.update(mask_info)
    else:
        field = data.get("totalfield")
    if stage == "field-mapping":
        out, artifact = field, "totalfield"
    else:
        if stage == "dipole":
            local, valid = data["localfield"] * mask, mask
        else:
            local, valid, bg_info = background(field, mask, vs, b0_dir, stages, noise=weights_sd, workers=workers)
            info.update(bg_info)
        if stage == "bfr":
            out, artifact = local, "localfield"
        else:
            from qsmprep.qsm.echoes import phase_per_ppm

            scale = phase_per_ppm(tes, acq["B0"]) if stage == "end-to-end" else None
            out, inv_info = dipole(local, valid, vs, b0_dir, stages, magnitude=data.get("magnitude"), tes=tes,
                                   noise=weights_sd, pad=pad, workers=workers, phase_scale=scale)
            info.update(inv_info)
            artifact = "chimap"
    sidecar = {
        "GeneratedBy": [{"Name": "qsmprep", "Version": __version__, "QSMCIStage": stage}],
        "Units": "ppm", **info,
        "QSMCIParams": acq, "InputNotes": data["notes"],
        "ProcessingSeconds": round(time.perf_counter() - t0, 2),
    }
    path = write_output(output_dir, artifact, out, data["image"], jsonable(sidecar))
    for note in data["notes"]:
        LOG.warning("%s", note)
    return path
