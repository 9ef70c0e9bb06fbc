"""Compiled element-wise passes of the iterative inversions (private).

Each function fuses what numpy does in several passes over ``(3,) + shape`` float32
arrays (differences, weights, sums, shrinkage) into one parallel pass, so an iteration
costs little more than its FFTs.  Each has the numpy operators of
:mod:`qsmprep.qsm.inversion._operators` as its reference (``tests/test_qsm_fused.py``):

* :func:`add_weighted_laplacian`: ``out += s · ∇ᵀ(V ∇x)`` with
  :func:`qsmprep.qsm.kernels.gradient`'s forward differences (zero last row), MEDI's
  lagged-diffusivity operator;
* :func:`periodic_divergence`: ``out = s · ∇ᵀ(z − u)`` with periodic forward differences;
* :func:`shrink`: TV's ADMM gradient step ``g = ∇χ + u``, ``z = shrink(g, t)``, ``u = g − z``;
* :func:`shrink_weighted`: the same with weighted anisotropic shrinkage (MEDI's L1 of the
  edge-masked gradient, solved by ADMM);
* :func:`kspace_step`: the ADMM's closed-form χ update in k-space and ``D`` times it, in one pass;
* :func:`change_norms`: ``‖a − b‖²`` and ``‖a‖²`` in one pass (the iterations' stopping rule);
* :func:`axpy_norm`, :func:`scale` and :func:`lsqr_xw`: LSQR's vector updates (its bidiagonalisation
  and solution steps) in place, for real images and for half spectra (Hermitian-weighted norms);
* :func:`data_split`: TV's linear data-splitting step (``v``, ``u_v`` and ``v − u_v``);
* :func:`data_split_nonlinear`: the same for nlTV's complex exponential data term (Newton steps);
* :func:`wh_kspace_step`: weak-harmonic QSM's joint (χ, background) update in k-space: a 2 × 2
  solve per frequency, and the spectra of ``χ``, ``Dχ + φ`` and ``Λφ`` it needs next;
* :func:`harmonic_split`: weak-harmonic QSM's Laplacian split (``z_h``, ``s_h`` and ``z_h − s_h``);
* :func:`cg_update` and :func:`xpby`: the vector updates of conjugate gradients;
* :func:`split_sources` and :func:`combine_sources`: χ-separation's two-source Hessian
  (:mod:`qsmprep.qsm.chisep`): the free parts of (χ⁺, χ⁻) and their sum, then the shared
  field/total-TV part plus each source's R2′ term.

Scalars are passed as float32 so that the arithmetic stays float32.
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm._numba import njit, prange


@njit(parallel=True, cache=True, fastmath=False)
def _add_weighted_laplacian(out, x, v, s, h0, h1, h2):  # pragma: no cover - compiled
    n0, n1, n2 = x.shape
    a0 = s / (h0 * h0)
    a1 = s / (h1 * h1)
    a2 = s / (h2 * h2)
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                c = x[i, j, k]
                acc = np.float32(0.0)
                if i < n0 - 1:
                    acc -= a0 * v[0, i, j, k] * (x[i + 1, j, k] - c)
                if i > 0:
                    acc += a0 * v[0, i - 1, j, k] * (c - x[i - 1, j, k])
                if j < n1 - 1:
                    acc -= a1 * v[1, i, j, k] * (x[i, j + 1, k] - c)
                if j > 0:
                    acc += a1 * v[1, i, j - 1, k] * (c - x[i, j - 1, k])
                if k < n2 - 1:
                    acc -= a2 * v[2, i, j, k] * (x[i, j, k + 1] - c)
                if k > 0:
                    acc += a2 * v[2, i, j, k - 1] * (c - x[i, j, k - 1])
                out[i, j, k] += acc


@njit(parallel=True, cache=True)
def _periodic_divergence(z, u, s, h0, h1, h2, out):  # pragma: no cover - compiled
    _, n0, n1, n2 = z.shape
    a0, a1, a2 = s / h0, s / h1, s / h2
    for i in prange(n0):
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                km = k - 1 if k > 0 else n2 - 1
                out[i, j, k] = (a0 * ((z[0, im, j, k] - u[0, im, j, k]) - (z[0, i, j, k] - u[0, i, j, k]))
                                + a1 * ((z[1, i, jm, k] - u[1, i, jm, k]) - (z[1, i, j, k] - u[1, i, j, k]))
                                + a2 * ((z[2, i, j, km] - u[2, i, j, km]) - (z[2, i, j, k] - u[2, i, j, k])))


@njit(parallel=True, cache=True)
def _shrink(chi, z, u, t, h0, h1, h2, rel):  # pragma: no cover - compiled
    n0, n1, n2 = chi.shape
    r0, r1, r2 = rel / h0, rel / h1, rel / h2
    keep = np.float32(1.0) - rel
    tiny = np.float32(1e-12)
    zero = np.float32(0.0)
    for i in prange(n0):
        ip = i + 1 if i < n0 - 1 else 0
        for j in range(n1):
            jp = j + 1 if j < n1 - 1 else 0
            for k in range(n2):
                kp = k + 1 if k < n2 - 1 else 0
                c = chi[i, j, k]
                g0 = (chi[ip, j, k] - c) * r0 + keep * z[0, i, j, k] + u[0, i, j, k]
                g1 = (chi[i, jp, k] - c) * r1 + keep * z[1, i, j, k] + u[1, i, j, k]
                g2 = (chi[i, j, kp] - c) * r2 + keep * z[2, i, j, k] + u[2, i, j, k]
                mag = np.sqrt(g0 * g0 + g1 * g1 + g2 * g2)
                f = max(mag - t, zero) / max(mag, tiny)
                z[0, i, j, k] = g0 * f
                z[1, i, j, k] = g1 * f
                z[2, i, j, k] = g2 * f
                u[0, i, j, k] = g0 - g0 * f
                u[1, i, j, k] = g1 - g1 * f
                u[2, i, j, k] = g2 - g2 * f


@njit(parallel=True, cache=True)
def _shrink_weighted(chi, z, u, t, gw, h0, h1, h2, rel):  # pragma: no cover - compiled
    n0, n1, n2 = chi.shape
    r0, r1, r2 = rel / h0, rel / h1, rel / h2
    keep = np.float32(1.0) - rel
    zero = np.float32(0.0)
    for i in prange(n0):
        ip = i + 1 if i < n0 - 1 else 0
        for j in range(n1):
            jp = j + 1 if j < n1 - 1 else 0
            for k in range(n2):
                kp = k + 1 if k < n2 - 1 else 0
                c = chi[i, j, k]
                for a in range(3):
                    if a == 0:
                        g = (chi[ip, j, k] - c) * r0
                    elif a == 1:
                        g = (chi[i, jp, k] - c) * r1
                    else:
                        g = (chi[i, j, kp] - c) * r2
                    g += keep * z[a, i, j, k] + u[a, i, j, k]
                    ta = t * gw[a, i, j, k]
                    if g > ta:
                        zz = g - ta
                    elif g < -ta:
                        zz = g + ta
                    else:
                        zz = zero
                    z[a, i, j, k] = zz
                    u[a, i, j, k] = g - zz


@njit(parallel=True, cache=True)
def _kspace_step(xk, kd, mud, inv_denom, d):  # pragma: no cover - compiled
    n0, n1, n2 = xk.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                x = (xk[i, j, k] + kd[i, j, k] * mud[i, j, k]) * inv_denom[i, j, k]
                xk[i, j, k] = x
                kd[i, j, k] = x * d[i, j, k]


@njit(parallel=True, cache=True)
def _change_norms(a, b):  # pragma: no cover - compiled
    n0, n1, n2 = a.shape
    diff = 0.0
    size = 0.0
    for i in prange(n0):
        pd = 0.0
        ps = 0.0
        for j in range(n1):
            for k in range(n2):
                x = np.float64(a[i, j, k])
                e = x - np.float64(b[i, j, k])
                pd += e * e
                ps += x * x
        diff += pd
        size += ps
    return diff, size


@njit(parallel=True, cache=True)
def _axpy_norm(y, x, a, w_lo, w_hi):  # pragma: no cover - compiled
    # y += a x (2D float32 views), returns Σ c_j y_ij² with c_j = 1 on the first w_lo and the last
    # w_hi columns and 2 elsewhere (a half spectrum's Hermitian weights), or 1 everywhere (w_lo < 0)
    n0, n1 = y.shape
    total = 0.0
    for i in prange(n0):
        part = 0.0
        for j in range(n1):
            v = y[i, j] + a * x[i, j]
            y[i, j] = v
            vv = np.float64(v) * np.float64(v)
            if w_lo >= 0 and w_lo <= j < n1 - w_hi:
                vv *= 2.0
            part += vv
        total += part
    return total


@njit(parallel=True, cache=True)
def _scale(y, a):  # pragma: no cover - compiled
    n0, n1 = y.shape
    for i in prange(n0):
        for j in range(n1):
            y[i, j] *= a


@njit(parallel=True, cache=True)
def _lsqr_xw(x, w, v, a, b):  # pragma: no cover - compiled
    n0, n1 = x.shape
    for i in prange(n0):
        for j in range(n1):
            wij = w[i, j]
            x[i, j] += a * wij
            w[i, j] = v[i, j] - b * wij


@njit(parallel=True, cache=True)
def _data_split(dchi, w2f, w2, mu, v, uv, rhs, rel):  # pragma: no cover - compiled
    n0, n1, n2 = dchi.shape
    keep = np.float32(1.0) - rel
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                y = rel * dchi[i, j, k] + keep * v[i, j, k] + uv[i, j, k]
                vv = (w2f[i, j, k] + mu * y) / (w2[i, j, k] + mu)
                v[i, j, k] = vv
                uv[i, j, k] = y - vv
                rhs[i, j, k] = vv - (y - vv)


@njit(parallel=True, cache=True)
def _data_split_nonlinear(dchi, f, w2, mu, a, newton_iter, v, uv, rhs, rel):  # pragma: no cover - compiled
    n0, n1, n2 = dchi.shape
    zero = np.float32(0.0)
    tiny = np.float32(1e-8)  # ppm: far below any field noise
    keep = np.float32(1.0) - rel
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                y = rel * dchi[i, j, k] + keep * v[i, j, k] + uv[i, j, k]
                vv = v[i, j, k]
                ww = w2[i, j, k]
                ff = f[i, j, k]
                for _ in range(newton_iter):
                    ph = a * (vv - ff)
                    curv = ww * np.cos(ph)
                    if curv <= zero:
                        curv = ww
                    step = (ww * np.sin(ph) / a + mu * (vv - y)) / (curv + mu)
                    vv = vv - step
                    if abs(step) <= tiny:  # converged (warm-started from the last ADMM iterate)
                        break
                v[i, j, k] = vv
                uv[i, j, k] = y - vv
                rhs[i, j, k] = vv - (y - vv)


@njit(parallel=True, cache=True)
def _wh_kspace_step(xk, kb, kc, p11, p12, p22, d, lap, mu_d, mu_h):  # pragma: no cover - compiled
    n0, n1, n2 = xk.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                dd = d[i, j, k]
                ll = lap[i, j, k]
                b = kb[i, j, k]
                r1 = xk[i, j, k] + (mu_d * dd) * b
                r2 = mu_d * b + (mu_h * ll) * kc[i, j, k]
                x = p22[i, j, k] * r1 - p12[i, j, k] * r2
                ph = p11[i, j, k] * r2 - p12[i, j, k] * r1
                xk[i, j, k] = x
                kb[i, j, k] = dd * x + ph
                kc[i, j, k] = ll * ph


@njit(parallel=True, cache=True)
def _harmonic_split(lphi, sh, keep, rhs, rel):  # pragma: no cover - compiled
    n0, n1, n2 = lphi.shape
    old = np.float32(1.0) - rel
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                s = sh[i, j, k]
                y = rel * lphi[i, j, k] + old * (rhs[i, j, k] + s) + s  # rhs + s_h: the last z_h
                z = keep[i, j, k] * y
                sh[i, j, k] = y - z
                rhs[i, j, k] = z - (y - z)


@njit(parallel=True, cache=True)
def _cg_update(x, r, p, ap, alpha):  # pragma: no cover - compiled
    n0, n1, n2 = x.shape
    total = 0.0
    for i in prange(n0):
        part = 0.0
        for j in range(n1):
            for k in range(n2):
                x[i, j, k] += alpha * p[i, j, k]
                rv = r[i, j, k] - alpha * ap[i, j, k]
                r[i, j, k] = rv
                part += rv * rv
        total += part
    return total


@njit(parallel=True, cache=True)
def _xpby(p, r, beta):  # pragma: no cover - compiled
    n0, n1, n2 = p.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                p[i, j, k] = r[i, j, k] + beta * p[i, j, k]


@njit(parallel=True, cache=True)
def _split_sources(x, free, dp, dn, total):  # pragma: no cover - compiled
    n0, n1, n2 = dp.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                a = x[i, j, k] * free[i, j, k]
                b = x[n0 + i, j, k] * free[n0 + i, j, k]
                dp[i, j, k] = a
                dn[i, j, k] = b
                total[i, j, k] = a + b


@njit(parallel=True, cache=True)
def _combine_sources(common, dp, dn, wr2, kp, kn, out):  # pragma: no cover - compiled
    n0, n1, n2 = dp.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                rr = wr2[i, j, k] * (kp * dp[i, j, k] - kn * dn[i, j, k])
                out[i, j, k] = common[i, j, k] + kp * rr
                out[n0 + i, j, k] = common[i, j, k] - kn * rr


def _f32(*values):
    return tuple(np.float32(v) for v in values)


def add_weighted_laplacian(out, x, v, scale, voxel_size):
    """``out += scale · ∇ᵀ(V ∇x)``, ``∇`` forward differences with a zero last row; in place."""
    _add_weighted_laplacian(out, x, v, *_f32(scale, *voxel_size))
    return out


def periodic_divergence(z, u, scale, voxel_size, out=None):
    """``scale · ∇ᵀ(z − u)`` for periodic forward differences ``∇`` (float32)."""
    out = np.empty(z.shape[1:], dtype=np.float32) if out is None else out
    _periodic_divergence(z, u, *_f32(scale, *voxel_size), out)
    return out


def shrink(chi, z, u, threshold, voxel_size, relax=1.0):
    """TV's ADMM step in place: ``g = h + u`` with ``h = α ∇χ + (1 − α) z`` (periodic differences;
    ``α`` = ``relax``, 1 for plain ADMM), ``z = g·max(|g| − t, 0)/|g|``, ``u = g − z``."""
    _shrink(chi, z, u, *_f32(threshold, *voxel_size, relax))


def shrink_weighted(chi, z, u, threshold, weights, voxel_size, relax=1.0):
    """Weighted anisotropic ADMM step in place: ``g = h + u`` with ``h`` as in :func:`shrink`, per
    component ``z_a = sign(g_a) max(|g_a| − t w_a, 0)``, ``u = g − z`` (``weights`` of shape
    ``(3,) + χ.shape``)."""
    _shrink_weighted(chi, z, u, np.float32(threshold), weights, *_f32(*voxel_size, relax))


def kspace_step(xk, kd, mud, inv_denom, d):
    """ADMM's χ update in k-space in place: ``X = (X + K_d · μ_d D) / denom`` into ``xk``, ``D X`` into ``kd``.

    ``xk`` holds the transform of the gradient term and ``kd`` that of the data term on entry
    (complex64 half spectra); ``mud`` (``μ_d D``), ``inv_denom`` and ``d`` are float32.
    """
    _kspace_step(xk, kd, mud, inv_denom, d)


def change_norms(a, b):
    """``(‖a − b‖², ‖a‖²)`` of two 3D float32 arrays, summed in float64."""
    diff, size = _change_norms(a, b)
    return float(diff), float(size)


def _rows(a):
    """A contiguous float32 or complex64 array as a 2D float32 view (rows, last axis × 1 or 2)."""
    f = a.view(np.float32)
    return f.reshape(-1, f.shape[-1])


def _hermitian_columns(a, full_last):
    """Float columns of weight 1 at the start and end of a half spectrum's 2D view, or (-1, 0) for an image."""
    if not np.iscomplexobj(a):
        return -1, 0
    return 2, (2 if full_last % 2 == 0 else 0)


