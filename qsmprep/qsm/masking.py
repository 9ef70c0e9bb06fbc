"""Brain masking on the echo-averaged magnitude."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmprep.qsm.kernels import sphere_mask


def otsu_threshold(values, bins=256):
    """Otsu's threshold (IEEE Trans SMC 1979) maximising the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    # a flat maximum (empty bins between the classes): take the middle of the plateau
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def erode_mm(mask, voxel_size, radius_mm):
    """Binary erosion with a ball of ``radius_mm`` (anisotropic voxels handled)."""
    if radius_mm <= 0:
        return np.asarray(mask, dtype=bool)
    return ndimage.binary_erosion(mask, structure=sphere_mask(voxel_size, radius_mm))


_erode = erode_mm  # brain_mask's ``erode_mm`` argument shadows the function name


def dilate_mm(mask, voxel_size, radius_mm):
    if radius_mm <= 0:
        return np.asarray(mask, dtype=bool)
    return ndimage.binary_dilation(mask, structure=sphere_mask(voxel_size, radius_mm))


def largest_component(mask, empty_message="the mask is empty"):
    """The largest 6-connected component of a binary mask (ValueError if there is none)."""
    lab, n = ndimage.label(mask)
    if n == 0:
        raise ValueError(empty_message)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


def threshold_mask(magnitude, voxel_size, *, threshold=None, fill_holes=True, open_mm=None):
    """Histogram threshold + morphology (the QSMxT-style fallback).

    Otsu threshold of the non-zero magnitude (or ``threshold``), an opening with a ball
    of ``open_mm`` (default: 2 voxels) that cuts the thin bridges between brain and scalp
    through the dark skull, the largest connected component, the opening undone inside
    the thresholded region, and hole filling (CSF/vessels with low signal stay in).
    """
    mag = np.asarray(magnitude, dtype=np.float64)
    if threshold is None:
        threshold = otsu_threshold(mag[mag > 0])
    fg = mag > threshold
    open_mm = 2 * max(voxel_size) if open_mm is None else open_mm
    core = largest_component(erode_mm(fg, voxel_size, open_mm),
                             "threshold mask is empty (no voxel above the threshold survives the opening)")
    mask = dilate_mm(core, voxel_size, open_mm) & fg
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask, float(threshold)


def refine_mask(mask, voxel_size, *, quality=None, quality_threshold=2.0 / 3.0, erode_mm=0.0):
    """Remove low phase-quality voxels reachable from the outside; keep the largest part.

    Voxels below ``quality_threshold`` are removed, the largest connected component kept
    and interior holes filled again: an iron-rich nucleus or a vein whose own field makes
    the phase steep stays in the mask, while the undersampled band along the skull and the
    sinuses (connected to the outside) goes.
    """
    mask = np.asarray(mask, dtype=bool)
    if quality is not None:
        mask = mask & (np.asarray(quality) >= quality_threshold)
    if erode_mm:
        mask = _erode(mask, voxel_size, erode_mm)
    return ndimage.binary_fill_holes(largest_component(mask, "the refined mask is empty"))


def brain_mask(magnitude, voxel_size, *, method="threshold", quality=None, noise=None, refine=False,
               erode_mm=0.0, quality_threshold=2.0 / 3.0, **params):
    """Brain mask: returns (tight mask, filled mask, info)."""
    if method != "threshold":
        raise ValueError(f"unknown masking method {method!r}")
    mask, thr = threshold_mask(magnitude, voxel_size, **params)
    filled = mask.copy()
    tight = mask
    if refine or erode_mm:
        tight = refine_mask(mask, voxel_size, quality=quality if refine else None,
                            quality_threshold=quality_threshold, erode_mm=erode_mm)
    info = {"method": method, "threshold": thr, "erode_mm": erode_mm, "refine": bool(refine),
            "quality_threshold": quality_threshold, "tight_voxels": int(tight.sum()),
            "filled_voxels": int(filled.sum()), **params}
    return tight, filled, info
