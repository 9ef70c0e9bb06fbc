"""Background field removal: total field (ppm) to local field (ppm).

Methods
-------
``vsharp``
    Variable-radius sophisticated harmonic artifact reduction for phase data (V-SHARP;
    Wu et al. 2012, after SHARP, Schweser et al. 2011) (:func:`vsharp`).
``pdf``
    Projection onto dipole fields (Liu et al. 2011) (:func:`pdf`).
``lbv``
    Laplacian boundary value (Zhou et al. 2014), solved by multigrid-preconditioned
    conjugate gradients (:func:`lbv`).

All three share one contract (:func:`remove_background`): the total field (ppm) and a
brain mask (plus optional data weights) in, the local field (ppm, float32, zero outside)
and the mask where it is valid out.  The background field is the field of the sources
outside the mask (air, bone, sinuses, everything outside the field of view); it is
harmonic (``Δf_B = 0``) inside the mask, which is what every method exploits.  A local
field is only defined up to a constant, and any part of the true local field that is
itself harmonic inside the mask cannot be told apart from the background by any method.

Conventions (shared with :mod:`qsmprep.qsm.kernels`): arrays in voxel order,
``voxel_size`` in mm per voxel axis (anisotropic voxels are exact), ``b0_dir`` the unit B0
vector in voxel axes, FFTs through ``scipy.fft`` with ``workers`` threads in single
precision.  An optional polynomial :func:`detrend` of the result removes residual smooth
background.
"""

from __future__ import annotations

import inspect

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import ndimage

from qsmprep.qsm import kernels

try:  # numba is a hard dependency of qsmprep; the fallback keeps the module importable
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

#: Background removal methods :func:`remove_background` accepts.
METHODS = ("vsharp", "pdf", "lbv")


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _check_inputs(field, mask, voxel_size):
    field = np.asarray(field)
    if field.ndim != 3:
        raise ValueError(f"field must be 3D, got shape {field.shape}")
    mask = np.asarray(mask)
    if mask.shape != field.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the field's {field.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask is empty")
    vs = tuple(float(v) for v in np.ravel(voxel_size))
    if len(vs) != 3 or not np.all(np.isfinite(vs)) or min(vs) <= 0:
        raise ValueError(f"voxel_size must be 3 positive numbers, got {voxel_size!r}")
    if not np.all(np.isfinite(field[mask])):
        raise ValueError("field has non-finite values inside the mask")
    return np.where(mask, field, 0).astype(np.float32), mask, vs


