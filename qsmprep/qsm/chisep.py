"""χ-separation: paramagnetic (χ⁺, iron) and diamagnetic (χ⁻, myelin, calcium) susceptibility.

Shin, Lee, Yun, Yoo, Jang, Oh, Nam, Jung, Kim, Fukunaga, Kim, Choi & Lee, "χ-separation:
magnetic susceptibility source separation toward iron and myelin mapping in the brain",
NeuroImage 2021;240:118371.  QSM measures the sum of the two sources; the reversible
transverse relaxation rate ``R2′ = R2* − R2`` measures (in the static dephasing regime,
Yablonskiy & Haacke, MRM 1994;32:749) the *absolute* amount of both.  With χ⁺ ≥ 0 and χ⁻ ≤ 0
in each voxel:

``local field   f  = D ∗ (χ⁺ + χ⁻)``                (ppm, the dipole kernel D)
``R2′              = D_r⁺ χ⁺ − D_r⁻ χ⁻``           (1/s; D_r the relaxometric constant, Hz/ppm)

so the field fixes the sum and R2′ the "sum of magnitudes", and the two give both sources.

Functions
---------
:func:`relaxometric_constant`
    ``D_r`` at a field strength: Shin et al.'s 137 Hz/ppm at 3 T, linear in B0 (the static
    dephasing regime's R2′ is proportional to γ B0 Δχ).
The R2′ sources (a measured R2 map, or the GRE-only approximation) are in
:mod:`qsmprep.qsm.r2prime`.

:func:`chi_separation`
    The regularised joint inversion of Shin et al. (their supplementary algorithm, the
    toolbox's ``chi_sep_MEDI`` with the linear field term), Gauss-Newton with conjugate
    gradients on our FFT dipole operators, as in :func:`qsmprep.qsm.inversion.medi`.
:func:`separate`
    :func:`chi_separation` with λ chosen by a rule (fixed, discrepancy principle, L-curve).
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm._numba import num_threads
from qsmprep.qsm.kernels import GAMMA_BAR_MHZ_PER_T
from qsmprep.qsm.inversion._fused import add_weighted_laplacian, combine_sources, split_sources
from qsmprep.qsm.inversion._operators import (
    _check_fraction,
    _check_inputs,
    _check_positive,
    _fgrad,
    _lap_diag,
    _norm,
    _pcg,
    _weighted_data,
)
from qsmprep.qsm.inversion.medi import _dtw2d, edge_mask
from qsmprep.qsm.r2prime import r2prime_gre_only

#: Shin et al. 2021's relaxometric constant at 3 T (Hz/ppm), the same for both sources.
DR_3T_HZ_PER_PPM = 137.0


def relaxometric_constant(b0, *, dr_3t=DR_3T_HZ_PER_PPM):
    """``D_r`` (Hz/ppm) at field strength ``b0`` (T): ``dr_3t · b0 / 3``.

    Shin et al. 2021 use 137 Hz/ppm at 3 T for both sources (from simulations of
    iron- and myelin-like sources in the static dephasing regime, where R2′ grows linearly
    with γ B0 |Δχ|; Yablonskiy & Haacke 1994), so it scales linearly with B0.

    >>> relaxometric_constant(3.0), round(relaxometric_constant(7.0), 1)
    (137.0, 319.7)
    """
    b0 = _check_positive("b0", b0)
    return float(_check_positive("dr_3t", dr_3t)) * b0 / 3.0


def _consistent_offset(chi, r2prime, dr_para, dr_dia, weights):
    """The offset δ of the total χ that the sources' signs and R2′ agree with best.

    χ from the field is known up to a constant (the local field's mean is arbitrary), but
    R2′ is absolute: a voxel can hold ``χ⁺ ≥ 0``, ``χ⁻ ≤ 0`` with ``D_r⁺ χ⁺ − D_r⁻ χ⁻ = R2′``
    only if ``−R2′/D_r⁻ ≤ χ ≤ R2′/D_r⁺``.  δ minimises the weighted squared distance of
    ``χ + δ`` to those intervals over the mask (convex, piecewise quadratic in δ; solved by
    bounded Brent search over ±1 ppm).  Where R2′ ≈ 0 (CSF) this is a zero-CSF reference.
    """
    from scipy.optimize import minimize_scalar

    chi = np.asarray(chi, np.float64)
    lo, hi = -np.asarray(r2prime, np.float64) / dr_dia, np.asarray(r2prime, np.float64) / dr_para
    wt = np.asarray(weights, np.float64)

    def cost(delta):
        x = chi + delta
        return float(np.sum(wt * (np.maximum(lo - x, 0) ** 2 + np.maximum(x - hi, 0) ** 2)))

    if chi.size == 0:
        return 0.0
    centre = -float(np.median(chi))
    res = minimize_scalar(cost, bounds=(centre - 1.0, centre + 1.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(res.x)


def parameters():
    """The options of the ``chisep`` stage with their defaults: :func:`chi_separation`'s
    keywords (the data inputs excepted), :func:`separate`'s λ rule and ``r2``, the R2₀ of
    :func:`r2prime_gre_only`."""
    from qsmprep.qsm._params import keyword_defaults

    out = keyword_defaults(chi_separation, exclude=("magnitude", "noise", "chi", "pad", "workers", "stats"))
    out.update(keyword_defaults(separate, exclude=("noise", "stats")))
    out["r2"] = keyword_defaults(r2prime_gre_only)["r2"]
    return out


def separate(local_field, r2prime, mask, voxel_size, b0_dir, b0, *, lambda_rule="fixed", lambda_range=100.0,
             lambda_evals=7, noise=None, stats=None, **params):
    """:func:`chi_separation` with λ chosen by one of the inversions' rules (``lambda_rule``).

    ``fixed``: ``params``' λ (or the default).  ``discrepancy``: the λ at which the field
    term's noise-weighted residual variance is 1 (Morozov; bracketing and false position in log λ
    from the default, at most ``lambda_evals`` solves; needs ``noise``).  ``lcurve``: the
    corner of ``(log ‖W(D(χ⁺ + χ⁻) − f)‖, log R)`` over ``lambda_evals`` values spread
    ``lambda_range`` either side of the default, ``R`` the unweighted
    ``2‖∇(χ⁺ + χ⁻)‖₁ + ‖∇χ⁺‖₁ + ‖∇χ⁻‖₁`` (as :mod:`qsmprep.qsm.inversion.regularization`
    does for the single-source inversions).  Returns ``(chi_para, chi_dia, info)``; ``info``
    has ``lambda``, ``lambda_rule`` and, for a search, ``lambda_search``; the discrepancy
    principle adds ``lambda_rule_attained`` (and, where it is False, ``lambda_rule_fallback``:
    λ is then the default, see :func:`qsmprep.qsm.inversion.regularization._discrepancy`).
    """
    from qsmprep.qsm.inversion.regularization import (
        LAMBDA_RULES, _discrepancy, _discrepancy_record, _lcurve, _reg_value, _residual_norm, _residual_variance,
    )
    from qsmprep.qsm.inversion._operators import _noise_std

    if lambda_rule not in LAMBDA_RULES:
        raise ValueError(f"lambda_rule must be one of {LAMBDA_RULES}, got {lambda_rule!r}")
    lam0 = float(params.pop("lambda_", _default_lambda()))
    runs = {}

    def solve(lam):
        run_stats = {}
        p, n = chi_separation(local_field, r2prime, mask, voxel_size, b0_dir, b0, noise=noise, lambda_=lam,
                              stats=run_stats, **params)
        runs[lam] = (p, n, run_stats)
        return p, n

    def finish(lam, info):
        p, n, run_stats = runs[lam]
        if stats is not None:
            stats.update(run_stats)
        return p, n, info

    if lambda_rule == "fixed":
        solve(lam0)
        return finish(lam0, {"lambda": lam0, "lambda_rule": "fixed"})
    if lambda_rule == "discrepancy" and noise is None:
        raise ValueError("lambda_rule 'discrepancy' needs the field noise map")
    evals = _check_positive("lambda_evals", lambda_evals, integer=True)
    field, m, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    grid, f, w, _ = _weighted_data(field, m, vs, b, params.get("pad", 16), params.get("workers"), noise,
                                   params.get("magnitude"))

    def total(lam):
        p, n = solve(lam)
        return grid.put(p + n)

    if lambda_rule == "discrepancy":
        sigma = _noise_std(grid, noise)
        lam, _, history, attained = _discrepancy(
            lambda x: (lambda c: (c, _residual_variance(grid, c, f, sigma)))(total(x)), lam0, max_evals=evals)
        record = _discrepancy_record(history, attained, lam0)
    else:
        if evals < 3 or not lambda_range > 1:
            raise ValueError("the L-curve needs lambda_evals >= 3 and lambda_range > 1")
        lams = lam0 * np.logspace(-np.log10(lambda_range), np.log10(lambda_range), evals)

        def point(x):
            c = total(x)
            p, n = (grid.put(v) for v in runs[x][:2])
            reg = 2 * _reg_value(c, vs, "l1") + _reg_value(p, vs, "l1") + _reg_value(n, vs, "l1")
            return c, _residual_norm(grid, c, f, w), reg

        lam, _, history = _lcurve(point, lams)
        record = {"lambda_search": [{"lambda": x, "residual_norm": r, "regulariser": e, "curvature": k}
                                    for x, r, e, k in history]}
    return finish(lam, {"lambda": float(lam), "lambda_rule": lambda_rule, **record})


def _default_lambda():
    """:func:`chi_separation`'s default λ (its signature is the one source)."""
    from qsmprep.qsm._params import keyword_defaults

    return keyword_defaults(chi_separation)["lambda_"]


