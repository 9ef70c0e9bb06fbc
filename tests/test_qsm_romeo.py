"""ROMEO-style region-growing unwrapping against ground truth."""

import numpy as np
import pytest

from qsmprep.qsm import kernels
from qsmprep.qsm.romeo import edge_quality, unwrap_romeo, unwrap_romeo_volume
from qsmprep.qsm.unwrap import unwrap_echoes, unwrap_laplacian_echoes


def wrong_fraction(unwrapped, truth, mask):
    """Fraction of voxels off by a 2π multiple other than the region's common one."""
    k = np.round((unwrapped - truth) / (2 * np.pi)).astype(int)[mask]
    _, counts = np.unique(k, return_counts=True)
    return 1.0 - counts.max() / k.size


def _wrap(x):
    return np.angle(np.exp(1j * x))


def test_single_volume_exact_on_smooth_phase():
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 36, 30)], indexing="ij")
    truth = 15 * np.exp(-(x**2 + y**2 + z**2) / 0.4) + 4 * x * y
    out, quality = unwrap_romeo_volume(_wrap(truth).astype(np.float32))
    assert wrong_fraction(out, truth, np.ones(truth.shape, bool)) == 0.0
    assert quality.min() >= 0 and quality.max() <= 1
    q = edge_quality(_wrap(truth))
    assert q.shape == (3,) + truth.shape and np.all(q[0, -1] == 0)  # no edge beyond the last plane


def test_air_cavity_with_six_wraps_per_ten_voxels():
    """A sphere of air (+9.4 ppm) in tissue; the last echo has ≥ 6 wraps per 10 voxels next to it."""
    n, vs, b0 = 64, (1.0, 1.0, 1.0), 3.0
    x, y, z = np.meshgrid(*[np.arange(n) - n / 2 for _ in range(3)], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    chi = np.where(r < 7, 9.4, 0.0)
    big = (2 * n,) * 3
    pad = np.zeros(big)
    pad[:n, :n, :n] = chi
    field = np.real(np.fft.ifftn(np.fft.fftn(pad) * kernels.dipole_kernel(big, vs)))[:n, :n, :n]
    tes = 0.00075 * np.array([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])
    offset = 0.5 * x / n
    truth = offset[..., None] + 2 * np.pi * kernels.GAMMA_BAR_MHZ_PER_T * b0 * field[..., None] * tes
    tissue = (r >= 8) & (r < 28)
    near = tissue & (r < 14)
    grad = np.abs(np.diff(truth[..., -1], axis=2))[near[:, :, 1:] & near[:, :, :-1]]
    assert np.percentile(grad, 99) * 10 / (2 * np.pi) >= 6  # ≥ 6 wraps per 10 voxels
    mag = np.where(tissue, 1.0, 0.0)[..., None] * np.exp(-20 * tes)
    out, quality = unwrap_romeo(_wrap(truth).astype(np.float32), mag, tes, mask=tissue)
    for e in range(len(tes)):
        assert wrong_fraction(out[..., e], truth[..., e], tissue) < 0.01, e
    # the Laplacian scheme, for the record: exact only up to a harmonic function, so compare
    # the phase change between neighbours, which a harmonic offset barely moves
    lap = unwrap_laplacian_echoes(_wrap(truth).astype(np.float32), vs)
    d_lap = np.diff(lap[..., -1], axis=0)[tissue[1:] & tissue[:-1]]
    d_true = np.diff(truth[..., -1], axis=0)[tissue[1:] & tissue[:-1]]
    print("laplacian: median |error of the neighbour difference| at the last echo:",
          float(np.median(np.abs(d_lap - d_true))))


@pytest.mark.parametrize("echo", [0, 1, 2, 3])
def test_small_demo_tissue_under_one_percent_wrong(small_phantom, small_gre, echo):
    """Brain tissue of the 3 mm demo (the CSF band along the skull excluded).

    Measured in the whole true brain mask including that band: 0.07, 0.38, 0.97, 1.5 % for
    echoes 1-4.  There the truth itself is ambiguous: intravoxel dephasing next to bone
    moves the noise-free signal's phase ~2 rad (median) away from the voxel-mean field's
    phase, so "the nearest 2π multiple" is a coin toss.  In tissue: 0.0, 0.06, 0.11, 0.13 %;
    in the pipeline's quality-refined brain mask (what background removal sees): ≤ 0.002 %.
    """
    ph, (sig, offset) = small_phantom, small_gre
    from qsmprep.demo import simulate_gre

    clean, _ = simulate_gre(ph, snr=np.inf, seed=0)
    model = 2 * np.pi * kernels.GAMMA_BAR_MHZ_PER_T * ph.b0 * ph.total_field[..., None] * ph.tes + offset[..., None]
    # ground truth = the noise-free signal's phase, unwrapped to the nearest model phase
    truth = np.angle(clean) + 2 * np.pi * np.round((model - np.angle(clean)) / (2 * np.pi))
    out, quality = unwrap_echoes(np.angle(sig), method="romeo", voxel_size=ph.voxel_size, mag=np.abs(sig),
                                 tes=ph.tes, mask=ph.brain_mask)
    tissue = ph.brain_mask & (ph.labels != 4)
    assert wrong_fraction(out[..., echo], truth[..., echo], tissue) < 0.01
    assert wrong_fraction(out[..., echo], truth[..., echo], ph.brain_mask) < 0.02
    assert quality.shape == ph.chi.shape
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.masking import brain_mask

    noise = fit_field(out, np.abs(sig), ph.tes, ph.b0)["noise"]
    tight, _, _ = brain_mask(np.sqrt((np.abs(sig) ** 2).sum(-1)), ph.voxel_size, refine=True, quality=quality,
                             noise=noise)
    assert tight.sum() > 0.85 * ph.brain_mask.sum()
    assert wrong_fraction(out[..., echo], truth[..., echo], tight & ph.brain_mask) < 0.001


@pytest.mark.parametrize("combination", ["linear", "nonlinear"])
def test_small_demo_field_rmse_under_001_ppm(small_phantom, small_gre, combination):
    """Issue 3's field bar: ROMEO + echo fit vs the true total field, RMSE < 0.01 ppm inside the
    pipeline's quality-refined brain mask at SNR 100 (the field's constant, the reference
    frequency, is arbitrary and removed).  Measured: 0.0042 (linear), 0.0041 ppm (nonlinear);
    in the whole true brain mask, whose CSF band along the skull holds the ambiguous voxels
    described above, 0.087 ppm."""
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.masking import brain_mask

    ph, (sig, _) = small_phantom, small_gre
    mag = np.abs(sig)
    out, quality = unwrap_echoes(np.angle(sig), method="romeo", voxel_size=ph.voxel_size, mag=mag, tes=ph.tes)
    res = fit_field(out, mag, ph.tes, ph.b0, method=combination, phase_wrapped=np.angle(sig))
    tight, _, _ = brain_mask(np.sqrt((mag**2).sum(-1)), ph.voxel_size, refine=True, quality=quality,
                             noise=res["noise"])
    d = (res["field"] - ph.total_field)[tight]
    d -= np.median(d)
    assert np.sqrt(np.mean(d**2)) < 0.01
