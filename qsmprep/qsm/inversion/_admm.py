"""The ADMM with closed-form k-space updates that TV and MEDI's ADMM solver share (private).

Bilgic et al., MRM 2014;72:1444-1459 (TV-ADMM with the χ update in closed form in k-space);
Milovic et al., MRM 2018;80:814-821 (FANSI: the data-weighted and nonlinear data terms by a
second splitting, ``v = Dχ``, and magnitude-weighted TV).  Minimises

``½‖W (Dχ − f)‖₂² + λ R(∇χ)``

on the padded grid with ``z = ∇χ`` (periodic forward differences) and ``v = Dχ``:

* ``χ = F⁻¹[(μ Σ Ē_i F(z_i − u_i) + μ_d D F(v − u_v)) / (μ Σ|E_i|² + μ_d D²)]``;
* ``z = shrink(∇χ + u, λ/μ)``: vector soft thresholding for isotropic TV
  (``R = Σ_voxels |∇χ|``), or per component with the thresholds ``λ G_a / μ`` for the
  weighted anisotropic L1 ``R = Σ_a ‖G_a ∂_a χ‖₁`` (MEDI's, with ``G`` its edge mask);
* ``v = (W² f + μ_d (Dχ + u_v)) / (W² + μ_d)`` voxel-wise (linear), or a few safeguarded
  Newton steps on the complex exponential term (nonlinear, :func:`._fused.data_split_nonlinear`);
* ``u += ∇χ − z``, ``u_v += Dχ − v``.

With ``relax`` ``α ≠ 1`` the two splits are over-relaxed (Boyd et al. 2011, §3.4.3): their
updates take ``α ∇χ + (1 − α) z`` and ``α Dχ + (1 − α) v`` for ``∇χ`` and ``Dχ``.

Two FFT pairs an iteration; every element-wise step is one compiled pass
(:mod:`qsmprep.qsm.inversion._fused`).  Stops when ``‖χ_k − χ_{k−1}‖ < tol ‖χ_k‖`` (from the
second iteration) or after ``max_iter`` iterations.
"""

from __future__ import annotations

import numpy as np

from qsmprep.qsm._numba import num_threads
from qsmprep.qsm.inversion._fused import (
    change_norms,
    data_split,
    data_split_nonlinear,
    kspace_step,
    periodic_divergence,
    shrink,
    shrink_weighted,
)
from qsmprep.qsm.inversion._operators import _check_data_term, _check_positive, _check_relax, _gradient_reg


def admm_options(lambda_, mu, mu_data, relax, max_iter, tol, newton_iter, data_term, phase_scale):
    """The checked options of a TV-type ADMM (:func:`tv`, :func:`whqsm`).

    Returns ``(λ, μ, μ_d, α, max_iter, tol, newton_iter, a)``: ``μ`` defaults to ``100 λ``
    (FANSI) and ``a`` is the nonlinear data term's phase per ppm (None: linear).
    """
    lam = _check_positive("lambda_", lambda_)
    mu = 100.0 * lam if mu is None else _check_positive("mu", mu)
    return (lam, mu, _check_positive("mu_data", mu_data), _check_relax(relax),
            _check_positive("max_iter", max_iter, integer=True), _check_positive("tol", tol),
            _check_positive("newton_iter", newton_iter, integer=True), _check_data_term(data_term, phase_scale))


class Splits:
    """The gradient split ``z = ∇χ`` (``u``) and the data split ``v = model`` (``u_v``) of a
    TV-type ADMM, and their update (:func:`admm_l1`'s; WH-QSM's with ``model = Dχ + φ``).

    ``data_in`` holds ``v − u_v``, the next χ update's data input; ``z`` and ``u`` feed its
    gradient input (:func:`._fused.periodic_divergence`).
    """

    def __init__(self, f, w2, *, thr, mu_d, phase_scale, newton_iter, gradient_weights, relax, voxel_size):
        self.z = np.zeros((3,) + f.shape, dtype=np.float32)
        self.u = np.zeros_like(self.z)
        self.v = f.copy()
        self.uv = np.zeros_like(f)
        self.data_in = self.v - self.uv
        self.f, self.w2, self.w2f = f, w2, w2 * f
        self.thr, self.mu_d, self.newton_iter, self.relax = np.float32(thr), mu_d, newton_iter, relax
        self.a = None if phase_scale is None else np.float32(phase_scale)
        self.weights, self.vs = gradient_weights, voxel_size

    def update(self, chi, model):
        """``z``, ``u`` from ``∇χ`` and ``v``, ``u_v``, ``data_in`` from ``model``, in place."""
        if self.weights is None:
            shrink(chi, self.z, self.u, self.thr, self.vs, self.relax)  # z = shrink(∇χ + u), u += ∇χ − z
        else:
            shrink_weighted(chi, self.z, self.u, self.thr, self.weights, self.vs, self.relax)
        if self.a is None:
            data_split(model, self.w2f, self.w2, self.mu_d, self.v, self.uv, self.data_in, self.relax)
        else:
            # Newton where that voxel's cost is convex (cos > 0); elsewhere a step with the
            # curvature's bound W² + μ_d, which always descends (W² cos + μ_d can be ≤ 0
            # where weights above 1 meet a field far from the data, and Newton diverges)
            data_split_nonlinear(model, self.f, self.w2, self.mu_d, self.a, self.newton_iter, self.v, self.uv,
                                 self.data_in, self.relax)


def admm_l1(grid, f, w2, *, lam, mu, mu_d, max_iter, tol, phase_scale=None, newton_iter=4,
            gradient_weights=None, relax=1.0):
    """Run the ADMM (module docstring) on ``grid``; returns (χ on the padded grid, iterations).

    ``f`` is the field and ``w2`` the squared data weights on the grid (zero outside the
    mask); ``phase_scale`` (rad per ppm) selects the nonlinear data term; ``gradient_weights``
    (``(3,) + grid.shape`` float32) selects the weighted anisotropic L1, None isotropic TV.
    """
    vs = grid.voxel_size
    denom = np.float32(mu) * _gradient_reg(grid) + np.float32(mu_d) * grid.d * grid.d
    denom[0, 0, 0] = 1.0
    inv_denom = (1.0 / denom).astype(np.float32)
    inv_denom[0, 0, 0] = 0.0
    del denom
    sp = Splits(f, w2, thr=lam / mu, mu_d=mu_d, phase_scale=phase_scale, newton_iter=newton_iter,
                gradient_weights=gradient_weights, relax=relax, voxel_size=vs)
    mud_d = (np.float32(mu_d) * grid.d).astype(np.float32)
    chi = np.zeros_like(f)
    div = np.empty_like(f)
    it = 0
    with num_threads(grid.workers):
        for it in range(1, max_iter + 1):
            xk = grid.fft(periodic_divergence(sp.z, sp.u, mu, vs, out=div))
            kd = grid.fft(sp.data_in)
            kspace_step(xk, kd, mud_d, inv_denom, grid.d)  # xk = X (the new χ), kd = D X
            chi_new = grid.ifft(xk)
            dchi = grid.ifft(kd)
            del xk, kd
            diff, size = change_norms(chi_new, chi)
            change = np.sqrt(diff) / max(np.sqrt(size), 1e-30)
            chi = chi_new
            sp.update(chi, dchi)
            del dchi
            if it > 1 and change < tol:
                break
    return chi, it
