"""Unit tests of the foundation numerics against analytic truth (seeded, explicit tolerances)."""

import numpy as np
import pytest

from qsmprep.qsm import kernels
from qsmprep.qsm.background import remove_background, vsharp
from qsmprep.qsm.echoes import echo_average, fit_field, r2star_map, t2star_from_r2star
from qsmprep.qsm.inversion import invert, tkd
from qsmprep.qsm.masking import brain_mask, otsu_threshold, threshold_mask
from qsmprep.qsm.phase import complex_to_polar, detect_phase_units, remove_phase_offset, scale_phase
from qsmprep.qsm.reference import reference_chi
from qsmprep.qsm.unwrap import phase_gradient_quality, unwrap_echoes, unwrap_laplacian, unwrap_skimage
from qsmprep.qsm.weights import average_echoes, weights_from_noise

GAMMA = kernels.GAMMA_BAR_MHZ_PER_T


def _wrap(x):
    return np.angle(np.exp(1j * x))


# --- kernels ---------------------------------------------------------------------------
def test_dipole_kernel_values_along_and_across_b0():
    d = kernels.dipole_kernel((32, 32, 32), (1.0, 1.0, 1.0), (0, 0, 1))
    assert d[0, 0, 5] == pytest.approx(-2 / 3)   # k ∥ B0
    assert d[5, 0, 0] == pytest.approx(1 / 3)    # k ⊥ B0
    assert d[0, 0, 0] == 0
    # oblique B0: D depends only on the angle between k and B0
    b = np.array([0.0, np.sin(0.3), np.cos(0.3)])
    dob = kernels.dipole_kernel((32, 32, 32), (1.0, 1.0, 1.0), b)
    k = np.array([0.0, 3.0, 4.0]) / 32
    expected = 1 / 3 - (k @ b) ** 2 / (k @ k)
    assert dob[0, 3, 4] == pytest.approx(expected, rel=1e-5)
    # anisotropic voxels: physical frequencies
    da = kernels.dipole_kernel((32, 32, 16), (1.0, 1.0, 2.0), (0, 0, 1))
    kx, kz = 1 / 32, 1 / 32  # index (1, 0, 1): kx = 1/(32·1 mm), kz = 1/(16·2 mm)
    assert da[1, 0, 1] == pytest.approx(1 / 3 - kz**2 / (kx**2 + kz**2), rel=1e-5)


def test_b0_direction_from_oblique_affine():
    ang = np.deg2rad(25)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]]) * 1.5
    b = kernels.b0_direction(aff)
    assert np.linalg.norm(b) == pytest.approx(1.0)
    rot = aff[:3, :3] / 1.5
    assert rot @ b == pytest.approx([0, 0, 1], abs=1e-9)
    assert kernels.voxel_sizes(aff) == pytest.approx((1.5, 1.5, 1.5))


def test_gradient_divergence_adjoint_and_smv():
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((9, 8, 7)), rng.standard_normal((3, 9, 8, 7))
    vs = (1.0, 0.7, 2.0)
    assert np.sum(kernels.gradient(x, vs) * g) == pytest.approx(-np.sum(x * kernels.divergence(g, vs)), rel=1e-10)
    s = kernels.smv_kernel((24, 24, 24), (1, 1, 1), 4.0)
    assert s[0, 0, 0] == pytest.approx(1.0)  # normalised ball: unit DC gain
    # smoothing a constant keeps it; the SMV of a linear ramp is the ramp (mean value property)
    ramp = np.arange(24, dtype=float)[:, None, None] * np.ones((24, 24, 24))
    sm = np.real(np.fft.ifftn(np.fft.fftn(ramp) * s))
    assert np.allclose(sm[8:16, 8:16, 8:16], ramp[8:16, 8:16, 8:16], atol=1e-8)


