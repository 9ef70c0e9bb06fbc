"""Operators and checks shared by the dipole-inversion methods (private).

Input validation, the padded FFT grid (:class:`_Grid`), inner products, the data weights
and noise level of the data term, finite-difference gradients and their adjoints (periodic,
:func:`_pgrad`, exactly the k-space :func:`qsmprep.qsm.kernels.gradient_kernels`; and
:func:`qsmprep.qsm.kernels.gradient`'s, :func:`_fgrad`), the Krylov solvers
(:func:`_cg`, Jacobi-preconditioned :func:`_pcg` with the lagged-diffusivity Laplacian's
diagonal :func:`_lap_diag`, :func:`_lsqr`), the TKD inverse kernel, and the quantile edge weights that
iLSQR and MEDI both threshold.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels
from qsmprep.qsm.inversion._fused import axpy_norm, cg_update, lsqr_xw, scale, xpby


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


def _check_relax(value, name="relax"):
    """An ADMM over-relaxation factor: ADMM converges for α in (0, 2) (Eckstein & Bertsekas 1992)."""
    value = float(value)
    if not 0.0 < value < 2.0:
        raise ValueError(f"{name} must be in (0, 2), got {value!r}")
    return value


def _check_fraction(name, value, lo=0.0, hi=1.0):
    v = _check_positive(name, value, allow_zero=True)
    if not lo < v < hi:
        raise ValueError(f"{name} must be in ({lo}, {hi}), got {value!r}")
    return v


def _check_data_term(data_term, phase_scale):
    """Validate a ``data_term`` choice; the phase per ppm (rad) of the nonlinear one, else None."""
    if data_term not in ("linear", "nonlinear"):
        raise ValueError(f"data_term must be 'linear' or 'nonlinear', got {data_term!r}")
    if data_term == "nonlinear":
        if phase_scale is None:
            raise ValueError("data_term 'nonlinear' needs phase_scale (rad per ppm, 2π·γ̄·B0·TE)")
        return _check_positive("phase_scale", phase_scale)
    return None


def _hermitian(kernel, shape):
    """A real rfft-half kernel made even (``K(k) = K(−k)``) on the columns that hold both ±k.

    The half spectrum's zero column (and Nyquist column, for an even last axis) holds each
    ``k`` and its mirror ``−k``.  On an even axis the Nyquist frequency is its own mirror,
    so a kernel computed from coordinates (the dipole kernel for an oblique B0) differs at
    ``k`` and ``−k`` there: ``irfftn`` silently drops the odd part, so products in image
    space do not change, but a half spectrum kept across iterations (:func:`_lsqr` with
    :meth:`_Grid.kdot`) would carry it.  Averaging the mirror pairs removes it.
    """
    kernel = kernel.copy()
    columns = [0] + ([kernel.shape[-1] - 1] if shape[-1] % 2 == 0 else [])
    for c in columns:
        plane = kernel[..., c]
        kernel[..., c] = 0.5 * (plane + np.roll(plane[::-1, ::-1], 1, axis=(0, 1)))
    return kernel


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
        self.d = _hermitian(kernels.dipole_kernel(self.shape, voxel_size, b0_dir, rfft=True), self.shape)
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

    def offt(self, x):
        """Orthonormal ``rfftn``: with :meth:`kdot`, inner products are those of the image."""
        return sfft.rfftn(x, norm="ortho", workers=self.workers)

    def oifft(self, k):
        """Orthonormal ``irfftn``, the inverse (and adjoint) of :meth:`offt`, float32."""
        return sfft.irfftn(k, s=self.shape, norm="ortho", workers=self.workers).astype(np.float32, copy=False)

    def kdot(self, a, b):
        """``<x, y>`` of two real images from their :meth:`offt` half-spectra (Parseval).

        Each column of the half spectrum stands for itself and its Hermitian mirror, except
        the zero (and, for an even last axis, the Nyquist) column.
        """
        total = 2.0 * _dot(a.view(np.float32), b.view(np.float32))
        total -= _dot(a[..., 0].copy().view(np.float32), b[..., 0].copy().view(np.float32))
        if self.shape[-1] % 2 == 0:
            total -= _dot(a[..., -1].copy().view(np.float32), b[..., -1].copy().view(np.float32))
        return total

    def conv(self, x, kernel=None):
        """``F⁻¹[K · F(x)]`` with the dipole kernel by default (real, symmetric: self-adjoint)."""
        return self.ifft(self.fft(x) * (self.d if kernel is None else kernel))


def _dot(a, b):
    """Inner product of two float32 arrays (a Python float)."""
    return float(np.dot(a.ravel(), b.ravel()))


def _norm(a):
    """Euclidean norm of an array (a Python float)."""
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


def _weighted_data(field, mask, voxel_size, b0_dir, pad, workers, noise, magnitude):
    """The padded grid, the field on it (zero outside the mask) and the data weights.

    Returns ``(grid, f, w, weighting)``, ``w`` and ``weighting`` from :func:`_data_weights`.
    """
    grid = _Grid(mask, voxel_size, b0_dir, pad, workers)
    f = grid.put(field) * grid.mask
    w, weighting = _data_weights(grid, noise, magnitude)
    return grid, f, w, weighting


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
# finite differences: periodic (exactly the k-space kernels.gradient_kernels) and
# kernels.gradient's
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


def _fgrad(x, voxel_size):
    """Forward differences of :func:`qsmprep.qsm.kernels.gradient` (zero last row), float32."""
    return kernels.gradient(x, voxel_size).astype(np.float32, copy=False)


def _fgrad_adj(g, voxel_size):
    """Adjoint of :func:`_fgrad` (minus :func:`qsmprep.qsm.kernels.divergence`)."""
    return -kernels.divergence(g, voxel_size)


def _gradient_reg(grid):
    """``Σ_i |E_i|²`` on the rfft grid: the k-space ``∇ᵀ∇`` of periodic forward differences."""
    return sum((np.abs(e) ** 2).astype(np.float32)
               for e in kernels.gradient_kernels(grid.shape, grid.voxel_size, rfft=True))


# --------------------------------------------------------------------------------------
# Krylov solvers on arrays
# --------------------------------------------------------------------------------------
def _cg(apply_a, b, *, tol, max_iter):
    """Conjugate gradients from zero for a symmetric positive (semi-)definite operator.

    Stops when ``‖b − A x‖ ≤ tol ‖b‖``.  The vector updates are fused compiled passes
    (:func:`qsmprep.qsm.inversion._fused.cg_update`).  Returns (x, iterations).
    """
    b = np.ascontiguousarray(b, dtype=np.float32)
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = _dot(r, r)
    stop = (tol * _norm(b)) ** 2
    it = 0
    while it < max_iter and rr > stop:
        ap = np.ascontiguousarray(apply_a(p), dtype=np.float32)
        pap = _dot(p, ap)
        if pap <= 0:
            break
        rr_new = cg_update(x, r, p, ap, rr / pap)
        xpby(p, r, rr_new / rr)
        rr = rr_new
        it += 1
    return x, it


def _lap_diag(v, scale, voxel_size):
    """Diagonal of ``scale · ∇ᵀ(V ∇·)`` for :func:`qsmprep.qsm.kernels.gradient`'s differences."""
    d = np.zeros(v.shape[1:], np.float32)
    for ax in range(3):
        w = v[ax] / np.float32(voxel_size[ax] ** 2)
        sl_last = [slice(None)] * 3
        sl_last[ax] = slice(-1, None)
        w = w.copy()
        w[tuple(sl_last)] = 0          # the zero last row
        d += w
        d += np.roll(w, 1, axis=ax)
    return np.float32(scale) * d


