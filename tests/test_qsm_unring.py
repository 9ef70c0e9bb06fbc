"""Gibbs-ringing removal by local subvoxel shifts (qsmprep.qsm.unring) against analytic truth."""

import numpy as np
import pytest

from qsmprep.qsm.sampling import plan
from qsmprep.qsm.unring import unring, unring_as_planned


def _sampled_box(n, lo, hi):
    """A 1D box [lo, hi) (voxel i covers [i − ½, i + ½)) as a scanner sees it on an n-voxel grid:
    its exact Fourier coefficients at frequencies −n/2 … n/2 − 1 (the Nyquist one split evenly
    between ±n/2, which keeps the image real), and its exact voxel averages."""
    m = np.arange(-(n // 2), n // 2 + 1)
    f = m / n
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = np.where(m == 0, hi - lo, (np.exp(-2j * np.pi * f * lo) - np.exp(-2j * np.pi * f * hi))
                        / (2j * np.pi * np.where(m == 0, 1, f))) / n
    weight = np.where(np.abs(m) == n // 2, 0.5, 1.0)
    x = np.arange(n)
    sampled = np.real((weight * coef)[None, :] * np.exp(2j * np.pi * np.outer(x, f))).sum(axis=1)
    average = np.clip(np.minimum(x + 0.5, hi) - np.maximum(x - 0.5, lo), 0, 1)
    return sampled.astype(np.float32), average.astype(np.float32)


def _box3d(n=48, edges=((12.3, 30.6), (9.7, 33.2), (15.4, 27.9))):
    parts = [_sampled_box(n, lo, hi) for lo, hi in edges]
    sampled = np.einsum("i,j,k->ijk", *[p[0] for p in parts])
    average = np.einsum("i,j,k->ijk", *[p[1] for p in parts])
    return sampled, average


def test_the_sampled_box_is_what_a_truncated_fourier_series_gives():
    """The test's own truth: a box on a 64× finer grid (edges on its voxel boundaries), cropped
    in k-space to the coarse grid, is the analytic series."""
    fine, n, lo, hi = 64, 32, 7.25, 19.625
    xs = (np.arange(n * fine) + 0.5) / fine - 0.5  # sub-voxel centres, in coarse voxels
    k = np.fft.fft(((xs >= lo) & (xs < hi)).astype(float)) / fine
    m = np.fft.fftfreq(n, 1 / n).astype(int)
    coarse = k[m % (n * fine)] * np.exp(-2j * np.pi * m * (0.5 / fine - 0.5) / n)
    coarse[n // 2] = coarse[n // 2].real  # the Nyquist term split evenly between ±n/2
    sampled, average = _sampled_box(n, lo, hi)
    assert np.abs(np.real(np.fft.ifft(coarse)) - sampled).max() < 1e-4
    assert average.sum() == pytest.approx(hi - lo)


def test_ringing_of_a_k_space_truncated_box_is_removed():
    """A box sampled up to the grid's Nyquist frequency rings (Gibbs overshoot ~9 % of the
    step); the subvoxel shifts bring it towards its voxel averages."""
    sampled, average = _box3d()
    out = unring(sampled)
    before = np.sqrt(np.mean((sampled - average) ** 2))
    after = np.sqrt(np.mean((out - average) ** 2))
    assert after < 0.7 * before, (before, after)  # measured 0.64
    inside = average == 1
    outside = average == 0
    assert sampled[inside].max() > 1.06 and sampled[outside].min() < -0.06  # it rings
    assert out[inside].max() - 1 < 0.5 * (sampled[inside].max() - 1)  # measured 0.32
    assert -out[outside].min() < 0.6 * -sampled[outside].min()  # measured 0.50
    assert out.sum() == pytest.approx(sampled.sum(), rel=1e-3)  # χ's mean is kept


def test_an_image_without_ringing_is_kept():
    """Voxel-exact edges (steps at least 2 max_window + 2 voxels apart, periodically, so that
    one side of each voxel's window is flat) are not ringing, and stay as they are: the correction of each
    axis is applied to the image itself, not to k-space-weighted copies (module docstring)."""
    for shape, outer in (((40, 36, 32), (slice(4, 36), slice(4, 32), slice(4, 28))),
                         ((41, 37, 35), (slice(4, 37), slice(4, 33), slice(4, 31)))):  # odd lines too
        x = np.zeros(shape, np.float32)
        x[outer] = 0.2
        x[14:22, 14:22, 12:20] = -0.1
        assert np.allclose(unring(x), x, atol=1e-6)
        assert np.allclose(unring(x, axes=(0, 1)), x, atol=1e-6)


def test_constants_and_reference_do_not_matter():
    sampled, _ = _box3d(n=32, edges=((8.3, 20.6), (6.7, 22.2), (10.4, 19.9)))
    # the same to float32 rounding (an offset changes which near-equal oscillation measure wins)
    assert np.allclose(unring(sampled + 0.7) - 0.7, unring(sampled), atol=2e-4)
    assert np.allclose(unring(np.full((16, 16, 16), 0.3, np.float32)), 0.3, atol=1e-6)


def test_two_d_mode_leaves_the_slice_axis_alone():
    """A 2D (slice-wise) acquisition does not ring across slices, so those lines are kept."""
    line, _ = _sampled_box(32, 10.3, 21.8)
    x = np.broadcast_to(line[None, None, :], (16, 16, 32)).astype(np.float32)
    assert np.allclose(unring(x, axes=(0, 1)), x, atol=1e-6)
    assert not np.allclose(unring(x), x, atol=1e-3)


def test_mask_and_bad_input():
    sampled, average = _box3d(n=32, edges=((8.3, 20.6), (6.7, 22.2), (10.4, 19.9)))
    mask = average > 0
    out = unring(sampled, mask=mask)
    assert np.all(out[~mask] == 0) and out.dtype == np.float32
    with pytest.raises(ValueError, match="finite"):
        unring(np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="axes"):
        unring(sampled, axes=(3,))
    with pytest.raises(ValueError, match="3D"):
        unring(sampled[0])
    with pytest.raises(ValueError, match="min_window"):
        unring(sampled, min_window=4, max_window=3)


def test_plan_reads_the_sampling_from_the_sidecar():
    p = plan({"MRAcquisitionType": "3D", "AcquisitionMatrixPE": 256, "ReconMatrixPE": 256})
    assert p["axes"] == [0, 1, 2] and "3D" in p["basis"] and "not checked" not in p["basis"]
    zero_filled = plan({"MRAcquisitionType": "3D", "AcquisitionMatrixPE": 256, "ReconMatrixPE": 512})
    assert zero_filled["axes"] == [] and "finer grid" in zero_filled["basis"]
    two_d = plan({"MRAcquisitionType": "2D", "SliceEncodingDirection": "j-"})
    assert two_d["axes"] == [0, 2] and "SliceEncodingDirection" in two_d["basis"]
    assert plan({"MRAcquisitionType": "2D"})["axes"] == [0, 1]
    odd = plan({"MRAcquisitionType": "2D", "SliceEncodingDirection": "z"})
    assert odd["axes"] == [0, 1] and "'z' is not i, j or k" in odd["basis"]
    unknown = plan({})
    assert unknown["axes"] == [0, 1, 2] and "absent" in unknown["basis"]
    assert "PartialFourier 0.75" in plan({"MRAcquisitionType": "3D", "PartialFourier": 0.75})["basis"]
    assert plan({"MRAcquisitionType": "3D", "Manufacturer": "GE"}).get("Manufacturer") is None


def test_coarse_axes_are_left_alone():
    """The oscillation window spans 8 voxels: coarser than max_voxel_mm (1.1 mm), the deep-grey
    nuclei are narrower than that and would be blurred, so those axes are not unringed."""
    p = plan({"MRAcquisitionType": "3D"}, (0.9, 0.9, 2.0), 1.1)
    assert p["axes"] == [0, 1] and "axes [2] left alone: voxels of 2 mm" in p["basis"]
    sampled, _ = _box3d(n=32, edges=((8.3, 20.6), (6.7, 22.2), (10.4, 19.9)))
    chi, record = unring_as_planned(sampled, None, {"MRAcquisitionType": "3D"}, (3.0, 3.0, 3.0))
    assert record["Applied"] is False and record["Axes"] == [] and np.array_equal(chi, sampled)
    assert record["Parameters"] == {"max_voxel_mm": 1.1} and record["MRAcquisitionType"] == "3D"
    chi, record = unring_as_planned(sampled, None, {"MRAcquisitionType": "3D"}, (1.0, 1.0, 1.0), n_shifts=10)
    assert record["Applied"] is True and record["Axes"] == [0, 1, 2]
    assert np.array_equal(chi, unring(sampled, n_shifts=10)) and record["Parameters"]["n_shifts"] == 10
