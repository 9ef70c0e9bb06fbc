"""Dipole inversion."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels


def tkd(local_field, mask, voxel_size, b0_dir, *, threshold=0.19, correct=True, pad=16, workers=None):
    """Truncated k-space division (Shmueli et al., MRM 2009; Wharton et al., MRM 2010).

    ``1/D`` is replaced by ``sign(D)/threshold`` where ``|D| < threshold``.  With
    ``correct``, χ is divided by the k-space mean of ``D · D⁻¹_TKD``, which corrects the
    underestimation that truncation causes (Schweser et al., MRM 2013).
    """
    workers = kernels.resolve_workers(workers)
    mask = np.asarray(mask, dtype=bool)
    shape = kernels.padded_shape(local_field.shape, pad)
    f, crop = kernels.pad_to(np.asarray(local_field, dtype=np.float32) * mask, shape)
    d = kernels.dipole_kernel(shape, voxel_size, b0_dir, rfft=True)
    inv = np.where(np.abs(d) >= threshold, 1.0 / np.where(d == 0, 1, d), np.sign(d) / threshold).astype(np.float32)
    inv[0, 0, 0] = 0.0
    chi = sfft.irfftn(sfft.rfftn(f, workers=workers) * inv, s=shape, workers=workers)[crop]
    factor = 1.0
    if correct:
        prod = d * inv
        # mean over the full spectrum: rfft bins other than the edge planes count twice
        weights = np.full(prod.shape[-1], 2.0)
        weights[0] = 1.0
        if shape[-1] % 2 == 0:
            weights[-1] = 1.0
        factor = float((prod * weights).sum() / (prod.shape[0] * prod.shape[1] * weights.sum()))
        chi = chi / factor
    return (chi * mask).astype(np.float32), factor


def invert(local_field, mask, voxel_size, b0_dir, *, method="tkd", magnitude=None, noise=None, r2star=None,
           lambda_=None, lambda_rule="fixed", pad=16, workers=None, **params):
    """Local field (ppm) to χ (ppm); returns (χ, info)."""
    if method != "tkd":
        raise ValueError(f"unknown inversion method {method!r}")
    chi, factor = tkd(local_field, mask, voxel_size, b0_dir, pad=pad, workers=workers, **params)
    info = {"method": "tkd", "threshold": params.get("threshold", 0.19),
            "correct": params.get("correct", True), "correction_factor": factor, "pad": pad}
    return chi, info
