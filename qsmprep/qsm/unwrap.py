"""Phase unwrapping."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm import kernels
from qsmprep.qsm.phase import wrap


def _wrapped_laplacian(phase, voxel_size):
    """The 7-point periodic Laplacian of the true phase from the wrapped phase alone.

    ``∇²φ = cos φ ∇² sin φ − sin φ ∇² cos φ`` with the discrete Laplacian is, by
    ``cos a sin b − sin a cos b = sin(b − a)``, exactly ``Σ_neighbours sin(φ_j − φ_i) / d²``:
    six shifted differences instead of four FFTs.
    """
    out = np.zeros(phase.shape, dtype=np.float32)
    for ax, d in enumerate(voxel_size):
        forward = np.sin(np.roll(phase, -1, axis=ax) - phase)  # sin(φ_{i+1} − φ_i), periodic
        forward *= np.float32(1.0 / d**2)
        out += forward
        out -= np.roll(forward, 1, axis=ax)  # sin(φ_{i−1} − φ_i) = −sin(φ_i − φ_{i−1})
    return out


def unwrap_laplacian(phase, voxel_size, *, pad=8, workers=None):
    """Laplacian-based phase unwrapping of one 3D volume (Schofield & Zhu, Opt Lett 2003).

    The Laplacian of the true phase is computed from the wrapped phase alone,
    ``∇²φ = cos φ ∇² sin φ − sin φ ∇² cos φ`` (evaluated exactly as a sum of neighbour
    sines, :func:`_wrapped_laplacian`), and inverted with FFTs (as in STI Suite, Li et al.,
    NeuroImage 2011).  The result equals the true phase up to a harmonic function (removed
    later by background field removal) and is not constrained to differ from the input by
    multiples of 2π.  Periodic operators on a grid padded by ``pad`` voxels
    (edge-replicated to avoid jumps at the border).
    """
    workers = kernels.resolve_workers(workers)
    phase = np.asarray(phase, dtype=np.float32)
    shape = kernels.padded_shape(phase.shape, pad)
    widths = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(shape, phase.shape)]
    padded = np.pad(phase, widths, mode="edge")
    crop = tuple(slice(w[0], w[0] + n) for w, n in zip(widths, phase.shape))
    lap = kernels.laplacian_kernel(shape, voxel_size, rfft=True)  # float32: single precision FFTs
    inv = np.zeros_like(lap)
    inv[lap != 0] = 1.0 / lap[lap != 0]
    spectrum = sfft.rfftn(_wrapped_laplacian(padded, voxel_size), workers=workers)
    spectrum *= inv
    out = sfft.irfftn(spectrum, s=shape, workers=workers)
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
        d = np.abs(wrap(np.roll(phase, -1, ax) - phase))
        np.maximum(worst, d, out=worst)
        np.maximum(worst, np.roll(d, 1, ax), out=worst)
    return (1.0 - worst / np.pi).astype(np.float32)


def unwrap_laplacian_echoes(phase, voxel_size, *, pad=8, workers=None):
    """Laplacian unwrapping of a multi-echo phase through consecutive echo differences.

    The first echo is unwrapped with :func:`unwrap_laplacian`, then each difference of
    consecutive echoes, ``∠(e^{iφ_e} e^{−iφ_{e−1}})``, and the differences are accumulated:
    ``u_e = u_1 + Σ_{k≤e} Δu_k``.  The wrapped-phase Laplacian identity is exact only where
    the phase changes little between voxels; at long echo times it does not (next to bone
    and air the phase of a late echo can change by radians per voxel even at 1 mm), and the
    errors it then makes are not harmonic, so background removal cannot remove them.
    The first echo and the ΔTE-spaced differences stay well sampled.  Each ``u_e`` is the
    true phase up to a harmonic function, as with per-echo Laplacian unwrapping.
    """
    phase = np.asarray(phase, dtype=np.float32)
    out = [unwrap_laplacian(phase[..., 0], voxel_size, pad=pad, workers=workers)]
    for e in range(1, phase.shape[-1]):
        step = wrap(phase[..., e] - phase[..., e - 1])
        out.append(out[-1] + unwrap_laplacian(step, voxel_size, pad=pad, workers=workers))
    return np.stack(out, axis=-1)


#: Unwrapping methods whose work is threaded (FFTs with ``workers``); ROMEO's region growing
#: and scikit-image's unwrapping run on one core, so a scheduler can run other steps beside them.
THREADED_METHODS = ("laplacian",)


def unwrap_echoes(phase, *, method="laplacian", voxel_size, mag=None, tes=None, mask=None, workers=None,
                  **params):
    """Unwrap every echo of a 4D phase; returns (unwrapped 4D, phase-quality map).

    The quality map is ROMEO's voxel quality of the first echo for every method when the
    magnitude is given (:func:`qsmprep.qsm.romeo.voxel_quality`), else
    :func:`phase_gradient_quality`.

    ``laplacian``: :func:`unwrap_laplacian_echoes`; ``romeo``: quality-guided region growing
    with temporal unwrapping (:func:`qsmprep.qsm.romeo.unwrap_romeo`, whose quality map is
    returned); ``skimage``: :func:`unwrap_skimage` per echo, each echo's global 2π multiple
    matched to the TE-scaled first echo.
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    if method == "laplacian":
        return unwrap_laplacian_echoes(phase, voxel_size, workers=workers, **params), _quality(phase, mag, tes)
    if method == "romeo":
        from qsmprep.qsm.romeo import unwrap_romeo

        return unwrap_romeo(phase, mag, tes, mask=mask, **params)
    if method != "skimage":
        raise ValueError(f"unknown unwrapping method {method!r}; use laplacian, romeo or skimage")
    out = np.stack([unwrap_skimage(phase[..., e], mask=mask) for e in range(phase.shape[-1])], axis=-1)
    if tes is not None and phase.shape[-1] > 1:
        region = np.ones(phase.shape[:3], bool) if mask is None else np.asarray(mask, bool)
        for e in range(1, phase.shape[-1]):
            predicted = out[..., 0] * (tes[e] / tes[0])
            out[..., e] -= 2 * np.pi * np.round(np.median((out[..., e] - predicted)[region]) / (2 * np.pi))
    return out, _quality(phase, mag, tes)


def _quality(phase, mag, tes):
    """The quality map for mask refinement: ROMEO's voxel quality (phase gradient, echo
    coherence, magnitude) where the magnitude is known, else :func:`phase_gradient_quality`."""
    if mag is None:
        return phase_gradient_quality(phase)
    from qsmprep.qsm.romeo import voxel_quality

    return voxel_quality(phase, mag, tes)
