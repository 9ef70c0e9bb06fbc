"""The entry points of :mod:`qsmprep.qsm.inversion`: option names, defaults and dispatch.

:func:`invert` validates the options of a method, fills in the ones it is not given from
the method function's signature (:func:`default_parameters`), chooses λ by a rule
(:mod:`qsmprep.qsm.inversion.regularization`) and records what it used.
"""

from __future__ import annotations

import inspect

import numpy as np

from qsmprep.qsm.inversion._operators import (
    _check_inputs,
    _check_positive,
    _jsonable,
    _noise_std,
    _weighted_data,
)
from qsmprep.qsm.inversion.ilsqr import ilsqr
from qsmprep.qsm.inversion.medi import medi
from qsmprep.qsm.inversion.regularization import (
    LAMBDA_RULES,
    _discrepancy,
    _discrepancy_record,
    _lcurve,
    _reg_value,
    _residual_norm,
    _residual_variance,
)
from qsmprep.qsm.inversion.rts import rts
from qsmprep.qsm.inversion.tikhonov import _tikhonov_parts, _tikhonov_solve, tikhonov
from qsmprep.qsm.inversion.tkd import tkd
from qsmprep.qsm.inversion.tv import tv
from qsmprep.qsm.inversion.whqsm import whqsm

#: The function of each method (``medi+0`` is :func:`medi` with its CSF term; ``nltv``, FANSI's
#: nonlinear TV, is :func:`tv` with its complex exponential data term).
_FUNCTIONS = {"tkd": tkd, "tikhonov": tikhonov, "ilsqr": ilsqr, "medi": medi, "medi+0": medi, "tv": tv,
              "nltv": tv, "rts": rts, "whqsm": whqsm}
#: Inversion methods :func:`invert` accepts.
METHODS = tuple(_FUNCTIONS)
#: Methods whose regularisation weight can be chosen by a rule.
_REGULARISED = ("tikhonov", "medi", "medi+0", "tv", "nltv", "rts", "whqsm")
#: The keyword options of each method that :func:`invert` passes on (and records).
_METHOD_PARAMS = {
    "tkd": {"threshold", "correct"},
    "tikhonov": set(),
    "ilsqr": {"tol", "max_iter", "fast_estimate", "fast_smv_mm", "fast_exponent", "fast_percentiles",
              "fast_tkd_threshold", "cone_threshold", "edge_fraction", "streak_tol", "streak_max_iter"},
    "medi": {"edge_fraction", "solver", "max_iter", "tol", "cg_max_iter", "cg_tol", "epsilon", "mu", "mu_data",
             "admm_max_iter", "admm_tol", "admm_relax", "newton_iter", "data_term", "phase_scale"},
    "medi+0": {"edge_fraction", "max_iter", "tol", "cg_max_iter", "cg_tol", "epsilon", "data_term",
               "phase_scale", "lambda_csf", "csf_r2star_max", "csf"},
    "tv": {"mu", "mu_data", "max_iter", "tol", "data_term", "phase_scale", "newton_iter", "relax"},
    "nltv": {"mu", "mu_data", "max_iter", "tol", "phase_scale", "newton_iter", "relax"},
    "rts": {"delta", "lsmr_iter", "rho", "tol", "max_iter", "tau", "gamma"},
    "whqsm": {"beta", "mu_h", "mu", "mu_data", "max_iter", "tol", "data_term", "phase_scale", "newton_iter",
              "edge_fraction", "relax"},
}
_SELECTION_PARAMS = {"lambda_range", "lambda_evals"}


