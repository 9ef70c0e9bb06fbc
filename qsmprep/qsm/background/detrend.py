"""Polynomial detrending of a field inside a mask (residual smooth background)."""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.background._common import _number


def detrend(field, mask, *, order, weights=None):
    """Subtract the least-squares polynomial of total degree ``order`` fitted inside ``mask``.

    Removes residual smooth background (e.g. left near the skull base by an imperfect
    removal); as used after SHARP-type filtering by e.g. Schweser et al., NeuroImage
    2011;54:2789-2807.  Coordinates are normalised to [−1, 1] for conditioning.  Order 0
    removes the (weighted) mean.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Field (ppm).
    mask : ndarray of bool
        Voxels used for the fit and returned; the result is zero elsewhere.
    order : int
        Total polynomial degree, ≥ 0.
    weights : ndarray, optional
        Non-negative least-squares weights.

    Returns
    -------
    ndarray of float32
    """
    order = _number("order", order, integer=True, low=0)
    field = np.asarray(field)
    mask = np.asarray(mask, dtype=bool)
    if field.ndim != 3 or mask.shape != field.shape:
        raise ValueError(f"field and mask must be 3D of the same shape, got {field.shape} and {mask.shape}")
    if not mask.any():
        raise ValueError("mask is empty")
    idx = np.nonzero(mask)
    coords = [(i - (n - 1) / 2.0) / max((n - 1) / 2.0, 1.0) for i, n in zip(idx, mask.shape)]
    terms = []
    for total in range(order + 1):
        for a in range(total + 1):
            for b in range(total - a + 1):
                terms.append(coords[0] ** a * coords[1] ** b * coords[2] ** (total - a - b))
    basis = np.stack(terms, axis=1)
    values = np.asarray(field, dtype=np.float64)[idx]
    sw = np.ones(values.size) if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64)[idx])
    if weights is not None and (np.any(~np.isfinite(sw)) or not np.any(sw > 0)):
        raise ValueError("weights must be finite, non-negative and not all zero inside the mask")
    coef, *_ = np.linalg.lstsq(basis * sw[:, None], values * sw, rcond=None)
    out = np.zeros(mask.shape, dtype=np.float32)
    out[idx] = values - basis @ coef
    return out
