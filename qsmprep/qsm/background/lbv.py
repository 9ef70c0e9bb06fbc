"""Laplacian boundary value background field removal (LBV; Zhou et al. 2014).

The Laplace equation is solved by conjugate gradients preconditioned with one multigrid
V-cycle per iteration (:mod:`qsmprep.qsm.background._multigrid`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmprep.qsm import kernels
from qsmprep.qsm._numba import num_threads
from qsmprep.qsm.background._common import _check_inputs, _number, _pcg
from qsmprep.qsm.background._multigrid import _apply, _Multigrid


def lbv(field, mask, voxel_size, *, tol=1e-6, max_iter=200, peel=0, workers=None):
    """Laplacian boundary value background field removal.

    The background field is the solution of the Laplace equation ``Δf_B = 0`` inside the
    mask with the total field as its value on the mask boundary (the mask voxels with a
    face neighbour outside the mask); the local field is ``f − f_B`` inside.  The 7-point
    discrete Laplacian (anisotropic spacing exact) is solved by conjugate gradients
    preconditioned with one symmetric multigrid V-cycle per iteration (own implementation,
    :class:`~qsmprep.qsm.background._multigrid._Multigrid`).  The boundary layer, where the local field is zero by
    construction, is excluded from the returned mask, which is further eroded by ``peel``
    voxel layers where the values next to a noisy boundary are unreliable.  ``peel`` is 0
    by default, as in Zhou's ``LBV.m``: with the phase-reliability mask of
    :func:`qsmprep.qsm.masking.refine_mask` one more layer removed cost χ more than it
    saved on both phantom families (1 mm, LBV + MEDI, the mask grown at quality 2/3, QSM-CI's
    scorer over the true brain:
    demo NRMSE 20.0 % vs 21.9 %, coverage 0.942 vs 0.908; MNI Siemens-like 43.8 % vs
    47.8 %, coverage 0.997 vs 0.983; XSIM 0.002-0.003 lower).

    Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the
    Laplacian boundary value problem. NMR Biomed 2014;27:312-319.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    tol : float
        Relative residual ``‖r‖/‖b‖`` at which CG stops.
    max_iter : int
        Iteration limit of CG.
    peel : int
        Extra voxel layers removed from the returned mask (≥ 0).
    workers : int, optional
        Threads of the compiled smoother and residual kernels.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside ``eroded``.
    eroded : ndarray of bool
        Interior of the mask (boundary layer removed) eroded by ``peel`` layers.
    """
    local, eroded, _ = _lbv(field, mask, voxel_size, tol=tol, max_iter=max_iter, peel=peel, workers=workers)
    return local, eroded


def _lbv(field, mask, voxel_size, *, tol, max_iter, peel, workers):
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    tol = _number("tol", tol, low=0, low_open=True, high=1, high_open=True)
    max_iter = _number("max_iter", max_iter, integer=True, low=1)
    peel = _number("peel", peel, integer=True, low=0)
    workers = kernels.resolve_workers(workers)
    # the field of view's edge is outside the mask
    padded = np.pad(mask, 1)
    interior_full = ndimage.binary_erosion(padded)[1:-1, 1:-1, 1:-1]
    if not interior_full.any():
        raise ValueError("the mask has no interior voxel (every voxel touches its edge)")
    # crop to the bounding box of the mask with a one-voxel margin of zeros
    nz = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in nz)
    dom = np.pad(interior_full[box], 1)
    fb = np.pad(np.where(mask & ~interior_full, f, 0)[box], 1).astype(np.float32)  # boundary values
    coef = tuple(1.0 / v**2 for v in vs)
    # A u0 = Σ_{neighbours on the boundary} a · f  on the interior (u = u0 + boundary values)
    rhs = np.zeros(fb.shape, dtype=np.float32)
    with num_threads(workers):
        _apply(fb, dom, *coef, rhs)  # fb = 0 on dom, so this is −Σ a·f over boundary neighbours
        np.negative(rhs, out=rhs)
        q = np.empty_like(rhs)

        def laplacian(p):
            _apply(p, dom, *coef, q)
            return q

        x, it, rel = _pcg(laplacian, rhs, _Multigrid(dom, vs), tol=tol, max_iter=max_iter)
    background = np.zeros(f.shape, dtype=np.float32)
    background[box] = x[1:-1, 1:-1, 1:-1]
    eroded = interior_full
    if peel:
        eroded = ndimage.binary_erosion(np.pad(eroded, 1), iterations=peel)[1:-1, 1:-1, 1:-1]
    if not eroded.any():
        raise ValueError(f"peel={peel} erodes the whole mask")
    local = np.where(eroded, f - background, 0).astype(np.float32)
    return local, eroded, {"iterations": it, "relative_residual": rel}
