"""Choosing the regularisation weight λ: the rules :func:`qsmprep.qsm.inversion.invert` offers.

``fixed``: the given (or the method's default) λ.  ``discrepancy``: the discrepancy principle
(Morozov 1966): λ at which the noise-weighted residual variance equals the expected noise
variance, ``mean_mask(((Dχ − f)/σ)²) = 1``, found by bracketing and false position in log λ
(:func:`_discrepancy`); where the residual flattens out short of the noise level, the
fixed λ is kept and the caller records why (``lambda_rule_attained``,
``lambda_rule_fallback``; QC's ``lambda_rule`` warns).  ``lcurve``: the corner (maximum curvature) of the L-curve,
``(log ‖W(Dχ − f)‖, log R(χ))`` over log-spaced λ (Hansen 1992; as in Bilgic et al. 2014,
:func:`_lcurve`).
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.inversion._operators import _dot, _norm, _pgrad

#: Regularisation-parameter rules :func:`qsmprep.qsm.inversion.invert` accepts.
LAMBDA_RULES = ("fixed", "discrepancy", "lcurve")


def _residual_variance(grid, chi_padded, f, sigma):
    """Mean of ``((Dχ − f)/σ)²`` inside the mask (1 at the discrepancy-principle λ).

    ``chi_padded`` is the χ the method's data term saw, on the whole padded grid: MEDI and TV
    solve for χ outside the mask too (no data weight there), and what they put there is part
    of their fit to the field inside it; methods whose χ stops at the mask pass it masked.
    """
    r = (grid.conv(chi_padded) - f)[grid.mask] / sigma[grid.mask]
    return float(np.mean(r.astype(np.float64) ** 2))


def _residual_norm(grid, chi_padded, f, w):
    """``‖W (Dχ − f)‖`` with ``chi_padded`` as in :func:`_residual_variance`."""
    r = (grid.conv(chi_padded) - f) * w
    return _norm(r)


def _reg_value(chi_padded, voxel_size, kind):
    g = _pgrad(chi_padded, voxel_size)
    if kind == "l2":
        return _dot(g, g)
    if kind == "l1":
        return float(np.abs(g).sum(dtype=np.float64))
    return float(np.sqrt((g * g).sum(axis=0)).sum(dtype=np.float64))


def _discrepancy(evaluate, lam0, *, max_evals=10, rtol=0.05):
    """λ with residual variance 1 by bracketing and false position in log λ.

    ``evaluate(lam) -> (chi, residual variance)``, the variance increasing with λ.  Returns
    ``(λ, χ, history, attained)``.  Before a bracket is found the search steps λ by a decade;
    once 1 is bracketed, each next λ is where the straight line through the bracket's ends in
    (log λ, log variance) crosses 0, the Illinois variant of false position (Dowell & Jarratt,
    BIT 1971;11:168-174: an end kept twice in a row has its log variance halved, so that both
    ends close in), kept within the bracket's middle 90 %.  The variance is close to a power of
    λ over a decade, so this needs one or two evaluations where bisection needed two to four;
    when the variance's change per decade shrinks and, carried on, would not reach 1 within
    the evaluations left (it flattens out on one side of 1), or the evaluations run out
    without a bracket, 1 is out of reach: the noise σ does not describe the residual (a residual that
    stays above the noise at every λ is model misfit or background left in the field, not
    noise).  The search then stops and returns ``λ0``'s χ with ``attained`` False, instead of
    a λ decades away that only reflects the plateau.
    """
    history = []

    def ev(lam):
        chi, rv = evaluate(lam)
        history.append((float(lam), float(rv)))
        return chi, rv

    lo = hi = None  # the bracket's ends: [log λ, log variance used by the next step, λ]
    moved = None    # the end the last evaluation replaced
    lam = lam0
    chi, rv = ev(lam)
    first = (lam, chi)
    best = (abs(np.log(rv)), lam, chi)
    last_step = 0.0  # a first step alone does not show the curve flattening
    while len(history) < max_evals:
        if abs(rv - 1.0) <= rtol:
            break
        end = [float(np.log(lam)), float(np.log(rv)), lam]
        if rv < 1.0:
            if moved == "lo" and hi is not None:  # Illinois: the other end kept twice
                hi[1] *= 0.5
            lo, moved = end, "lo"
        else:
            if moved == "hi" and lo is not None:
                lo[1] *= 0.5
            hi, moved = end, "hi"
        if lo is None:
            lam = hi[2] / 10.0
        elif hi is None:
            lam = lo[2] * 10.0
        else:
            t = (lo[0] * hi[1] - hi[0] * lo[1]) / (hi[1] - lo[1])  # log variance 0 on the line
            span = hi[0] - lo[0]
            lam = float(np.exp(np.clip(t, lo[0] + 0.05 * span, hi[0] - 0.05 * span)))
        rv_prev = rv
        chi, rv = ev(lam)
        if abs(np.log(rv)) < best[0]:
            best = (abs(np.log(rv)), lam, chi)
        if (lo is None or hi is None) and (rv - 1.0) * (rv_prev - 1.0) > 0:  # still on one side, a decade on
            step = abs(np.log(rv) - np.log(rv_prev))
            if step <= last_step and step * (max_evals - len(history)) < abs(np.log(rv)):
                return first[0], first[1], history, False  # flattening out short of 1
            last_step = step
    bracketed = any(r < 1.0 for _, r in history) and any(r > 1.0 for _, r in history)
    if not bracketed and min(abs(r - 1.0) for _, r in history) > rtol:
        return first[0], first[1], history, False
    return best[1], best[2], history, True


def _discrepancy_fallback(history, lam0):
    """The sidecar's sentence for a discrepancy search that could not reach 1 (:func:`_discrepancy`)."""
    rvs = [r for _, r in history]
    lams = [x for x, _ in history]
    side = (f"stays at or above {min(rvs):.3g} × the noise variance" if min(rvs) > 1.0 else
            f"stays at or below {max(rvs):.3g} × the noise variance")
    return (f"the residual {side} for λ {min(lams):.3g}-{max(lams):.3g}: the noise map does not describe the "
            f"residual, so λ is the fixed {lam0:.3g}")


