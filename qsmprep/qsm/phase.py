"""Phase preparation: units to radians, complex to polar, receive phase-offset removal."""

from __future__ import annotations

import numpy as np

#: name -> (min, max) of the raw integer range that maps linearly onto [-π, π)
PHASE_RANGES = {
    "int12": (0, 4096),          # Siemens 0..4095
    "int12-signed": (-4096, 4096),  # Siemens -4096..4095 (two's complement export)
    "uint16": (0, 65536),
}

#: Every unit :func:`scale_phase` takes (``auto`` decides among them, see :func:`detect_phase_units`).
PHASE_UNITS = ("auto", "radians", "degrees", *PHASE_RANGES, "rescale")

#: A wrapped phase covers (nearly) its whole period: the values must span at least this
#: fraction of it (for radians 0.9 · 2π = 1.8π) before ``auto`` accepts a unit.
MIN_SPAN_FRACTION = 0.9
#: Tolerance on the ends of the radians and degrees ranges (float rounding in exports).
RANGE_TOLERANCE = {"radians": 1e-3, "degrees": 0.05}
#: ``rescale`` is chosen automatically only when the histogram of the values (this many
#: bins over their range) has no bin below ``UNIFORM_MIN_BIN`` × the mean bin count...
UNIFORM_BINS = 64
UNIFORM_MIN_BIN = 0.2
#: ... and there are at least this many distinct values (a scaled phase is dense).
UNIFORM_MIN_DISTINCT = 256


def wrap(phase):
    """Wrap a phase (radians) into [-π, π), keeping its floating dtype.

    ``x − 2π·floor((x + π) / 2π)``: the same angle as ``np.angle(np.exp(1j·x))`` without
    the complex intermediate (several times faster on large volumes).

    >>> wrap(np.array([0.5, 4.0, -4.0, np.pi])).round(4).tolist()
    [0.5, -2.2832, 2.2832, -3.1416]
    """
    x = np.asarray(phase)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    two_pi = x.dtype.type(2 * np.pi)
    # np.asarray: an array (not a NumPy scalar) for 0-d input too
    out = np.asarray(x - two_pi * np.floor((x + x.dtype.type(np.pi)) / two_pi))
    # float rounding can land a value a hair outside the interval
    out[out >= np.pi] -= two_pi
    out[out < -np.pi] += two_pi
    return out


def _check_finite(data):
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ValueError("phase contains NaN or infinite values")
    return data


class PhaseUnitsError(ValueError):
    """``auto`` cannot tell the phase units unambiguously (the message says what to pass)."""