def chi_separation(local_field, r2prime, mask, voxel_size, b0_dir, b0, *, magnitude=None, noise=None, chi=None,
                   dr_para=None, dr_dia=None, lambda_=2.5e-4, edge_fraction=0.1, r2prime_range=(1.0, 30.0),
                   unreliable_weight=0.1, max_iter=30, tol=0.01, cg_max_iter=30, cg_tol=0.05, epsilon=1e-6,
                   pad=16, workers=None, stats=None):
    """Paramagnetic and diamagnetic susceptibility from the local field and R2′ (Shin et al. 2021).

    Minimises, over χ⁺ ≥ 0 and χ⁻ ≤ 0 (``c = 2π γ̄ B0``, rad/s per ppm, so that the
    objective is Shin et al.'s divided by ``c²``: the field term in ppm, as in
    :func:`qsmprep.qsm.inversion.medi`, and both data terms in the published proportion),

    ``½‖W (D(χ⁺ + χ⁻) − f)‖² + ½‖W_r (D_r⁺ χ⁺ − D_r⁻ χ⁻ − R2′)/c‖²``
    ``+ λ (2‖M_G ∇(χ⁺ + χ⁻)‖₁ + ‖M_R ∇χ⁺‖₁ + ‖M_R ∇χ⁻‖₁)``

    with ``W`` the inversion's data weights (``1/σ`` of the field noise, mean 1; the
    magnitude without a noise map), ``W_r = W``, divided by 10 (``unreliable_weight``)
    where R2′ lies outside ``r2prime_range`` (Shin et al.'s 1-30 Hz at 3 T, scaled by
    ``B0/3``), ``M_G`` the edge mask of the magnitude and ``M_R`` that of R2′
    (:func:`qsmprep.qsm.inversion.edge_mask`, the top ``edge_fraction`` of gradients: the
    toolbox's 0.9 keep fraction).  As in Shin et al.'s algorithm: start from the voxel-wise
    solution of ``{χ⁺ + χ⁻ = χ, D_r⁺ χ⁺ − D_r⁻ χ⁻ = R2′}`` with ``χ`` the run's QSM (zero
    when none is given), linearise the L1 terms by lagged diffusivity around the current
    iterate, solve each Gauss-Newton step by conjugate gradients (``cg_tol``,
    ``cg_max_iter``; Jacobi-preconditioned, which on the 1 mm demo's pipeline field takes 4
    steps of 30 iterations instead of 16 and gives the same deep-grey means), project onto
    the sign constraints (a source at its bound whose descent leaves the feasible set is held
    there for the step: projected Newton, Bertsekas 1982), and stop when χ⁺ + χ⁻ changes by
    less than ``tol`` (1 %) or after ``max_iter`` (30) steps.  χ outside the mask is free and
    discarded, as in :func:`~qsmprep.qsm.inversion.medi`.

    Parameters
    ----------
    local_field, mask, voxel_size, b0_dir, pad, workers
        As in :func:`qsmprep.qsm.inversion.tkd`: local field (ppm), its mask, voxel size
        (mm), unit B0 vector in voxel axes, zero padding and FFT threads.
    r2prime : ndarray
        R2′ (1/s) on the same grid (:mod:`qsmprep.qsm.r2prime`).
    b0 : float
        Field strength (T): ``c`` and the default ``D_r``.
    magnitude, noise : ndarray, optional
        Echo-averaged magnitude (edge mask ``M_G``; weights without a noise map) and the
        field noise std (ppm) for ``W``.
    chi : ndarray, optional
        The run's total χ (ppm) for the initial split; its mean is irrelevant to the fit.
    dr_para, dr_dia : float, optional
        ``D_r⁺``, ``D_r⁻`` (Hz/ppm); default :func:`relaxometric_constant` at ``b0``.
    lambda_ : float
        λ (> 0); the χ⁺ + χ⁻ term carries ``2λ``, which at the default equals the λ of
        :func:`~qsmprep.qsm.inversion.medi` (5e-4), whose data term this one is.
    edge_fraction : float
        Fraction of magnitude (and R2′) gradients treated as edges.
    r2prime_range : (float, float)
        The range of R2′ (1/s, at 3 T; scaled by ``B0/3``) trusted at full weight.
    unreliable_weight : float
        ``W_r / W`` outside that range.
    max_iter, tol, cg_max_iter, cg_tol, epsilon
        Gauss-Newton steps and relative change to stop at; inner CG iterations and relative
        residual; lagged-diffusivity smoothing ((ppm/mm)²).
    stats : dict, optional
        Filled with the iteration counts.

    Returns
    -------
    chi_para, chi_dia : ndarray of float32
        χ⁺ ≥ 0 and χ⁻ ≤ 0 (ppm), zero outside the mask; absolute (not referenced: R2′ and
        the sign constraints fix both sources).
    """
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    b0 = _check_positive("b0", b0)
    lam = _check_positive("lambda_", lambda_)
    edge_fraction = _check_fraction("edge_fraction", edge_fraction)
    unreliable_weight = _check_fraction("unreliable_weight", unreliable_weight)
    max_iter = _check_positive("max_iter", max_iter, integer=True)
    tol = _check_positive("tol", tol)
    cg_max_iter = _check_positive("cg_max_iter", cg_max_iter, integer=True)
    cg_tol = _check_fraction("cg_tol", cg_tol)
    epsilon = _check_positive("epsilon", epsilon)
    lo, hi = (float(v) * b0 / 3.0 for v in r2prime_range)
    if not 0 <= lo < hi:
        raise ValueError(f"r2prime_range must be (low, high) with 0 <= low < high, got {r2prime_range!r}")
    dr_p = relaxometric_constant(b0) if dr_para is None else _check_positive("dr_para", dr_para)
    dr_n = relaxometric_constant(b0) if dr_dia is None else _check_positive("dr_dia", dr_dia)
    if np.shape(r2prime) != mask.shape:
        raise ValueError(f"r2prime shape {np.shape(r2prime)} does not match the field's {mask.shape}")
    r2p_full = np.asarray(r2prime, dtype=np.float32)
    if not np.isfinite(r2p_full[mask]).all():
        raise ValueError("r2prime has non-finite values inside the mask")
    if (r2p_full[mask] < 0).any():
        raise ValueError("r2prime is negative inside the mask (R2′ = R2* − R2 ≥ 0; clip it first)")

    grid, f, w, weighting = _weighted_data(field, mask, vs, b, pad, workers, noise, magnitude)
    m = grid.mask
    c = 2.0 * np.pi * GAMMA_BAR_MHZ_PER_T * b0          # rad/s per ppm
    kp, kn = np.float32(dr_p / c), np.float32(dr_n / c)   # R2′ per ppm, in units of c
    rho = grid.put(r2p_full) * m / np.float32(c)
    r2p_grid = grid.put(r2p_full) * m
    reliable = m & (r2p_grid >= lo) & (r2p_grid <= hi)
    w2 = w * w
    w2_mean = np.float32(w2[m].mean())
    wr2 = np.where(reliable, w2, w2 * np.float32(unreliable_weight**2)).astype(np.float32)
    if magnitude is not None:
        if np.shape(magnitude) != grid.full_shape:
            raise ValueError(f"magnitude shape {np.shape(magnitude)} does not match the field's")
        mg = edge_mask(grid.put(magnitude), m, vs, edge_fraction=edge_fraction)
    else:
        mg = np.ones((3,) + grid.shape, dtype=np.float32)   # plain L1-TV, as medi without a magnitude
    mr = edge_mask(r2p_grid, m, vs, edge_fraction=edge_fraction)

    # initial split: {p + n = χ, kp p − kn n = ρ} voxel by voxel, projected onto the signs
    q = np.zeros(grid.shape, np.float32) if chi is None else grid.put(chi) * m
    offset = _consistent_offset(q[m], r2p_grid[m], dr_p, dr_n, w2[m])
    q = (q + np.float32(offset)) * m
    p = np.maximum((kn * q + rho) / (kp + kn), 0) * m
    n = np.minimum((kp * q - rho) / (kp + kn), 0) * m
    lam32, lam2 = np.float32(lam), np.float32(2.0 * lam)
    eps = np.float32(epsilon)

    def lagged(weights, x):
        g = weights * _fgrad(x, vs)
        return weights * weights / np.sqrt(g * g + eps)

    n0 = grid.shape[0]
    stacked = (2 * n0,) + tuple(grid.shape[1:])
    bufs = [np.empty(grid.shape, dtype=np.float32) for _ in range(3)]
    it, cg_its, changes, change = 0, [], [], None
    with num_threads(grid.workers):
        for it in range(1, max_iter + 1):
            s = p + n
            v_tot, v_p, v_n = lagged(mg, s), lagged(mr, p), lagged(mr, n)

            def hess(x):  # x: (χ⁺, χ⁻) stacked along the first axis (the compiled CG is 3D)
                split_sources(x, free_stacked, bufs[0], bufs[1], bufs[2])
                dp, dn, total = bufs
                common = _dtw2d(grid, w2, total)
                add_weighted_laplacian(common, total, v_tot, lam2, vs)
                out = np.empty(stacked, dtype=np.float32)
                combine_sources(common, dp, dn, wr2, kp, kn, out)
                add_weighted_laplacian(out[:n0], dp, v_p, lam32, vs)
                add_weighted_laplacian(out[n0:], dn, v_n, lam32, vs)
                out *= free_stacked
                return out

            resid = grid.conv(s) - f
            resid *= w2
            common = grid.conv(resid)
            del resid
            add_weighted_laplacian(common, s, v_tot, lam2, vs)
            rr = wr2 * (kp * p - kn * n - rho)
            grad = np.empty((2,) + grid.shape, dtype=np.float32)
            grad[0] = common + kp * rr
            add_weighted_laplacian(grad[0], p, v_p, lam32, vs)
            grad[1] = common - kn * rr
            add_weighted_laplacian(grad[1], n, v_n, lam32, vs)
            del common, rr
            # projected Newton (Bertsekas 1982): a source at its bound whose descent direction
            # leaves the feasible set is held there for this step
            free = np.ones((2,) + grid.shape, dtype=np.float32)
            free[0][m & (p <= 0) & (grad[0] > 0)] = 0
            free[1][m & (n >= 0) & (grad[1] < 0)] = 0
            grad *= free
            free_stacked = free.reshape(stacked)
            np.negative(grad, out=grad)
            # Jacobi-preconditioned CG: the diagonal of the Gauss-Newton matrix (DᵀW²D's is
            # ≈ mean D² = 4/45 times W², floored outside the mask where χ is coupled to the
            # data only through D), which evens out the lagged-diffusivity weights' range
            diag = np.empty((2,) + grid.shape, np.float32)
            base = np.float32(4 / 45) * np.maximum(w2, np.float32(0.1) * w2_mean) + _lap_diag(v_tot, lam2, vs)
            diag[0] = base + _lap_diag(v_p, lam32, vs) + kp * kp * wr2
            diag[1] = base + _lap_diag(v_n, lam32, vs) + kn * kn * wr2
            del base
            dx, n_cg = _pcg(hess, grad.reshape(stacked), diag.reshape(stacked), tol=cg_tol, max_iter=cg_max_iter)
            dx = dx.reshape((2,) + grid.shape)
            del diag
            cg_its.append(n_cg)
            del grad
            # project onto the constraints inside the mask; outside it χ is free (one sum)
            p_new = np.where(m, np.maximum(p + dx[0], 0), p + dx[0])
            n_new = np.where(m, np.minimum(n + dx[1], 0), n + dx[1])
            s_new = (p_new + n_new) * m
            change = _norm(s_new - s * m) / max(_norm(s_new), 1e-30)
            changes.append(round(change, 5))
            p, n = p_new, n_new
            del dx
            if change < tol:
                break
    if stats is not None:
        stats.update({"initial_offset_ppm": round(float(offset), 6), "iterations": it, "cg_iterations": cg_its,
                      "relative_changes": changes, "converged": bool(change is not None and change < tol),
                      "weighting": weighting, "dr_para": dr_p, "dr_dia": dr_n,
                      "r2prime_reliable_range": [lo, hi],
                      "r2prime_unreliable_fraction": round(1.0 - float(reliable.sum()) / max(grid.n_mask, 1), 4)})
    return grid.get(np.maximum(p, 0) * m), grid.get(np.minimum(n, 0) * m)