def _number(name, value, *, integer=False, low=None, high=None, low_open=False, high_open=False):
    """Validate a scalar option; raise ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or (integer and v != int(v)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '≥'} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '≤'} {high}, got {value!r}")
    return int(v) if integer else v


def _pad_voxels(pad):
    """``pad`` (int or 3 ints, voxels per side) as a tuple of 3 non-negative ints."""
    arr = np.broadcast_to(np.asarray(pad), (3,)) if np.ndim(pad) == 0 else np.asarray(pad)
    if arr.shape != (3,):
        raise ValueError(f"pad must be an int or 3 ints, got {pad!r}")
    return tuple(_number("pad", p, integer=True, low=0) for p in arr)


def _check_weights(weights, mask):
    if weights is None:
        return mask.astype(np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != mask.shape:
        raise ValueError(f"weights shape {w.shape} does not match the mask's {mask.shape}")
    if not np.all(np.isfinite(w[mask])) or np.any(w[mask] < 0):
        raise ValueError("weights must be finite and non-negative inside the mask")
    if not np.any(w[mask] > 0):
        raise ValueError("weights are zero everywhere inside the mask")
    return np.where(mask, w, 0).astype(np.float32)


# --------------------------------------------------------------------------------------
# V-SHARP
# --------------------------------------------------------------------------------------
def _ball_size(voxel_size, radius_mm):
    return int(np.count_nonzero(kernels.sphere_mask(voxel_size, radius_mm)))


def vsharp_radii(voxel_size, *, radius_max_mm=12.0, radius_min_mm=None, radius_step_mm=None):
    """Radii (mm, decreasing) of the SMV kernels V-SHARP uses.

    From ``radius_max_mm`` down in steps of ``radius_step_mm`` (default: the smallest voxel
    size) to ``radius_min_mm`` (default: the largest voxel size, i.e. one voxel along every
    axis, so the smallest ball always holds the six face neighbours).  Radii whose sampled
    ball (:func:`qsmprep.qsm.kernels.sphere_mask`) is the same as a larger radius's are
    dropped, since they would give the same kernel.
    """
    vs = tuple(float(v) for v in voxel_size)
    rmax = _number("radius_max_mm", radius_max_mm, low=0, low_open=True)
    rmin = max(vs) if radius_min_mm is None else _number("radius_min_mm", radius_min_mm, low=0, low_open=True)
    if rmin < min(vs):
        raise ValueError(f"radius_min_mm must be at least one voxel ({min(vs)} mm), got {radius_min_mm!r}")
    if rmax < rmin:
        raise ValueError(f"radius_max_mm ({rmax}) must be ≥ radius_min_mm ({rmin})")
    step = min(vs) if radius_step_mm is None else _number("radius_step_mm", radius_step_mm, low=0, low_open=True)
    n = int(np.floor((rmax - rmin) / step + 1e-9))
    candidates = [rmax - i * step for i in range(n + 1)]
    if candidates[-1] - rmin > 1e-9:
        candidates.append(rmin)
    radii, sizes = [], set()
    for r in candidates:
        size = _ball_size(vs, r)
        if size not in sizes:  # nested balls: same count <=> same ball
            sizes.add(size)
            radii.append(float(r))
    return radii


def smv_valid_masks(mask, voxel_size, radii):
    """For each radius, the voxels whose SMV ball lies entirely inside ``mask``.

    The ball of radius r at voxel v (voxel centres within r mm, as sampled by
    :func:`qsmprep.qsm.kernels.sphere_mask`) fits inside the mask exactly when the nearest
    voxel outside the mask, or outside the field of view, is farther than r: one exact
    Euclidean distance transform (in mm, anisotropic voxels exact) gives every erosion.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    dist2 = ndimage.distance_transform_edt(padded, sampling=voxel_size)[1:-1, 1:-1, 1:-1] ** 2
    return [dist2 > r * r + 1e-6 for r in radii]


