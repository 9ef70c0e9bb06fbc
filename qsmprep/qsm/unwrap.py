"""Phase unwrapping."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels


def unwrap_laplacian(phase, voxel_size, *, pad=8, workers=None):
    """Laplacian-based phase unwrapping of one 3D volume (Schofield & Zhu, Opt Lett 2003).

    The Laplacian of the true phase is computed from the wrapped phase alone,
    ``∇²φ = cos φ ∇² sin φ − sin φ ∇² cos φ``, and inverted with FFTs (as in STI Suite,
    Li et al., NeuroImage 2011).  The result equals the true phase up to a harmonic
    function (removed later by background field removal) and is not constrained to
    differ from the input by multiples of 2π.  Periodic FFT operators on a grid padded
    by ``pad`` voxels (edge-replicated to avoid jumps at the border).
    """
    workers = kernels.resolve_workers(workers)
    phase = np.asarray(phase, dtype=np.float64)
    shape = kernels.padded_shape(phase.shape, pad)
    widths = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(shape, phase.shape)]
    padded = np.pad(phase, widths, mode="edge")
    crop = tuple(slice(w[0], w[0] + n) for w, n in zip(widths, phase.shape))
    lap = kernels.laplacian_kernel(shape, voxel_size, rfft=True).astype(np.float64)
    inv = np.zeros_like(lap)
    inv[lap != 0] = 1.0 / lap[lap != 0]

    def laplacian(x):
        return sfft.irfftn(sfft.rfftn(x, workers=workers) * lap, s=shape, workers=workers)

    c, s = np.cos(padded), np.sin(padded)
    lap_phase = c * laplacian(s) - s * laplacian(c)
    out = sfft.irfftn(sfft.rfftn(lap_phase, workers=workers) * inv, s=shape, workers=workers)
    return out[crop].astype(np.float32)


def unwrap_skimage(phase, *, mask=None):
    """3D unwrapping with scikit-image's ``unwrap_phase`` (Herráez et al., Appl Opt 2002)."""
    from skimage.restoration import unwrap_phase

    phase = np.asarray(phase, dtype=np.float64)
    if mask is not None:
        phase = np.ma.masked_array(phase, mask=~np.asarray(mask, dtype=bool))
    out = unwrap_phase(phase)
    return np.ma.filled(out, 0.0).astype(np.float32)


def phase_gradient_quality(phase, *, echo=None):
    """Phase quality in [0, 1] from the wrapped phase's neighbour differences.

    ``q = 1 − max |∠(e^{iφ(x+1)} e^{−iφ(x)})| / π`` over the 6 neighbours of each voxel, at
    echo ``echo`` (default: the middle echo).  Where the phase changes by more than about
    π/3 per voxel it is undersampled or noise-dominated and no spatial unwrapping can be
    trusted; removing such voxels from the mask keeps their errors outside the region used by
    background removal (the idea of quality-guided masking, Witoszynskyj et al., Med Image
    Anal 2009; Dymerska et al., MRM 2021).
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 4:
        phase = phase[..., phase.shape[-1] // 2 if echo is None else echo]
    worst = np.zeros(phase.shape, dtype=np.float32)
    for ax in range(3):
        d = np.abs(np.angle(np.exp(1j * (np.roll(phase, -1, ax) - phase)))).astype(np.float32)
        np.maximum(worst, d, out=worst)
        np.maximum(worst, np.roll(d, 1, ax), out=worst)
    return (1.0 - worst / np.pi).astype(np.float32)


def unwrap_echoes(phase, *, method="laplacian", voxel_size, mag=None, tes=None, mask=None, workers=None,
                  **params):
    """Unwrap every echo of a 4D phase; returns (unwrapped 4D, quality map or None)."""
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    if method == "laplacian":
        out = [unwrap_laplacian(phase[..., e], voxel_size, workers=workers, **params) for e in range(phase.shape[-1])]
    elif method == "skimage":
        out = [unwrap_skimage(phase[..., e], mask=mask) for e in range(phase.shape[-1])]
    else:
        raise ValueError(f"unknown unwrapping method {method!r}")
    return np.stack(out, axis=-1), phase_gradient_quality(phase)
