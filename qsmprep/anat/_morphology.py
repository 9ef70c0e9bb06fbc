"""Binary morphology shared by the T1w brain extraction and the coregistration metric mask."""

from __future__ import annotations

import numpy as np


def largest_component(mask):
    """The largest connected component of a binary mask (an empty mask is returned as it is)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def ball(radius_mm, voxel_size):
    """Boolean ball of ``radius_mm`` on a grid of ``voxel_size`` (at least one voxel each way)."""
    r = [max(1, int(np.floor(radius_mm / v))) for v in voxel_size]
    ii, jj, kk = np.meshgrid(*[np.arange(-n, n + 1) for n in r], indexing="ij")
    return (ii * voxel_size[0]) ** 2 + (jj * voxel_size[1]) ** 2 + (kk * voxel_size[2]) ** 2 <= radius_mm**2