def _signature_defaults(func):
    """The keyword defaults of ``func``'s signature, in signature order."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _method_defaults(method):
    """The defaults of ``method``'s options and ``lambda_``, from its function's signature."""
    names = _METHOD_PARAMS[method] | {"lambda_"}
    return {name: v for name, v in _signature_defaults(_FUNCTIONS[method]).items() if name in names}


def method_parameters(method):
    """Names of the keyword options :func:`invert` accepts for ``method`` (besides ``pad``/``workers``)."""
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(METHODS)}")
    names = set(_METHOD_PARAMS[method])
    if method in _REGULARISED:
        names |= _SELECTION_PARAMS | {"lambda_", "lambda_rule"}
    return names


def uses_phase_scale(method, params=None):
    """Whether ``method`` with ``params`` runs a nonlinear (complex exponential) data term,
    which needs ``phase_scale``: ``nltv`` always, the others where their ``data_term`` (given,
    or their signature's default: ``whqsm``'s is nonlinear) is ``"nonlinear"``."""
    if method == "nltv":
        return True
    if method not in METHODS:
        return False
    params = params or {}
    return params.get("data_term", _method_defaults(method).get("data_term")) == "nonlinear"


def default_parameters(method):
    """The default of every option of ``method`` that has one: ``{name: value}``.

    Read from the signature of the method's function (:func:`tkd`, :func:`tikhonov`,
    :func:`ilsqr`, :func:`medi` for ``medi`` and ``medi+0``, :func:`tv`), the one place
    each default is written, and for the regularised methods ``lambda_`` with it and
    ``lambda_rule`` from :func:`invert`'s.  Left out: options whose signature default is
    ``None`` (derived from other values or needed only in some modes: ``phase_scale``,
    ``mu``, ``lambda_csf``, ``csf``), options without a default in the method's
    signature (``csf_r2star_max``: :func:`qsmprep.qsm.reference.csf_mask`'s), and the
    λ-search options ``lambda_range`` and ``lambda_evals`` (:func:`invert`'s, by rule).
    A subset of :func:`method_parameters`.  :func:`invert` runs a method with these values
    for the options it is not given; it records all of them for ``tkd`` and ``ilsqr``, and
    λ, ``lambda_rule`` (and MEDI's ``data_term``) for the regularised methods.
    """
    names = method_parameters(method)
    out = {name: v for name, v in _method_defaults(method).items() if name in names and v is not None}
    if method in _REGULARISED:
        out["lambda_rule"] = _signature_defaults(invert)["lambda_rule"]
    return out


def _model_chi(grid, stats, out):
    """The χ a method's data term saw, on the λ rules' padded ``grid``: the whole padded grid where
    the method leaves it in ``stats["chi_grid"]`` (MEDI and TV solve outside the mask too, with no
    data weight there, so their residual inside the mask includes what they put outside), else
    ``out`` (zero outside the mask)."""
    full = stats.pop("chi_grid", None)
    return full if full is not None and full.shape == grid.shape else grid.put(out)


def invert(local_field, mask, voxel_size, b0_dir, *, method="tkd", magnitude=None, noise=None, r2star=None,
           lambda_=None, lambda_rule="fixed", pad=16, workers=None, **params):
    """Local field (ppm) to χ (ppm) with any of :data:`METHODS`; returns (χ, info).

    Parameters
    ----------
    local_field : ndarray (x, y, z)
        Local field (ppm), valid inside ``mask``.
    mask : ndarray of bool
        Where the local field is valid; χ is zero outside.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (:func:`qsmprep.qsm.kernels.b0_direction`).
    method : str
        One of :data:`METHODS`.
    magnitude : ndarray, optional
        Magnitude (MEDI's edge mask; data weights when no noise map is given).
    noise : ndarray or float, optional
        Field noise standard deviation (ppm): data weights ``1/σ``, and the noise level of
        the discrepancy principle.
    r2star : ndarray, optional
        R2* (1/s): the automatic ventricle CSF mask of ``medi+0``
        (:func:`qsmprep.qsm.reference.csf_mask`).
    lambda_ : float, optional
        Regularisation weight (``tikhonov``, ``medi``, ``medi+0``, ``tv``); default the
        method function's (:func:`default_parameters`), and the starting point / centre of
        an automatic search.
    lambda_rule : {"fixed", "discrepancy", "lcurve"}
        ``discrepancy``: λ such that the mean of ``((Dχ − f)/σ)²`` in the mask is 1 (needs
        ``noise``; where no λ gets there, because the residual flattens out above or below
        the noise, λ stays the fixed one and ``info`` says so: ``lambda_rule_attained``
        False and ``lambda_rule_fallback``); ``lcurve``: the corner (maximum curvature) of the L-curve over
        ``lambda_evals`` (default 9 for tikhonov, 7 otherwise) log-spaced values within
        ``lambda_range`` (default 100) times and divided by λ.
    pad : int
        Zero padding (voxels per side) around the mask's bounding box.
    workers : int, optional
        FFT threads.
    **params
        Method options (see each method's function); unknown names raise ValueError.

    Returns
    -------
    chi : ndarray of float32
        χ (ppm), zero outside the mask, not referenced (except ``medi+0``: CSF zero).
    info : dict
        ``method`` and every parameter used, including ``lambda`` and ``lambda_rule``,
        the λ search history for automatic rules, the data weighting, and iteration
        counts; JSON-serialisable.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(METHODS)}")
    if lambda_rule not in LAMBDA_RULES:
        raise ValueError(f"unknown lambda_rule {lambda_rule!r}; use one of {', '.join(LAMBDA_RULES)}")
    allowed = _METHOD_PARAMS[method] | (_SELECTION_PARAMS if method in _REGULARISED else set())
    unknown = set(params) - allowed
    if unknown:
        hint = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes no options"
        if method in _REGULARISED:
            hint += " (and lambda_, lambda_rule)"
        raise ValueError(f"unknown {method} parameter(s) {sorted(unknown)}; {hint}")
    if method not in _REGULARISED and (lambda_ is not None or lambda_rule != "fixed"):
        raise ValueError(f"method {method!r} has no regularisation weight: lambda_ and lambda_rule do not apply")
    if method == "whqsm" and lambda_rule != "fixed":
        raise ValueError("method 'whqsm' takes lambda_rule 'fixed' only: its data term includes the background "
                         "field it fits, which the discrepancy and L-curve rules' residual of Dχ − f leaves out")
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    for name, arr in (("magnitude", magnitude), ("r2star", r2star)):
        if arr is not None and np.shape(arr) != field.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} does not match the field's {field.shape}")
    if noise is not None and np.ndim(noise) not in (0, 3):
        raise ValueError("noise must be a 3D map or a scalar (ppm)")
    if noise is not None and np.ndim(noise) == 3 and np.shape(noise) != field.shape:
        raise ValueError(f"noise shape {np.shape(noise)} does not match the field's {field.shape}")
    noise_map = noise if np.ndim(noise) == 3 else None  # a scalar noise is only the discrepancy's σ
    pad_info = int(pad) if np.ndim(pad) == 0 else [int(p) for p in pad]
    info = {"method": method, "pad": pad_info}
    stats = {}

    if method == "tkd":
        opts = {**_method_defaults("tkd"), **params}
        threshold = opts["threshold"]
        correct = bool(opts["correct"])
        chi, factor = tkd(field, mask, vs, b, threshold=threshold, correct=correct, pad=pad, workers=workers,
                          return_factor=True)
        info.update({"threshold": float(threshold), "correct": correct, "correction_factor": factor})
        return chi, info

    if method == "ilsqr":
        # every option it ran with goes to the sidecar: its own defaults, then the caller's
        opts = {**_method_defaults("ilsqr"), **params}
        chi = ilsqr(field, mask, vs, b, magnitude=magnitude, noise=noise_map, pad=pad, workers=workers,
                    stats=stats, **opts)
        info.update(opts)
        info["data_weighting"] = _weighting_name(noise, magnitude)
        info.update(stats)
        return chi, info

    # regularised methods
    lam0 = _method_defaults(method)["lambda_"] if lambda_ is None else _check_positive("lambda_", lambda_)
    lam_range = _check_positive("lambda_range", params.pop("lambda_range", 100.0))
    if lam_range <= 1:
        raise ValueError(f"lambda_range must be > 1, got {lam_range}")
    evals_given = "lambda_evals" in params
    n_evals = params.pop("lambda_evals", 9 if method == "tikhonov" else 7)
    n_evals = _check_positive("lambda_evals", n_evals, integer=True)
    if lambda_rule == "lcurve" and n_evals < 3:
        raise ValueError(f"lambda_evals must be at least 3 for the L-curve, got {n_evals}")
    if lambda_rule == "discrepancy" and noise is None:
        raise ValueError("lambda_rule 'discrepancy' needs the field noise (noise map or std in ppm)")
    grid, f, w, wname = _weighted_data(field, mask, vs, b, pad, workers, noise_map, magnitude)

    if method == "tikhonov":
        parts = _tikhonov_parts(grid, grid.fft(f))
        solve = lambda lam: grid.ifft(_tikhonov_solve(grid, parts, lam)) * grid.mask  # noqa: E731
        reg_kind = "l2"
        w = grid.mask.astype(np.float32)  # the closed form is unweighted
    elif method in ("medi", "medi+0"):
        opts = {k: v for k, v in params.items() if k not in ("csf_r2star_max", "csf")}
        csf = None
        if method == "medi+0":
            csf = params.get("csf")
            if csf is None:
                if r2star is None:
                    raise ValueError("method 'medi+0' needs the R2* map (r2star) for its automatic CSF mask")
                from qsmprep.qsm.reference import csf_mask

                kw = {"r2star_max": params["csf_r2star_max"]} if "csf_r2star_max" in params else {}
                csf = csf_mask(r2star, mask, vs, **kw)
            info["csf_voxels"] = int(np.count_nonzero(np.asarray(csf, dtype=bool) & mask))
            if "csf_r2star_max" in params:
                info["csf_r2star_max"] = params["csf_r2star_max"]

        if method == "medi+0":  # its CSF term is in the Gauss-Newton solver only (medi records its solver in stats)
            opts["solver"] = "gauss-newton"

        def solve(lam):
            out = medi(field, mask, vs, b, magnitude=magnitude, noise=noise_map, lambda_=lam, csf=csf,
                       pad=pad, workers=workers, stats=stats, **opts)
            return _model_chi(grid, stats, out)

        reg_kind = "l1"
        info.update(opts)
    elif method in ("tv", "nltv", "whqsm"):
        opts = dict(params)
        if method == "nltv":  # Milovic et al. 2018: the complex exponential data term
            opts["data_term"] = "nonlinear"
        if method == "whqsm":  # a new method: every option it runs with goes to the sidecar
            opts = {**{k: v for k, v in _method_defaults("whqsm").items() if k != "lambda_" and v is not None},
                    **opts}
        if uses_phase_scale(method, opts) and opts.get("phase_scale") is None:
            raise ValueError(f"method {method!r} with the nonlinear data term needs phase_scale, the phase (rad) "
                             "of 1 ppm of field (qsmprep.qsm.echoes.phase_per_ppm of the echo times and B0)"
                             + (", or data_term 'linear'" if method == "whqsm" else ""))
        func = whqsm if method == "whqsm" else tv

        def solve(lam):
            out = func(field, mask, vs, b, magnitude=magnitude, noise=noise_map, lambda_=lam, pad=pad,
                       workers=workers, stats=stats, **opts)
            return _model_chi(grid, stats, out)

        reg_kind = "tv"
        info.update(opts)
    else:  # rts: no data weights (Kames et al.'s data term is the step-1 spectrum)
        def solve(lam):
            return grid.put(rts(field, mask, vs, b, lambda_=lam, pad=pad, workers=workers, stats=stats, **params))

        reg_kind = "tv"
        opts = {**_method_defaults("rts"), **params}
        opts.pop("lambda_", None)
        info.update(opts)

    if lambda_rule == "fixed":
        lam, chi_p = lam0, solve(lam0)
    elif lambda_rule == "discrepancy":
        sigma = _noise_std(grid, noise)
        search = {"max_evals": n_evals} if evals_given else {}  # else _discrepancy's default
        lam, chi_p, history, attained = _discrepancy(
            lambda x: (lambda c: (c, _residual_variance(grid, c, f, sigma)))(solve(x)), lam0, **search)
        info.update(_discrepancy_record(history, attained, lam0))
    else:
        lams = lam0 * np.logspace(-np.log10(lam_range), np.log10(lam_range), n_evals)
        lam, chi_p, history = _lcurve(
            lambda x: (lambda c: (c, _residual_norm(grid, c, f, w), _reg_value(c * grid.mask, vs, reg_kind)))(
                solve(x)), lams)
        info["lambda_search"] = [{"lambda": x, "residual_norm": r, "regulariser": e, "curvature": k}
                                 for x, r, e, k in history]
    info.update({"lambda": float(lam), "lambda_rule": lambda_rule})
    if method == "rts":
        info["data_weighting"] = "uniform"
    elif method != "tikhonov":
        info["data_weighting"] = wname
    if method in ("medi", "medi+0") and not info.get("data_term"):
        info["data_term"] = _method_defaults(method)["data_term"]
    info.update(stats)
    return grid.get(chi_p * grid.mask), _jsonable(info)


def _weighting_name(noise, magnitude):
    """What the data weights come from: a noise map, the magnitude, or neither."""
    if noise is not None and np.ndim(noise) == 3:
        return "noise"
    return "magnitude" if magnitude is not None else "uniform"


def invert_echoes(echo_fields, mask, voxel_size, b0_dir, *, tes=None, magnitude=None, echo_weighting="snr",
                  **kwargs):
    """Invert each echo's local field and average the χ maps (the RIN protocol).

    Parameters
    ----------
    echo_fields : ndarray (x, y, z, echo)
        Local field of each echo (ppm).
    mask, voxel_size, b0_dir
        As in :func:`invert`.
    tes : sequence of float, optional
        Echo times (s), for ``"snr"`` weighting.
    magnitude : ndarray (x, y, z, echo) or (x, y, z), optional
        Per-echo magnitudes (``"snr"`` weighting); a 3D magnitude is passed to
        :func:`invert` for every echo.
    echo_weighting : {"snr", "mean"}
        ``mean``: plain mean (the RIN protocol's); ``snr``: inverse field-noise-variance
        weights ``w_e ∝ TE_e² · mean_mask(|S_e|²)`` (the field noise of an echo is
        ``∝ 1 / (TE · |S|)``), with TE alone when no per-echo magnitude is given.
    **kwargs
        Passed to :func:`invert` (method, lambda_, ...).

    Returns
    -------
    chi : ndarray of float32
        Weighted mean of the per-echo χ maps.
    info : dict
        The last echo's :func:`invert` info plus ``EchoStrategy`` and ``EchoWeights``.
    """
    fields = np.asarray(echo_fields)
    if fields.ndim != 4:
        raise ValueError(f"echo_fields must be 4D (x, y, z, echo), got shape {fields.shape}")
    n = fields.shape[-1]
    if echo_weighting not in ("snr", "mean"):
        raise ValueError(f"echo_weighting must be 'snr' or 'mean', got {echo_weighting!r}")
    mask = np.asarray(mask, dtype=bool)
    mag4 = magnitude if magnitude is not None and np.ndim(magnitude) == 4 else None
    if mag4 is not None and np.shape(mag4) != fields.shape:
        raise ValueError(f"magnitude shape {np.shape(mag4)} does not match echo_fields' {fields.shape}")
    if echo_weighting == "mean":
        weights = np.ones(n)
    else:
        if tes is None:
            raise ValueError("echo_weighting 'snr' needs the echo times (tes)")
        tes = np.asarray(tes, dtype=float).ravel()
        if tes.size != n or np.any(tes <= 0):
            raise ValueError(f"tes must be {n} positive echo times, got {tes.tolist()}")
        weights = tes**2
        if mag4 is not None:
            weights = weights * np.array([np.mean(np.abs(mag4[..., e][mask]) ** 2) for e in range(n)])
    weights = weights / weights.sum()
    mag3 = magnitude if magnitude is not None and np.ndim(magnitude) == 3 else None
    acc = np.zeros(fields.shape[:3], dtype=np.float64)
    info = {}
    for e in range(n):
        mag_e = mag4[..., e] if mag4 is not None else mag3
        chi, info = invert(fields[..., e], mask, voxel_size, b0_dir, magnitude=mag_e, **kwargs)
        acc += weights[e] * chi
    info = dict(info, EchoStrategy="per-echo", EchoWeighting=echo_weighting,
                EchoWeights=[float(x) for x in weights])
    return acc.astype(np.float32), info
