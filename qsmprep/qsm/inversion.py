"""Dipole inversion: local field (ppm) to magnetic susceptibility χ (ppm).

Methods
-------
``tkd``
    Truncated k-space division with the Schweser et al. (2013) correction (:func:`tkd`).
``tikhonov``
    Closed-form L2 solution with gradient regularisation (:func:`tikhonov`).
``ilsqr``
    LSQR, fast QSM estimate, streaking artifact estimation and removal (Li et al. 2015,
    :func:`ilsqr`).
``medi`` / ``medi+0``
    Morphology enabled dipole inversion (Liu et al. 2012), optionally with the automatic
    uniform CSF zero reference (Liu et al. 2018) (:func:`medi`).
``tv``
    Total-variation ADMM with closed-form k-space updates (Bilgic et al. 2014; the weighted
    and nonlinear data terms of FANSI, Milovic et al. 2018) (:func:`tv`).

Conventions shared by all methods: the local field is in ppm of B0 and valid inside
``mask``; ``voxel_size`` is in mm per voxel axis and ``b0_dir`` the unit B0 vector in
voxel axes (:func:`qsmprep.qsm.kernels.b0_direction`), so oblique slices and anisotropic
voxels are exact.  All operators are FFT-based (``scipy.fft``, ``workers`` threads, float32)
on the mask's bounding box zero-padded by ``pad`` voxels per side and rounded up to a fast
FFT size.  Every method returns χ (ppm, float32) that is zero outside the mask and is
*not* referenced (see :mod:`qsmprep.qsm.reference`); the mean of χ is arbitrary.

The regularisation weight ``lambda_`` always multiplies the regularisation term of a
``½‖W(Dχ − f)‖² + λ R(χ)`` objective, so a larger λ is always a smoother χ and a larger
residual.  :func:`invert` can choose λ automatically (``lambda_rule``): by the
discrepancy principle (Morozov 1966: the noise-weighted residual variance equals the
expected noise variance) or by the L-curve corner (Hansen 1992; as in Bilgic et al. 2014).
"""

from __future__ import annotations

import inspect

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from qsmprep.qsm import kernels

#: Inversion methods :func:`invert` accepts.
METHODS = ("tkd", "tikhonov", "ilsqr", "medi", "medi+0", "tv")
#: Regularisation-parameter rules :func:`invert` accepts.
LAMBDA_RULES = ("fixed", "discrepancy", "lcurve")
#: Default regularisation weights (field and χ in ppm, gradients in ppm/mm, data weights
#: normalised to mean 1 in the mask), tuned on the demo phantom at SNR 100.
DEFAULT_LAMBDA = {"tikhonov": 0.005, "medi": 5e-4, "medi+0": 5e-4, "tv": 2e-4}
#: Methods whose regularisation weight can be chosen by a rule.
_REGULARISED = ("tikhonov", "medi", "medi+0", "tv")


# --------------------------------------------------------------------------------------
# validation and the padded grid
# --------------------------------------------------------------------------------------
def _check_inputs(local_field, mask, voxel_size, b0_dir):
    field = np.asarray(local_field)
    if field.ndim != 3:
        raise ValueError(f"local_field must be 3D, got shape {field.shape}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != field.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the field's {field.shape}")
    if not mask.any():
        raise ValueError("mask is empty")
    vs = tuple(float(v) for v in np.ravel(voxel_size))
    if len(vs) != 3 or min(vs) <= 0 or not np.all(np.isfinite(vs)):
        raise ValueError(f"voxel_size must be 3 positive numbers, got {voxel_size!r}")
    b = np.asarray(b0_dir, dtype=float).ravel()
    if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) == 0:
        raise ValueError(f"b0_dir must be a non-zero 3-vector, got {b0_dir!r}")
    if not np.all(np.isfinite(field[mask])):
        raise ValueError("local_field has non-finite values inside the mask")
    return field, mask, vs, b / np.linalg.norm(b)


def _check_positive(name, value, *, integer=False, allow_zero=False):
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if integer and v != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    return v


def _check_fraction(name, value, lo=0.0, hi=1.0):
    v = _check_positive(name, value, allow_zero=True)
    if not lo < v < hi:
        raise ValueError(f"{name} must be in ({lo}, {hi}), got {value!r}")
    return v


class _Grid:
    """The mask's bounding box, zero-padded to a fast FFT size, and FFTs on it."""

    def __init__(self, mask, voxel_size, b0_dir, pad, workers):
        pad = np.broadcast_to(np.asarray(pad), (3,))
        if np.any(pad < 0) or np.any(pad != np.round(pad)):
            raise ValueError(f"pad must be non-negative integer(s), got {pad.tolist()}")
        idx = np.nonzero(mask)
        self.bbox = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        self.full_shape = mask.shape
        self.voxel_size = tuple(voxel_size)
        self.b0_dir = tuple(float(v) for v in b0_dir)
        self.workers = kernels.resolve_workers(workers)
        self.shape = kernels.padded_shape(mask[self.bbox].shape, pad.astype(int))
        self.mask, self.inner = kernels.pad_to(mask[self.bbox], self.shape)
        self.d = kernels.dipole_kernel(self.shape, voxel_size, b0_dir, rfft=True)
        self.n_mask = int(self.mask.sum())

    def put(self, x, dtype=np.float32):
        """Crop a full-size map to the box and zero-pad it."""
        return kernels.pad_to(np.asarray(x)[self.bbox].astype(dtype, copy=False), self.shape)[0]

    def get(self, y):
        """Full-size float32 map from a padded one (zero outside the box)."""
        out = np.zeros(self.full_shape, dtype=np.float32)
        out[self.bbox] = y[self.inner]
        return out

    def fft(self, x):
        return sfft.rfftn(x, workers=self.workers)

    def ifft(self, k):
        return sfft.irfftn(k, s=self.shape, workers=self.workers).astype(np.float32, copy=False)

    def conv(self, x, kernel=None):
        """``F⁻¹[K · F(x)]`` with the dipole kernel by default (real, symmetric: self-adjoint)."""
        return self.ifft(self.fft(x) * (self.d if kernel is None else kernel))


def _dot(a, b):
    return float(np.dot(a.ravel(), b.ravel()))


def _norm(a):
    return float(np.sqrt(_dot(a, a)))


def _data_weights(grid, noise, magnitude):
    """Data weights on the grid (mean 1 in the mask) and what they came from.

    ``1/σ`` from the field noise std when given (Liu et al. 2012), else the magnitude,
    else uniform; zero outside the mask.
    """
    from qsmprep.qsm.weights import weights_from_noise

    m = grid.mask
    if noise is not None and np.ndim(noise) == 3:
        w = weights_from_noise(grid.put(noise), m)
        return w, "noise"
    if magnitude is not None:
        mag = np.abs(grid.put(magnitude))
        mean = float(mag[m].mean()) if m.any() else 0.0
        if mean > 0:
            return (mag * m / mean).astype(np.float32), "magnitude"
    return m.astype(np.float32), "uniform"