def vsharp(field, mask, voxel_size, *, radius_max_mm=12.0, radius_min_mm=None, radius_step_mm=None,
           tsvd=0.05, pad=None, workers=None):
    """Variable-radius SHARP background field removal.

    For each radius ``r`` from ``radius_max_mm`` down to ``radius_min_mm`` the spherical
    mean value (SMV) high-pass ``(δ − S_r) * f`` of the masked total field is computed; at
    every voxel the largest ball that fits inside the mask is used (the background field is
    harmonic there, so ``(δ − S_r) * f_B = 0`` and only the local field survives).  The
    high-passed map is deconvolved by the largest kernel, ``1 − S_rmax``, with a truncated
    singular value threshold (``|1 − S| ≤ tsvd`` set to zero) and masked by the mask eroded
    by the smallest radius.

    Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed
    sensing. Magn Reson Med 2012;67:137-147 (V-SHARP).  Schweser F, Deistung A, Lehr BW,
    Reichenbach JR. Quantitative imaging of intrinsic magnetic tissue properties using
    MRI signal phase. NeuroImage 2011;54:2789-2807 (SHARP).

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm); balls are in mm, so anisotropic voxels are handled.
    radius_max_mm : float
        Largest SMV radius (mm), default 12.
    radius_min_mm : float, optional
        Smallest radius (mm), default one voxel (the largest voxel size); at least the
        smallest voxel size.
    radius_step_mm : float, optional
        Radius decrement (mm), default the smallest voxel size.
    tsvd : float
        Truncation threshold of the deconvolution, in (0, 1).
    pad : int or 3 ints, optional
        Zero padding (voxels per side) of the deconvolution grid; default the largest
        radius in voxels plus one.
    workers : int, optional
        FFT threads (:func:`qsmprep.qsm.kernels.resolve_workers`).

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside ``eroded``; its mean is arbitrary.
    eroded : ndarray of bool
        The mask eroded by the smallest radius.
    """
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    tsvd = _number("tsvd", tsvd, low=0, high=1, low_open=True, high_open=True)
    radii = vsharp_radii(vs, radius_max_mm=radius_max_mm, radius_min_mm=radius_min_mm,
                         radius_step_mm=radius_step_mm)
    workers = kernels.resolve_workers(workers)
    valid = smv_valid_masks(mask, vs, radii)
    eroded = valid[-1]
    if not eroded.any():
        raise ValueError(f"the mask has no voxel farther than radius_min_mm={radii[-1]} mm from its edge")
    # High-pass at each radius on the unpadded grid: a valid voxel's ball lies inside the
    # mask (hence inside the field of view), so the circular convolution never wraps there.
    shape = f.shape
    fits = [all(b <= n for b, n in zip(kernels.sphere_mask(vs, r).shape, shape)) for r in radii]
    grid = shape if all(fits) else kernels.padded_shape(shape, [int(np.ceil(radii[0] / v)) for v in vs])
    f_grid, crop = kernels.pad_to(f, grid)
    f_k = sfft.rfftn(f_grid, workers=workers)
    del f_grid
    hp = np.zeros(shape, dtype=np.float32)
    done = np.zeros(shape, dtype=bool)
    for r, ok in zip(radii, valid):
        new = ok & ~done
        if not new.any():
            continue
        s = kernels.smv_kernel(grid, vs, r, rfft=True, workers=workers)
        spec = f_k * (1.0 - s)
        hp[new] = sfft.irfftn(spec, s=grid, workers=workers)[crop][new]
        del spec
        done |= new
        del s
    del f_k
    # Deconvolution by the largest kernel on a zero-padded grid (limits wrap-around).
    pad = [int(np.ceil(radii[0] / v)) + 1 for v in vs] if pad is None else _pad_voxels(pad)
    big = kernels.padded_shape(shape, pad)
    hp_big, crop = kernels.pad_to(hp, big)
    del hp
    h = 1.0 - kernels.smv_kernel(big, vs, radii[0], rfft=True, workers=workers)
    inv = np.zeros_like(h)
    keep = np.abs(h) > tsvd
    inv[keep] = 1.0 / h[keep]
    del h, keep
    spec = sfft.rfftn(hp_big, workers=workers)
    del hp_big
    spec *= inv
    del inv
    local = sfft.irfftn(spec, s=big, workers=workers)[crop]
    return np.where(eroded, local, 0).astype(np.float32), eroded