# --- phase -----------------------------------------------------------------------------
def test_scale_phase_int12_int12signed_uint16_radians():
    rng = np.random.default_rng(1)
    phi = rng.uniform(-np.pi, np.pi, 1000)
    int12 = np.round((phi + np.pi) / (2 * np.pi) * 4096).astype(int) % 4096
    assert detect_phase_units(int12)[0] == "int12"
    assert np.abs(_wrap(scale_phase(int12) - phi)).max() < 2 * np.pi / 4096
    signed = np.round((phi + np.pi) / (2 * np.pi) * 8192).astype(int) % 8192 - 4096  # -4096..4095
    assert detect_phase_units(signed)[0] == "int12-signed"
    assert np.abs(_wrap(scale_phase(signed) - phi)).max() < 2 * np.pi / 8192
    u16 = np.round((phi + np.pi) / (2 * np.pi) * 65536).astype(int) % 65536
    assert np.abs(_wrap(scale_phase(u16, units="uint16") - phi)).max() < 1e-3
    with pytest.raises(ValueError, match="not radians"):  # radians beyond ±2π are not radians
        scale_phase(phi + 3 * np.pi, units="radians")
    rad = scale_phase(phi + np.pi, units="radians")  # 0..2π radians are rewrapped
    assert detect_phase_units(phi)[0] == "radians"
    assert np.abs(_wrap(scale_phase(phi, units="radians") - phi)).max() < 1e-6
    assert rad.dtype == np.float32 and rad.min() >= -np.pi and rad.max() < np.pi
    with pytest.raises(ValueError, match="NaN"):
        scale_phase(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="outside int12"):
        scale_phase(np.array([0, 5000]), units="int12")


def test_complex_to_polar():
    z = np.array([3 + 4j, -1 - 1j])
    mag, ph = complex_to_polar(z.real, z.imag)
    assert mag == pytest.approx([5, np.sqrt(2)]) and ph == pytest.approx(np.angle(z))


def test_phase_offset_removal_mcpc3ds():
    shape, tes = (24, 24, 24), np.array([0.004, 0.008, 0.012])
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
    phi0 = 1.5 * x - 0.3 * y * y + 0.5  # coil phase: smooth over the 72 mm field of view
    omega = 2 * np.pi * 20 * (1 + 0.3 * z)  # rad/s
    phase = _wrap(phi0[..., None] + omega[..., None] * tes)
    mag = np.ones(shape + (3,))
    corrected, off = remove_phase_offset(phase, mag, tes, voxel_size=(3, 3, 3))
    inner = (slice(4, -4),) * 3
    assert np.abs(_wrap(off - phi0))[inner].max() < 0.05
    assert np.abs(_wrap(corrected - omega[..., None] * tes))[inner].max() < 0.05


# --- unwrapping -------------------------------------------------------------------------
def _smooth_phase(shape=(40, 44, 36), amp=12.0):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return amp * np.exp(-(x**2 + y**2 + z**2) / 0.3) + 3 * x * y


def test_unwrap_laplacian_recovers_laplacian_of_true_phase():
    true = _smooth_phase(amp=20.0)
    u = unwrap_laplacian(_wrap(true), (1.0, 1.0, 1.0))
    # exact up to a harmonic function: the discrete Laplacians agree inside
    lap = kernels.laplacian_kernel(true.shape, (1, 1, 1))
    lap_true = np.real(np.fft.ifftn(np.fft.fftn(true) * lap))
    lap_u = np.real(np.fft.ifftn(np.fft.fftn(u.astype(float)) * lap))
    inner = (slice(3, -3),) * 3
    # (cos ∇²sin − sin ∇²cos is exact for the continuous Laplacian, approximately for the
    # discrete one; a wrap left in place would leave an error of order 2π per voxel²)
    assert np.abs(lap_u - lap_true)[inner].max() < 0.5
    assert np.ptp(true) > 20  # many wraps