def _noise_std(grid, noise):
    """Field noise std (ppm) inside the mask: a map on the grid, or None."""
    if noise is None:
        return None
    if np.ndim(noise) == 0:
        s = float(noise)
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"noise must be positive, got {noise!r}")
        return np.where(grid.mask, s, 0).astype(np.float32)
    if np.shape(noise) != grid.full_shape:
        raise ValueError(f"noise shape {np.shape(noise)} does not match the field's {grid.full_shape}")
    s = grid.put(noise)
    good = grid.mask & np.isfinite(s) & (s > 0)
    if not good.any():
        raise ValueError("noise has no positive finite value inside the mask")
    s = np.where(good, s, float(np.median(s[good])))
    return (s * grid.mask).astype(np.float32)


# --------------------------------------------------------------------------------------
# periodic finite differences (exactly the k-space kernels.gradient_kernels)
# --------------------------------------------------------------------------------------
def _pgrad(x, voxel_size, out=None):
    """Periodic forward differences ``(x[i+1] − x[i]) / d``, shape ``(3,) + x.shape``."""
    g = np.empty((3,) + x.shape, dtype=np.float32) if out is None else out
    for ax in range(3):
        np.subtract(np.roll(x, -1, axis=ax), x, out=g[ax])
        g[ax] *= np.float32(1.0 / voxel_size[ax])
    return g


def _pgrad_adj(g, voxel_size):
    """Adjoint of :func:`_pgrad` (minus the periodic backward-difference divergence)."""
    out = np.zeros(g.shape[1:], dtype=np.float32)
    for ax in range(3):
        out += (np.roll(g[ax], 1, axis=ax) - g[ax]) * np.float32(1.0 / voxel_size[ax])
    return out


# --------------------------------------------------------------------------------------
# Krylov solvers on arrays
# --------------------------------------------------------------------------------------
def _cg(apply_a, b, x0=None, *, tol=0.01, max_iter=100):
    """Conjugate gradients for a symmetric positive (semi-)definite operator.

    Stops when ``‖b − A x‖ ≤ tol ‖b‖``.  Returns (x, iterations).
    """
    x = np.zeros_like(b) if x0 is None else x0.copy()
    r = b - apply_a(x) if x0 is not None else b.copy()
    p = r.copy()
    rr = _dot(r, r)
    stop = (tol * _norm(b)) ** 2
    it = 0
    while it < max_iter and rr > stop:
        ap = apply_a(p)
        pap = _dot(p, ap)
        if pap <= 0:
            break
        alpha = rr / pap
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        rr_new = _dot(r, r)
        p *= np.float32(rr_new / rr)
        p += r
        rr = rr_new
        it += 1
    return x, it


def _lsqr(apply_a, apply_at, b, x_shape, *, tol=1e-2, max_iter=30):
    """LSQR (Paige & Saunders, ACM TOMS 1982) for ``min ‖A x − b‖₂``, float32 arrays.

    Stops after ``max_iter`` iterations or when the estimate of ``‖Aᵀ r‖ / (‖A‖ ‖r‖)``
    falls below ``tol`` (the usual LSQR criterion; early stopping regularises).
    Returns (x, iterations, residual norm estimate).
    """
    x = np.zeros(x_shape, dtype=np.float32)
    beta = _norm(b)
    if beta == 0:
        return x, 0, 0.0
    u = b / np.float32(beta)
    v = apply_at(u)
    alpha = _norm(v)
    if alpha == 0:
        return x, 0, beta
    v /= np.float32(alpha)
    w = v.copy()
    phibar, rhobar = beta, alpha
    anorm2 = 0.0
    it = 0
    for it in range(1, max_iter + 1):
        u = apply_a(v) - np.float32(alpha) * u
        beta = _norm(u)
        if beta > 0:
            u /= np.float32(beta)
        anorm2 += alpha**2 + beta**2
        v = apply_at(u) - np.float32(beta) * v
        alpha = _norm(v)
        if alpha > 0:
            v /= np.float32(alpha)
        rho = np.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        x += np.float32(phi / rho) * w
        w = v - np.float32(theta / rho) * w
        # ‖Aᵀr‖ = phibar·alpha·|c|; relative to ‖A‖_F·‖r‖
        test = phibar * alpha * abs(c) / (np.sqrt(anorm2) * phibar + 1e-30)
        if test < tol or phibar == 0:
            break
    return x, it, float(phibar)


# --------------------------------------------------------------------------------------
# TKD and Tikhonov
# --------------------------------------------------------------------------------------
def _tkd_inverse(d, threshold):
    inv = np.where(np.abs(d) >= threshold, 1.0 / np.where(d == 0, 1, d), np.sign(d) / threshold)
    inv = inv.astype(np.float32)
    inv[0, 0, 0] = 0.0
    return inv


def _rfft_mean(x, shape):
    """Mean of a Hermitian-symmetric spectrum over the full grid, given its rfft half."""
    weights = np.full(x.shape[-1], 2.0)
    weights[0] = 1.0
    if shape[-1] % 2 == 0:
        weights[-1] = 1.0
    return float((x.sum(axis=(0, 1), dtype=np.float64) * weights).sum() / np.prod(shape))


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


def _tikhonov_parts(grid, field_k):
    reg = sum((np.abs(e) ** 2).astype(np.float32)
              for e in kernels.gradient_kernels(grid.shape, grid.voxel_size, rfft=True))
    return grid.d * field_k, grid.d * grid.d, reg


def _tikhonov_solve(grid, parts, lam):
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


# --------------------------------------------------------------------------------------
# iLSQR
# --------------------------------------------------------------------------------------
def _percentile_edges(grad, valid, edge_fraction):
    """Weights 1 where ``|grad|`` is below its ``1 − edge_fraction`` quantile over ``valid``, else 0."""
    a = np.abs(grad)
    vals = a[valid]
    if vals.size == 0:
        return valid.astype(np.float32)
    thr = np.quantile(vals, 1.0 - edge_fraction)
    return ((a <= thr) & valid).astype(np.float32)


def _pair_mask(mask):
    """Gradient components (periodic forward differences) with both voxels in the mask."""
    return np.stack([mask & np.roll(mask, -1, axis=ax) for ax in range(3)])


