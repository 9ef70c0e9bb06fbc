"""The demo phantom and dataset: physics, conventions and the written BIDS tree."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmprep.demo import (
    BRAIN_LABELS, DEEP_GREY_LABELS, DEMO_LABELS, SKULL_AND_AIR_LABELS, dipole_field, make_phantom,
    render_t1w, write_demo_dataset,
)
from qsmprep.qsm.kernels import GAMMA_BAR_MHZ_PER_T


def test_dipole_field_matches_qsm_forward():
    from qsm_forward import generate_field

    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    chi = np.zeros((24, 26, 20))
    chi[6:18, 8:18, 5:15] = 0.1 + 0.05 * rng.standard_normal((12, 10, 10))
    chi = gaussian_filter(chi, 1.0)
    b0 = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])
    ours = dipole_field(chi, (1.0, 1.0, 1.0), b0)
    ref = generate_field(chi, voxel_size=[1, 1, 1], B0_dir=list(b0))
    # equal up to the constant from qsm-forward's D(0) = 1/3 (and, for an oblique B0, the
    # sign convention of the Nyquist plane, hence the smooth χ here)
    diff = (ours - ours.mean()) - (ref - ref.mean())
    assert np.abs(diff).max() < 1e-3 * np.abs(ref - ref.mean()).max()


def test_phantom_is_deterministic_and_consistent(small_phantom):
    ph = small_phantom
    again = make_phantom("small", seed=0)
    assert np.array_equal(ph.chi, again.chi) and np.array_equal(ph.total_field, again.total_field)
    other = make_phantom("small", seed=1)
    assert not np.array_equal(ph.chi, other.chi)
    assert ph.chi.shape == (72, 72, 48) and ph.voxel_size == (3.0, 3.0, 3.0) and len(ph.tes) == 4
    assert ph.labels[0, 0, 0] == 0 and ph.chi[0, 0, 0] == pytest.approx(9.4)
    assert not np.isin(ph.labels[ph.brain_mask], SKULL_AND_AIR_LABELS).any()
    assert np.array_equal(ph.brain_mask, np.isin(ph.labels, BRAIN_LABELS))
    for lab in DEEP_GREY_LABELS:
        assert (ph.labels == lab).sum() >= 3, DEMO_LABELS[lab]
        assert ph.lut[lab][2] > 0  # paramagnetic iron-rich nuclei
    assert {DEMO_LABELS[lab][1] for lab in DEEP_GREY_LABELS} == {"L", "R"}
    assert ph.lut[31][2] < 0 and ph.lut[30][2] > 0.2  # calcification, vein
    # a real background: much larger than the local field inside the brain
    b = ph.brain_mask
    assert ph.background_field[b].std() > 5 * ph.local_field[b].std()
    assert abs(ph.local_field[b].mean()) < 1e-5 and abs(ph.background_field[b].mean()) < 1e-5
    # local field = field of χ restricted to the brain, computed independently with
    # qsm-forward on the 1.5 mm grid the small phantom is simulated on, then voxel means
    from qsm_forward import generate_field

    fine = ph.fine
    ss = fine["ss"]
    ref = generate_field(fine["chi"] * fine["brain"], voxel_size=[ph.voxel_size[0] / ss] * 3, B0_dir=list(ph.b0_dir))
    ref = ref.reshape(72, ss, 72, ss, 48, ss).mean(axis=(1, 3, 5))
    ref -= ref[b].mean()
    assert np.abs(ref - ph.local_field)[b].max() < 0.01 * np.abs(ph.local_field[b]).max()


def test_signal_phase_magnitude_and_integers(small_phantom, small_gre):
    ph, (sig, offset) = small_phantom, small_gre
    assert sig.shape == (72, 72, 48, 4) and sig.dtype == np.complex64
    wm = ph.labels == 6
    # magnitude decays as exp(-TE R2*) in white matter (fit against the truth)
    mag = np.abs(sig[wm]).mean(0)
    slope = -np.polyfit(ph.tes, np.log(mag), 1)[0]
    assert slope == pytest.approx(ph.lut[6][3], rel=0.1)
    # phase = 2π γ̄ B0 field TE + offset, in deep WM (no intravoxel dephasing there)
    deep = wm & (np.abs(ph.total_field - np.median(ph.total_field[wm])) < 0.05)
    expected = 2 * np.pi * GAMMA_BAR_MHZ_PER_T * ph.b0 * ph.total_field[deep] * ph.tes[0] + offset[deep]
    err = np.angle(sig[deep, 0] * np.exp(-1j * expected))
    assert np.median(np.abs(err)) < 0.05
    assert np.ptp(offset[ph.brain_mask]) > 0.5  # a real receive phase offset


def test_oblique_b0_direction():
    ph = make_phantom("small", seed=0, oblique_deg=20.0)
    assert np.linalg.norm(ph.b0_dir) == pytest.approx(1.0)
    assert abs(ph.b0_dir[2]) < 0.99
    rot = ph.affine[:3, :3] / np.linalg.norm(ph.affine[:3, :3], axis=0)
    assert rot @ ph.b0_dir == pytest.approx([0, 0, 1], abs=1e-6)


def test_t1w_motion_moves_anatomy():
    still = np.asarray(render_t1w("small", seed=0).dataobj)
    moved = np.asarray(render_t1w("small", seed=0, t1w_motion=(0, 0, 0, 6.0, 0, 0)).dataobj)
    assert still.shape == (108, 108, 72)
    # a 6 mm shift along x is 3 voxels of 2 mm
    assert np.corrcoef(np.roll(still, 3, axis=0)[10:-10].ravel(), moved[10:-10].ravel())[0, 1] > 0.95


def test_write_demo_dataset(tmp_path):
    info = write_demo_dataset(tmp_path, size="small", n_subjects=1)
    bids = tmp_path / "bids"
    assert info["bids_dir"] == str(bids)
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and (bids / "participants.tsv").is_file()
    anat = bids / "sub-01" / "anat"
    for e in range(1, 5):
        for part in ("mag", "phase"):
            img = nib.load(anat / f"sub-01_echo-{e}_part-{part}_MEGRE.nii.gz")
            data = np.asarray(img.dataobj)
            assert data.dtype == np.uint16
            if part == "phase":
                assert data.min() >= 0 and data.max() <= 4095 and data.max() > 4000
            meta = json.loads((anat / f"sub-01_echo-{e}_part-{part}_MEGRE.json").read_text())
            assert meta["EchoTime"] == pytest.approx([0.004, 0.009, 0.014, 0.019][e - 1])
            assert meta["MagneticFieldStrength"] == 3.0
    assert (anat / "sub-01_T1w.nii.gz").is_file()
    truth = tmp_path / "truth" / "sub-01"
    for name in ("Chimap", "dseg", "desc-brain_mask", "desc-localfield_fieldmap", "desc-totalfield_fieldmap",
                 "desc-backgroundfield_fieldmap", "R2starmap"):
        assert (truth / f"sub-01_{name}.nii.gz").is_file()
    assert not list(bids.rglob("*Chimap*"))  # truth stays outside the BIDS tree
    with pytest.raises(FileExistsError):
        write_demo_dataset(tmp_path, size="small", n_subjects=1)