def test_laplacian_echo_differences_beat_per_echo_unwrapping_at_long_te():
    base = _smooth_phase(amp=7.0)  # the first echo: well sampled
    tes = np.array([1.0, 2.0, 3.0, 4.0])
    truth = base[..., None] * tes  # the last echo changes by up to ~2.6 rad per voxel
    lap = kernels.laplacian_kernel(base.shape, (1, 1, 1))

    def lap_err(u, e):
        d = np.real(np.fft.ifftn(np.fft.fftn(u.astype(float) - truth[..., e]) * lap))
        return np.abs(d[3:-3, 3:-3, 3:-3]).max()

    u = unwrap_echoes(_wrap(truth), voxel_size=(1, 1, 1))[0]
    per_echo = unwrap_laplacian(_wrap(truth[..., -1]), (1, 1, 1))
    # measured: 0.012-0.049 for the echo-difference scheme, 0.66 per echo at the last echo
    assert all(lap_err(u[..., e], e) < 0.1 for e in range(4))
    assert lap_err(per_echo, 3) > 0.5


def test_unwrap_skimage_exact_up_to_2pi():
    true = _smooth_phase()
    u = unwrap_skimage(_wrap(true))
    k = np.round((u - true) / (2 * np.pi))
    assert np.all(k == k.flat[0]) and np.abs(u - true - 2 * np.pi * k).max() < 1e-4


def test_phase_gradient_quality_flags_undersampled_voxels():
    true = _smooth_phase(amp=6.0)  # at most ~0.5 rad per voxel
    steep = np.zeros_like(true)
    steep[20:, :, :] = np.arange(true.shape[0] - 20)[:, None, None] * 2.8  # 2.8 rad/voxel
    q = phase_gradient_quality(_wrap(true + steep)[..., None])
    assert q[5:15, 5:-5, 5:-5].min() > 0.8 and q[25:35].max() < 0.3
    _, quality = unwrap_echoes(_wrap(true)[..., None], voxel_size=(1, 1, 1))
    assert quality.shape == true.shape


# --- echoes -----------------------------------------------------------------------------
def test_linear_field_fit_ppm_and_offset():
    rng = np.random.default_rng(3)
    tes, b0 = np.array([0.004, 0.009, 0.014, 0.019]), 3.0
    field = rng.uniform(-0.5, 0.5, (6, 6, 6))
    offset = rng.uniform(-1, 1, (6, 6, 6))
    phase = offset[..., None] + 2 * np.pi * GAMMA * b0 * field[..., None] * tes
    mag = np.exp(-20 * tes) * np.ones((6, 6, 6, 4))
    out = fit_field(phase, mag, tes, b0)
    assert out["field"] == pytest.approx(field, abs=1e-5)
    assert out["offset"] == pytest.approx(offset, abs=1e-4)
    per = fit_field(phase, mag, tes, b0, method="per-echo")
    assert per["echo_fields"] == pytest.approx(np.repeat(field[..., None], 4, -1), abs=1e-4)
    single = fit_field(phase[..., :1] - offset[..., None], mag[..., :1], tes[:1], b0, intercept=False)
    assert single["field"] == pytest.approx(field, abs=1e-5)
    # noise map: larger where the magnitude is lower
    noisy = phase + 0.01 * rng.standard_normal(phase.shape)
    mag2 = mag.copy()
    mag2[0] *= 0.2
    n = fit_field(noisy, mag2, tes, b0)["noise"]
    assert n[0].mean() > 3 * n[1:].mean()


def test_r2star_and_t2star():
    tes = np.array([0.004, 0.009, 0.014, 0.019])
    r2 = np.linspace(5, 80, 64).reshape(4, 4, 4)
    mag = 1000 * np.exp(-r2[..., None] * tes)
    r2s, reliable = r2star_map(mag, tes)
    assert r2s == pytest.approx(r2, rel=1e-4) and reliable.all()
    t2s = t2star_from_r2star(r2s)
    assert t2s == pytest.approx(1 / r2, rel=1e-4)
    assert t2star_from_r2star(np.zeros(3)) == pytest.approx([0.5] * 3)
    clipped, _ = r2star_map(1000 * np.exp(-900 * tes) * np.ones((2, 2, 2, 4)), tes, r2star_max=500)
    assert np.all(clipped == 500)