def _fast_qsm(grid, f, *, smv_mm=3.0, exponent=0.001, percentiles=(1.0, 30.0), tkd_threshold=0.125):
    """Li et al. (2015)'s fast QSM estimate (their Eqs. 8-14) on the padded grid.

    ``F(f)·sign(D)`` has χ's structure without the noise amplified by ``1/D`` (Eq. 8);
    its k-space is blended with its spherical-mean-smoothed self, ``K = w + (1 − w) S``,
    where ``w`` is ``|D|^n`` (``n = exponent``) rescaled to [0, 1] between its
    ``percentiles`` over k-space (Eq. 10), so the cone region, where ``sign(D)`` is least
    reliable, is smoothed by the SMV kernel ``S`` of radius ``smv_mm`` (Eq. 9).  The result
    is masked and filtered again (Eq. 11), then scaled and offset by the least-squares fit
    to the TKD solution at ``tkd_threshold`` inside the mask (Eqs. 12-14; open
    reimplementations such as QSM.m fit over the whole grid, where both are zero outside the
    mask, which only weights the offset).  The percentiles are taken over the rfft
    half-spectrum.
    """
    m = grid.mask
    p = np.abs(grid.d) ** np.float32(exponent)
    lo, hi = np.percentile(p, percentiles)
    w = np.clip((p - lo) / max(float(hi - lo), 1e-30), 0.0, 1.0).astype(np.float32)
    del p
    s = kernels.smv_kernel(grid.shape, grid.voxel_size, smv_mm, rfft=True, workers=grid.workers)
    blend = w + (1.0 - w) * s
    del w, s
    fk = grid.fft(f)
    x = grid.ifft(fk * (np.sign(grid.d) * blend)) * m
    x = grid.conv(x, blend) * m
    ref = grid.ifft(fk * _tkd_inverse(grid.d, tkd_threshold))
    xs, rs = x[m].astype(np.float64), ref[m].astype(np.float64)
    xc = xs - xs.mean()
    den = float(np.dot(xc, xc))
    slope = float(np.dot(xc, rs - rs.mean()) / den) if den > 0 else 1.0
    offset = float(rs.mean() - slope * xs.mean())
    return ((np.float32(slope) * x + np.float32(offset)) * m).astype(np.float32, copy=False)


def ilsqr(local_field, mask, voxel_size, b0_dir, *, magnitude=None, noise=None, tol=0.01, max_iter=100,
          fast_estimate="li2015", fast_smv_mm=3.0, fast_exponent=0.001, fast_percentiles=(1.0, 30.0),
          fast_tkd_threshold=0.125, cone_threshold=0.15, edge_fraction=0.2, streak_tol=0.01,
          streak_max_iter=30, pad=16, workers=None, stats=None):
    """iLSQR: LSQR with streaking artifact estimation and removal.

    Li, Wang, Yu, Han, Cao, Romero, Tantiwongkosi, Duong & Liu, "A method for estimating
    and removing streaking artifacts in quantitative susceptibility mapping",
    NeuroImage 2015;108:111-122 (STI Suite).  Four steps:

    1. χ_LSQR: weighted least squares ``min ‖W (M F⁻¹ D F χ − f)‖₂`` over χ on the whole
       padded grid (the data weighted inside the mask ``M`` only; χ is kept in the mask
       afterwards), solved by LSQR and stopped early (``tol``, ``max_iter``); it has the
       correct contrast but streaks from the noise amplified near the magic cone.
    2. χ_fast: the paper's fast, streak-free QSM estimate (Eqs. 8-14, :func:`_fast_qsm`):
       ``sign(D)·F(f)``, SMV-smoothed near the cone, fitted to TKD; used only for where
       the true structural edges are.  ``fast_estimate="tkd"`` uses a TKD at
       ``fast_tkd_threshold`` instead (sharper edges).
    3. Streaking estimation: the streaks live in the ill-conditioned cone
       ``C = {|D| < cone_threshold}``, so they are estimated as the cone-band image whose
       gradient matches χ_LSQR's gradient away from true edges:
       ``min_x ‖W_G (∇ P_C x − ∇ χ_LSQR)‖₂`` with ``P_C = F⁻¹ 1_C F`` and ``W_G`` zero at the
       top ``edge_fraction`` of χ_fast's gradients (and outside the mask), solved by LSQR
       (``streak_tol``, ``streak_max_iter``).
    4. χ = χ_LSQR − M P_C x.

    Where this differs from the defaults of open reimplementations (QSM.m), measured on the
    1 mm demo phantom: ``W_G`` is binary at the top 20 % of ``|∇χ_fast|`` (a 50th-70th
    percentile ramp gave a voxel NRMSE 0.03-0.04 worse from the pipeline's own local field)
    and the cone is ``|D| < 0.15`` (0.1 was 0.02-0.04 worse); the data weights are the field
    noise's (the paper's Laplacian-based weights, Eq. 7, gave an NRMSE 0.02 worse and a
    slope of 0.81-0.86).

    The paper's fast estimate against the TKD one, from the pipeline's own local field
    (NRMSE / deep-grey mean |error| ppm / slope): 1 mm demo after LBV 0.514 / 0.0030 / 0.952
    against 0.513 / 0.0054 / 0.984; 3 mm small demo after PDF 0.712 / 0.0041 / 0.846 against
    0.720 / 0.0069 / 0.941.  Its smoother edges cost some contrast of the nuclei (the slope),
    most on coarse voxels; ``"tkd"`` is the choice where that slope matters more than the
    paper's definition.

    Parameters
    ----------
    local_field, mask, voxel_size, b0_dir, pad, workers
        As in :func:`tkd`.
    magnitude, noise : ndarray, optional
        Data weights: ``1/noise`` (field noise std, ppm) if given, else the magnitude.
    tol, max_iter : float, int
        Stopping of the step-1 LSQR.
    fast_estimate : {"li2015", "tkd"}
        The step-2 estimate: the paper's (default) or a TKD.
    fast_smv_mm, fast_exponent, fast_percentiles, fast_tkd_threshold : float, float, (float, float), float
        The fast estimate's SMV radius (mm), k-space weight exponent ``n``, the percentiles
        of ``|D|^n`` its weight ramps between, and the TKD threshold it is fitted to (or,
        with ``fast_estimate="tkd"``, that TKD's threshold).
    cone_threshold : float
        ``|D|`` below which k-space belongs to the streak-bearing cone (step 3).
    edge_fraction : float
        Fraction of gradients of χ_fast treated as true edges (step 3).
    streak_tol, streak_max_iter : float, int
        Stopping of the step-3 LSQR.
    stats : dict, optional
        Filled with iteration counts.

    Returns
    -------
    ndarray of float32
        χ (ppm), zero outside the mask.
    """
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    tol = _check_fraction("tol", tol)
    max_iter = _check_positive("max_iter", max_iter, integer=True)
    if fast_estimate not in ("li2015", "tkd"):
        raise ValueError(f"fast_estimate must be 'li2015' or 'tkd', got {fast_estimate!r}")
    fast_smv_mm = _check_positive("fast_smv_mm", fast_smv_mm)
    fast_exponent = _check_positive("fast_exponent", fast_exponent)
    lo, hi = (float(v) for v in fast_percentiles)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"fast_percentiles must be 0 <= low < high <= 100, got {fast_percentiles!r}")
    fast_tkd_threshold = _check_fraction("fast_tkd_threshold", fast_tkd_threshold, 0.0, 2.0 / 3.0)
    cone_threshold = _check_fraction("cone_threshold", cone_threshold, 0.0, 2.0 / 3.0)
    edge_fraction = _check_fraction("edge_fraction", edge_fraction)
    streak_tol = _check_fraction("streak_tol", streak_tol)
    streak_max_iter = _check_positive("streak_max_iter", streak_max_iter, integer=True)
    grid = _Grid(mask, vs, b, pad, workers)
    m = grid.mask
    w, _ = _data_weights(grid, noise, magnitude)
    f = grid.put(field) * m

    # 1. weighted LSQR over the whole padded grid (Li et al. 2015, Eq. 6): the data term
    # is weighted inside the mask only, χ is free outside it, so the residual background
    # field that background removal leaves is absorbed by sources outside the mask instead
    # of bending χ inside it (χ supported in the mask: NRMSE 1.45 -> 0.70 on the full
    # demo's pipeline local field, where TKD gives 0.78); only the mask is kept
    def a_op(x):
        return w * grid.conv(x)

    def at_op(r):
        return grid.conv(w * r)

    chi_lsqr, it1, _ = _lsqr(a_op, at_op, w * f, grid.shape, tol=tol, max_iter=max_iter)
    chi_lsqr *= m

    # 2. fast QSM estimate (structure only)
    if fast_estimate == "tkd":
        chi_fast = grid.conv(f, _tkd_inverse(grid.d, fast_tkd_threshold)) * m
    else:
        chi_fast = _fast_qsm(grid, f, smv_mm=fast_smv_mm, exponent=fast_exponent, percentiles=(lo, hi),
                             tkd_threshold=fast_tkd_threshold)
    pairs = _pair_mask(m)
    wg = _percentile_edges(_pgrad(chi_fast, vs), pairs, edge_fraction)
    del chi_fast

    # 3. streaking artifacts: cone-band image matching χ_LSQR's gradient off the edges
    cone = (np.abs(grid.d) < cone_threshold).astype(np.float32)
    cone[0, 0, 0] = 0.0
    target = wg * _pgrad(chi_lsqr, vs)

    def b_op(x):
        return wg * _pgrad(grid.conv(x, cone), vs)

    def bt_op(g):
        return grid.conv(_pgrad_adj(wg * g, vs), cone)

    x, it2, _ = _lsqr(b_op, bt_op, target, grid.shape, tol=streak_tol, max_iter=streak_max_iter)
    streaks = grid.conv(x, cone) * m
    if stats is not None:
        stats.update({"lsqr_iterations": it1, "streak_iterations": it2})
    # 4. remove them
    return grid.get((chi_lsqr - streaks) * m)


