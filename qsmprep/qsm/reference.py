"""Referencing χ: which region has mean zero."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def csf_mask(r2star, mask, voxel_size, *, r2star_max=8.0, min_depth_mm=15.0, max_distance_mm=45.0,
             min_volume_mm3=200.0):
    """Automatic lateral-ventricle CSF mask from R2* and position.

    Ventricular CSF is the low-R2* tissue (free water, R2* of a few 1/s at 3 T) deep inside
    the brain and near its centre; the subarachnoid CSF along the cortex is excluded by
    depth, because its χ is biased by the nearby skull and sinus fields.  Steps: voxels in
    the mask with ``0 < R2* < r2star_max``, at least ``min_depth_mm`` from the mask edge,
    eroded by one voxel (partial volume), connected components of at least
    ``min_volume_mm3`` whose centroid lies within ``max_distance_mm`` of the mask centroid.
    (As used for a CSF reference by Liu et al., MRM 2018;79:2795-2803 (MEDI+0) and the
    consensus recommendation, QSM Consensus Organization Committee, MRM 2024.)
    """
    mask = np.asarray(mask, dtype=bool)
    vs = np.asarray(voxel_size, dtype=float)
    depth = ndimage.distance_transform_edt(mask, sampling=vs)
    cand = mask & (np.asarray(r2star) > 0) & (np.asarray(r2star) < r2star_max) & (depth >= min_depth_mm)
    cand = ndimage.binary_erosion(cand)
    lab, n = ndimage.label(cand)
    if n == 0:
        raise ValueError("no ventricular CSF found (no low-R2* voxels deep in the brain mask)")
    centre = np.array(ndimage.center_of_mass(mask)) * vs
    sizes = np.bincount(lab.ravel())[1:] * float(np.prod(vs))
    centroids = np.array(ndimage.center_of_mass(cand, lab, range(1, n + 1))) * vs
    keep = [i + 1 for i in range(n)
            if sizes[i] >= min_volume_mm3 and np.linalg.norm(centroids[i] - centre) <= max_distance_mm]
    if not keep:
        raise ValueError("no ventricular CSF found (no large low-R2* region near the brain centre)")
    return np.isin(lab, keep)


def reference_chi(chi, mask, *, method="whole-brain", roi=None, r2star=None, voxel_size=None):
    """Shift χ so that its reference region has mean zero; returns (χ, info).

    ``whole-brain``: mean over the mask; ``csf``: mean over the automatic ventricle mask
    (:func:`csf_mask`, needs R2* and the voxel size); ``roi``: mean over a user mask;
    ``none``: unchanged.
    """
    chi = np.asarray(chi, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if method == "none":
        region = None
    elif method == "whole-brain":
        region = mask
    elif method == "csf":
        if r2star is None or voxel_size is None:
            raise ValueError("reference 'csf' needs the R2* map and the voxel size")
        region = csf_mask(r2star, mask, voxel_size) & mask
    elif method == "roi":
        if roi is None:
            raise ValueError("reference 'roi' needs a reference ROI mask")
        region = np.asarray(roi, dtype=bool) & mask
    else:
        raise ValueError(f"unknown reference {method!r}")
    if region is not None and not region.any():
        raise ValueError(f"the {method} reference region is empty")
    offset = float(chi[region].mean()) if region is not None else 0.0
    info = {"ReferenceRegion": method, "ReferenceOffset": offset,
            "ReferenceVoxels": int(region.sum()) if region is not None else 0}
    return ((chi - offset) * mask).astype(np.float32), info
