"""Background field removal."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels


def _smv_radii(voxel_size, radius_max_mm, radius_min_mm, radius_step_mm):
    rmin = max(voxel_size) if radius_min_mm is None else radius_min_mm
    step = max(voxel_size) if radius_step_mm is None else radius_step_mm
    rmax = max(radius_max_mm, rmin)
    return sorted({float(r) for r in np.arange(rmax, rmin - 1e-6, -step)} | {float(rmin)}, reverse=True)


def vsharp(field, mask, voxel_size, *, radius_max_mm=12.0, radius_min_mm=None, radius_step_mm=None,
           tsvd=0.05, workers=None):
    """Variable-radius SHARP (Wu et al., MRM 2012; SHARP: Schweser et al., NeuroImage 2011).

    For radii from ``radius_max_mm`` down to ``radius_min_mm`` (default one voxel; all in
    mm), the spherical-mean-value high-pass ``(δ − S_r) * f`` is kept at the voxels where
    a ball of radius r fits inside the mask, the largest fitting radius winning.  The
    result is deconvolved with the largest kernel, ``1 − S_rmax``, truncated where
    ``|1 − S| < tsvd``, and masked by the mask eroded by the smallest radius.
    Returns (local field, eroded mask).
    """
    workers = kernels.resolve_workers(workers)
    mask = np.asarray(mask, dtype=bool)
    radii = _smv_radii(voxel_size, radius_max_mm, radius_min_mm, radius_step_mm)
    pad = int(np.ceil(radii[0] / min(voxel_size))) + 1
    shape = kernels.padded_shape(field.shape, pad)
    f, crop = kernels.pad_to(np.asarray(field, dtype=np.float64) * mask, shape)
    m, _ = kernels.pad_to(mask.astype(np.float64), shape)
    f_k = sfft.rfftn(f, workers=workers)
    m_k = sfft.rfftn(m, workers=workers)
    hp = np.zeros(shape)
    done = np.zeros(shape, dtype=bool)
    s_max = None
    valid = None
    for r in radii:
        s = kernels.smv_kernel(shape, voxel_size, r, rfft=True, workers=workers).astype(np.float64)
        if s_max is None:
            s_max = s
        valid = sfft.irfftn(m_k * s, s=shape, workers=workers) > 1 - 1e-4
        new = valid & ~done
        hp[new] = sfft.irfftn(f_k * (1 - s), s=shape, workers=workers)[new]
        done |= valid
    h = 1 - s_max
    inv = np.zeros_like(h)
    keep = np.abs(h) > tsvd
    inv[keep] = 1.0 / h[keep]
    local = sfft.irfftn(sfft.rfftn(hp, workers=workers) * inv, s=shape, workers=workers)
    eroded = valid[crop]
    return (local[crop] * eroded).astype(np.float32), eroded


def detrend(field, mask, *, order):
    """Subtract the least-squares polynomial of total degree ``order`` fitted inside ``mask``.

    Removes residual smooth background (e.g. from imperfect background removal near the
    skull base); coordinates are normalised to [−1, 1] for conditioning.
    """
    mask = np.asarray(mask, dtype=bool)
    if order is None or order < 0:
        return np.asarray(field, dtype=np.float32)
    idx = np.nonzero(mask)
    coords = [(i - (n - 1) / 2) / max((n - 1) / 2, 1) for i, n in zip(idx, mask.shape)]
    terms = [np.ones_like(coords[0], dtype=np.float64)]
    for total in range(1, int(order) + 1):
        for a in range(total + 1):
            for b in range(total - a + 1):
                c = total - a - b
                terms.append(coords[0] ** a * coords[1] ** b * coords[2] ** c)
    basis = np.stack(terms, axis=1)
    coef, *_ = np.linalg.lstsq(basis, np.asarray(field, dtype=np.float64)[idx], rcond=None)
    out = np.zeros(mask.shape, dtype=np.float32)
    out[idx] = np.asarray(field, dtype=np.float64)[idx] - basis @ coef
    return out


def remove_background(field, mask, voxel_size, *, method="vsharp", b0_dir=(0, 0, 1), weights=None,
                      detrend_order=None, workers=None, **params):
    """Total field (ppm) to local field (ppm): returns (local, eroded mask, info)."""
    if method != "vsharp":
        raise ValueError(f"unknown background removal method {method!r}")
    local, eroded = vsharp(field, mask, voxel_size, workers=workers, **params)
    if detrend_order is not None and eroded.any():
        local = detrend(local, eroded, order=detrend_order)
    if eroded.any():
        local = (local - local[eroded].mean()) * eroded
    info = {"method": method, "detrend_order": detrend_order, **params}
    return local.astype(np.float32), eroded, info
