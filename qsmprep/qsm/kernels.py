"""Shared k-space kernels, padding and finite-difference operators.

Everything here is a pure function of array shapes, voxel sizes and the B0 direction.
Conventions used across :mod:`qsmprep.qsm`:

* arrays are in voxel (index) order, ``voxel_size`` is in mm per axis;
* ``b0_dir`` is the unit B0 vector expressed in the voxel axes (see :func:`b0_direction`);
* k-space kernels are *unshifted* (DC at index 0), matching ``scipy.fft.fftn`` /
  ``rfftn`` output; pass ``rfft=True`` to get the half-spectrum layout of ``rfftn``;
* spatial frequencies are physical (cycles / mm), so anisotropic voxels are exact.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.fft as sfft

#: Proton gyromagnetic ratio over 2π, in MHz/T (CODATA 2018: 42.577 478 518).
GAMMA_BAR_MHZ_PER_T = 42.577478


def resolve_workers(workers=None):
    """Number of FFT threads: ``workers`` if given, else the CPUs this process may use."""
    if workers is not None and int(workers) > 0:
        return int(workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def voxel_sizes(affine):
    """Voxel sizes (mm) of a 4x4 affine: the norms of its first three columns."""
    affine = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def b0_direction(affine, b0_world=(0.0, 0.0, 1.0)):
    """Unit B0 vector in voxel axes, from a NIfTI affine.

    The scanner's B0 is the world (RAS+) z axis for data whose affine comes from the
    scanner's coordinate frame.  For an oblique acquisition the voxel axes are rotated
    with respect to the world, so the kernel needs B0 in voxel axes:
    ``b = R⁻¹ · b0_world`` with ``R`` the affine's direction cosines (columns normalised).

    >>> import numpy as np
    >>> b0_direction(np.diag([2.0, 2.0, 3.0, 1.0])).tolist()
    [0.0, 0.0, 1.0]
    >>> c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    >>> aff = np.eye(4); aff[:3, :3] = [[1, 0, 0], [0, c, -s], [0, s, c]]
    >>> np.round(b0_direction(aff), 3).tolist()
    [0.0, 0.5, 0.866]
    """
    affine = np.asarray(affine, dtype=float)
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    b = np.linalg.solve(rot, np.asarray(b0_world, dtype=float))
    return b / np.linalg.norm(b)


def kspace_coordinates(shape, voxel_size, *, rfft=False, dtype=np.float32):
    """Open grid of physical spatial frequencies (cycles/mm) for an unshifted FFT.

    Returns three arrays broadcastable to the k-space shape (``shape`` for ``fftn``,
    ``shape[:-1] + (shape[-1] // 2 + 1,)`` for ``rfftn``).
    """
    if len(shape) != 3 or len(voxel_size) != 3:
        raise ValueError("kspace_coordinates expects a 3D shape and 3 voxel sizes")
    axes = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        if rfft and ax == 2:
            k = sfft.rfftfreq(n, d=d)
        else:
            k = sfft.fftfreq(n, d=d)
        view = [1, 1, 1]
        view[ax] = k.size
        axes.append(k.astype(dtype).reshape(view))
    return tuple(axes)


def dipole_kernel(shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, rfft=False, dtype=np.float32):
    """Unit dipole kernel ``D(k) = 1/3 − (k·b̂)² / |k|²`` in k-space, with ``D(0) = 0``.

    Salomir et al., Concepts Magn Reson B 2003;19B:26-34; Marques & Bowtell,
    Concepts Magn Reson B 2005;25B:65-78.  ``D(0) = 0`` is the usual QSM convention
    (the field is only known up to a constant, and χ is reported relative to a reference).

    Parameters
    ----------
    shape : tuple of int
        Image-space shape (usually the zero-padded grid).
    voxel_size : sequence of float
        Voxel size in mm (anisotropic voxels are exact).
    b0_dir : sequence of float
        B0 direction in voxel axes (normalised here).
    rfft : bool
        Return the half spectrum matching ``scipy.fft.rfftn``.
    """
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    kx, ky, kz = kspace_coordinates(shape, voxel_size, rfft=rfft, dtype=np.float64)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.astype(dtype)


def sphere_mask(voxel_size, radius_mm):
    """Boolean ball of radius ``radius_mm`` sampled at voxel centres (odd-sized, centred)."""
    half = [int(np.floor(radius_mm / v)) for v in voxel_size]
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * v for h, v in zip(half, voxel_size)], indexing="ij"
    )
    return (grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2) <= radius_mm**2 + 1e-9


def smv_kernel(shape, voxel_size, radius_mm, *, rfft=False, workers=None, dtype=np.float32):
    """k-space of the normalised spherical mean value (SMV) kernel of radius ``radius_mm``.

    The ball is sampled at voxel centres within ``radius_mm`` (anisotropic voxels
    handled), normalised to unit sum and centred at index 0 with wrap-around, so that
    ``ifftn(fftn(x) * S)`` is the local spherical mean (Li & Leigh, MRM 2001; Schweser
    et al., NeuroImage 2011).  The SHARP high-pass operator is ``1 − S``.
    """
    ball = sphere_mask(voxel_size, radius_mm)
    if any(b > s for b, s in zip(ball.shape, shape)):
        raise ValueError(f"SMV radius {radius_mm} mm does not fit in a grid of shape {shape}")
    kernel = np.zeros(shape, dtype=np.float64)
    idx = np.nonzero(ball)
    centre = [s // 2 for s in ball.shape]
    wrapped = tuple((i - c) % n for i, c, n in zip(idx, centre, shape))
    kernel[wrapped] = 1.0 / idx[0].size
    fft = sfft.rfftn if rfft else sfft.fftn
    return np.real(fft(kernel, workers=resolve_workers(workers))).astype(dtype)


def laplacian_kernel(shape, voxel_size, *, rfft=False, dtype=np.float32):
    """Eigenvalues of the periodic 7-point discrete Laplacian (1/mm²), ≤ 0, zero at DC."""
    out = None
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        if rfft and ax == 2:
            f = np.arange(n // 2 + 1)
        else:
            f = np.arange(n)
        term = (2.0 * np.cos(2.0 * np.pi * f / n) - 2.0) / d**2
        view = [1, 1, 1]
        view[ax] = term.size
        term = term.reshape(view)
        out = term if out is None else out + term
    return out.astype(dtype)


def gradient_kernels(shape, voxel_size, *, rfft=False, dtype=np.complex64):
    """k-space of periodic forward differences ``(x[i+1] − x[i]) / d`` along each axis."""
    kernels = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        if rfft and ax == 2:
            f = np.arange(n // 2 + 1)
        else:
            f = np.arange(n)
        e = (np.exp(2j * np.pi * f / n) - 1.0) / d
        view = [1, 1, 1]
        view[ax] = e.size
        kernels.append(e.reshape(view).astype(dtype))
    return tuple(kernels)


def gradient(x, voxel_size):
    """Forward differences along each axis with a zero last row (Neumann boundary).

    Returns an array of shape ``(3,) + x.shape``.  Its adjoint is ``-divergence``.
    """
    g = np.zeros((3,) + x.shape, dtype=np.result_type(x.dtype, np.float32))
    g[0, :-1] = (x[1:] - x[:-1]) / voxel_size[0]
    g[1, :, :-1] = (x[:, 1:] - x[:, :-1]) / voxel_size[1]
    g[2, :, :, :-1] = (x[:, :, 1:] - x[:, :, :-1]) / voxel_size[2]
    return g


def divergence(g, voxel_size):
    """Backward-difference divergence: ``<gradient(x), g> == -<x, divergence(g)>``."""
    res = np.zeros(g.shape[1:], dtype=g.dtype)
    for ax in range(3):
        gi = np.moveaxis(g[ax], ax, 0)
        r = np.moveaxis(res, ax, 0)  # a view: writes go to ``res``
        r[0] += gi[0] / voxel_size[ax]
        r[1:-1] += (gi[1:-1] - gi[:-2]) / voxel_size[ax]
        r[-1] -= gi[-2] / voxel_size[ax]
    return res


def rfft_mirror_weights(shape):
    """``√m`` per column of an ``rfftn`` half spectrum of ``shape``: m = 2 where a column
    stands for itself and its Hermitian mirror, 1 for the zero (and, for an even last axis,
    the Nyquist) column.  A half spectrum scaled by it has the plain inner product of the
    full spectrum (of the image, with ``norm="ortho"``), for Krylov solvers kept in k-space."""
    w = np.full(shape[-1] // 2 + 1, np.sqrt(2.0), dtype=np.float32)
    w[0] = 1.0
    if shape[-1] % 2 == 0:
        w[-1] = 1.0
    return w


def padded_shape(shape, pad):
    """Shape after padding each axis by ``pad`` voxels per side, rounded up to a fast FFT size.

    ``pad`` is an int or a per-axis sequence.
    """
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (len(shape),))
    return tuple(sfft.next_fast_len(int(n + 2 * p), real=True) for n, p in zip(shape, pad))


def pad_to(x, shape):
    """Zero-pad ``x`` (centred) to ``shape``; return the padded array and the crop slices."""
    before = [(s - n) // 2 for s, n in zip(shape, x.shape)]
    if any(b < 0 for b in before):
        raise ValueError(f"cannot pad shape {x.shape} to smaller shape {shape}")
    out = np.zeros(tuple(shape) + x.shape[3:], dtype=x.dtype)
    sl = tuple(slice(b, b + n) for b, n in zip(before, x.shape[:3]))
    out[sl] = x
    return out, sl