# --------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------
def pdf(field, mask, voxel_size, b0_dir, *, weights=None, tol=1e-3, max_iter=200, pad=16, workers=None):
    """Projection onto dipole fields.

    The background field is modelled as the field of a susceptibility distribution
    ``χ_out`` outside the mask, fitted to the total field inside the mask by weighted least
    squares,

    ``χ_out = argmin ‖W M (f − D * (M̄ χ_out))‖²``,

    with ``M`` the mask, ``M̄ = 1 − M`` on the zero-padded grid (so sources beyond the field
    of view are modelled too), ``D`` the unit dipole kernel and ``W`` the data weights
    (inverse field noise, or magnitude).  The problem is solved by conjugate gradients on
    the normal equations (CGLS, Hestenes & Stiefel 1952; Björck 1996), with FFT-based
    dipole convolutions; the local field is ``M (f − D * (M̄ χ_out))``.

    Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y. A novel
    background field removal method for MRI using projection onto dipole fields (PDF).
    NMR Biomed 2011;24:1129-1136.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    weights : ndarray, optional
        Non-negative data weights ``W`` (e.g. :func:`qsmprep.qsm.weights.weights_from_noise`
        or the magnitude); default uniform.
    tol : float
        Stop when the normal-equation residual ``‖Aᵀ(b − Ax)‖`` has fallen by this factor.
    max_iter : int
        Iteration limit.
    pad : int or 3 ints
        Zero padding (voxels per side) of the field of view, where background sources are
        also fitted (avoids wrap-around of the dipole fields).
    workers : int, optional
        FFT threads.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside the mask.
    mask : ndarray of bool
        The input mask (PDF needs no erosion).
    """
    local, mask, _ = _pdf(field, mask, voxel_size, b0_dir, weights=weights, tol=tol, max_iter=max_iter,
                          pad=pad, workers=workers)
    return local, mask


def _pdf(field, mask, voxel_size, b0_dir, *, weights, tol, max_iter, pad, workers):
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    b = np.asarray(b0_dir, dtype=float).ravel()
    if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) == 0:
        raise ValueError(f"b0_dir must be a non-zero 3-vector, got {b0_dir!r}")
    tol = _number("tol", tol, low=0, low_open=True, high=1, high_open=True)
    max_iter = _number("max_iter", max_iter, integer=True, low=1)
    pad = _pad_voxels(pad)
    w = _check_weights(weights, mask)
    workers = kernels.resolve_workers(workers)

    shape = kernels.padded_shape(f.shape, pad)
    m_in, crop = kernels.pad_to(mask, shape)
    w_big, _ = kernels.pad_to(w, shape)
    out = ~m_in
    d = kernels.dipole_kernel(shape, vs, b, rfft=True)

    def conv(x):
        return sfft.irfftn(sfft.rfftn(x, workers=workers) * d, s=shape, workers=workers)

    def forward(x):  # χ outside -> weighted field inside
        y = conv(x)
        y *= w_big
        return y

    def adjoint(y):  # weighted field inside -> χ outside (D is real and even: Dᵀ = D)
        x = conv(y * w_big)
        x[m_in] = 0
        return x

    # The field's constant offset (reference frequency) is not the field of any source and
    # the local field is defined up to a constant: remove it first, or CG spends itself
    # fitting a constant with outside dipoles and leaves a non-constant residue.
    f = np.where(mask, f - np.float32(np.average(f[mask], weights=w[mask])), 0).astype(np.float32)
    rhs, _ = kernels.pad_to(f * w, shape)
    x = np.zeros(shape, dtype=np.float32)
    r = rhs
    s = adjoint(r)
    p = s.copy()
    gamma = float(np.vdot(s, s))
    gamma0 = gamma
    it = 0
    while it < max_iter and gamma > (tol**2) * gamma0 and gamma > 0:
        q = forward(p)
        qq = float(np.vdot(q, q))
        if qq <= 0:
            break
        alpha = gamma / qq
        x += alpha * p
        r -= alpha * q
        s = adjoint(r)
        gamma_new = float(np.vdot(s, s))
        p *= gamma_new / gamma
        p += s
        gamma = gamma_new
        it += 1
    x[~out] = 0
    background = conv(x)[crop]
    local = np.where(mask, f - background, 0).astype(np.float32)
    info = {"iterations": it, "relative_residual": float(np.sqrt(gamma / gamma0)) if gamma0 > 0 else 0.0}
    return local, mask, info