def _pcg(apply_a, b, diag, *, tol, max_iter):
    """Jacobi-preconditioned conjugate gradients from zero (stops at ``‖r‖ ≤ tol ‖b‖``)."""
    b = np.ascontiguousarray(b, dtype=np.float32)
    inv = (1.0 / diag).astype(np.float32)
    x = np.zeros_like(b)
    r = b.copy()
    z = r * inv
    p = z.copy()
    rz = _dot(r, z)
    stop = (tol * _norm(b)) ** 2
    it = 0
    while it < max_iter and _dot(r, r) > stop:
        ap = np.ascontiguousarray(apply_a(p), dtype=np.float32)
        pap = _dot(p, ap)
        if pap <= 0:
            break
        alpha = np.float32(rz / pap)
        x += alpha * p
        r -= alpha * ap
        z = r * inv
        rz_new = _dot(r, z)
        p *= np.float32(rz_new / rz)
        p += z
        rz = rz_new
        it += 1
    return x, it


def _lsqr(apply_a, apply_at, b, x_like, *, tol, max_iter, full_last=None):
    """LSQR (Paige & Saunders, ACM TOMS 1982) for ``min ‖A x − b‖₂`` from zero.

    ``b`` is a float32 array; ``x_like`` an array of the solution's shape and dtype.  A
    solution kept as a half spectrum (complex64, :meth:`_Grid.offt`: orthonormal) with
    ``full_last`` its image's last-axis length has the same iterates as its image: its norm
    is the image's (Parseval, the Hermitian weights of :meth:`_Grid.kdot`), and an operator
    that starts or ends with a Fourier transform then costs one FFT less.  ``apply_a`` and
    ``apply_at`` return new arrays, which the iteration updates in place (compiled passes,
    :mod:`qsmprep.qsm.inversion._fused`).  Stops after ``max_iter`` iterations or when the
    estimate of ``‖Aᵀ r‖ / (‖A‖ ‖r‖)`` falls below ``tol`` (the usual LSQR criterion; early
    stopping regularises).  Returns (x, iterations, residual norm estimate).
    """
    def fresh(y, *others):  # an operator's output, safe to update in place
        y = np.ascontiguousarray(y)
        return y.copy() if any(y is o for o in others) else y

    x = np.zeros_like(x_like)
    beta = _norm(b)
    if beta == 0:
        return x, 0, 0.0
    u = (b / np.float32(beta)).astype(np.float32, copy=False)
    v = fresh(apply_at(u), u)
    alpha = float(np.sqrt(axpy_norm(v, v, 0.0, full_last)))  # v += 0·v: only its norm
    if alpha == 0:
        return x, 0, beta
    scale(v, 1.0 / alpha)
    w = v.copy()
    phibar, rhobar = beta, alpha
    anorm2 = 0.0
    it = 0
    for it in range(1, max_iter + 1):
        au = fresh(apply_a(v), u, v)
        beta = float(np.sqrt(axpy_norm(au, u, -alpha)))  # u = A v − α u
        u = au
        if beta > 0:
            scale(u, 1.0 / beta)
        anorm2 += alpha**2 + beta**2
        atu = fresh(apply_at(u), u, v)
        alpha = float(np.sqrt(axpy_norm(atu, v, -beta, full_last)))  # v = Aᵀ u − β v
        v = atu
        if alpha > 0:
            scale(v, 1.0 / alpha)
        rho = np.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        lsqr_xw(x, w, v, phi / rho, theta / rho)  # x += (φ/ρ) w, w = v − (θ/ρ) w
        # ‖Aᵀr‖ = phibar·alpha·|c|; relative to ‖A‖_F·‖r‖
        test = phibar * alpha * abs(c) / (np.sqrt(anorm2) * phibar + 1e-30)
        if test < tol or phibar == 0:
            break
    return x, it, float(phibar)


# --------------------------------------------------------------------------------------
# kernels, edge weights, records
# --------------------------------------------------------------------------------------
def _tkd_inverse(d, threshold):
    """``1/D``, with ``sign(D)/threshold`` where ``|D| < threshold`` and 0 at DC (float32)."""
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


def _percentile_edges(grad, valid, edge_fraction):
    """Weights 1 where ``|grad|`` is below its ``1 − edge_fraction`` quantile over ``valid``, else 0."""
    a = np.abs(grad)
    vals = a[valid]
    if vals.size == 0:
        return valid.astype(np.float32)
    thr = np.quantile(vals, 1.0 - edge_fraction)
    return ((a <= thr) & valid).astype(np.float32)


def _jsonable(obj):
    """``obj`` with numpy scalars made Python ones and arrays dropped, for sidecars."""
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