def test_echo_average():
    mag = np.stack([np.full((2, 2, 2), 3.0), np.full((2, 2, 2), 4.0)], -1)
    assert echo_average(mag) == pytest.approx(np.full((2, 2, 2), 5.0))
    assert echo_average(mag, method="mean") == pytest.approx(np.full((2, 2, 2), 3.5))


# --- masking ----------------------------------------------------------------------------
def test_threshold_mask_on_head_like_image():
    x, y, z = np.meshgrid(*[np.arange(48) - 23.5] * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    img = np.where(r < 15, 1.0, 0.0) + np.where((r > 18) & (r < 21), 1.0, 0.0)  # brain + scalp ring
    img[24, 24, 24] = 0.0  # a dark vessel inside: filled
    img = np.abs(img + 0.02 * np.random.default_rng(4).standard_normal(img.shape))  # Rician-like
    mask, thr = threshold_mask(img, (1.0, 1.0, 1.0))
    truth = r < 15
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.97 and mask[24, 24, 24] and 0.05 < thr < 0.95
    assert otsu_threshold(np.r_[np.zeros(100), np.ones(100)]) == pytest.approx(0.5, abs=0.01)
    quality = np.where(x > 10, 0.0, 1.0)
    tight, filled, info = brain_mask(img, (1, 1, 1), refine=True, quality=quality)
    assert not tight[x > 10].any() and filled[x > 10].any() and info["refine"]


# --- background removal -----------------------------------------------------------------
def _sphere_fields(shape=(64, 64, 64), vs=(1.0, 1.0, 1.0)):
    """Local: a small sphere of χ inside the mask; background: a big sphere outside."""
    x, y, z = np.meshgrid(*[(np.arange(n) - n / 2) * v for n, v in zip(shape, vs)], indexing="ij")
    mask = x**2 + y**2 + z**2 < 22**2
    chi_in = 0.1 * ((x - 4) ** 2 + y**2 + (z + 3) ** 2 < 5**2)
    chi_out = 5.0 * ((x - 30) ** 2 + y**2 + (z - 20) ** 2 < 6**2)

    def field(chi):
        d = kernels.dipole_kernel(tuple(2 * n for n in shape), vs)
        pad = np.zeros(tuple(2 * n for n in shape))
        pad[: shape[0], : shape[1], : shape[2]] = chi
        return np.real(np.fft.ifftn(np.fft.fftn(pad) * d))[: shape[0], : shape[1], : shape[2]]

    return mask, field(chi_in), field(chi_out)


def test_vsharp_removes_background_keeps_local():
    mask, local, background = _sphere_fields()
    out, eroded = vsharp(local + background, mask, (1.0, 1.0, 1.0), radius_max_mm=8.0)
    assert eroded.sum() > 0.7 * mask.sum() and not (eroded & ~mask).any()
    a = out[eroded] - out[eroded].mean()
    b = local[eroded] - local[eroded].mean()
    bg = background[eroded] - background[eroded].mean()
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.2 * b.std()
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.05 * bg.std()
    out2, eroded2, info = remove_background(local + background, mask, (1.0, 1.0, 1.0), radius_max_mm=8.0)
    assert info["method"] == "vsharp" and abs(out2[eroded2].mean()) < 1e-6


# --- inversion and reference ------------------------------------------------------------
def _sphere_of_chi(n=64, radius=8, chi=0.2):
    """Field (ppm) of a χ sphere in a 64³ grid, zero-padded twice; mask r < 24; r² grid."""
    x, y, z = np.meshgrid(*[np.arange(n) - n / 2 for _ in range(3)], indexing="ij")
    r2 = x**2 + y**2 + z**2
    big = (2 * n,) * 3
    pad = np.zeros(big)
    pad[:n, :n, :n] = chi * (r2 < radius**2)
    field = np.real(np.fft.ifftn(np.fft.fftn(pad) * kernels.dipole_kernel(big, (1, 1, 1))))[:n, :n, :n]
    return field, r2 < 24**2, r2


def test_tkd_recovers_sphere_and_corrects_underestimation():
    field, mask, r2 = _sphere_of_chi()
    raw, factor = tkd(field, mask, (1, 1, 1), (0, 0, 1), threshold=0.19, correct=False,
                     return_factor=True)
    fixed, factor = tkd(field, mask, (1, 1, 1), (0, 0, 1), threshold=0.19, correct=True, return_factor=True)
    assert isinstance(tkd(field, mask, (1, 1, 1), (0, 0, 1)), np.ndarray)
    inside = r2 < 5**2
    assert 0 < factor < 1
    assert abs(fixed[inside].mean() - 0.2) < abs(raw[inside].mean() - 0.2)
    assert fixed[inside].mean() == pytest.approx(0.2, rel=0.1)
    chi_out, info = invert(field, mask, (1, 1, 1), (0, 0, 1), method="tkd", threshold=0.19)
    assert info["correction_factor"] == pytest.approx(factor) and chi_out.dtype == np.float32


def test_reference_chi():
    chi = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    mask = np.ones((3, 3, 3), bool)
    out, info = reference_chi(chi, mask)
    assert out[mask].mean() == pytest.approx(0, abs=1e-5) and info["ReferenceRegion"] == "whole-brain"
    roi = np.zeros_like(mask)
    roi[0, 0, 0] = True
    out, info = reference_chi(chi, mask, method="roi", roi=roi)
    assert out[0, 0, 0] == 0 and info["ReferenceVoxels"] == 1
    out, info = reference_chi(chi, mask, method="none")
    assert np.array_equal(out, chi) and info["ReferenceOffset"] == 0.0
    with pytest.raises(ValueError, match="needs a reference ROI"):
        reference_chi(chi, mask, method="roi")


def test_weights_and_echo_average():
    chis = np.stack([np.full((2, 2, 2), v) for v in (1.0, 2.0, 3.0)], -1)
    assert average_echoes(chis) == pytest.approx(np.full((2, 2, 2), 2.0))
    assert average_echoes(chis, [0, 0, 1]) == pytest.approx(np.full((2, 2, 2), 3.0))
    with pytest.raises(ValueError):
        average_echoes(chis, [1, 1])
    w = weights_from_noise(np.array([1.0, 2.0, 4.0]).reshape(1, 1, 3), np.ones((1, 1, 3), bool))
    assert w.mean() == pytest.approx(1.0) and w[0, 0, 0] > w[0, 0, 2]


def test_arlo_matches_truth_and_needs_equal_spacing():
    from qsmprep.qsm.echoes import r2star_arlo

    tes = np.array([0.004, 0.008, 0.012, 0.016, 0.020, 0.024])
    r2 = np.linspace(10, 60, 27).reshape(3, 3, 3)
    mag = np.exp(-r2[..., None] * tes)
    est = r2star_arlo(mag, tes)
    assert est == pytest.approx(r2, rel=0.02)  # Simpson's-rule bias is small at R2*·ΔTE ≤ 0.24
    r2s, _ = r2star_map(mag, tes, method="arlo")
    assert r2s == pytest.approx(r2, rel=0.02)
    with pytest.raises(ValueError, match="equally spaced"):
        r2star_arlo(mag[..., :4], np.array([0.004, 0.008, 0.013, 0.016]))
    with pytest.raises(ValueError, match="three echoes"):
        r2star_arlo(mag[..., :2], tes[:2])


def test_tikhonov_recovers_sphere_and_validates():
    field, mask, r2 = _sphere_of_chi()
    out, info = invert(field, mask, (1, 1, 1), (0, 0, 1), method="tikhonov", lambda_=0.005)
    inside = r2 < 5**2
    assert out[inside].mean() - out[mask & ~inside].mean() == pytest.approx(0.2, rel=0.15)
    assert info == {"method": "tikhonov", "lambda": 0.005, "lambda_rule": "fixed", "pad": 16}
    assert np.all(np.isfinite(out))
    # stronger regularisation shrinks the contrast
    strong, _ = invert(field, mask, (1, 1, 1), (0, 0, 1), method="tikhonov", lambda_=0.5)
    assert strong[inside].mean() < out[inside].mean()
    with pytest.raises(ValueError, match="unknown tikhonov parameter"):
        invert(field, mask, (1, 1, 1), (0, 0, 1), method="tikhonov", threshold=0.2)


def test_detrend_removes_polynomial():
    from qsmprep.qsm.background import detrend

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 20)] * 3, indexing="ij")
    mask = x**2 + y**2 + z**2 < 0.8
    rng = np.random.default_rng(5)
    signal = 0.01 * rng.standard_normal(mask.shape)
    trend = 0.3 + 0.2 * x - 0.1 * y * z + 0.05 * z * z
    out = detrend(signal + trend, mask, order=2)
    resid = out[mask] - (signal[mask] - signal[mask].mean())
    assert np.abs(resid).max() < 0.01 and not out[~mask].any()
    lin = detrend(signal + trend, mask, order=1)
    assert np.abs(lin[mask] - signal[mask]).max() > 0.01  # a first-order fit leaves the quadratic


