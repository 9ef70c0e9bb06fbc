"""Regularisation-enabled SHARP background field removal (RESHARP; Sun & Wilman 2014)."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels
from qsmprep.qsm._numba import num_threads
from qsmprep.qsm.background._common import _check_inputs, _number, _pcg, _smv_domain


def resharp(field, mask, voxel_size, *, radius_mm=4.0, lambda_=5e-4, tol=1e-6, max_iter=200, workers=None):
    """RESHARP: SHARP's deconvolution as Tikhonov-regularised least squares.

    Sun H, Wilman AH. Background field removal using spherical mean value filtering and
    Tikhonov regularization. Magn Reson Med 2014;71:1151-1157.  With ``C = δ − S_r`` the
    SMV high-pass and ``M`` the mask eroded by ``radius_mm`` (the voxels whose ball lies
    inside the mask, where ``C`` annihilates the harmonic background),

    ``x = argmin ‖M C (x − f)‖₂² + λ ‖x‖₂²``

    over the whole padded grid, i.e. ``(C M C + λ) x = C M C f``, solved by conjugate
    gradients (Sun & Wilman's code uses CGS with tolerance 10⁻⁶ and at most 200 iterations;
    the system is symmetric positive definite, so CG is the natural Krylov method).  The
    unknown is kept as its orthonormal half spectrum, where ``C`` is diagonal, so one
    iteration costs one FFT pair.  The local field is ``M x``.  The defaults (4 mm,
    λ = 5·10⁻⁴) are the authors' (their code's documentation).

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    radius_mm : float
        SMV radius (mm).
    lambda_ : float
        Tikhonov weight (> 0).
    tol : float
        Relative residual ``‖r‖/‖b‖`` at which CG stops.
    max_iter : int
        Iteration limit of CG.
    workers : int, optional
        FFT threads.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside ``eroded``; its mean is arbitrary.
    eroded : ndarray of bool
        The mask eroded by ``radius_mm``.
    """
    local, eroded, _ = _resharp(field, mask, voxel_size, radius_mm=radius_mm, lambda_=lambda_, tol=tol,
                                max_iter=max_iter, workers=workers)
    return local, eroded


def _resharp(field, mask, voxel_size, *, radius_mm, lambda_, tol, max_iter, workers):
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    lam = _number("lambda_", lambda_, low=0, low_open=True)
    tol = _number("tol", tol, low=0, low_open=True, high=1, high_open=True)
    max_iter = _number("max_iter", max_iter, integer=True, low=1)
    workers = kernels.resolve_workers(workers)
    r, eroded, box, shape = _smv_domain(mask, vs, radius_mm)
    m = kernels.pad_to(eroded[box], shape)[0].astype(np.float32)
    fp, crop = kernels.pad_to(f[box], shape)
    c = (1.0 - kernels.smv_kernel(shape, vs, r, rfft=True, workers=workers)).astype(np.float32)
    # √w: an interior rfft column stands for itself and its mirror, so in u = √w·F_ortho(x)
    # the plain real inner product is the image's (Parseval) and the operator stays symmetric
    sw = kernels.rfft_mirror_weights(shape)
    csw = c * sw

    def to_k(x):  # image -> u (float32 view of the scaled half spectrum)
        return (sfft.rfftn(x, norm="ortho", workers=workers) * sw).astype(np.complex64).view(np.float32)

    def to_image(u):
        return sfft.irfftn(u.view(np.complex64) / sw, s=shape, norm="ortho", workers=workers).astype(np.float32)

    def cmc(u):  # C M C in u (C and √w are diagonal, so they commute)
        y = sfft.irfftn(u.view(np.complex64) * (c / sw), s=shape, norm="ortho", workers=workers)
        y = sfft.rfftn((y * m).astype(np.float32), norm="ortho", workers=workers)
        y *= csw
        return y.astype(np.complex64).view(np.float32)

    def apply(u):
        out = cmc(u)
        out += np.float32(lam) * u
        return out

    rhs = cmc(to_k(fp))
    # Fourier-diagonal preconditioner: C M C + λ with M replaced by its mean (the fraction
    # of the grid it covers) is diagonal in u
    fill = np.float32(m.mean())
    minv = np.repeat(1.0 / (fill * c * c + np.float32(lam)), 2, axis=-1).astype(np.float32)
    with num_threads(workers):
        u, it, _ = _pcg(apply, rhs, lambda r: r * minv, tol=tol, max_iter=max_iter)
    rel = float(np.linalg.norm(rhs - apply(u)) / max(np.linalg.norm(rhs), 1e-30))
    x = to_image(u)
    local = np.zeros(f.shape, dtype=np.float32)
    local[box] = x[crop]
    local = np.where(eroded, local, 0).astype(np.float32)
    return local, eroded, {"iterations": int(it), "relative_residual": rel}
