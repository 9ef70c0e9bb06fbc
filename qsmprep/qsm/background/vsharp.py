"""V-SHARP background field removal (Wu et al. 2012, after SHARP, Schweser et al. 2011)."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from qsmprep.qsm import kernels
from qsmprep.qsm._params import keyword_defaults
from qsmprep.qsm.background._common import _check_inputs, _number, _pad_voxels


def _ball_size(voxel_size, radius_mm):
    return int(np.count_nonzero(kernels.sphere_mask(voxel_size, radius_mm)))


def vsharp_radii(voxel_size, *, radius_max_mm=12.0, radius_min_mm=None, radius_step_mm=None):
    """Radii (mm, decreasing) of the SMV kernels V-SHARP uses.

    From ``radius_max_mm`` down in steps of ``radius_step_mm`` (default: the smallest voxel
    size) to ``radius_min_mm`` (default: the largest voxel size, i.e. one voxel along every
    axis, so the smallest ball always holds the six face neighbours).  Radii whose sampled
    ball (:func:`qsmprep.qsm.kernels.sphere_mask`) is the same as a larger radius's are
    dropped, since they would give the same kernel.
    """
    vs = tuple(float(v) for v in voxel_size)
    rmax = _number("radius_max_mm", radius_max_mm, low=0, low_open=True)
    rmin = max(vs) if radius_min_mm is None else _number("radius_min_mm", radius_min_mm, low=0, low_open=True)
    if rmin < min(vs):
        raise ValueError(f"radius_min_mm must be at least one voxel ({min(vs)} mm), got {radius_min_mm!r}")
    if rmax < rmin:
        raise ValueError(f"radius_max_mm ({rmax}) must be ≥ radius_min_mm ({rmin})")
    step = min(vs) if radius_step_mm is None else _number("radius_step_mm", radius_step_mm, low=0, low_open=True)
    n = int(np.floor((rmax - rmin) / step + 1e-9))
    candidates = [rmax - i * step for i in range(n + 1)]
    if candidates[-1] - rmin > 1e-9:
        candidates.append(rmin)
    radii, sizes = [], set()
    for r in candidates:
        size = _ball_size(vs, r)
        if size not in sizes:  # nested balls: same count <=> same ball
            sizes.add(size)
            radii.append(float(r))
    return radii


#: The radius options' defaults, read by :func:`vsharp`, which passes them to :func:`vsharp_radii`.
_RADII = keyword_defaults(vsharp_radii)


def smv_valid_masks(mask, voxel_size, radii):
    """For each radius, the voxels whose SMV ball lies entirely inside ``mask``.

    The ball of radius r at voxel v (voxel centres within r mm, as sampled by
    :func:`qsmprep.qsm.kernels.sphere_mask`) fits inside the mask exactly when the nearest
    voxel outside the mask, or outside the field of view, is farther than r: one exact
    Euclidean distance transform (in mm, anisotropic voxels exact) gives every erosion.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    dist2 = ndimage.distance_transform_edt(padded, sampling=voxel_size)[1:-1, 1:-1, 1:-1] ** 2
    return [dist2 > r * r + 1e-6 for r in radii]


def vsharp(field, mask, voxel_size, *, radius_max_mm=_RADII["radius_max_mm"],
           radius_min_mm=_RADII["radius_min_mm"], radius_step_mm=_RADII["radius_step_mm"], tsvd=0.05, pad=None,
           workers=None):
    """Variable-radius SHARP background field removal.

    For each radius ``r`` from ``radius_max_mm`` down to ``radius_min_mm`` the spherical
    mean value (SMV) high-pass ``(δ − S_r) * f`` of the masked total field is computed; at
    every voxel the largest ball that fits inside the mask is used (the background field is
    harmonic there, so ``(δ − S_r) * f_B = 0`` and only the local field survives).  The
    high-passed map is deconvolved by the largest kernel, ``1 − S_rmax``, with a truncated
    singular value threshold (``|1 − S| ≤ tsvd`` set to zero) and masked by the mask eroded
    by the smallest radius.

    Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed
    sensing. Magn Reson Med 2012;67:137-147 (V-SHARP).  Schweser F, Deistung A, Lehr BW,
    Reichenbach JR. Quantitative imaging of intrinsic magnetic tissue properties using
    MRI signal phase. NeuroImage 2011;54:2789-2807 (SHARP).

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm); balls are in mm, so anisotropic voxels are handled.
    radius_max_mm : float
        Largest SMV radius (mm), default 12.
    radius_min_mm : float, optional
        Smallest radius (mm), default one voxel (the largest voxel size); at least the
        smallest voxel size.
    radius_step_mm : float, optional
        Radius decrement (mm), default the smallest voxel size.
    tsvd : float
        Truncation threshold of the deconvolution, in (0, 1).
    pad : int or 3 ints, optional
        Zero padding (voxels per side) of the deconvolution grid; default the largest
        radius in voxels plus one.
    workers : int, optional
        FFT threads (:func:`qsmprep.qsm.kernels.resolve_workers`).

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside ``eroded``; its mean is arbitrary.
    eroded : ndarray of bool
        The mask eroded by the smallest radius.
    """
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    tsvd = _number("tsvd", tsvd, low=0, high=1, low_open=True, high_open=True)
    radii = vsharp_radii(vs, radius_max_mm=radius_max_mm, radius_min_mm=radius_min_mm,
                         radius_step_mm=radius_step_mm)
    workers = kernels.resolve_workers(workers)
    valid = smv_valid_masks(mask, vs, radii)
    eroded = valid[-1]
    if not eroded.any():
        raise ValueError(f"the mask has no voxel farther than radius_min_mm={radii[-1]} mm from its edge")
    # High-pass at each radius on the unpadded grid: a valid voxel's ball lies inside the
    # mask (hence inside the field of view), so the circular convolution never wraps there.
    shape = f.shape
    fits = [all(b <= n for b, n in zip(kernels.sphere_mask(vs, r).shape, shape)) for r in radii]
    grid = shape if all(fits) else kernels.padded_shape(shape, [int(np.ceil(radii[0] / v)) for v in vs])
    f_grid, crop = kernels.pad_to(f, grid)
    f_k = sfft.rfftn(f_grid, workers=workers)
    del f_grid
    hp = np.zeros(shape, dtype=np.float32)
    done = np.zeros(shape, dtype=bool)
    for r, ok in zip(radii, valid):
        new = ok & ~done
        if not new.any():
            continue
        s = kernels.smv_kernel(grid, vs, r, rfft=True, workers=workers)
        spec = f_k * (1.0 - s)
        hp[new] = sfft.irfftn(spec, s=grid, workers=workers)[crop][new]
        del spec
        done |= new
        del s
    del f_k
    # Deconvolution by the largest kernel on a zero-padded grid (limits wrap-around).
    pad = [int(np.ceil(radii[0] / v)) + 1 for v in vs] if pad is None else _pad_voxels(pad)
    big = kernels.padded_shape(shape, pad)
    hp_big, crop = kernels.pad_to(hp, big)
    del hp
    h = 1.0 - kernels.smv_kernel(big, vs, radii[0], rfft=True, workers=workers)
    inv = np.zeros_like(h)
    keep = np.abs(h) > tsvd
    inv[keep] = 1.0 / h[keep]
    del h, keep
    spec = sfft.rfftn(hp_big, workers=workers)
    del hp_big
    spec *= inv
    del inv
    local = sfft.irfftn(spec, s=big, workers=workers)[crop]
    return np.where(eroded, local, 0).astype(np.float32), eroded