def test_method_defaults_follow_the_method():
    from qsmprep.config import mock_config

    cfg = mock_config(inversion="tikhonov")
    assert cfg.workflow.stages["inversion"].params == {"lambda_": 0.005, "lambda_rule": "fixed"}
    cfg = mock_config(inversion={"method": "tikhonov", "params": {"lambda_": 0.02}}, r2star="arlo")
    assert cfg.workflow.stages["inversion"].params == {"lambda_": 0.02, "lambda_rule": "fixed"}
    assert cfg.workflow.stages["r2star"].method == "arlo"


def test_nonlinear_complex_fit_matches_truth_with_calibrated_noise():
    rng = np.random.default_rng(7)
    tes, b0 = np.array([0.004, 0.008, 0.012, 0.016, 0.020]), 3.0
    shape = (10, 10, 10)
    field = rng.uniform(-0.3, 0.3, shape)
    phi0 = rng.uniform(-1, 1, shape)
    omega = 2 * np.pi * GAMMA * b0 * field
    mag = 100 * np.exp(-30 * tes) * np.ones(shape + (5,))
    sig = mag * np.exp(1j * (phi0[..., None] + omega[..., None] * tes))
    sig = sig + 1.0 * (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape))
    true_unwrapped = phi0[..., None] + omega[..., None] * tes
    unwrapped = np.angle(sig) + 2 * np.pi * np.round((true_unwrapped - np.angle(sig)) / (2 * np.pi))
    lin = fit_field(unwrapped, np.abs(sig), tes, b0)
    nl = fit_field(unwrapped, np.abs(sig), tes, b0, method="nonlinear", phase_wrapped=np.angle(sig))
    err_nl = np.sqrt(np.mean((nl["field"] - field) ** 2))
    assert err_nl < 0.005 and err_nl <= 1.05 * np.sqrt(np.mean((lin["field"] - field) ** 2))
    assert np.abs(np.angle(np.exp(1j * (nl["offset"] - phi0)))).mean() < 0.05
    # the noise map is calibrated: the standardised errors have unit spread
    z = (nl["field"] - field) / nl["noise"]
    assert 0.7 < z.std() < 1.3


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
@pytest.mark.parametrize("air", [0.0, 0.6])
def test_field_noise_is_calibrated_whatever_the_air_around_the_head(method, air):
    """The noise map is the fit's true standard error, with or without air in the field of view:
    σ² is pooled over the voxels with signal, not over air's random phase (which put it 1.44 ×
    too high on the 1 mm demo), and corrected for the median of χ²₄/4 (without it, 16 % low)."""
    rng = np.random.default_rng(11)
    tes, b0, n = np.array([0.004, 0.0085, 0.013, 0.0175, 0.022, 0.0265]), 3.0, 100_000
    tissue = np.arange(n) >= int(air * n)
    field = rng.uniform(-0.1, 0.1, n)
    sig = np.where(tissue, 50.0, 0.0)[:, None] * np.exp(1j * 2 * np.pi * GAMMA * b0 * field[:, None] * tes)
    sig = sig + rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape)
    shape = (n // 100, 10, 10, tes.size)
    out = fit_field(np.unwrap(np.angle(sig), axis=-1).reshape(shape), np.abs(sig).reshape(shape), tes, b0,
                    method=method, phase_wrapped=np.angle(sig).reshape(shape))
    z = (out["field"].ravel() - field) / out["noise"].ravel()
    assert 0.96 < z[tissue].std() < 1.04


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
def test_field_uncertainty_grows_only_where_the_phase_misfits(method):
    """Voxels of two compartments (phase not linear in TE) get a larger standard error; voxels that follow
    the model keep the noise's, even with half the grid air (random phase) around them."""
    rng = np.random.default_rng(3)
    tes, b0 = np.array([0.004, 0.0085, 0.013, 0.0175, 0.022, 0.0265]), 3.0
    shape = (20, 20, 20)
    field = rng.uniform(-0.1, 0.1, shape)
    omega = 2 * np.pi * GAMMA * b0 * field
    sig = 100 * np.exp(-25 * tes) * np.exp(1j * omega[..., None] * tes)
    mixed = np.zeros(shape, bool)
    mixed[:10, :10, 10:] = True          # a quarter of the tissue: a second compartment 0.3 ppm away
    sig[mixed] = 0.6 * sig[mixed] + 0.4 * sig[mixed] * np.exp(1j * 2 * np.pi * GAMMA * b0 * 0.3 * tes)
    air = np.zeros(shape, bool)
    air[10:] = True
    sig[air] = 0
    sig = sig + 1.0 * (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape))
    unwrapped = np.unwrap(np.angle(sig), axis=-1)
    out = fit_field(unwrapped, np.abs(sig), tes, b0, method=method, phase_wrapped=np.angle(sig))
    ratio = (out["uncertainty"] / out["noise"]) ** 2
    clean = ~mixed & ~air
    assert np.median(ratio[clean]) < 1.3 and np.mean(ratio[clean] > 4) < 0.02   # noise only: ~χ²₄/4, floored at 1
    assert np.median(ratio[mixed & ~air]) > 10                                # the misfit raises the error
    assert np.all(out["uncertainty"] >= out["noise"]) and out["misfit_reference_voxels"] == (~air).sum()  # not air
    # a mask as the reference gives the same calibration; fewer than three echoes leave no residual
    masked = fit_field(unwrapped, np.abs(sig), tes, b0, method=method, phase_wrapped=np.angle(sig), mask=~air)
    assert np.median((masked["uncertainty"] / masked["noise"])[clean] ** 2) < 1.3
    two = fit_field(unwrapped[..., :2], np.abs(sig)[..., :2], tes[:2], b0)
    assert np.array_equal(two["uncertainty"], two["noise"]) and two["misfit_reference_voxels"] == 0


def test_csf_reference_finds_ventricles(small_phantom, small_gre):
    from qsmprep.qsm.reference import csf_mask

    ph, (sig, _) = small_phantom, small_gre
    r2, _ = r2star_map(np.abs(sig), ph.tes)
    csf = csf_mask(r2, ph.brain_mask, ph.voxel_size)
    ventricles = np.isin(ph.labels, (7, 8))
    assert csf.sum() >= 8 and (csf & ventricles).sum() / csf.sum() > 0.9
    chi = ph.chi.copy()
    out, info = reference_chi(chi, ph.brain_mask, method="csf", r2star=r2, voxel_size=ph.voxel_size)
    assert info["ReferenceRegion"] == "csf" and info["ReferenceVoxels"] == csf.sum()
    assert abs(out[csf].mean()) < 1e-6
    with pytest.raises(ValueError, match="needs the R2"):
        reference_chi(chi, ph.brain_mask, method="csf")
    with pytest.raises(ValueError, match="no ventricular CSF"):
        csf_mask(np.full(ph.chi.shape, 30.0), ph.brain_mask, ph.voxel_size)