# --------------------------------------------------------------------------------------
# MEDI and MEDI+0
# --------------------------------------------------------------------------------------
def _fgrad(x, voxel_size):
    return kernels.gradient(x, voxel_size).astype(np.float32, copy=False)


def _fgrad_adj(g, voxel_size):
    return -kernels.divergence(g, voxel_size)


def edge_mask(magnitude, mask, voxel_size, *, edge_fraction=0.3):
    """MEDI's gradient weights: 0 at the top ``edge_fraction`` of magnitude gradients, else 1.

    The forward differences of ``magnitude · mask`` (:func:`qsmprep.qsm.kernels.gradient`)
    are thresholded at their ``1 − edge_fraction`` quantile over the gradient components
    with at least one voxel in the mask (Liu et al., NeuroImage 2012; the MEDI toolbox's
    ``gradient_mask``).  Returns float32 weights of shape ``(3,) + mask.shape``: 1 where
    χ is encouraged to be smooth, 0 at an edge of the magnitude image.
    """
    mask = np.asarray(mask, dtype=bool)
    edge_fraction = _check_fraction("edge_fraction", edge_fraction)
    mag = np.abs(np.asarray(magnitude, dtype=np.float32)) * mask
    grad = _fgrad(mag, voxel_size)
    near = np.stack([mask | np.roll(mask, -1, axis=ax) for ax in range(3)])
    for ax in range(3):  # kernels.gradient's last row along each axis is zero, not periodic
        sl = [slice(None)] * 3
        sl[ax] = -1
        near[ax][tuple(sl)] = mask[tuple(sl)]
    return _percentile_edges(grad, near, edge_fraction)