def axpy_norm(y, x, a, full_last=None):
    """``y += a x`` in place; returns ``‖y‖²`` (float64 sum).

    For complex64 half spectra (``full_last``: the image's last-axis length) the norm is the
    image's (Parseval): the zero (and, for an even length, Nyquist) column counted once, the
    others twice, as :meth:`qsmprep.qsm.inversion._operators._Grid.kdot` (orthonormal transforms).
    """
    lo, hi = _hermitian_columns(y, full_last)
    return float(_axpy_norm(_rows(y), _rows(x), np.float32(a), lo, hi))


def scale(y, a):
    """``y *= a`` in place (float32 or complex64, real ``a``)."""
    _scale(_rows(y), np.float32(a))


def lsqr_xw(x, w, v, a, b):
    """LSQR's solution step in place: ``x += a w``, then ``w = v − b w``."""
    _lsqr_xw(_rows(x), _rows(w), _rows(v), np.float32(a), np.float32(b))


def data_split(dchi, w2f, w2, mu, v, uv, rhs, relax=1.0):
    """TV's linear data step in place: ``y = α Dχ + (1 − α) v + u_v`` (``α`` = ``relax``, 1 for
    plain ADMM), ``v = (W²f + μy)/(W² + μ)``, ``u_v = y − v``.

    ``rhs`` receives ``v − u_v``, the next χ update's data input.
    """
    _data_split(dchi, w2f, w2, np.float32(mu), v, uv, rhs, np.float32(relax))


