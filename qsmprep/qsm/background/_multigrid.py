"""LBV's multigrid preconditioner: −Δ on an irregular domain with a Dirichlet boundary.

The 7-point operator and red-black Gauss-Seidel smoother (numba-compiled, with a numpy
fallback), trilinear prolongation and its transpose, the sparse coarsest-grid matrix, the
symmetric V-cycle (:class:`_Multigrid`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from qsmprep.qsm._numba import njit, numba, prange


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