# --------------------------------------------------------------------------------------
# LBV: multigrid-preconditioned CG for the Laplace equation with Dirichlet boundary
# --------------------------------------------------------------------------------------
if numba is not None:

    @njit(parallel=True, cache=True)
    def _apply(x, dom, a0, a1, a2, out):  # pragma: no cover - compiled
        """out = −Δx on ``dom`` (x is zero outside ``dom``; dom is False on the array edge)."""
        n0, n1, n2 = x.shape
        d = 2.0 * (a0 + a1 + a2)
        for i in prange(n0):
            for j in range(n1):
                for k in range(n2):
                    if dom[i, j, k]:
                        s = (a0 * (x[i - 1, j, k] + x[i + 1, j, k]) + a1 * (x[i, j - 1, k] + x[i, j + 1, k])
                             + a2 * (x[i, j, k - 1] + x[i, j, k + 1]))
                        out[i, j, k] = d * x[i, j, k] - s
                    else:
                        out[i, j, k] = 0.0

    @njit(parallel=True, cache=True)
    def _gauss_seidel(x, rhs, dom, a0, a1, a2, colour):  # pragma: no cover - compiled
        """One red-black Gauss-Seidel half sweep on the voxels with (i+j+k) % 2 == colour."""
        n0, n1, n2 = x.shape
        d = 2.0 * (a0 + a1 + a2)
        for i in prange(1, n0 - 1):
            for j in range(1, n1 - 1):
                k0 = 1 + (i + j + 1 + colour) % 2
                for k in range(k0, n2 - 1, 2):
                    if dom[i, j, k]:
                        s = (a0 * (x[i - 1, j, k] + x[i + 1, j, k]) + a1 * (x[i, j - 1, k] + x[i, j + 1, k])
                             + a2 * (x[i, j, k - 1] + x[i, j, k + 1]))
                        x[i, j, k] = (rhs[i, j, k] + s) / d

else:  # pragma: no cover - numpy fallback

    def _shift_sum(x, a0, a1, a2):
        s = np.zeros_like(x)
        for ax, a in enumerate((a0, a1, a2)):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax], hi[ax] = slice(0, -1), slice(1, None)
            s[tuple(lo)] += a * x[tuple(hi)]
            s[tuple(hi)] += a * x[tuple(lo)]
        return s

    def _apply(x, dom, a0, a1, a2, out):
        out[...] = np.where(dom, 2.0 * (a0 + a1 + a2) * x - _shift_sum(x, a0, a1, a2), 0)

    def _gauss_seidel(x, rhs, dom, a0, a1, a2, colour):
        ii, jj, kk = np.indices(x.shape, sparse=True)
        sel = dom & ((ii + jj + kk) % 2 == colour)
        x[sel] = ((rhs + _shift_sum(x, a0, a1, a2)) / (2.0 * (a0 + a1 + a2)))[sel]


def _prolong(c, fine_shape):
    """Trilinear interpolation from a vertex-centred coarse grid (fine index 2I = coarse I)."""
    out = c
    for ax in range(3):
        out = np.moveaxis(out, ax, 0)
        n = out.shape[0]
        new = np.empty((2 * n - 1,) + out.shape[1:], dtype=out.dtype)
        new[0::2] = out
        new[1::2] = 0.5 * (out[:-1] + out[1:])
        out = np.moveaxis(new[: fine_shape[ax]], 0, ax)
    return np.ascontiguousarray(out)


def _restrict(f, coarse_shape):
    """Transpose of :func:`_prolong` (full weighting up to a factor 8)."""
    out = f
    for ax in range(3):
        out = np.moveaxis(out, ax, 0)
        n = coarse_shape[ax]
        full = np.zeros((2 * n - 1,) + out.shape[1:], dtype=out.dtype)
        full[: out.shape[0]] = out
        new = full[0::2].copy()
        odd = 0.5 * full[1::2]
        new[:-1] += odd
        new[1:] += odd
        out = np.moveaxis(new, 0, ax)
    return np.ascontiguousarray(out)


