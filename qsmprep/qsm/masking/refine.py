"""Phase-quality refinement of a brain mask (quality-guided masking)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmprep.qsm.masking._morphology import _check_volume, _check_voxel_size, largest_component
from qsmprep.qsm.masking._morphology import erode_mm as _erode  # refine_mask's ``erode_mm`` shadows it


def _check_map(x, name, shape):
    """A 3D map (``quality``, ``noise``) on the mask's grid."""
    x = _check_volume(x, name)
    if x.shape != shape:
        raise ValueError(f"{name} shape {x.shape} differs from the mask's {shape}")
    return x


def _noise_threshold(noise, mask, noise_factor):
    """``noise_factor`` × the median noise in ``mask`` (everything kept if the mask is empty)."""
    return noise_factor * float(np.median(noise[mask])) if mask.any() else np.inf


def refine_mask(mask, voxel_size, *, quality=None, noise=None, quality_threshold=2.0 / 3.0,
                noise_threshold=None, noise_factor=5.0, erode_mm=0.0):
    """Remove low phase-quality voxels reachable from the outside; keep the largest part.

    Voxels whose phase quality is below ``quality_threshold`` or whose field noise is above
    ``noise_threshold`` are removed, the largest connected component kept and interior
    holes filled again: an iron-rich nucleus or a vein whose own field makes the phase
    steep stays in the mask, while the undersampled band along the skull and the sinuses
    (connected to the outside) goes.  This is the quality-guided masking idea of
    Witoszynskyj et al. (Med Image Anal 2009) and of ROMEO's quality masks (Dymerska et
    al., Magn Reson Med 2021).

    Parameters
    ----------
    mask : ndarray of bool (3D)
    voxel_size : sequence of float
        Voxel size (mm).
    quality : ndarray, optional
        Phase-quality map in [0, 1] (high = good), e.g. from unwrapping.
    noise : ndarray, optional
        Field noise standard deviation (ppm), e.g. from the echo fit.
    quality_threshold : float
        Minimum quality kept, in [0, 1].
    noise_threshold : float, optional
        Maximum noise kept (ppm); default ``noise_factor`` × the median noise in the mask.
    noise_factor : float
        See ``noise_threshold``.
    erode_mm : float
        Radius (mm) of a ball erosion applied after the quality removal.

    Returns
    -------
    ndarray of bool
    """
    mask = np.asarray(_check_volume(mask, "mask"), dtype=bool)
    vs = _check_voxel_size(voxel_size)
    if not 0.0 <= quality_threshold <= 1.0:
        raise ValueError(f"quality_threshold must be in [0, 1], got {quality_threshold!r}")
    if not noise_factor > 0:
        raise ValueError(f"noise_factor must be > 0, got {noise_factor!r}")
    if erode_mm < 0:
        raise ValueError(f"erode_mm must be >= 0, got {erode_mm!r}")
    keep = mask.copy()
    if quality is not None:
        quality = _check_map(quality, "quality", mask.shape)
        keep &= np.nan_to_num(np.asarray(quality, dtype=np.float32), nan=0.0) >= quality_threshold
    if noise is not None:
        noise = np.asarray(_check_map(noise, "noise", mask.shape), dtype=np.float32)
        if noise_threshold is None:
            noise_threshold = _noise_threshold(noise, mask, noise_factor)
        keep &= np.nan_to_num(noise, nan=np.inf) <= noise_threshold
    if erode_mm:
        keep = _erode(keep, vs, erode_mm)
    return ndimage.binary_fill_holes(largest_component(keep, "the refined mask is empty"))