def data_split_nonlinear(dchi, f, w2, mu, a, newton_iter, v, uv, rhs, relax=1.0):
    """nlTV's data step in place: ``y = α Dχ + (1 − α) v + u_v``, at most ``newton_iter`` safeguarded Newton
    steps on ``W² (1 − cos(a (v − f)))/a² + μ/2 (v − y)²`` from the current ``v`` (the curvature
    bound ``W² + μ`` where ``W² cos ≤ 0``; a voxel stops once its step is below 1e-8 ppm),
    ``u_v = y − v``; ``rhs`` receives ``v − u_v``."""
    _data_split_nonlinear(dchi, f, w2, np.float32(mu), np.float32(a), int(newton_iter), v, uv, rhs,
                          np.float32(relax))


def wh_kspace_step(xk, kb, kc, p11, p12, p22, d, lap, mu_d, mu_h):
    """Weak-harmonic QSM's joint χ and background update in k-space, in place.

    On entry ``xk`` = F(μ ∇ᵀ(z − u)), ``kb`` = F(v − u_v), ``kc`` = F(z_h − s_h) (complex64
    half spectra).  With ``r₁ = xk + μ_d D kb`` and ``r₂ = μ_d kb + μ_h Λ kc`` it solves
    ``[[a₁₁, a₁₂], [a₁₂, a₂₂]] [X, Φ] = [r₁, r₂]`` from the precomputed ``p₁₁ = a₁₁/det``,
    ``p₁₂ = a₁₂/det``, ``p₂₂ = a₂₂/det`` (float32), and leaves ``X`` in ``xk``, ``D X + Φ``
    in ``kb`` and ``Λ Φ`` in ``kc``.
    """
    _wh_kspace_step(xk, kb, kc, p11, p12, p22, d, lap, *_f32(mu_d, mu_h))


