"""GRE processing: phase → field → local field → χ, plus R2*/T2*, mask and echo average."""

from __future__ import annotations

from nipype.interfaces.utility import Function, IdentityInterface
from nipype.pipeline import engine as pe

from qsmprep.errors import InputError
from qsmprep.interfaces.background import BackgroundRemoval
from qsmprep.interfaces.echoes import EchoAverage, FitField, R2Star
from qsmprep.interfaces.inversion import DipoleInversion, ReferenceChi, UnringChi
from qsmprep.interfaces.io import LoadGRE
from qsmprep.interfaces.masking import BrainMask
from qsmprep.interfaces.unwrap import RemovePhaseOffset, UnwrapPhase
from qsmprep.qsm.unwrap import THREADED_METHODS
from qsmprep.workflows import prioritise

#: Public contract of :func:`init_gre_wf`.
GRE_INPUTS = ["magnitude", "phase", "real", "imag"]
GRE_OUTPUTS = [
    "chi", "chi_info", "r2star", "t2star", "r2star_info", "mask", "mask_filled", "mask_info",
    "average", "brain", "total_field", "field_noise", "field_info", "local_field", "local_mask",
    "local_info", "unwrap_info", "phase_units", "phase_info", "b0_dir", "magnitude4d", "unwrapped",
    "field_offset", "chi_para", "chi_dia", "r2prime", "chisep_info",
]


def _gb(n_bytes):
    return max(0.25, round(n_bytes / 1024**3, 2))


def _stage(stages, name):
    """(method, params) of a stage from a ``{name: {"method", "params"}}`` mapping."""
    entry = stages[name]
    if hasattr(entry, "method"):
        return entry.method, dict(entry.params)
    return entry["method"], dict(entry.get("params", {}))


