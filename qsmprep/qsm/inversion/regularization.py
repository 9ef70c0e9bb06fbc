"""Choosing the regularisation weight λ: the rules :func:`qsmprep.qsm.inversion.invert` offers.

``fixed``: the given (or the method's default) λ.  ``discrepancy``: the discrepancy principle
(Morozov 1966): λ at which the noise-weighted residual variance equals the expected noise
variance, ``mean_mask(((Dχ − f)/σ)²) = 1``, found by bracketing and bisection in log λ
(:func:`_discrepancy`).  ``lcurve``: the corner (maximum curvature) of the L-curve,
``(log ‖W(Dχ − f)‖, log R(χ))`` over log-spaced λ (Hansen 1992; as in Bilgic et al. 2014,
:func:`_lcurve`).
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.inversion._operators import _dot, _norm, _pgrad

#: Regularisation-parameter rules :func:`qsmprep.qsm.inversion.invert` accepts.
LAMBDA_RULES = ("fixed", "discrepancy", "lcurve")


def _residual_variance(grid, chi_padded, f, sigma):
    """Mean of ``((Dχ − f)/σ)²`` inside the mask (1 at the discrepancy-principle λ)."""
    r = (grid.conv(chi_padded * grid.mask) - f)[grid.mask] / sigma[grid.mask]
    return float(np.mean(r.astype(np.float64) ** 2))


def _residual_norm(grid, chi_padded, f, w):
    r = (grid.conv(chi_padded * grid.mask) - f) * w
    return _norm(r)


def _reg_value(chi_padded, voxel_size, kind):
    g = _pgrad(chi_padded, voxel_size)
    if kind == "l2":
        return _dot(g, g)
    if kind == "l1":
        return float(np.abs(g).sum(dtype=np.float64))
    return float(np.sqrt((g * g).sum(axis=0)).sum(dtype=np.float64))


def _discrepancy(evaluate, lam0, *, max_evals=10, rtol=0.05):
    """λ with residual variance 1 by bracketing and bisection in log λ.

    ``evaluate(lam) -> (chi, residual variance)``, the variance increasing with λ.
    """
    history = []

    def ev(lam):
        chi, rv = evaluate(lam)
        history.append((float(lam), float(rv)))
        return chi, rv

    lo = hi = None
    lam = lam0
    chi, rv = ev(lam)
    best = (abs(np.log(rv)), lam, chi)
    while len(history) < max_evals:
        if abs(rv - 1.0) <= rtol:
            break
        if rv < 1.0:
            lo = lam
        else:
            hi = lam
        if lo is None:
            lam = hi / 10.0
        elif hi is None:
            lam = lo * 10.0
        else:
            lam = float(np.sqrt(lo * hi))
        chi, rv = ev(lam)
        if abs(np.log(rv)) < best[0]:
            best = (abs(np.log(rv)), lam, chi)
    return best[1], best[2], history


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

