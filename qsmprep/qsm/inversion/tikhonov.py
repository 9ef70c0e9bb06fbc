"""Closed-form Tikhonov inversion with gradient regularisation."""

from __future__ import annotations

import numpy as np

from qsmprep.qsm.inversion._operators import _check_inputs, _check_positive, _gradient_reg, _Grid


def _tikhonov_parts(grid, field_k):
    """The λ-independent parts of the closed form: ``D F(f)``, ``D²`` and ``Σ|E_i|²``."""
    reg = _gradient_reg(grid)
    return grid.d * field_k, grid.d * grid.d, reg


def _tikhonov_solve(grid, parts, lam):
    """``F(χ)`` at ``λ = lam`` from :func:`_tikhonov_parts`."""
    num, d2, reg = parts
    denom = d2 + np.float32(lam) * reg
    denom[0, 0, 0] = 1.0  # DC: D = 0 and no gradient; χ's mean is set by referencing
    return num / denom


def tikhonov(local_field, mask, voxel_size, b0_dir, *, lambda_=0.005, pad=16, workers=None):
    """Closed-form Tikhonov inversion with gradient regularisation.

    ``χ = F⁻¹[ D F(f) / (D² + λ (|E_x|² + |E_y|² + |E_z|²)) ]``, the minimiser of
    ``‖Dχ − f‖² + λ‖∇χ‖²`` with ``E_i`` the k-space kernels of periodic forward
    differences (Bilgic, Fan, Polimeni, Cauley, Bianciardi, Adalsteinsson, Wald &
    Setsompop, "Fast quantitative susceptibility mapping with L1-regularization and
    automatic parameter selection", MRM 2014;72:1444-1459, closed-form L2 solution).
    λ is in mm² (the gradient is in 1/mm).

    Parameters
    ----------
    local_field, mask, voxel_size, b0_dir, pad, workers
        As in :func:`tkd`.
    lambda_ : float
        Regularisation weight (> 0).

    Returns
    -------
    ndarray of float32
        χ (ppm), zero outside the mask.
    """
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    lam = _check_positive("lambda_", lambda_)
    grid = _Grid(mask, vs, b, pad, workers)
    parts = _tikhonov_parts(grid, grid.fft(grid.put(field) * grid.mask))
    return grid.get(grid.ifft(_tikhonov_solve(grid, parts, lam)) * grid.mask)