def _laplacian_matrix(dom, coef):
    """Sparse −Δ (7-point) on the voxels of ``dom``, Dirichlet zero outside."""
    idx = -np.ones(dom.shape, dtype=np.int64)
    n = int(dom.sum())
    idx[dom] = np.arange(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 2.0 * sum(coef))]
    for ax, a in enumerate(coef):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        both = dom[tuple(lo)] & dom[tuple(hi)]
        i, j = idx[tuple(lo)][both], idx[tuple(hi)][both]
        rows += [i, j]
        cols += [j, i]
        vals += [np.full(i.size, -a), np.full(i.size, -a)]
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


class _Multigrid:
    """Symmetric V-cycle for −Δ on an irregular domain (a CG preconditioner).

    Vertex-centred coarsening by 2, trilinear prolongation ``P``, restriction ``Pᵀ/8``,
    re-discretised 7-point operators, red-black Gauss-Seidel smoothing (forward colours
    before, reverse after, so the cycle is a symmetric operator) and a sparse direct
    solve on the coarsest grid (Briggs, Henson & McCormick, A Multigrid Tutorial, SIAM
    2000; Tatebe, Copper Mountain 1993 for MG-preconditioned CG).
    """

    def __init__(self, dom, voxel_size, *, smooth=2, coarse_size=3000, max_levels=8):
        self.smooth = smooth
        self.doms, self.coefs = [dom], [tuple(1.0 / v**2 for v in voxel_size)]
        while len(self.doms) < max_levels:
            d = self.doms[-1]
            if d.sum() <= coarse_size or min(d.shape) < 7:
                break
            cshape = tuple(n // 2 + 1 for n in d.shape)
            full = np.zeros(tuple(2 * n - 1 for n in cshape), dtype=bool)
            full[: d.shape[0], : d.shape[1], : d.shape[2]] = d
            c = np.zeros(cshape, dtype=bool)
            c[1:-1, 1:-1, 1:-1] = full[2:-2:2, 2:-2:2, 2:-2:2]
            if not c.any():
                break
            self.doms.append(c)
            self.coefs.append(tuple(a / 4.0 for a in self.coefs[-1]))
        self.lu = spla.splu(_laplacian_matrix(self.doms[-1], self.coefs[-1]))

    def __call__(self, r, level=0):
        dom, (a0, a1, a2) = self.doms[level], self.coefs[level]
        if level == len(self.doms) - 1:
            x = np.zeros(r.shape, dtype=np.float64)
            x[dom] = self.lu.solve(np.asarray(r[dom], dtype=np.float64))
            return x.astype(r.dtype)
        x = np.zeros_like(r)
        for _ in range(self.smooth):
            _gauss_seidel(x, r, dom, a0, a1, a2, 0)
            _gauss_seidel(x, r, dom, a0, a1, a2, 1)
        res = np.empty_like(r)
        _apply(x, dom, a0, a1, a2, res)
        np.subtract(r, res, out=res)
        coarse = self.doms[level + 1]
        rc = _restrict(res, coarse.shape) * np.float32(1.0 / 8.0)
        rc[~coarse] = 0
        ec = self(rc, level + 1)
        e = _prolong(ec, r.shape)
        e[~dom] = 0
        x += e
        for _ in range(self.smooth):
            _gauss_seidel(x, r, dom, a0, a1, a2, 1)
            _gauss_seidel(x, r, dom, a0, a1, a2, 0)
        return x


def _num_threads(workers):
    """Context for numba's thread count (restored afterwards)."""

    class _Ctx:
        def __enter__(self):
            self.old = None
            if numba is not None:
                self.old = numba.get_num_threads()
                numba.set_num_threads(max(1, min(int(workers), numba.config.NUMBA_NUM_THREADS)))

        def __exit__(self, *exc):
            if self.old is not None:
                numba.set_num_threads(self.old)

    return _Ctx()


def lbv(field, mask, voxel_size, *, tol=1e-6, max_iter=200, peel=1, workers=None):
    """Laplacian boundary value background field removal.

    The background field is the solution of the Laplace equation ``Δf_B = 0`` inside the
    mask with the total field as its value on the mask boundary (the mask voxels with a
    face neighbour outside the mask); the local field is ``f − f_B`` inside.  The 7-point
    discrete Laplacian (anisotropic spacing exact) is solved by conjugate gradients
    preconditioned with one symmetric multigrid V-cycle per iteration (own implementation,
    :class:`_Multigrid`).  The boundary layer, where the local field is zero by
    construction, is excluded from the returned mask, which is further eroded by ``peel``
    voxel layers (the values next to a noisy boundary are unreliable).

    Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the
    Laplacian boundary value problem. NMR Biomed 2014;27:312-319.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    tol : float
        Relative residual ``‖r‖/‖b‖`` at which CG stops.
    max_iter : int
        Iteration limit of CG.
    peel : int
        Extra voxel layers removed from the returned mask (≥ 0).
    workers : int, optional
        Threads of the compiled smoother and residual kernels.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm), zero outside ``eroded``.
    eroded : ndarray of bool
        Interior of the mask (boundary layer removed) eroded by ``peel`` layers.
    """
    local, eroded, _ = _lbv(field, mask, voxel_size, tol=tol, max_iter=max_iter, peel=peel, workers=workers)
    return local, eroded


def _lbv(field, mask, voxel_size, *, tol, max_iter, peel, workers):
    f, mask, vs = _check_inputs(field, mask, voxel_size)
    tol = _number("tol", tol, low=0, low_open=True, high=1, high_open=True)
    max_iter = _number("max_iter", max_iter, integer=True, low=1)
    peel = _number("peel", peel, integer=True, low=0)
    workers = kernels.resolve_workers(workers)
    # the field of view's edge is outside the mask
    padded = np.pad(mask, 1)
    interior_full = ndimage.binary_erosion(padded)[1:-1, 1:-1, 1:-1]
    if not interior_full.any():
        raise ValueError("the mask has no interior voxel (every voxel touches its edge)")
    # crop to the bounding box of the mask with a one-voxel margin of zeros
    nz = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in nz)
    dom = np.pad(interior_full[box], 1)
    fb = np.pad(np.where(mask & ~interior_full, f, 0)[box], 1).astype(np.float32)  # boundary values
    coef = tuple(1.0 / v**2 for v in vs)
    # A u0 = Σ_{neighbours on the boundary} a · f  on the interior (u = u0 + boundary values)
    rhs = np.zeros(fb.shape, dtype=np.float32)
    with _num_threads(workers):
        _apply(fb, dom, *coef, rhs)  # fb = 0 on dom, so this is −Σ a·f over boundary neighbours
        np.negative(rhs, out=rhs)
        mg = _Multigrid(dom, vs)
        x = np.zeros_like(rhs)
        r = rhs.copy()
        z = mg(r)
        p = z.copy()
        rz = float(np.vdot(r, z))
        bnorm = float(np.linalg.norm(rhs))
        q = np.empty_like(r)
        it = 0
        rel = float(np.linalg.norm(r)) / bnorm if bnorm > 0 else 0.0
        while it < max_iter and rel > tol:
            _apply(p, dom, *coef, q)
            pq = float(np.vdot(p, q))
            if pq <= 0:
                break
            alpha = rz / pq
            x += np.float32(alpha) * p
            r -= np.float32(alpha) * q
            it += 1
            rel = float(np.linalg.norm(r)) / bnorm
            if rel <= tol:
                break
            z = mg(r)
            rz_new = float(np.vdot(r, z))
            p *= np.float32(rz_new / rz)
            p += z
            rz = rz_new
    background = np.zeros(f.shape, dtype=np.float32)
    background[box] = x[1:-1, 1:-1, 1:-1]
    eroded = interior_full
    if peel:
        eroded = ndimage.binary_erosion(np.pad(eroded, 1), iterations=peel)[1:-1, 1:-1, 1:-1]
    if not eroded.any():
        raise ValueError(f"peel={peel} erodes the whole mask")
    local = np.where(eroded, f - background, 0).astype(np.float32)
    return local, eroded, {"iterations": it, "relative_residual": rel}