def harmonic_split(lphi, sh, keep, rhs, relax=1.0):
    """Weak-harmonic QSM's Laplacian split in place: ``y = α Λφ + (1 − α) z_h + s_h`` (``α`` =
    ``relax``; the last ``z_h`` is ``rhs + s_h`` on entry), ``z_h = keep · y`` (``keep = μ_h/(μ_h +
    β M)``), ``s_h = y − z_h``; ``rhs`` receives ``z_h − s_h``."""
    _harmonic_split(lphi, sh, keep, rhs, np.float32(relax))


def cg_update(x, r, p, ap, alpha):
    """``x += α p``, ``r −= α Ap`` in place (3D float32); returns ``‖r‖²`` (float64 sum)."""
    return float(_cg_update(x, r, p, ap, np.float32(alpha)))


def xpby(p, r, beta):
    """``p = r + β p`` in place (3D float32)."""
    _xpby(p, r, np.float32(beta))


def split_sources(x, free, dp, dn, total):
    """χ-separation: ``dp = x⁺·free⁺``, ``dn = x⁻·free⁻``, ``total = dp + dn`` in place.

    ``x`` and ``free`` stack the two sources along the first axis (``(2 n0, n1, n2)``).
    """
    _split_sources(x, free, dp, dn, total)


def combine_sources(common, dp, dn, wr2, kp, kn, out):
    """χ-separation: ``rr = W_r² (k⁺ dp − k⁻ dn)``; ``out = (common + k⁺ rr, common − k⁻ rr)`` stacked."""
    _combine_sources(common, dp, dn, wr2, *_f32(kp, kn), out)
