"""Truncated k-space division (TKD) with the Schweser et al. (2013) correction."""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.inversion._operators import _check_fraction, _check_inputs, _Grid, _rfft_mean, _tkd_inverse


def tkd(local_field, mask, voxel_size, b0_dir, *, threshold=0.19, correct=True, pad=16, workers=None,
        return_factor=False):
    """Truncated k-space division (Shmueli et al., MRM 2009; Wharton et al., MRM 2010).

    ``1/D`` is replaced by ``sign(D)/threshold`` where ``|D| < threshold``.  Truncation
    scales χ down by the k-space mean of ``D · D⁻¹_TKD`` (the effective kernel's
    point-spread centre); with ``correct`` χ is divided by that factor, the correction of
    Schweser, Deistung, Sommer & Reichenbach, "Toward online reconstruction of quantitative
    susceptibility maps: superfast dipole inversion", MRM 2013;69:1582-1594.

    Parameters
    ----------
    local_field : ndarray (x, y, z)
        Local field (ppm), valid inside ``mask``.
    mask : ndarray of bool
        Where the local field is valid; χ is zero outside.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    threshold : float
        Truncation level of ``|D|``, in (0, 2/3).
    correct : bool
        Apply the Schweser et al. (2013) underestimation correction.
    pad : int or sequence of int
        Zero padding (voxels per side) around the mask's bounding box.
    workers : int, optional
        FFT threads (default: the CPUs available).
    return_factor : bool
        Also return the correction factor (1.0 when ``correct`` is False).

    Returns
    -------
    chi : ndarray of float32
        χ (ppm), zero outside the mask; ``(chi, factor)`` with ``return_factor``.
    """
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    threshold = _check_fraction("threshold", threshold, 0.0, 2.0 / 3.0)
    grid = _Grid(mask, vs, b, pad, workers)
    inv = _tkd_inverse(grid.d, threshold)
    chi = grid.conv(grid.put(field) * grid.mask, inv)
    factor = 1.0
    if correct:
        factor = _rfft_mean(grid.d * inv, grid.shape)
        chi /= np.float32(factor)
    out = grid.get(chi * grid.mask)
    return (out, factor) if return_factor else out