def _discrepancy_record(history, attained, lam0):
    """The sidecar's record of a discrepancy search (:func:`_discrepancy`'s history and attained):
    ``lambda_search``, ``lambda_rule_attained`` and, where 1 was out of reach,
    ``lambda_rule_fallback`` (:func:`_discrepancy_fallback`)."""
    out = {"lambda_search": [{"lambda": x, "residual_variance": r} for x, r in history],
           "lambda_rule_attained": attained}
    if not attained:
        out["lambda_rule_fallback"] = _discrepancy_fallback(history, lam0)
    return out


def _lcurve(evaluate, lams):
    """L-curve corner: maximum curvature of (log ‖residual‖, log R(χ)) over ``lams``.

    ``evaluate(lam) -> (chi, residual norm, regulariser value)``.
    """
    results = [evaluate(lam) for lam in lams]
    rho = np.log([r[1] for r in results])
    eta = np.log([r[2] for r in results])
    t = np.log(lams)
    d_rho, d_eta = np.gradient(rho, t), np.gradient(eta, t)
    dd_rho, dd_eta = np.gradient(d_rho, t), np.gradient(d_eta, t)
    kappa = (d_rho * dd_eta - dd_rho * d_eta) / np.maximum((d_rho**2 + d_eta**2) ** 1.5, 1e-30)
    inner = np.arange(1, len(lams) - 1)
    best = int(inner[np.argmax(kappa[inner])])
    history = [(float(lam), float(np.exp(r)), float(np.exp(e)), float(k))
               for lam, r, e, k in zip(lams, rho, eta, kappa)]
    return float(lams[best]), results[best][0], history