def medi(local_field, mask, voxel_size, b0_dir, *, magnitude=None, noise=None, lambda_=5e-4,
         edge_fraction=0.3, max_iter=10, tol=0.1, cg_max_iter=100, cg_tol=0.01, epsilon=1e-6,
         data_term="linear", phase_scale=None, csf=None, lambda_csf=None, pad=16, workers=None, stats=None,
         _x0=None):
    """Morphology enabled dipole inversion (MEDI), optionally MEDI+0.

    Liu, Liu, de Rochefort, Spincemaille, Khalidov, Ledoux & Wang, "Morphology enabled
    dipole inversion (MEDI) from a single-angle acquisition: comparison with COSMOS in
    human brain imaging", MRM 2011;66:777-783; Liu, Liu, Liu, Spincemaille, Khalidov,
    Kwon, Wang et al., "Morphology enabled dipole inversion for quantitative susceptibility
    mapping using structural consistency between the magnitude image and the
    susceptibility map", NeuroImage 2012;59:2560-2568.  Minimises

    ``½‖W (Dχ − f)‖₂² + λ ‖M_G ∇χ‖₁``

    over χ on the whole padded grid, with ``W`` the data weights from the field noise
    (``1/σ``, normalised to mean 1; the magnitude or uniform when no noise map is given;
    zero outside the mask), ``M_G`` the edge mask (:func:`edge_mask`: 0 at the top
    ``edge_fraction`` of the magnitude gradients) and ``∇`` forward differences (ppm/mm).
    The L1 norm is linearised by lagged diffusivity, ``|g| ≈ g² / sqrt(g_n² + ε)`` around
    the current iterate, and each Gauss-Newton step solves
    ``(λ ∇ᵀ M_G V_n M_G ∇ + Dᵀ W² D) dχ = −∂E(χ_n)`` by conjugate gradients
    (``cg_tol``, ``cg_max_iter``); the outer loop stops at ``‖dχ‖ < tol ‖χ‖`` or after
    ``max_iter`` steps, as in the MEDI toolbox's ``MEDI_L1``.  χ outside the mask is free
    (no data and, with ``M_G`` zero there, no regularisation) and discarded at the end: it
    absorbs the residual background field that background removal leaves, which would
    otherwise bend χ inside the mask (on the full demo's pipeline local field: NRMSE
    0.72 -> 0.39 and deep-grey mean |error| 0.018 -> 0.002 ppm).

    With ``data_term="nonlinear"`` the data term is MEDI's complex exponential one,
    ``‖W (exp(i a Dχ) − exp(i a f))‖² / (2a²)`` with ``a = phase_scale`` (rad per ppm,
    ``2π γ̄ B0 TE``), whose gradient is ``Dᵀ W² sin(a (Dχ − f)) / a``; it is robust to
    large fields (veins, haemorrhage) where the phase wraps.

    MEDI+0 (Liu, Spincemaille, Yao, Zhang, Wang et al., "MEDI+0: Morphology enabled
    dipole inversion with automatic uniform cerebrospinal fluid zero reference for
    quantitative susceptibility mapping", MRM 2018;79:2795-2803): given a ``csf`` mask,
    the term ``λ_CSF ‖M_CSF (χ − mean_CSF χ)‖₂²`` makes the CSF uniform and χ is returned
    referenced to the CSF mean (zero in the CSF).

    Parameters
    ----------
    local_field, mask, voxel_size, b0_dir, pad, workers
        As in :func:`tkd`.
    magnitude : ndarray, optional
        Magnitude image for the edge mask (none: plain L1-TV, ``M_G = 1``).
    noise : ndarray, optional
        Field noise standard deviation (ppm) for the data weights.
    lambda_ : float
        Regularisation weight (> 0).
    edge_fraction : float
        Fraction of magnitude gradients treated as edges (default the top 30 %).
    max_iter, tol : int, float
        Gauss-Newton iterations and the relative update to stop at.
    cg_max_iter, cg_tol : int, float
        Inner conjugate-gradient iterations and relative residual.
    epsilon : float
        Lagged-diffusivity smoothing ((ppm/mm)²).
    data_term : {"linear", "nonlinear"}
        Field-domain least squares, or MEDI's complex exponential term.
    phase_scale : float, optional
        Phase per ppm (rad) of the nonlinear data term; required for ``"nonlinear"``.
    csf : ndarray of bool, optional
        CSF mask: enables the MEDI+0 term.
    lambda_csf : float, optional
        Weight of the CSF term (default ``100 λ``).
    stats : dict, optional
        Filled with the iteration counts.

    Returns
    -------
    ndarray of float32
        χ (ppm), zero outside the mask (CSF-referenced when ``csf`` is given).
    """
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    lam = _check_positive("lambda_", lambda_)
    edge_fraction = _check_fraction("edge_fraction", edge_fraction)
    max_iter = _check_positive("max_iter", max_iter, integer=True)
    tol = _check_positive("tol", tol)
    cg_max_iter = _check_positive("cg_max_iter", cg_max_iter, integer=True)
    cg_tol = _check_fraction("cg_tol", cg_tol)
    epsilon = _check_positive("epsilon", epsilon)
    if data_term not in ("linear", "nonlinear"):
        raise ValueError(f"data_term must be 'linear' or 'nonlinear', got {data_term!r}")
    if data_term == "nonlinear":
        if phase_scale is None:
            raise ValueError("data_term 'nonlinear' needs phase_scale (rad per ppm, 2π·γ̄·B0·TE)")
        a = _check_positive("phase_scale", phase_scale)
    grid = _Grid(mask, vs, b, pad, workers)
    m = grid.mask
    w, _ = _data_weights(grid, noise, magnitude)
    w2 = w * w
    f = grid.put(field) * m
    if magnitude is not None:
        if np.shape(magnitude) != grid.full_shape:
            raise ValueError(f"magnitude shape {np.shape(magnitude)} does not match the field's")
        mg = edge_mask(grid.put(magnitude), m, vs, edge_fraction=edge_fraction)
    else:
        mg = np.ones((3,) + grid.shape, dtype=np.float32)
    mcsf = None
    if csf is not None:
        if np.shape(csf) != grid.full_shape:
            raise ValueError(f"csf mask shape {np.shape(csf)} does not match the field's")
        mcsf = grid.put(np.asarray(csf, dtype=bool), dtype=bool) & m
        if not mcsf.any():
            raise ValueError("the CSF mask has no voxel inside the mask")
        lam_csf = 100.0 * lam if lambda_csf is None else _check_positive("lambda_csf", lambda_csf)
        n_csf = float(mcsf.sum())

    def csf_term(x):  # ‖M(x − mean_M x)‖² is x ↦ P x with P the centring projection on the CSF
        y = np.zeros_like(x)
        y[mcsf] = x[mcsf] - x[mcsf].sum(dtype=np.float64) / n_csf
        return y

    chi = np.zeros(grid.shape, dtype=np.float32) if _x0 is None else grid.put(_x0) * m
    it_outer, cg_its = 0, []
    for it_outer in range(1, max_iter + 1):
        gchi = mg * _fgrad(chi, vs)
        vr = mg * mg / np.sqrt(gchi * gchi + np.float32(epsilon))
        del gchi
        lam32 = np.float32(lam)

        def hess(x):
            out = grid.conv(w2 * grid.conv(x))
            out += lam32 * _fgrad_adj(vr * _fgrad(x, vs), vs)
            if mcsf is not None:
                out += np.float32(lam_csf) * csf_term(x)
            return out

        dchi = grid.conv(chi)
        if data_term == "linear":
            resid = dchi - f
        else:
            resid = np.sin(np.float32(a) * (dchi - f)) / np.float32(a)
        grad = grid.conv(w2 * resid) + lam32 * _fgrad_adj(vr * _fgrad(chi, vs), vs)
        if mcsf is not None:
            grad += np.float32(lam_csf) * csf_term(chi)
        del dchi, resid
        dx, n_cg = _cg(hess, -grad, tol=cg_tol, max_iter=cg_max_iter)
        cg_its.append(n_cg)
        chi += dx
        if _norm(dx) <= tol * max(_norm(chi), 1e-30):
            break
    if mcsf is not None:
        chi -= np.float32(chi[mcsf].mean(dtype=np.float64))
    if stats is not None:
        stats.update({"iterations": it_outer, "cg_iterations": cg_its})
    return grid.get(chi * m)


