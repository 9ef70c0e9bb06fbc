"""The compiled element-wise passes and the half-spectrum LSQR against their numpy references.

Each kernel of :mod:`qsmprep.qsm.inversion._fused` must equal the numpy operators it
replaces (:mod:`qsmprep.qsm.inversion._operators`) on random data, on grids whose sizes are
odd and even and with anisotropic voxels, so a wrong index or a lost boundary row fails here
before it moves a χ map; LSQR kept as a half spectrum must have the image-space iterates.
"""

import numpy as np
import pytest

from qsmprep.qsm.inversion import _fused
from qsmprep.qsm.inversion._operators import _dot, _fgrad, _fgrad_adj, _Grid, _lsqr, _pgrad, _pgrad_adj

SHAPES = [(13, 11, 9), (8, 10, 12)]
VOXELS = [(1.0, 1.0, 1.0), (0.8, 1.1, 2.0)]


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    v = rng.random((3,) + shape).astype(np.float32)
    z = rng.standard_normal((3,) + shape).astype(np.float32)
    u = rng.standard_normal((3,) + shape).astype(np.float32)
    return x, v, z, u


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("vs", VOXELS)
def test_weighted_laplacian(shape, vs):
    x, v, _, _ = _data(shape)
    ref = 0.37 * _fgrad_adj(v * _fgrad(x, vs), vs)
    start = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = start.copy()
    _fused.add_weighted_laplacian(out, x, v, 0.37, vs)
    np.testing.assert_allclose(out - start, ref, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("vs", VOXELS)
@pytest.mark.parametrize("relax", [1.0, 1.6])  # plain and over-relaxed ADMM
def test_periodic_divergence_shrink_and_data_split(shape, vs, relax):
    x, v, z, u = _data(shape)
    np.testing.assert_allclose(_fused.periodic_divergence(z, u, 2.5, vs), 2.5 * _pgrad_adj(z - u, vs), atol=1e-4)
    g = relax * _pgrad(x, vs) + (1 - relax) * z + u
    mag = np.sqrt((g * g).sum(axis=0))
    t = float(np.quantile(mag, 0.3))
    scale = np.maximum(mag - t, 0) / np.maximum(mag, 1e-12)
    assert (scale == 0).any() and (scale > 0).any()  # both branches of the shrinkage
    z2, u2 = z.copy(), u.copy()
    _fused.shrink(x, z2, u2, t, vs, relax)
    np.testing.assert_allclose(z2, g * scale, atol=2e-5)
    np.testing.assert_allclose(u2, g - g * scale, atol=2e-5)
    dchi, f, w2 = x, z[0], v[0]
    v_last = (f + 0.3 * u[2]).astype(np.float32)
    vv, uv, rhs = v_last.copy(), u[0].copy(), np.empty_like(x)
    y = relax * dchi + (1 - relax) * v_last + uv
    _fused.data_split(dchi, w2 * f, w2, 0.7, vv, uv, rhs, relax)
    v_ref = (w2 * f + 0.7 * y) / (w2 + 0.7)
    np.testing.assert_allclose(vv, v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(uv, y - v_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rhs, v_ref - (y - v_ref), rtol=1e-5, atol=1e-5)
    # nlTV's: safeguarded Newton steps on W²(1 − cos(a(v − f)))/a² + μ/2 (v − y)² from v
    a, w2b = np.float32(6.0), (2.0 * w2).astype(np.float32)  # weights above 1: both branches
    v0 = (f + 0.3 * u[1]).astype(np.float32)
    vv, uv, rhs = v0.copy(), u[0].copy(), np.empty_like(x)
    y = relax * dchi + (1 - relax) * v0 + uv
    _fused.data_split_nonlinear(dchi, f, w2b, 0.7, a, 3, vv, uv, rhs, relax)
    ref = v0.copy()
    for _ in range(3):
        ph = a * (ref - f)
        curv = w2b * np.cos(ph)
        assert (curv <= 0).any() and (curv > 0).any()
        ref = ref - (w2b * np.sin(ph) / a + 0.7 * (ref - y)) / (np.where(curv > 0, curv, w2b) + 0.7)
    np.testing.assert_allclose(vv, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(uv, y - ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rhs, ref - (y - ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("vs", VOXELS)
@pytest.mark.parametrize("relax", [1.0, 1.6])
def test_weighted_anisotropic_shrink(shape, vs, relax):
    """MEDI's ADMM step: each component of α∇χ + (1 − α) z + u soft-thresholded at t·w (w = 0: kept)."""
    x, _, z, u = _data(shape)
    weights = np.random.default_rng(2).integers(0, 3, (3,) + shape).astype(np.float32) / 2  # 0, 0.5, 1
    g = relax * _pgrad(x, vs) + (1 - relax) * z + u
    t = 0.4 * weights
    ref = np.sign(g) * np.maximum(np.abs(g) - t, 0)
    assert ((ref == 0) & (weights > 0)).any() and ((ref != 0) & (weights > 0)).any()
    z2, u2 = z.copy(), u.copy()
    _fused.shrink_weighted(x, z2, u2, 0.4, weights, vs, relax)
    np.testing.assert_allclose(z2, ref, atol=2e-5)
    np.testing.assert_allclose(u2, g - ref, atol=2e-5)


def test_kspace_step_and_change_norms():
    rng = np.random.default_rng(4)
    shape = (7, 6, 4)
    xk, kd = ((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64) for _ in range(2))
    mud, inv_denom, d = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    ref = (xk + kd * mud) * inv_denom
    _fused.kspace_step(xk, kd, mud, inv_denom, d)
    np.testing.assert_allclose(xk, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kd, ref * d, rtol=1e-5, atol=1e-6)
    a, b = rng.standard_normal((2,) + shape).astype(np.float32)
    diff, size = _fused.change_norms(a, b)
    assert diff == pytest.approx(float(((a.astype(np.float64) - b) ** 2).sum()), rel=1e-9)
    assert size == pytest.approx(float((a.astype(np.float64) ** 2).sum()), rel=1e-9)


def test_weak_harmonic_kspace_step_solves_its_2x2_system_and_harmonic_split():
    """Per frequency, X and Φ solve WH-QSM's normal equations (whqsm's docstring)."""
    rng = np.random.default_rng(5)
    shape = (7, 6, 4)
    xk, kb, kc = ((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
                  for _ in range(3))
    d = rng.uniform(-2 / 3, 1 / 3, shape).astype(np.float32)
    lap = rng.uniform(0.01, 12.0, shape).astype(np.float32)
    mu, mu_d, mu_h = 0.02, 1.0, 3.0
    a11, a12, a22 = mu * lap + mu_d * d * d, mu_d * d, mu_d + mu_h * lap * lap
    det = a11 * a22 - a12 * a12
    r1 = xk + mu_d * d * kb
    r2 = mu_d * kb + mu_h * lap * kc
    p11, p12, p22 = ((a / det).astype(np.float32) for a in (a11, a12, a22))
    _fused.wh_kspace_step(xk, kb, kc, p11, p12, p22, d, lap, mu_d, mu_h)
    x = xk
    phi = kb - d * x
    np.testing.assert_allclose(a11 * x + a12 * phi, r1, rtol=2e-4, atol=2e-4 * np.abs(r1).max())
    np.testing.assert_allclose(a12 * x + a22 * phi, r2, rtol=2e-4, atol=2e-4 * np.abs(r2).max())
    np.testing.assert_allclose(kc, lap * phi, rtol=1e-4, atol=1e-6)
    for relax in (1.0, 1.6):
        lphi, sh, rhs = rng.standard_normal((3,) + shape).astype(np.float32)
        keep = rng.random(shape).astype(np.float32)
        y = relax * lphi + (1 - relax) * (rhs + sh) + sh  # rhs + s_h on entry: the last z_h
        _fused.harmonic_split(lphi, sh, keep, rhs, relax)
        np.testing.assert_allclose(sh, y - keep * y, atol=2e-6)
        np.testing.assert_allclose(rhs, keep * y - (y - keep * y), atol=2e-6)


@pytest.mark.parametrize("pad", [0, 3])  # an odd and an even last axis
def test_lsqr_vector_passes(pad):
    """LSQR's compiled updates: y += a x with the image's norm (for a half spectrum, Parseval's
    Hermitian weights, as _Grid.kdot), y *= a, and x += a w; w = v − b w."""
    mask = np.zeros((20, 22, 17), bool)
    mask[3:15, 4:18, 2:12] = True
    grid = _Grid(mask, (1.0, 1.0, 1.2), (0.0, 0.1, 1.0), pad, 1)
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal(grid.shape).astype(np.float32) for _ in range(2))
    ka, kb = grid.offt(a), grid.offt(b)
    ref = ka - np.float32(0.3) * kb
    nrm = _fused.axpy_norm(ka, kb, -0.3, grid.shape[-1])
    np.testing.assert_allclose(ka, ref, rtol=1e-5, atol=1e-5)
    assert nrm == pytest.approx(grid.kdot(ref, ref), rel=1e-5)
    assert nrm == pytest.approx(_dot(a - np.float32(0.3) * b, a - np.float32(0.3) * b), rel=1e-4)
    a0 = a.copy()
    expected = float(((a0 + np.float32(0.5) * b).astype(np.float64) ** 2).sum())
    assert _fused.axpy_norm(a, b, 0.5) == pytest.approx(expected, rel=1e-6)
    _fused.scale(kb, 2.0)
    np.testing.assert_allclose(kb, 2 * grid.offt(b), rtol=1e-5, atol=1e-6)
    x, w, v = (rng.standard_normal(grid.shape).astype(np.float32) for _ in range(3))
    x0, w0 = x.copy(), w.copy()
    _fused.lsqr_xw(x, w, v, 0.7, 0.2)
    np.testing.assert_allclose(x, x0 + np.float32(0.7) * w0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(w, v - np.float32(0.2) * w0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pad", [0, 3])  # an odd and an even last axis
def test_half_spectrum_inner_product_and_lsqr(pad):
    mask = np.zeros((20, 22, 17), bool)
    mask[3:15, 4:18, 2:12] = True
    grid = _Grid(mask, (1.0, 1.0, 1.2), (0.0, 0.1, 1.0), pad, 1)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(grid.shape).astype(np.float32) for _ in range(2))
    assert grid.kdot(grid.offt(a), grid.offt(b)) == pytest.approx(_dot(a, b), rel=1e-5)
    np.testing.assert_allclose(grid.oifft(grid.offt(a)), a, atol=1e-5)
    w = rng.random(grid.shape).astype(np.float32) * grid.mask
    f = rng.standard_normal(grid.shape).astype(np.float32) * w
    ref, it_ref, _ = _lsqr(lambda x: w * grid.conv(x), lambda r: grid.conv(w * r), f, f, tol=1e-9, max_iter=15)
    k, it, _ = _lsqr(lambda k: w * grid.oifft(k * grid.d), lambda r: grid.offt(w * r) * grid.d, f,
                     np.empty(grid.d.shape, np.complex64), tol=1e-9, max_iter=15, full_last=grid.shape[-1])
    assert it == it_ref == 15
    np.testing.assert_allclose(grid.oifft(k), ref, atol=1e-4 * np.abs(ref).max())


def test_cg_updates_and_cg_solve_a_system():
    rng = np.random.default_rng(3)
    x, r, p, ap = (rng.standard_normal((6, 7, 5)).astype(np.float32) for _ in range(4))
    x0, r0, p0 = x.copy(), r.copy(), p.copy()
    rr = _fused.cg_update(x, r, p, ap, 0.3)
    np.testing.assert_allclose(x, x0 + np.float32(0.3) * p0, rtol=1e-6)
    np.testing.assert_allclose(r, r0 - np.float32(0.3) * ap, rtol=1e-6, atol=1e-6)
    assert rr == pytest.approx(float((r.astype(np.float64) ** 2).sum()), rel=1e-6)
    _fused.xpby(p, r, 0.6)
    np.testing.assert_allclose(p, r + np.float32(0.6) * p0, rtol=1e-6, atol=1e-6)
    # a symmetric positive definite operator (Laplacian-like plus identity) solved to tol
    from qsmprep.qsm.inversion._operators import _cg

    v = rng.random((3, 9, 8, 7)).astype(np.float32)
    b = rng.standard_normal((9, 8, 7)).astype(np.float32)

    def apply(y):
        return _fused.add_weighted_laplacian(0.5 * y, y, v, 1.0, (1.0, 1.0, 1.0))

    sol, it = _cg(apply, b, tol=1e-5, max_iter=500)
    assert 0 < it < 500
    assert np.linalg.norm(apply(sol) - b) <= 1.01e-5 * np.linalg.norm(b)


@pytest.mark.parametrize("shape", SHAPES)
def test_chisep_source_passes(shape):
    """χ-separation's split (free parts and their sum) and combination (shared part ± R2′ terms)."""
    rng = np.random.default_rng(3)
    n0 = shape[0]
    stacked = (2 * n0,) + shape[1:]
    x = rng.standard_normal(stacked).astype(np.float32)
    free = (rng.random(stacked) > 0.3).astype(np.float32)
    dp, dn, total = (np.empty(shape, np.float32) for _ in range(3))
    _fused.split_sources(x, free, dp, dn, total)
    np.testing.assert_array_equal(dp, x[:n0] * free[:n0])
    np.testing.assert_array_equal(dn, x[n0:] * free[n0:])
    np.testing.assert_allclose(total, dp + dn, rtol=1e-6)
    common = rng.standard_normal(shape).astype(np.float32)
    wr2 = rng.random(shape).astype(np.float32)
    out = np.empty(stacked, np.float32)
    _fused.combine_sources(common, dp, dn, wr2, 0.17, 0.21, out)
    rr = wr2 * (np.float32(0.17) * dp - np.float32(0.21) * dn)
    np.testing.assert_allclose(out[:n0], common + np.float32(0.17) * rr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[n0:], common - np.float32(0.21) * rr, rtol=1e-5, atol=1e-6)