def init_gre_wf(*, echo_times, b0, stages, echo_strategy="combined", pad_voxels=16,
                shape=(1, 1, 1), omp_nthreads=1, user_mask=None, user_mask_source=None, r2_map=None,
                sampling=None, name="gre_wf"):
    """Build the QSM/R2* workflow of one GRE acquisition.

    Parameters
    ----------
    echo_times : list of float
        Echo times in seconds, in echo order.
    b0 : float
        Field strength in tesla.
    stages : dict
        ``{stage: {"method": str, "params": dict}}`` (or :class:`qsmprep.config.Stage`)
        for ``phase_units``, ``phase_offset``, ``unwrapping``, ``combination``, ``r2star``,
        ``echo_average``, ``masking``, ``background``, ``inversion``, ``unringing`` (optional:
        none when absent), ``reference``.
    echo_strategy : {"combined", "per-echo"}
        Invert the echo-combined field, or each echo's local field and average.
    pad_voxels : int
        Zero padding for FFT-based inversion.
    shape : tuple of int
        Image shape, used to set each node's memory estimate.
    omp_nthreads : int
        Threads for FFT-heavy nodes (``n_procs``).
    user_mask, user_mask_source : str, optional
        A brain mask in the GRE grid replacing the computed one, and where it came from
        (``--mask`` or ``--derivatives``), for the sidecars.
    r2_map : str, optional
        An R2 map (1/s) of the session for χ-separation's R2′ = R2* − R2 (``--r2-dir``),
        brought into the GRE grid by :class:`~qsmprep.interfaces.registration.AlignToGRE`;
        without one χ-separation uses the GRE-only approximation.
    sampling : dict, optional
        The first echo's sidecar values of :data:`qsmprep.qsm.sampling.SAMPLING_KEYS`: which axes
        the ``unringing`` stage corrects, or that it must not (:func:`qsmprep.qsm.sampling.plan`).

    Inputs
    ------
    magnitude, phase, real, imag
        Per-echo file lists (phase or real/imag).

    Outputs
    -------
    chi, r2star, t2star, mask, mask_filled, average, brain, total_field, field_noise,
    local_field, local_mask, magnitude4d, unwrapped, field_offset, chi_para, chi_dia, r2prime
        Files (the last three with the ``chisep`` χ-separation); ``*_info`` are sidecar
        dictionaries of the stage that made them (``phase_info``: the phase units used and the
        raw range, for every sidecar).
    """
    workflow = pe.Workflow(name=name)
    n_echoes = len(echo_times)
    vol_bytes = 4 * int(shape[0]) * int(shape[1]) * int(shape[2])
    padded_bytes = 4 * (int(shape[0]) + 2 * pad_voxels) * (int(shape[1]) + 2 * pad_voxels) * (
        int(shape[2]) + 2 * pad_voxels
    )
    mem_4d = _gb(6 * vol_bytes * n_echoes)
    # FFT-based background removal / inversion hold ~24 padded float32 volumes at once
    # (complex spectra, kernels, CG/ADMM work arrays); per-echo runs them one echo at a time.
    mem_inv = _gb(24 * padded_bytes)

    inputnode = pe.Node(IdentityInterface(fields=GRE_INPUTS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=GRE_OUTPUTS), name="outputnode")

    units_method, _ = _stage(stages, "phase_units")
    load = pe.Node(LoadGRE(phase_units=units_method), name="load", mem_gb=mem_4d)
    # what every later stage reads: the magnitude (denoised when asked) and the phase record
    mag_src, info_src = (load, "magnitude"), (load, "phase_info")
    dn_method, dn_params = _stage(stages, "denoise") if "denoise" in stages else ("none", {})
    if dn_method != "none":
        from qsmprep.interfaces.echoes import DenoiseMagnitude
        from qsmprep.qsm.denoise import MIN_ECHOES

        if n_echoes < MIN_ECHOES:
            raise InputError(f"denoise '{dn_method}' works across echoes and needs at least {MIN_ECHOES}; this "
                             f"acquisition has {n_echoes} (set denoise to 'none')")
        denoise = pe.Node(DenoiseMagnitude(params=dn_params), name="denoise", mem_gb=_gb(10 * vol_bytes * n_echoes))
        phase_info = pe.Node(
            Function(input_names=["first", "second", "third"], output_names=["out"], function=merge_dicts),
            name="phase_info", run_without_submitting=True,
        )
        phase_info.inputs.third = {}
        workflow.connect([(load, denoise, [("magnitude", "magnitude")]),
                          (load, phase_info, [("phase_info", "first")]),
                          (denoise, phase_info, [("info", "second")])])
        mag_src, info_src = (denoise, "magnitude"), (phase_info, "out")

    unwrap_method, unwrap_params = _stage(stages, "unwrapping")
    # a one-core method claims one core, so that the T1w's brain extraction runs beside it
    unwrap_threads = omp_nthreads if unwrap_method in THREADED_METHODS else 1
    unwrap = pe.Node(
        UnwrapPhase(method=unwrap_method, params=unwrap_params, echo_times=list(echo_times),
                    num_threads=unwrap_threads),
        name="unwrap", n_procs=unwrap_threads, mem_gb=_gb(4 * vol_bytes * n_echoes + 8 * padded_bytes),
    )
    comb_method, comb_params = _stage(stages, "combination")
    if n_echoes == 1:  # one echo: field = phase / (2π γ̄ B0 TE), no intercept to fit
        comb_params["intercept"] = False
    fit = pe.Node(
        FitField(method=comb_method, params=comb_params, echo_times=list(echo_times), b0=float(b0)),
        name="fit_field", mem_gb=mem_4d,
    )
    avg_method, _ = _stage(stages, "echo_average")
    average = pe.Node(EchoAverage(method=avg_method), name="echo_average", mem_gb=mem_4d)
    mask_method, mask_params = _stage(stages, "masking")
    mask = pe.Node(BrainMask(method=mask_method, params=mask_params), name="brain_mask", mem_gb=_gb(8 * vol_bytes))
    if user_mask:
        mask.inputs.user_mask = str(user_mask)
        mask.inputs.user_mask_source = user_mask_source or "user"
    bg_method, bg_params = _stage(stages, "background")
    background = pe.Node(
        BackgroundRemoval(method=bg_method, params=bg_params, num_threads=omp_nthreads),
        name="background", n_procs=omp_nthreads, mem_gb=mem_inv,
    )
    inv_method, inv_params = _stage(stages, "inversion")
    inversion = pe.Node(
        DipoleInversion(method=inv_method, params=inv_params, pad=pad_voxels, num_threads=omp_nthreads,
                        echo_times=list(echo_times), b0=float(b0)),
        name="inversion", n_procs=omp_nthreads, mem_gb=mem_inv,
    )
    if inv_method == "medi+0" and n_echoes < 2 and "csf" not in inv_params:
        raise InputError("inversion 'medi+0' finds its CSF zero-reference region from R2*, which needs at "
                         "least two echoes; this acquisition has one (use inversion 'medi')")
    # the chain that ends in the longest step, the inversion: submitted first among ready steps
    prioritise(unwrap, fit, mask, background, inversion)
    ref_method, ref_params = _stage(stages, "reference")
    if ref_method == "csf" and n_echoes < 2:
        raise InputError("reference 'csf' finds the ventricles from R2*, which needs at least two echoes; "
                         "this acquisition has one (use reference 'whole-brain')")
    reference = pe.Node(ReferenceChi(method=ref_method), name="reference", mem_gb=_gb(4 * vol_bytes))
    if ref_method == "roi":
        reference.inputs.roi = ref_params["mask"]
    unring_method, unring_params = _stage(stages, "unringing") if "unringing" in stages else ("none", {})
    chi_src, chi_info_src = (inversion, "chi"), (inversion, "info")
    if unring_method != "none":
        unringing = pe.Node(UnringChi(params=unring_params, sampling=dict(sampling or {}), num_threads=omp_nthreads),
                            name="unringing", n_procs=omp_nthreads, mem_gb=_gb(10 * vol_bytes))
        workflow.connect([(inversion, unringing, [("chi", "chi"), ("info", "inversion_info")]),
                          (background, unringing, [("mask", "mask")])])
        chi_src, chi_info_src = (unringing, "chi"), (unringing, "info")

    offset_method, _ = _stage(stages, "phase_offset")
    if offset_method != "none":
        offset = pe.Node(
            RemovePhaseOffset(method=offset_method, echo_times=list(echo_times)), name="phase_offset",
            mem_gb=mem_4d,
        )
        workflow.connect([
            (load, offset, [("phase", "phase")]),
            (mag_src[0], offset, [(mag_src[1], "magnitude")]),
            (offset, unwrap, [("phase", "phase")]),
        ])
    else:
        workflow.connect([(load, unwrap, [("phase", "phase")])])

    field_out = "echo_fields" if echo_strategy == "per-echo" else "field"
    workflow.connect([
        (inputnode, load, [("magnitude", "magnitude"), ("phase", "phase"), ("real", "real"), ("imag", "imag")]),
        (mag_src[0], unwrap, [(mag_src[1], "magnitude")]),
        (mag_src[0], average, [(mag_src[1], "magnitude")]),
        (mag_src[0], fit, [(mag_src[1], "magnitude")]),
        (load, fit, [("phase", "phase")]),
        (unwrap, fit, [("unwrapped", "unwrapped")]),
        (average, mask, [("average", "magnitude")]),
        # the data weights: the noise with each voxel's misfit (echoes.field_misfit); the mask's
        # refinement below reads the noise alone
        (fit, background, [(field_out, "field"), ("uncertainty", "noise")]),
        (load, background, [("b0_dir", "b0_dir")]),
        (mask, background, [("mask", "mask")]),
        (background, inversion, [("local_field", "local_field"), ("mask", "mask")]),
        (average, inversion, [("average", "magnitude")]),
        (fit, inversion, [("uncertainty", "noise")]),
        (load, inversion, [("b0_dir", "b0_dir")]),
        (chi_src[0], reference, [(chi_src[1], "chi")]),
        (background, reference, [("mask", "mask")]),
        (reference, outputnode, [("chi", "chi")]),
        (load, outputnode, [("phase_units", "phase_units"), ("b0_dir", "b0_dir"), ("magnitude", "magnitude4d")]),
        (info_src[0], outputnode, [(info_src[1], "phase_info")]),
        (unwrap, outputnode, [("unwrapped", "unwrapped")]),
        (fit, outputnode, [("offset", "field_offset")]),
        (mask, outputnode, [("mask", "mask"), ("mask_filled", "mask_filled"), ("brain", "brain"),
                            ("info", "mask_info")]),
        (average, outputnode, [("average", "average")]),
        (fit, outputnode, [("field", "total_field"), ("noise", "field_noise"), ("info", "field_info")]),
        (unwrap, outputnode, [("info", "unwrap_info")]),
        (background, outputnode, [("local_field", "local_field"), ("mask", "local_mask"),
                                  ("info", "local_info")]),
    ])
    if n_echoes > 1:  # R2*/T2* need at least two echoes
        r2_method, r2_params = _stage(stages, "r2star")
        r2star = pe.Node(
            R2Star(method=r2_method, params=r2_params, echo_times=list(echo_times)), name="r2star", mem_gb=mem_4d
        )
        workflow.connect([
            (mag_src[0], r2star, [(mag_src[1], "magnitude")]),
            (r2star, inversion, [("r2star", "r2star")]),
            (r2star, reference, [("r2star", "r2star")]),
            (r2star, outputnode, [("r2star", "r2star"), ("t2star", "t2star"), ("info", "r2star_info")]),
        ])
    sep_method, sep_params = _stage(stages, "chi_separation") if "chi_separation" in stages else ("none", {})
    if sep_method == "chisep":
        if echo_strategy == "per-echo":
            raise InputError("chi_separation 'chisep' inverts the echo-combined local field; it does not run "
                             "with echo_strategy 'per-echo' (use 'combined')")
        _connect_chisep(workflow, sep_params, b0=b0, pad_voxels=pad_voxels,
                        omp_nthreads=omp_nthreads, mem_gb=2 * mem_inv, r2_map=r2_map,
                        nodes={"load": load, "fit": fit, "average": average, "background": background,
                               "inversion": inversion, "r2star": r2star if n_echoes > 1 else None,
                               "outputnode": outputnode})
    if mask_params.get("refine"):
        workflow.connect([(fit, mask, [("noise", "noise")]), (unwrap, mask, [("quality", "quality")])])

    # χ's sidecar dictionary travels to every χ-derived output (space-T1w/template maps,
    # ROI tables), so it carries the phase units too
    merge = pe.Node(
        Function(input_names=["first", "second", "third"], output_names=["out"], function=merge_dicts),
        name="chi_info", run_without_submitting=True,
    )
    workflow.connect([
        (info_src[0], merge, [(info_src[1], "first")]),
        (chi_info_src[0], merge, [(chi_info_src[1], "second")]),
        (reference, merge, [("info", "third")]),
        (merge, outputnode, [("out", "chi_info")]),
    ])
    return workflow


