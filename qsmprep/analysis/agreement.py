"""Voxel-wise agreement of two coregistered χ maps (pure numpy/scipy).

* **Voxel-wise agreement** of two coregistered χ maps: RMSE and SSIM (Wang et al. 2004) inside
  the joint mask, globally and as searchlight maps in a sphere (default 3 mm radius).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def ssim_map(a, b, *, data_range, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Structural similarity map (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004;13:600–612).

    Gaussian-weighted local statistics (σ = 1.5 voxels, as in the paper), population
    (co)variances, ``C1 = (k1·L)²``, ``C2 = (k2·L)²`` with ``L = data_range``.  Equal to
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, full=True)`` (tested).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")

    def blur(img):
        return ndimage.gaussian_filter(img, sigma=sigma, truncate=truncate, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ball(radius_mm, voxel_size):
    """Boolean sphere footprint of ``radius_mm`` for anisotropic voxels (centre included)."""
    vs = np.asarray(voxel_size, dtype=float)[:3]
    half = np.floor(radius_mm / vs + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * v for h, v in zip(half, vs)], indexing="ij")
    return sum(g * g for g in grids) <= radius_mm ** 2 + 1e-9


def searchlight_agreement(a, b, mask, voxel_size, *, radius_mm=3.0, data_range, k1=0.01, k2=0.03):
    """Local RMSE and SSIM of two maps in a sphere of ``radius_mm`` around every mask voxel.

    Only voxels inside ``mask`` enter a sphere's statistics (uniform weights, population
    moments), so the brain edge does not mix in the zeros outside the brain.  Returns
    ``(rmse_map, ssim_map)``, NaN outside the mask.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = np.asarray(mask, dtype=bool) & np.isfinite(a) & np.isfinite(b)
    a = np.where(m, a, 0.0)
    b = np.where(m, b, 0.0)
    fp = ball(radius_mm, voxel_size).astype(np.float64)

    def local_sum(img):
        return ndimage.convolve(img, fp, mode="constant", cval=0.0)

    count = local_sum(m.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(count > 0, 1.0 / count, np.nan)
        mse = local_sum((a - b) ** 2) * inv
        mu_a, mu_b = local_sum(a) * inv, local_sum(b) * inv
        var_a = local_sum(a * a) * inv - mu_a ** 2
        var_b = local_sum(b * b) * inv - mu_b ** 2
        cov = local_sum(a * b) * inv - mu_a * mu_b
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    rmse = np.sqrt(np.maximum(mse, 0.0))
    rmse[~m] = np.nan
    ssim[~m] = np.nan
    return rmse.astype(np.float32), ssim.astype(np.float32)


def voxelwise_agreement(a, b, mask, voxel_size, *, window=(-0.1, 0.2), radius_mm=3.0):
    """Global RMSE and SSIM of two coregistered χ maps inside ``mask``, plus searchlight maps.

    χ is clipped to ``window`` (ppm) before SSIM so that veins, calcifications and the odd
    edge voxel do not set the dynamic range; ``data_range = window[1] − window[0]``.  The
    global SSIM is the mean of the Gaussian SSIM map over the mask; RMSE is on unclipped χ.
    """
    m = np.asarray(mask, dtype=bool) & np.isfinite(a) & np.isfinite(b)
    if not m.any():
        raise ValueError("the two maps share no voxel inside the mask")
    lo, hi = window
    ac = np.clip(np.where(m, a, 0.0), lo, hi)
    bc = np.clip(np.where(m, b, 0.0), lo, hi)
    data_range = hi - lo
    smap = ssim_map(ac, bc, data_range=data_range)
    rmse_g = float(np.sqrt(np.mean((np.asarray(a, float)[m] - np.asarray(b, float)[m]) ** 2)))
    rmse_sl, ssim_sl = searchlight_agreement(ac, bc, m, voxel_size, radius_mm=radius_mm, data_range=data_range)
    return {"n_voxels": int(m.sum()), "rmse": rmse_g, "ssim": float(smap[m].mean()),
            "rmse_searchlight": rmse_sl, "ssim_searchlight": ssim_sl, "data_range": data_range}