# --------------------------------------------------------------------------------------
# TV-ADMM (FANSI-style)
# --------------------------------------------------------------------------------------
def tv(local_field, mask, voxel_size, b0_dir, *, magnitude=None, noise=None, lambda_=2e-4, mu=None,
       mu_data=1.0, max_iter=150, tol=0.005, data_term="linear", phase_scale=None, newton_iter=4,
       pad=16, workers=None, stats=None):
    """Total-variation dipole inversion by ADMM with closed-form k-space updates.

    Bilgic, Fan, Polimeni, Cauley, Bianciardi, Adalsteinsson, Wald & Setsompop, "Fast
    quantitative susceptibility mapping with L1-regularization and automatic parameter
    selection", MRM 2014;72:1444-1459; with the data-weighted and nonlinear data terms of
    FANSI: Milovic, Bilgic, Zhao, Acosta-Cabronero & Tejos, "Fast nonlinear
    susceptibility inversion with variational regularization", MRM 2018;80:814-821.
    Minimises ``½‖W (Dχ − f)‖₂² + λ ‖∇χ‖₁`` (isotropic TV, periodic forward
    differences) with the splittings ``z = ∇χ`` and ``v = Dχ``:

    * ``χ = F⁻¹[(μ Σ Ē_i F(z_i − u_i) + μ_d D F(v − u_v)) / (μ Σ|E_i|² + μ_d D²)]``;
    * ``z = shrink(∇χ + u, λ/μ)`` (vector soft thresholding);
    * ``v = (W² f + μ_d (Dχ + u_v)) / (W² + μ_d)`` voxel-wise (linear), or a few Newton
      steps on ``W² |exp(i a v) − exp(i a f)|²/(2a²) + μ_d/2 (v − Dχ − u_v)²`` (nonlinear);
    * ``u += ∇χ − z``, ``u_v += Dχ − v``.

    Stops when ``‖χ_k − χ_{k−1}‖ < tol ‖χ_k‖`` or after ``max_iter`` iterations.

    Parameters
    ----------
    local_field, mask, voxel_size, b0_dir, pad, workers
        As in :func:`tkd`.
    magnitude, noise : ndarray, optional
        Data weights: ``1/noise`` if given, else the magnitude, else uniform in the mask.
    lambda_ : float
        TV weight (> 0).
    mu : float, optional
        Gradient-splitting penalty (default ``100 λ`` as in FANSI).
    mu_data : float
        Data-splitting penalty (weights are normalised to mean 1).
    max_iter, tol : int, float
        ADMM iterations and relative update to stop at.
    data_term : {"linear", "nonlinear"}
        Field-domain least squares, or the complex exponential (needs ``phase_scale``).
    phase_scale : float, optional
        Phase per ppm (rad) of the nonlinear data term.
    newton_iter : int
        Newton steps of the nonlinear ``v`` update.
    stats : dict, optional
        Filled with the iteration count.

    Returns
    -------
    ndarray of float32
        χ (ppm), zero outside the mask.
    """
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    lam = _check_positive("lambda_", lambda_)
    mu = 100.0 * lam if mu is None else _check_positive("mu", mu)
    mu_d = _check_positive("mu_data", mu_data)
    max_iter = _check_positive("max_iter", max_iter, integer=True)
    tol = _check_positive("tol", tol)
    newton_iter = _check_positive("newton_iter", newton_iter, integer=True)
    if data_term not in ("linear", "nonlinear"):
        raise ValueError(f"data_term must be 'linear' or 'nonlinear', got {data_term!r}")
    if data_term == "nonlinear":
        if phase_scale is None:
            raise ValueError("data_term 'nonlinear' needs phase_scale (rad per ppm, 2π·γ̄·B0·TE)")
        a = np.float32(_check_positive("phase_scale", phase_scale))
    grid = _Grid(mask, vs, b, pad, workers)
    m = grid.mask
    w, _ = _data_weights(grid, noise, magnitude)
    w2 = w * w
    f = grid.put(field) * m
    reg = sum((np.abs(e) ** 2).astype(np.float32)
              for e in kernels.gradient_kernels(grid.shape, vs, rfft=True))
    denom = np.float32(mu) * reg + np.float32(mu_d) * grid.d * grid.d
    denom[0, 0, 0] = 1.0
    inv_denom = (1.0 / denom).astype(np.float32)
    inv_denom[0, 0, 0] = 0.0
    del reg, denom
    z = np.zeros((3,) + grid.shape, dtype=np.float32)
    u = np.zeros_like(z)
    v = f.copy()
    uv = np.zeros_like(f)
    chi = np.zeros_like(f)
    g = np.empty_like(z)
    thr = np.float32(lam / mu)
    it = 0
    for it in range(1, max_iter + 1):
        xk = (grid.fft(np.float32(mu) * _pgrad_adj(z - u, vs)) + np.float32(mu_d) * grid.d * grid.fft(v - uv))
        xk *= inv_denom
        chi_new = grid.ifft(xk)
        dchi = grid.ifft(xk * grid.d)
        del xk
        change = _norm(chi_new - chi) / max(_norm(chi_new), 1e-30)
        chi = chi_new
        _pgrad(chi, vs, out=g)
        g += u
        mag = np.sqrt((g * g).sum(axis=0))
        scale = np.maximum(mag - thr, 0) / np.maximum(mag, np.float32(1e-12))
        np.multiply(g, scale, out=z)
        del mag, scale
        u = g - z  # = u + ∇χ − z
        y = dchi + uv
        if data_term == "linear":
            v = (w2 * f + np.float32(mu_d) * y) / (w2 + np.float32(mu_d))
        else:
            for _ in range(newton_iter):
                ph = a * (v - f)
                v = v - (w2 * np.sin(ph) / a + np.float32(mu_d) * (v - y)) / (w2 * np.cos(ph) + np.float32(mu_d))
        uv = y - v  # = u_v + Dχ − v
        del y, dchi
        if it > 1 and change < tol:
            break
    if stats is not None:
        stats.update({"iterations": it})
    return grid.get(chi * m)


# --------------------------------------------------------------------------------------
# regularisation parameter choice
# --------------------------------------------------------------------------------------
def _residual_variance(grid, chi_padded, f, sigma):
    """Mean of ``((Dχ − f)/σ)²`` inside the mask (1 at the discrepancy-principle λ)."""
    r = (grid.conv(chi_padded * grid.mask) - f)[grid.mask] / sigma[grid.mask]
    return float(np.mean(r.astype(np.float64) ** 2))


def _residual_norm(grid, chi_padded, f, w):
    r = (grid.conv(chi_padded * grid.mask) - f) * w
    return _norm(r)


def _reg_value(chi_padded, voxel_size, kind):
    g = _pgrad(chi_padded, voxel_size)
    if kind == "l2":
        return _dot(g, g)
    if kind == "l1":
        return float(np.abs(g).sum(dtype=np.float64))
    return float(np.sqrt((g * g).sum(axis=0)).sum(dtype=np.float64))


def _discrepancy(evaluate, lam0, *, max_evals=10, rtol=0.05):
    """λ with residual variance 1 by bracketing and bisection in log λ.

    ``evaluate(lam) -> (chi, residual variance)``, the variance increasing with λ.
    """
    history = []

    def ev(lam):
        chi, rv = evaluate(lam)
        history.append((float(lam), float(rv)))
        return chi, rv

    lo = hi = None
    lam = lam0
    chi, rv = ev(lam)
    best = (abs(np.log(rv)), lam, chi)
    while len(history) < max_evals:
        if abs(rv - 1.0) <= rtol:
            break
        if rv < 1.0:
            lo = lam
        else:
            hi = lam
        if lo is None:
            lam = hi / 10.0
        elif hi is None:
            lam = lo * 10.0
        else:
            lam = float(np.sqrt(lo * hi))
        chi, rv = ev(lam)
        if abs(np.log(rv)) < best[0]:
            best = (abs(np.log(rv)), lam, chi)
    return best[1], best[2], history


