"""Nipype wrapper: the QC metrics of one GRE acquisition (:mod:`qsmprep.qsm.qc`) as JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.interfaces.base import QSMInputSpec, jsonable, load, load_mask, voxel_size_of
from qsmprep.qsm import qc
from qsmprep.qsm.kernels import GAMMA_BAR_MHZ_PER_T

LOGGER = logging.getLogger("nipype.workflow")


def _rounded(value, digits):
    """``value`` rounded for the JSON, or None where the metric could not be computed."""
    return None if value is None else round(float(value), digits)


class _QCInputSpec(QSMInputSpec):
    label = traits.Str("", usedefault=True, desc="acquisition name for log messages (e.g. sub-01_acq-qsm)")
    unwrapping = traits.Str("", usedefault=True, desc="unwrapping method (the fit-residual rule depends on it)")
    phase_info = traits.Dict(mandatory=True, desc="PhaseUnits, PhaseUnitsSource, PhaseRawRange from loading")
    mask_info = traits.Dict(mandatory=True, desc="sidecar dictionary of the masking stage")
    mask = File(exists=True, mandatory=True, desc="tight mask (background removal, inversion)")
    mask_filled = File(exists=True, mandatory=True, desc="filled brain mask")
    local_mask = File(exists=True, mandatory=True, desc="mask of valid χ (after background removal)")
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude")
    unwrapped = File(exists=True, mandatory=True, desc="4D unwrapped phase (radians)")
    field = File(exists=True, mandatory=True, desc="total field (ppm)")
    offset = File(exists=True, mandatory=True, desc="fitted phase offset (radians)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    b0 = traits.Float(mandatory=True, desc="field strength (T)")
    chi = File(exists=True, mandatory=True, desc="referenced χ (ppm)")
    chi_info = traits.Dict(mandatory=True, desc="sidecar dictionary of inversion + reference")
    t1w = File(exists=True, desc="T1w (bias-corrected), when the GRE was registered to it")
    gre_in_t1w = File(exists=True, desc="GRE echo average resampled into the T1w grid")
    t1w_mask = File(exists=True, desc="T1w brain mask")


class _QCOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="QC metrics JSON")
    status = traits.Str(desc="pass, warn or fail")


class QCMetrics(SimpleInterface):
    """Compute every QC metric of :data:`qsmprep.qsm.qc.RULES`, rate it, log the warnings."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        pinfo, minfo = dict(inp.phase_info), dict(inp.mask_info)
        params = minfo.get("MaskingParameters", {})
        coverage = params.get("coverage", {})
        metrics = {
            "phase_units": qc.metric("phase_units", pinfo.get("PhaseUnits")),
            "phase_raw_range": qc.metric("phase_raw_range", pinfo.get("PhaseRawRange"),
                                         why="complex (real/imaginary) input"),
        }
        filled, img = load(inp.mask_filled)
        filled = filled > 0.5
        tight = load_mask(inp.mask)
        voxel_ml = float(np.prod(voxel_size_of(img))) / 1000.0
        source = "user mask (" + params["user_mask"]["source"] + ")" if params.get("user_mask") else \
            params.get("method_used", params.get("method"))
        metrics["mask_source"] = qc.metric("mask_source", source, fallback=params.get("fallback"))
        if coverage:
            metrics["partial_coverage"] = qc.metric("partial_coverage", bool(coverage.get("partial_coverage")),
                                                    reason=coverage.get("reason", ""))
        metrics["mask_volume_ml"] = qc.metric("mask_volume_ml", round(float(filled.sum()) * voxel_ml, 1))
        metrics["mask_fraction_fov"] = qc.metric("mask_fraction_fov", round(float(filled.mean()), 4))
        # what the refinement took out of the filled mask (its growth outside is not netted against it)
        removed = float((filled & ~tight).sum()) / max(1.0, float(filled.sum()))
        metrics["mask_refinement_removed_fraction"] = qc.metric("mask_refinement_removed_fraction",
                                                                round(removed, 4))
        added = float((tight & ~filled).sum()) / max(1.0, float(filled.sum()))
        metrics["mask_growth_added_fraction"] = qc.metric("mask_growth_added_fraction", round(added, 5))

        mag4d = load(inp.magnitude)[0]
        if mag4d.ndim == 3:
            mag4d = mag4d[..., None]
        unwrapped = load(inp.unwrapped)[0]
        sigma = qc.background_noise_sigma(mag4d[..., 0], filled)
        field_ppm = load(inp.field)[0]
        omega = field_ppm.astype(np.float64) * (2 * np.pi * GAMMA_BAR_MHZ_PER_T * float(inp.b0))
        ratio = qc.field_residual_over_noise(unwrapped, mag4d, inp.echo_times, omega, load(inp.offset)[0], tight,
                                             sigma)
        why = ("fewer than three echoes" if len(inp.echo_times) < 3 else
               "no background in the field of view to measure the noise")
        metrics["field_residual_over_noise"] = qc.metric(
            "field_residual_over_noise", _rounded(ratio, 3), why=why,
            unwrapping=inp.unwrapping)
        jumps = qc.phase_jump_fraction(unwrapped, tight)
        metrics["phase_jump_fraction"] = qc.metric("phase_jump_fraction", _rounded(jumps, 5),
                                                   why="empty mask")
        del mag4d, unwrapped

        chi = load(inp.chi)[0]
        local = load_mask(inp.local_mask)
        p01, p99 = qc.chi_percentiles(chi, local)
        metrics["chi_p01"] = qc.metric("chi_p01", _rounded(p01, 5), why="empty mask")
        metrics["chi_p99"] = qc.metric("chi_p99", _rounded(p99, 5), why="empty mask")
        metrics["chi_range_ppm"] = qc.metric("chi_range_ppm", _rounded(None if p01 is None else p99 - p01, 5),
                                             why="empty mask")
        inv_params = dict(inp.chi_info).get("DipoleInversionParameters") or {}
        metrics["lambda_rule"] = qc.metric("lambda_rule", inv_params.get("lambda_rule"),
                                           fallback=inv_params.get("lambda_rule_fallback"),
                                           why="no regularisation weight")
        offset = dict(inp.chi_info).get("ReferenceOffset")
        metrics["reference_offset_ppm"] = qc.metric(
            "reference_offset_ppm", _rounded(offset, 5), why="no reference")
        if isdefined(inp.t1w) and isdefined(inp.gre_in_t1w) and isdefined(inp.t1w_mask):
            t1w, t1_img = load(inp.t1w)
            nmi, better = qc.registration_similarity(t1w, load(inp.gre_in_t1w)[0], load_mask(inp.t1w_mask),
                                                     voxel_size_of(t1_img))
            metrics["registration_similarity"] = qc.metric(
                "registration_similarity", _rounded(nmi, 4), better_shift=better,
                why="too few overlapping voxels")

        report = qc.summarise(metrics)
        report.update({k: pinfo.get(k) for k in ("PhaseUnits", "PhaseUnitsSource", "PhaseRawRange")})
        for warning in report["Warnings"]:
            LOGGER.warning("QC %s: %s", inp.label, warning)
        path = Path(runtime.cwd) / "qc_metrics.json"
        path.write_text(json.dumps(jsonable(report), indent=2, sort_keys=True) + "\n")
        self._results["out_report"] = str(path)
        self._results["status"] = report["Status"]
        return runtime
