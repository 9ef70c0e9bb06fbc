"""Projection onto dipole fields (PDF; Liu et al. 2011), solved by CGLS."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels
from qsmprep.qsm.background._common import _check_inputs, _check_weights, _number, _pad_voxels


def pdf(field, mask, voxel_size, b0_dir, *, weights=None, tol=1e-3, max_iter=200, pad=16, workers=None):
    """Projection onto dipole fields.

    The background field is modelled as the field of a susceptibility distribution
    ``χ_out`` outside the mask, fitted to the total field inside the mask by weighted least
    squares,

    ``χ_out = argmin ‖W M (f − D * (M̄ χ_out))‖²``,

    with ``M`` the mask, ``M̄ = 1 − M`` on the zero-padded grid (so sources beyond the field
    of view are modelled too), ``D`` the unit dipole kernel and ``W`` the data weights
    (inverse field noise, or magnitude).  The problem is solved by conjugate gradients on
    the normal equations (CGLS, Hestenes & Stiefel 1952; Björck 1996), with FFT-based
    dipole convolutions; the local field is ``M (f − D * (M̄ χ_out))``.

    Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y. A novel
    background field removal method for MRI using projection onto dipole fields (PDF).
    NMR Biomed 2011;24:1129-1136.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    weights : ndarray, optional
        Non-negative data weights ``W`` (e.g. :func:`qsmprep.qsm.weights.weights_from_noise`
        or the magnitude); default uniform.
    tol : float
        Stop when the normal-equation residual ``‖Aᵀ(b − Ax)‖`` has fallen by this factor.
    max_iter : int
        Iteration limit.
    pad : int or 3 ints
        Zero padding (voxels per side) of the field of view, where background sources are
        also fitted (avoids wrap-around of the dipole fields).
    workers : int, optional
        FFT threads.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside the mask.
    mask : ndarray of bool
        The input mask (PDF needs no erosion).
    """
    local, mask, _ = _pdf(field, mask, voxel_size, b0_dir, weights=weights, tol=tol, max_iter=max_iter,
                          pad=pad, workers=workers)
    return local, mask


def _pdf(field, mask, voxel_size, b0_dir, *, weights, tol, max_iter, pad, workers):
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    b = np.asarray(b0_dir, dtype=float).ravel()
    if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) == 0:
        raise ValueError(f"b0_dir must be a non-zero 3-vector, got {b0_dir!r}")
    tol = _number("tol", tol, low=0, low_open=True, high=1, high_open=True)
    max_iter = _number("max_iter", max_iter, integer=True, low=1)
    pad = _pad_voxels(pad)
    w = _check_weights(weights, mask)
    workers = kernels.resolve_workers(workers)

    shape = kernels.padded_shape(f.shape, pad)
    m_in, crop = kernels.pad_to(mask, shape)
    w_big, _ = kernels.pad_to(w, shape)
    out = ~m_in
    d = kernels.dipole_kernel(shape, vs, b, rfft=True)

    def conv(x):
        return sfft.irfftn(sfft.rfftn(x, workers=workers) * d, s=shape, workers=workers)

    def forward(x):  # χ outside -> weighted field inside
        y = conv(x)
        y *= w_big
        return y

    def adjoint(y):  # weighted field inside -> χ outside (D is real and even: Dᵀ = D)
        x = conv(y * w_big)
        x[m_in] = 0
        return x

    # The field's constant offset (reference frequency) is not the field of any source and
    # the local field is defined up to a constant: remove it first, or CG spends itself
    # fitting a constant with outside dipoles and leaves a non-constant residue.
    f = np.where(mask, f - np.float32(np.average(f[mask], weights=w[mask])), 0).astype(np.float32)
    rhs, _ = kernels.pad_to(f * w, shape)
    x = np.zeros(shape, dtype=np.float32)
    r = rhs
    s = adjoint(r)
    p = s.copy()
    gamma = float(np.vdot(s, s))
    gamma0 = gamma
    it = 0
    while it < max_iter and gamma > (tol**2) * gamma0 and gamma > 0:
        q = forward(p)
        qq = float(np.vdot(q, q))
        if qq <= 0:
            break
        alpha = gamma / qq
        x += alpha * p
        r -= alpha * q
        s = adjoint(r)
        gamma_new = float(np.vdot(s, s))
        p *= gamma_new / gamma
        p += s
        gamma = gamma_new
        it += 1
    x[~out] = 0
    background = conv(x)[crop]
    local = np.where(mask, f - background, 0).astype(np.float32)
    info = {"iterations": it, "relative_residual": float(np.sqrt(gamma / gamma0)) if gamma0 > 0 else 0.0}
    return local, mask, info
