"""Data weights and echo averaging shared by background removal and inversion."""

from __future__ import annotations

import numpy as np


def weights_from_noise(noise, mask, *, floor=1e-6):
    """Data weights ``w = 1/σ`` from a field noise std map, normalised to mean 1 in ``mask``.

    ``σ`` is the per-voxel standard deviation of the fitted field (ppm).  Weighting the
    field residual by ``1/σ`` is the maximum-likelihood choice for Gaussian noise
    (Liu et al., MRM 2012; the ``W`` of MEDI and PDF).  Zero outside the mask.

    >>> w = weights_from_noise(np.array([[[1.0, 2.0, 0.0]]]), np.array([[[True, True, False]]]))
    >>> np.round(w, 3).tolist()
    [[[1.333, 0.667, 0.0]]]
    """
    noise = np.asarray(noise, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    w = np.zeros(noise.shape, dtype=np.float64)
    good = mask & np.isfinite(noise) & (noise > 0)
    if not good.any():
        return mask.astype(np.float32)
    w[good] = 1.0 / np.maximum(noise[good], floor)
    w[mask & ~good] = w[good].min()
    w /= w[mask].mean()
    return w.astype(np.float32)


def average_echoes(chis, weights=None):
    """Average per-echo susceptibility maps along the last axis.

    The RIN multi-site protocol inverts each echo's local field and takes the plain
    mean of the per-echo χ maps; that is the default.  ``weights`` (one per echo)
    gives a weighted mean instead.
    """
    chis = np.asarray(chis, dtype=np.float32)
    if weights is None:
        return chis.mean(axis=-1)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (chis.shape[-1],) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {chis.shape[-1]} non-negative numbers, got {weights!r}")
    return (chis * (w / w.sum())).sum(axis=-1).astype(np.float32)