def _connect_chisep(workflow, params, *, b0, pad_voxels, omp_nthreads, mem_gb, r2_map, nodes):
    """χ-separation from the local field, R2* (and an R2 map) and the inversion's χ."""
    from qsmprep.interfaces.chisep import ChiSeparation

    if nodes["r2star"] is None:
        raise InputError("chi_separation 'chisep' needs R2* and so at least two echoes; this acquisition has one "
                         "(set chi_separation to 'none')")
    kind = "T2map" if r2_map and "_T2map." in str(r2_map) else "R2map"
    sep = pe.Node(ChiSeparation(params=params, b0=float(b0), pad=pad_voxels, num_threads=omp_nthreads, r2_kind=kind),
                  name="chi_separation", n_procs=omp_nthreads, mem_gb=mem_gb)
    prioritise(sep)  # it follows the inversion and takes as long
    workflow.connect([
        (nodes["background"], sep, [("local_field", "local_field"), ("mask", "mask")]),
        (nodes["average"], sep, [("average", "magnitude")]),
        (nodes["fit"], sep, [("uncertainty", "noise")]),
        (nodes["load"], sep, [("b0_dir", "b0_dir")]),
        (nodes["inversion"], sep, [("chi", "chi")]),
        (nodes["r2star"], sep, [("r2star", "r2star")]),
        (sep, nodes["outputnode"], [("chi_para", "chi_para"), ("chi_dia", "chi_dia"), ("r2prime", "r2prime"),
                                    ("info", "chisep_info")]),
    ])
    if r2_map:
        from qsmprep.interfaces.registration import AlignToGRE

        align = pe.Node(AlignToGRE(in_file=str(r2_map), num_threads=omp_nthreads), name="r2_to_gre",
                        n_procs=omp_nthreads)
        workflow.connect([(nodes["average"], align, [("average", "reference")]),
                          (align, sep, [("out_file", "r2"), ("source", "r2_source")])])


def merge_dicts(first, second, third):
    """Union of three sidecar dictionaries (later ones win); self-contained for Function nodes."""
    out = dict(first)
    out.update(second)
    out.update(third)
    return out