# --------------------------------------------------------------------------------------
# detrending and the common entry point
# --------------------------------------------------------------------------------------
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


_FUNCTIONS = {"vsharp": vsharp, "pdf": _pdf, "lbv": _lbv}


def _options(method):
    """Keyword options (with defaults) of a method's public function."""
    func = {"vsharp": vsharp, "pdf": pdf, "lbv": lbv}[method]
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in ("weights", "workers")}


def method_parameters(method):
    """Names of the keyword options :func:`remove_background` accepts for ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown background removal method {method!r}; use one of {', '.join(METHODS)}")
    return set(_options(method)) | {"detrend_order"}


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_jsonable(x) for x in np.asarray(v).tolist()] if isinstance(v, np.ndarray) else [
            _jsonable(x) for x in v]
    return v


def remove_background(field, mask, voxel_size, *, method="vsharp", b0_dir=(0, 0, 1), weights=None,
                      detrend_order=None, workers=None, **params):
    """Total field to local field with one of :data:`METHODS`.

    Parameters
    ----------
    field : ndarray, shape (x, y, z)
        Total field (ppm).
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    method : {"vsharp", "pdf", "lbv"}
        :func:`vsharp` (Wu et al. 2012), :func:`pdf` (Liu et al. 2011) or :func:`lbv`
        (Zhou et al. 2014).
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (used by ``pdf``).
    weights : ndarray, optional
        Data weights (used by ``pdf``; ignored by the others, which have no data term).
    detrend_order : int, optional
        If given, subtract a polynomial of this total degree fitted in the valid mask
        (:func:`detrend`); off by default.
    workers : int, optional
        Threads.
    **params
        Keyword options of the method's function.

    Returns
    -------
    local : ndarray of float32
        Local field (ppm) with zero mean inside ``valid``, zero outside it.
    valid : ndarray of bool
        Where the local field is valid (the eroded mask).
    info : dict
        JSON-serialisable: ``method``, every option of the method actually used (defaults
        filled in), ``detrend_order``, ``weighted`` and solver diagnostics.
    """
    if method not in METHODS:
        raise ValueError(f"unknown background removal method {method!r}; use one of {', '.join(METHODS)}")
    options = _options(method)
    unknown = sorted(set(params) - set(options))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {method!r}; "
                         f"valid: {', '.join(sorted(options))}")
    if detrend_order is not None:
        detrend_order = _number("detrend_order", detrend_order, integer=True, low=0)
    used = {**options, **params}
    extra = {}
    if method == "vsharp":
        vs = tuple(float(v) for v in np.ravel(voxel_size))
        if len(vs) == 3 and min(vs) > 0:
            extra["radii_mm"] = vsharp_radii(vs, radius_max_mm=used["radius_max_mm"],
                                             radius_min_mm=used["radius_min_mm"],
                                             radius_step_mm=used["radius_step_mm"])
        local, valid = vsharp(field, mask, voxel_size, workers=workers, **params)
    elif method == "pdf":
        local, valid, extra = _pdf(field, mask, voxel_size, b0_dir, weights=weights, workers=workers, **used)
        used["b0_dir"] = [float(v) for v in np.ravel(b0_dir)]
    else:
        local, valid, extra = _lbv(field, mask, voxel_size, workers=workers, **used)
    if detrend_order is not None:
        local = detrend(local, valid, order=detrend_order)
    local = np.where(valid, local - local[valid].mean(), 0).astype(np.float32)
    info = {"method": method, **{k: _jsonable(v) for k, v in used.items()}, "detrend_order": detrend_order,
            "weighted": bool(weights is not None and method == "pdf"),
            **{k: _jsonable(v) for k, v in extra.items()}}
    return local, valid, info
