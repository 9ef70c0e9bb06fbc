"""The optional denoise stage: MP-PCA of the multi-echo magnitude (dipy) against the noiseless signal."""

import numpy as np
import pytest

from qsmprep.qsm.denoise import denoise_magnitude
from qsmprep.qsm.echoes import r2star_map


@pytest.fixture(scope="module")
def noisy(small_phantom):
    """Magnitude of a central block of the small demo at peak SNR 30, with the noiseless one."""
    from qsmprep.demo import simulate_gre

    ph = small_phantom
    block = (slice(12, 60), slice(12, 60), slice(10, 38))
    mags = [np.abs(simulate_gre(ph, snr=snr, seed=0)[0])[block] for snr in (30.0, 1e9)]
    return mags[0].astype(np.float32), mags[1], ph.brain_mask[block].astype(bool), ph.tes


def test_mppca_lowers_the_r2star_error_at_low_snr(noisy):
    mag, clean, brain, tes = noisy
    truth = r2star_map(clean, tes)[0][brain]
    denoised, info = denoise_magnitude(mag)
    assert denoised.shape == mag.shape and denoised.dtype == np.float32 and denoised.min() >= 0
    err = {name: r2star_map(m, tes)[0][brain] - truth for name, m in (("raw", mag), ("mppca", denoised))}
    med = {k: float(np.median(np.abs(v))) for k, v in err.items()}
    rmse = {k: float(np.sqrt(np.mean(v ** 2))) for k, v in err.items()}
    assert med["mppca"] < 0.5 * med["raw"], med
    assert rmse["mppca"] < rmse["raw"], rmse
    assert abs(float(np.mean(err["mppca"]))) < 0.5  # no bias in R2* (1/s)
    # the magnitude itself is closer to the noiseless one, and the noise estimate is the true one
    # (σ = peak / 30 per channel; MP-PCA's σ of the Rician magnitude is close to it)
    assert np.abs(denoised - clean)[brain].mean() < 0.6 * np.abs(mag - clean)[brain].mean()
    sigma = float(np.abs(clean).max()) / 30.0
    assert 0.7 * sigma < info["noise_sigma_median"] < 1.3 * sigma, (info, sigma)


def test_mppca_refuses_what_it_cannot_denoise():
    mag = np.ones((6, 6, 6, 2), np.float32)
    with pytest.raises(ValueError, match="at least 3 echoes"):
        denoise_magnitude(mag)
    with pytest.raises(ValueError, match="4D"):
        denoise_magnitude(mag[..., 0])
    with pytest.raises(ValueError, match="patch_radius"):
        denoise_magnitude(np.ones((6, 6, 6, 4), np.float32), patch_radius=0)
