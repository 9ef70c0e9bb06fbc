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


def tikhonov(local_field, mask, voxel_size, b0_dir, *, lambda_=0.005, pad=16, workers=None):
    """Closed-form Tikhonov inversion with gradient regularisation.

    ``χ = F⁻¹[ D F(f) / (D² + λ (|E_x|² + |E_y|² + |E_z|²)) ]`` with ``E_i`` the k-space
    forward-difference kernels (Bilgic et al., MRM 2014, closed-form L2; as in the
    multi-site comparison's fast method).  λ is in units of mm² (the gradient has 1/mm).
    """
    workers = kernels.resolve_workers(workers)
    if lambda_ <= 0:
        raise ValueError(f"lambda_ must be positive, got {lambda_}")
    mask = np.asarray(mask, dtype=bool)
    shape = kernels.padded_shape(local_field.shape, pad)
    f, crop = kernels.pad_to(np.asarray(local_field, dtype=np.float32) * mask, shape)
    d = kernels.dipole_kernel(shape, voxel_size, b0_dir, rfft=True)
    reg = sum(np.abs(e) ** 2 for e in kernels.gradient_kernels(shape, voxel_size, rfft=True))
    denom = d * d + lambda_ * reg
    denom[0, 0, 0] = 1.0  # DC: D = 0 and no gradient; χ's mean is set by referencing
    filt = (d / denom).astype(np.float32)
    chi = sfft.irfftn(sfft.rfftn(f, workers=workers) * filt, s=shape, workers=workers)[crop]
    return (chi * mask).astype(np.float32)


def invert(local_field, mask, voxel_size, b0_dir, *, method="tkd", magnitude=None, noise=None, r2star=None,
           lambda_=None, lambda_rule="fixed", pad=16, workers=None, **params):
    """Local field (ppm) to χ (ppm); returns (χ, info with every parameter used)."""
    if method == "tikhonov":
        if params:
            raise ValueError(f"unknown tikhonov parameter(s) {sorted(params)}; it takes lambda_")
        lam = 0.005 if lambda_ is None else float(lambda_)
        if lambda_rule != "fixed":
            raise ValueError(f"lambda_rule {lambda_rule!r} is not available for tikhonov; use 'fixed'")
        chi = tikhonov(local_field, mask, voxel_size, b0_dir, lambda_=lam, pad=pad, workers=workers)
        return chi, {"method": "tikhonov", "lambda": lam, "lambda_rule": "fixed", "pad": pad}
    if method != "tkd":
        raise ValueError(f"unknown inversion method {method!r}; use tkd or tikhonov")
    chi, factor = tkd(local_field, mask, voxel_size, b0_dir, pad=pad, workers=workers, **params)
    info = {"method": "tkd", "threshold": params.get("threshold", 0.19),
            "correct": params.get("correct", True), "correction_factor": factor, "pad": pad}
    return chi, info
