"""Nipype wrapper for χ-separation (:mod:`qsmprep.qsm.chisep`)."""

from __future__ import annotations

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from qsmprep.interfaces.base import QSMInputSpec, jsonable, load, load_mask, save_like, voxel_size_of
from qsmprep.errors import InputError
from qsmprep.qsm.chisep import parameters, separate
from qsmprep.qsm.r2prime import r2_from_t2, r2prime_from_r2, r2prime_gre_only


class _ChiSepInputSpec(QSMInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask where the local field is valid")
    r2star = File(exists=True, mandatory=True, desc="R2* map (1/s)")
    r2 = File(exists=True, desc="R2 map (1/s) in the GRE grid; none: the GRE-only approximation")
    r2_source = traits.Str(desc="where the R2 map came from (file, registration), for the sidecar")
    r2_kind = traits.Enum("R2map", "T2map", usedefault=True, desc="``r2`` is R2 (1/s) or T2 (s)")
    magnitude = File(exists=True, desc="echo-averaged magnitude (edge mask)")
    noise = File(exists=True, desc="field noise standard deviation (ppm), data weights")
    chi = File(exists=True, desc="the run's total χ (ppm), the starting split")
    b0_dir = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True, desc="B0 direction in voxel axes")
    b0 = traits.Float(mandatory=True, desc="field strength (T)")
    params = traits.Dict(desc="chi_separation keyword parameters; 'r2' sets the GRE-only R2_0")
    pad = traits.Int(16, usedefault=True, desc="zero padding (voxels per side)")


class _ChiSepOutputSpec(TraitedSpec):
    chi_para = File(exists=True, desc="paramagnetic susceptibility χ⁺ ≥ 0 (ppm)")
    chi_dia = File(exists=True, desc="diamagnetic susceptibility χ⁻ ≤ 0 (ppm)")
    r2prime = File(exists=True, desc="R2′ used (1/s)")
    info = traits.Dict(desc="method, R2′ source, D_r, λ and iterations, for sidecars")


class ChiSeparation(SimpleInterface):
    """Local field + R2′ to χ⁺ and χ⁻ (:func:`qsmprep.qsm.chisep.separate`)."""

    input_spec = _ChiSepInputSpec
    output_spec = _ChiSepOutputSpec

    def _run_interface(self, runtime):
        inp = self.inputs
        local, img = load(inp.local_field)
        mask = load_mask(inp.mask)
        r2star = load(inp.r2star)[0]
        params = dict(inp.params) if isdefined(inp.params) else {}
        r2_assumed = params.pop("r2", None)
        if isdefined(inp.r2):
            r2 = load(inp.r2)[0]
            try:
                if inp.r2_kind == "T2map":
                    r2 = r2_from_t2(r2, mask)
                r2p, r2_info = r2prime_from_r2(r2star, r2, mask)
            except ValueError as exc:
                raise InputError(f"{exc}", path=inp.r2_source if isdefined(inp.r2_source) else inp.r2) from None
            r2_info["R2MapKind"] = inp.r2_kind
            if isdefined(inp.r2_source):
                r2_info["R2Map"] = inp.r2_source
        else:
            r2p, r2_info = r2prime_gre_only(r2star, mask, **({} if r2_assumed is None else {"r2": r2_assumed}))
        opt = {name: load(getattr(inp, name))[0] for name in ("magnitude", "noise", "chi")
               if isdefined(getattr(inp, name))}
        stats = {}
        para, dia, lam_info = separate(local, r2p, mask, voxel_size_of(img), tuple(inp.b0_dir), inp.b0, pad=inp.pad,
                                       workers=inp.num_threads, stats=stats, **opt, **params)
        used = {k: v for k, v in parameters().items() if k != "r2"}   # R2_0 is in r2_info (GRE only)
        used.update(params, pad=inp.pad)
        used["lambda_"] = lam_info["lambda"]
        if "lambda_search" in lam_info:
            used["lambda_search"] = lam_info["lambda_search"]
        used["dr_para"] = stats["dr_para"]
        used["dr_dia"] = stats["dr_dia"]
        self._results["chi_para"] = save_like(para * mask, img, "chi_para.nii", runtime.cwd)
        self._results["chi_dia"] = save_like(dia * mask, img, "chi_dia.nii", runtime.cwd)
        self._results["r2prime"] = save_like(r2p * mask, img, "r2prime.nii", runtime.cwd)
        self._results["info"] = jsonable({
            "ChiSeparation": "chisep",
            "ChiSeparationMethod": "chi-separation (Shin et al., NeuroImage 2021;240:118371): joint inversion of "
                                   "the local field and R2' with sign constraints",
            "ChiSeparationParameters": used,
            "RelaxometricConstant": {"para_Hz_per_ppm": stats["dr_para"], "dia_Hz_per_ppm": stats["dr_dia"],
                                     "source": "137 Hz/ppm at 3 T (Shin et al. 2021), scaled by B0/3"
                                     if "dr_para" not in params and "dr_dia" not in params else "user"},
            "ChiSeparationReference": "none: absolute (R2' and the sign constraints fix both sources); the "
                                      "run's chi was shifted by InitialOffset before the split",
            "InitialOffset": stats["initial_offset_ppm"],
            "Iterations": stats["iterations"], "CGIterations": stats["cg_iterations"],
            "RelativeChanges": stats["relative_changes"],
            # False: max_iter Gauss-Newton steps ran without the relative change reaching tol
            "Converged": stats["converged"],
            "R2primeUnreliableFraction": stats["r2prime_unreliable_fraction"],
            **r2_info,
        })
        return runtime