def _is_integer_valued(data):
    if np.issubdtype(data.dtype, np.integer):
        return True
    sample = data.ravel()[:: max(1, data.size // 200_000)]  # a strided sample: exact for real exports
    return bool(np.all(sample == np.rint(sample))) and bool(np.all(data == np.rint(data)))


def looks_like_scaled_phase(data):
    """Whether ``data`` looks like a linearly scaled wrapped phase.

    Wrapped phase (background air is pure noise; the tissue phase wraps many times over
    the echoes) has a dense histogram spread over its whole range.  True when the
    :data:`UNIFORM_BINS`-bin histogram over ``[min, max]`` has no bin below
    :data:`UNIFORM_MIN_BIN` × the mean count and there are at least
    :data:`UNIFORM_MIN_DISTINCT` distinct values (label maps, masks, and images of another
    kind fail it).

    >>> rng = np.random.default_rng(0)
    >>> looks_like_scaled_phase(rng.uniform(-0.0037, 0.0037, 10000))
    True
    >>> looks_like_scaled_phase(rng.normal(0, 1, 10000))  # a peaked histogram
    False
    """
    data = np.asarray(data)
    lo, hi = float(np.min(data)), float(np.max(data))
    if not hi > lo:
        return False
    sample = data.ravel()[:: max(1, data.size // 2_000_000)]
    counts, _ = np.histogram(sample, bins=UNIFORM_BINS, range=(lo, hi))
    if counts.min() < UNIFORM_MIN_BIN * counts.mean():
        return False
    return np.unique(sample[: 200_000]).size >= UNIFORM_MIN_DISTINCT or np.unique(sample).size >= UNIFORM_MIN_DISTINCT


def detect_phase_units(data, *, allow_rescale=True):
    """Decide the units of a (multi-echo) phase image from its values, or refuse.

    The rule (README, "Your data"); ``span`` = max − min of all values, "period" = the
    encoding's full range (2π, 360, 4096, 8192, 65536):

    1. **radians** if every value is within [−π − ε, π + ε] (ε = 1e-3) *and* the span is
       ≥ 0.9 × 2π (= 1.8π): a wrapped phase covers its whole period;
    2. **degrees** if within [−180 − ε, 180 + ε] (ε = 0.05) and the span is ≥ 0.9 × 360;
    3. **int12** / **int12-signed** / **uint16** if every value is an integer within
       0..4095 / −4096..4095 (with a negative value) / 0..65535 and the span is ≥ 0.9 × the
       period;
    4. otherwise, if the values look like a linearly scaled wrapped phase
       (:func:`looks_like_scaled_phase`) and ``allow_rescale``: **rescale** (a linear map of
       the value range onto [−π, π), as ROMEO and QSMxT do for unknown scalings; the
       caller warns);
    5. otherwise :class:`PhaseUnitsError` naming the range found and ``--phase-units``.

    Returns ``(units, reason)``: the unit and a sentence saying which rule decided.

    >>> detect_phase_units(np.linspace(-3.1, 3.1, 100))[0]
    'radians'
    >>> detect_phase_units(np.arange(4096))[0]
    'int12'
    >>> detect_phase_units(np.arange(-4096, 4096))[0]
    'int12-signed'
    >>> detect_phase_units(np.linspace(-180, 179.9, 1000))[0]
    'degrees'
    >>> detect_phase_units(np.linspace(-0.0037, 0.0037, 1000))[0]
    'rescale'
    """
    data = _check_finite(data)
    lo, hi = float(np.min(data)), float(np.max(data))
    span = hi - lo
    frac = MIN_SPAN_FRACTION
    tol = RANGE_TOLERANCE
    found = f"values {lo:.6g}..{hi:.6g} (span {span:.6g})"
    if lo >= -np.pi - tol["radians"] and hi <= np.pi + tol["radians"]:
        if span >= frac * 2 * np.pi:
            return "radians", f"{found} lie within ±π and span ≥ 1.8π"
        small_span = (f"{found} lie within ±π but span less than 1.8π, so they are not a wrapped phase "
                      "in radians for certain (a short echo time, a small field of view or a scaled export "
                      "look alike)")
        if not allow_rescale or not looks_like_scaled_phase(data):
            raise PhaseUnitsError(small_span + "; if they are radians pass --phase-units radians, if they "
                                  "are a scaled phase pass --phase-units rescale")
    elif lo >= -180 - tol["degrees"] and hi <= 180 + tol["degrees"] and span >= frac * 360:
        return "degrees", f"{found} lie within ±180 and span ≥ 324"
    if _is_integer_valued(data):
        for units, (rlo, rhi) in PHASE_RANGES.items():
            if units == "int12-signed" and lo >= 0:
                continue
            if lo >= rlo and hi <= rhi - 1 and span >= frac * (rhi - rlo):
                return units, f"{found} are integers within {rlo}..{rhi - 1} spanning ≥ 90 % of it"
    if allow_rescale and looks_like_scaled_phase(data):
        return "rescale", (f"{found} fit no known unit but are spread evenly over their range, as a "
                           "linearly scaled wrapped phase is: mapped linearly onto [-π, π)")
    raise PhaseUnitsError(
        f"{found} fit no known phase unit (radians spanning ≥ 1.8π within ±π, degrees within ±180, "
        "integers 0..4095, -4096..4095 or 0..65535 spanning ≥ 90 % of the range) and do not look like a "
        "scaled wrapped phase; pass --phase-units {radians,degrees,int12,int12-signed,uint16,rescale}"
    )


def scale_phase(data, *, units="auto", value_range=None):
    """Phase in radians in [-π, π) as float32.

    ``units``: ``"auto"`` (see :func:`detect_phase_units`), ``"radians"`` (re-wrapped;
    values within ±2π), ``"degrees"`` (within ±360), ``"int12"``, ``"int12-signed"`` or
    ``"uint16"`` (linear map of the integer range), ``"rescale"`` (linear map of
    ``value_range`` — by default the data's own min..max — onto [-π, π)).  Pass the
    acquisition's range over all echoes as ``value_range`` so that every echo gets the
    same map (the scanner applies one scaling; a short first echo need not span it).
    """
    data = _check_finite(data)
    if units == "auto":
        units = detect_phase_units(data)[0]
    lo, hi = float(np.min(data)), float(np.max(data))
    # float64 arithmetic only for float64 input: integers (≤ 16 bits) and float32 are exact
    # enough in float32, which halves the time and memory of this step on 1 mm data
    ftype = np.float64 if data.dtype == np.float64 else np.float32
    values = np.asarray(data, dtype=ftype)
    if units == "radians":
        if lo < -2 * np.pi - 1e-3 or hi > 2 * np.pi + 1e-3:
            raise ValueError(f"phase range [{lo:g}, {hi:g}] is not radians (outside ±2π)")
        rad = values
    elif units == "degrees":
        if lo < -360 - 0.05 or hi > 360 + 0.05:
            raise ValueError(f"phase range [{lo:g}, {hi:g}] is not degrees (outside ±360)")
        rad = np.deg2rad(values)
    elif units in PHASE_RANGES:
        rlo, rhi = PHASE_RANGES[units]
        if lo < rlo or hi >= rhi:
            raise ValueError(f"phase range [{lo:g}, {hi:g}] is outside {units} [{rlo}, {rhi - 1}]")
        rad = (values - ftype(rlo)) * ftype(2 * np.pi / (rhi - rlo)) - ftype(np.pi)
    elif units == "rescale":
        vlo, vhi = (lo, hi) if value_range is None else (float(value_range[0]), float(value_range[1]))
        if not vhi > vlo:
            raise ValueError(f"cannot rescale a phase whose values are all {vlo:g}")
        if lo < vlo or hi > vhi:
            raise ValueError(f"phase range [{lo:g}, {hi:g}] is outside the rescale range [{vlo:g}, {vhi:g}]")
        rad = (np.asarray(data, dtype=np.float64) - vlo) * (2 * np.pi / (vhi - vlo)) - np.pi
    else:
        raise ValueError(f"unknown phase units {units!r}; use one of {', '.join(PHASE_UNITS)}")
    return wrap(rad).astype(np.float32, copy=False)


def complex_to_polar(real, imag):
    """(magnitude, phase in [-π, π)) of real and imaginary parts, float32."""
    z = np.asarray(real, dtype=np.float64) + 1j * np.asarray(imag, dtype=np.float64)
    return np.abs(z).astype(np.float32), np.angle(z).astype(np.float32)


def remove_phase_offset(phase, mag, tes, *, method="mcpc3ds", voxel_size=None, mask=None):
    """Remove the echo-independent receive phase offset φ0 from every echo.

    ``mcpc3ds``: MCPC-3D-S (Eckstein et al., MRM 2018) for echoes at TE1, TE2: the phase
    evolution between the first two echoes, ``Δφ = ∠(S2·S1*)``, gives φ0 = φ1 − TE1·Δφ/ΔTE
    (unwrapped via the complex ratio, so only ΔTE·Δf must stay within ±π); φ0 is smoothed
    in the complex domain with a Gaussian (σ ≈ 7 mm, as in the paper) to suppress noise.
    ``none`` returns the input.  Returns (corrected phase, φ0).
    """
    phase = np.asarray(phase, dtype=np.float32)
    if method == "none":
        return phase, np.zeros(phase.shape[:3], dtype=np.float32)
    if method != "mcpc3ds":
        raise ValueError(f"unknown phase offset method {method!r}; use mcpc3ds or none")
    tes = np.asarray(tes, dtype=np.float64)
    if phase.ndim != 4 or phase.shape[-1] < 2:
        raise ValueError("mcpc3ds needs at least two echoes")
    from scipy import ndimage

    mag = np.asarray(mag, dtype=np.float32)
    s1 = mag[..., 0] * np.exp(1j * phase[..., 0])
    s2 = mag[..., 1] * np.exp(1j * phase[..., 1])
    dphi = np.angle(s2 * np.conj(s1))
    phi0 = phase[..., 0] - tes[0] / (tes[1] - tes[0]) * dphi
    sigma_mm = 7.0
    vs = np.asarray(voxel_size if voxel_size is not None else (1.0, 1.0, 1.0), dtype=float)
    weight = mag[..., 0]
    z = weight * np.exp(1j * phi0)
    zs = ndimage.gaussian_filter(z.real, sigma_mm / vs) + 1j * ndimage.gaussian_filter(z.imag, sigma_mm / vs)
    phi0 = np.angle(zs).astype(np.float32)
    corrected = wrap((phase - phi0[..., None]).astype(np.float32))
    return corrected, phi0
