"""Input checks and ball morphology in mm shared by the masking methods."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmprep.qsm.kernels import sphere_mask


def _check_voxel_size(voxel_size):
    vs = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,)))
    if not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size!r}")
    return vs


def _check_volume(x, name="magnitude"):
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {x.shape}")
    return x


def _ball_morphology(operation, mask, voxel_size, radius_mm):
    """``operation`` (a binary ndimage morphology) with a ball of ``radius_mm``; a copy for 0."""
    mask = np.asarray(mask, dtype=bool)
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0, got {radius_mm}")
    if radius_mm == 0:
        return mask.copy()
    return operation(mask, structure=sphere_mask(_check_voxel_size(voxel_size), radius_mm))


def erode_mm(mask, voxel_size, radius_mm):
    """Binary erosion with a ball of ``radius_mm`` (anisotropic voxels handled).

    Voxels outside the array count as outside the mask, so a mask touching the edge of
    the field of view is eroded from that edge too.
    """
    return _ball_morphology(ndimage.binary_erosion, mask, voxel_size, radius_mm)


def dilate_mm(mask, voxel_size, radius_mm):
    """Binary dilation with a ball of ``radius_mm`` (anisotropic voxels handled)."""
    return _ball_morphology(ndimage.binary_dilation, mask, voxel_size, radius_mm)


def largest_component(mask, empty_message="the mask is empty"):
    """The largest 6-connected component of a binary mask (ValueError if there is none)."""
    lab, n = ndimage.label(mask)
    if n == 0:
        raise ValueError(empty_message)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)