def _lcurve(evaluate, lams):
    """L-curve corner: maximum curvature of (log ‖residual‖, log R(χ)) over ``lams``.

    ``evaluate(lam) -> (chi, residual norm, regulariser value)``.
    """
    results = [evaluate(lam) for lam in lams]
    rho = np.log([r[1] for r in results])
    eta = np.log([r[2] for r in results])
    t = np.log(lams)
    d_rho, d_eta = np.gradient(rho, t), np.gradient(eta, t)
    dd_rho, dd_eta = np.gradient(d_rho, t), np.gradient(d_eta, t)
    kappa = (d_rho * dd_eta - dd_rho * d_eta) / np.maximum((d_rho**2 + d_eta**2) ** 1.5, 1e-30)
    inner = np.arange(1, len(lams) - 1)
    best = int(inner[np.argmax(kappa[inner])])
    history = [(float(lam), float(np.exp(r)), float(np.exp(e)), float(k))
               for lam, r, e, k in zip(lams, rho, eta, kappa)]
    return float(lams[best]), results[best][0], history


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------
_METHOD_PARAMS = {
    "tkd": {"threshold", "correct"},
    "tikhonov": set(),
    "ilsqr": {"tol", "max_iter", "fast_estimate", "fast_smv_mm", "fast_exponent", "fast_percentiles",
              "fast_tkd_threshold", "cone_threshold", "edge_fraction", "streak_tol", "streak_max_iter"},
    "medi": {"edge_fraction", "max_iter", "tol", "cg_max_iter", "cg_tol", "epsilon", "data_term", "phase_scale"},
    "medi+0": {"edge_fraction", "max_iter", "tol", "cg_max_iter", "cg_tol", "epsilon", "data_term",
               "phase_scale", "lambda_csf", "csf_r2star_max", "csf"},
    "tv": {"mu", "mu_data", "max_iter", "tol", "data_term", "phase_scale", "newton_iter"},
}
_SELECTION_PARAMS = {"lambda_range", "lambda_evals"}


def method_parameters(method):
    """Names of the keyword options :func:`invert` accepts for ``method`` (besides ``pad``/``workers``)."""
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(METHODS)}")
    names = set(_METHOD_PARAMS[method])
    if method in _REGULARISED:
        names |= _SELECTION_PARAMS | {"lambda_", "lambda_rule"}
    return names


def invert(local_field, mask, voxel_size, b0_dir, *, method="tkd", magnitude=None, noise=None, r2star=None,
           lambda_=None, lambda_rule="fixed", pad=16, workers=None, **params):
    """Local field (ppm) to χ (ppm) with any of :data:`METHODS`; returns (χ, info).

    Parameters
    ----------
    local_field : ndarray (x, y, z)
        Local field (ppm), valid inside ``mask``.
    mask : ndarray of bool
        Where the local field is valid; χ is zero outside.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (:func:`qsmprep.qsm.kernels.b0_direction`).
    method : str
        One of :data:`METHODS`.
    magnitude : ndarray, optional
        Magnitude (MEDI's edge mask; data weights when no noise map is given).
    noise : ndarray or float, optional
        Field noise standard deviation (ppm): data weights ``1/σ``, and the noise level of
        the discrepancy principle.
    r2star : ndarray, optional
        R2* (1/s): the automatic ventricle CSF mask of ``medi+0``
        (:func:`qsmprep.qsm.reference.csf_mask`).
    lambda_ : float, optional
        Regularisation weight (``tikhonov``, ``medi``, ``medi+0``, ``tv``); default
        :data:`DEFAULT_LAMBDA`, and the starting point / centre of an automatic search.
    lambda_rule : {"fixed", "discrepancy", "lcurve"}
        ``discrepancy``: λ such that the mean of ``((Dχ − f)/σ)²`` in the mask is 1 (needs
        ``noise``); ``lcurve``: the corner (maximum curvature) of the L-curve over
        ``lambda_evals`` (default 9 for tikhonov, 7 otherwise) log-spaced values within
        ``lambda_range`` (default 100) times and divided by λ.
    pad : int
        Zero padding (voxels per side) around the mask's bounding box.
    workers : int, optional
        FFT threads.
    **params
        Method options (see each method's function); unknown names raise ValueError.

    Returns
    -------
    chi : ndarray of float32
        χ (ppm), zero outside the mask, not referenced (except ``medi+0``: CSF zero).
    info : dict
        ``method`` and every parameter used, including ``lambda`` and ``lambda_rule``,
        the λ search history for automatic rules, the data weighting, and iteration
        counts; JSON-serialisable.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {', '.join(METHODS)}")
    if lambda_rule not in LAMBDA_RULES:
        raise ValueError(f"unknown lambda_rule {lambda_rule!r}; use one of {', '.join(LAMBDA_RULES)}")
    allowed = _METHOD_PARAMS[method] | (_SELECTION_PARAMS if method in _REGULARISED else set())
    unknown = set(params) - allowed
    if unknown:
        hint = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes no options"
        if method in _REGULARISED:
            hint += " (and lambda_, lambda_rule)"
        raise ValueError(f"unknown {method} parameter(s) {sorted(unknown)}; {hint}")
    if method not in _REGULARISED and (lambda_ is not None or lambda_rule != "fixed"):
        raise ValueError(f"method {method!r} has no regularisation weight: lambda_ and lambda_rule do not apply")
    field, mask, vs, b = _check_inputs(local_field, mask, voxel_size, b0_dir)
    for name, arr in (("magnitude", magnitude), ("r2star", r2star)):
        if arr is not None and np.shape(arr) != field.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} does not match the field's {field.shape}")
    if noise is not None and np.ndim(noise) not in (0, 3):
        raise ValueError("noise must be a 3D map or a scalar (ppm)")
    if noise is not None and np.ndim(noise) == 3 and np.shape(noise) != field.shape:
        raise ValueError(f"noise shape {np.shape(noise)} does not match the field's {field.shape}")
    pad_info = int(pad) if np.ndim(pad) == 0 else [int(p) for p in pad]
    info = {"method": method, "pad": pad_info}
    stats = {}

    if method == "tkd":
        threshold = params.get("threshold", 0.19)
        correct = bool(params.get("correct", True))
        chi, factor = tkd(field, mask, vs, b, threshold=threshold, correct=correct, pad=pad, workers=workers,
                          return_factor=True)
        info.update({"threshold": float(threshold), "correct": correct, "correction_factor": factor})
        return chi, info

    if method == "ilsqr":
        # every option it ran with goes to the sidecar: its own defaults, then the caller's
        defaults = {name: p.default for name, p in inspect.signature(ilsqr).parameters.items()
                    if name in _METHOD_PARAMS["ilsqr"]}
        opts = {**defaults, **params}
        chi = ilsqr(field, mask, vs, b, magnitude=magnitude, noise=noise if np.ndim(noise) == 3 else None,
                    pad=pad, workers=workers, stats=stats, **opts)
        info.update(opts)
        info["data_weighting"] = _weighting_name(noise, magnitude)
        info.update(stats)
        return chi, info

    # regularised methods
    lam0 = DEFAULT_LAMBDA[method] if lambda_ is None else _check_positive("lambda_", lambda_)
    lam_range = _check_positive("lambda_range", params.pop("lambda_range", 100.0))
    if lam_range <= 1:
        raise ValueError(f"lambda_range must be > 1, got {lam_range}")
    evals_given = "lambda_evals" in params
    n_evals = params.pop("lambda_evals", 9 if method == "tikhonov" else 7)
    n_evals = _check_positive("lambda_evals", n_evals, integer=True)
    if lambda_rule == "lcurve" and n_evals < 3:
        raise ValueError(f"lambda_evals must be at least 3 for the L-curve, got {n_evals}")
    if lambda_rule == "discrepancy" and noise is None:
        raise ValueError("lambda_rule 'discrepancy' needs the field noise (noise map or std in ppm)")
    grid = _Grid(mask, vs, b, pad, workers)
    f = grid.put(field) * grid.mask
    w, wname = _data_weights(grid, noise if np.ndim(noise) == 3 else None, magnitude)

    if method == "tikhonov":
        parts = _tikhonov_parts(grid, grid.fft(f))
        solve = lambda lam: grid.ifft(_tikhonov_solve(grid, parts, lam)) * grid.mask  # noqa: E731
        reg_kind = "l2"
        w = grid.mask.astype(np.float32)  # the closed form is unweighted
    elif method in ("medi", "medi+0"):
        opts = {k: v for k, v in params.items() if k not in ("csf_r2star_max", "csf")}
        csf = None
        if method == "medi+0":
            csf = params.get("csf")
            if csf is None:
                if r2star is None:
                    raise ValueError("method 'medi+0' needs the R2* map (r2star) for its automatic CSF mask")
                from qsmprep.qsm.reference import csf_mask

                kw = {"r2star_max": params["csf_r2star_max"]} if "csf_r2star_max" in params else {}
                csf = csf_mask(r2star, mask, vs, **kw)
            info["csf_voxels"] = int(np.count_nonzero(np.asarray(csf, dtype=bool) & mask))
            if "csf_r2star_max" in params:
                info["csf_r2star_max"] = params["csf_r2star_max"]
        noise_map = noise if np.ndim(noise) == 3 else None

        def solve(lam):
            out = medi(field, mask, vs, b, magnitude=magnitude, noise=noise_map, lambda_=lam, csf=csf,
                       pad=pad, workers=workers, stats=stats, **opts)
            return grid.put(out)

        reg_kind = "l1"
        info.update(opts)
    else:  # tv
        noise_map = noise if np.ndim(noise) == 3 else None

        def solve(lam):
            out = tv(field, mask, vs, b, magnitude=magnitude, noise=noise_map, lambda_=lam, pad=pad,
                     workers=workers, stats=stats, **params)
            return grid.put(out)

        reg_kind = "tv"
        info.update(params)

    if lambda_rule == "fixed":
        lam, chi_p = lam0, solve(lam0)
    elif lambda_rule == "discrepancy":
        sigma = _noise_std(grid, noise)
        lam, chi_p, history = _discrepancy(lambda x: (lambda c: (c, _residual_variance(grid, c, f, sigma)))(solve(x)),
                                           lam0, max_evals=n_evals if evals_given else 10)
        info["lambda_search"] = [{"lambda": x, "residual_variance": r} for x, r in history]
    else:
        lams = lam0 * np.logspace(-np.log10(lam_range), np.log10(lam_range), n_evals)
        lam, chi_p, history = _lcurve(
            lambda x: (lambda c: (c, _residual_norm(grid, c, f, w), _reg_value(c, vs, reg_kind)))(solve(x)), lams)
        info["lambda_search"] = [{"lambda": x, "residual_norm": r, "regulariser": e, "curvature": k}
                                 for x, r, e, k in history]
    info.update({"lambda": float(lam), "lambda_rule": lambda_rule})
    if method != "tikhonov":
        info["data_weighting"] = wname
    if method in ("medi", "medi+0") and not info.get("data_term"):
        info["data_term"] = "linear"
    info.update(stats)
    return grid.get(chi_p * grid.mask), _jsonable(info)


def _weighting_name(noise, magnitude):
    if noise is not None and np.ndim(noise) == 3:
        return "noise"
    return "magnitude" if magnitude is not None else "uniform"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def invert_echoes(echo_fields, mask, voxel_size, b0_dir, *, tes=None, magnitude=None, echo_weighting="snr",
                  **kwargs):
    """Invert each echo's local field and average the χ maps (the RIN protocol).

    Parameters
    ----------
    echo_fields : ndarray (x, y, z, echo)
        Local field of each echo (ppm).
    mask, voxel_size, b0_dir
        As in :func:`invert`.
    tes : sequence of float, optional
        Echo times (s), for ``"snr"`` weighting.
    magnitude : ndarray (x, y, z, echo) or (x, y, z), optional
        Per-echo magnitudes (``"snr"`` weighting); a 3D magnitude is passed to
        :func:`invert` for every echo.
    echo_weighting : {"snr", "mean"}
        ``mean``: plain mean (the RIN protocol's); ``snr``: inverse field-noise-variance
        weights ``w_e ∝ TE_e² · mean_mask(|S_e|²)`` (the field noise of an echo is
        ``∝ 1 / (TE · |S|)``), with TE alone when no per-echo magnitude is given.
    **kwargs
        Passed to :func:`invert` (method, lambda_, ...).

    Returns
    -------
    chi : ndarray of float32
        Weighted mean of the per-echo χ maps.
    info : dict
        The last echo's :func:`invert` info plus ``EchoStrategy`` and ``EchoWeights``.
    """
    fields = np.asarray(echo_fields)
    if fields.ndim != 4:
        raise ValueError(f"echo_fields must be 4D (x, y, z, echo), got shape {fields.shape}")
    n = fields.shape[-1]
    if echo_weighting not in ("snr", "mean"):
        raise ValueError(f"echo_weighting must be 'snr' or 'mean', got {echo_weighting!r}")
    mask = np.asarray(mask, dtype=bool)
    mag4 = magnitude if magnitude is not None and np.ndim(magnitude) == 4 else None
    if mag4 is not None and np.shape(mag4) != fields.shape:
        raise ValueError(f"magnitude shape {np.shape(mag4)} does not match echo_fields' {fields.shape}")
    if echo_weighting == "mean":
        weights = np.ones(n)
    else:
        if tes is None:
            raise ValueError("echo_weighting 'snr' needs the echo times (tes)")
        tes = np.asarray(tes, dtype=float).ravel()
        if tes.size != n or np.any(tes <= 0):
            raise ValueError(f"tes must be {n} positive echo times, got {tes.tolist()}")
        weights = tes**2
        if mag4 is not None:
            weights = weights * np.array([np.mean(np.abs(mag4[..., e][mask]) ** 2) for e in range(n)])
    weights = weights / weights.sum()
    mag3 = magnitude if magnitude is not None and np.ndim(magnitude) == 3 else None
    acc = np.zeros(fields.shape[:3], dtype=np.float64)
    info = {}
    for e in range(n):
        mag_e = mag4[..., e] if mag4 is not None else mag3
        chi, info = invert(fields[..., e], mask, voxel_size, b0_dir, magnitude=mag_e, **kwargs)
        acc += weights[e] * chi
    info = dict(info, EchoStrategy="per-echo", EchoWeighting=echo_weighting,
                EchoWeights=[float(x) for x in weights])
    return acc.astype(np.float32), info
